//! What `--model` names, for `fer predict`, `fer serve` and the benchmarks: whatever the
//! inference core opens (a shipped model by name: `tiny`, the default, `nano`, `small`,
//! `accurate`; an ONNX file; a model folder with its `model.onnx`), or a finished run
//! (`runs/NAME`: its weights, written as ONNX in memory). Every one of them then runs the same
//! way, in the core's tract pipeline.

use std::path::{Path, PathBuf};

use fer_core::face::detect::DetectorOptions;
use fer_core::models::{self, Opened};
use fer_core::{Classifier, Pipeline};

use crate::nn::model::Trained;

/// A model ready to load: its name, its ONNX file and its card.
pub struct Chosen {
    pub name: String,
    pub onnx: Vec<u8>,
    /// `card.json` for a shipped or exported model, else the run's `summary.json` (or `{}`).
    pub card: serde_json::Value,
}

impl Chosen {
    pub fn classifier(&self) -> anyhow::Result<Classifier> {
        Classifier::from_onnx(&self.onnx).map_err(|e| anyhow::anyhow!("model {}: {e}", self.name))
    }

    /// The face pipeline over this model, its detector's networks in libtorch (the faster here:
    /// see `nn::mtcnn`); the classifier runs in tract, as fast.
    pub fn pipeline(&self, detector: DetectorOptions) -> anyhow::Result<Pipeline> {
        Ok(Pipeline::with_detector(self.classifier()?, crate::nn::mtcnn::detector(detector)?))
    }
}

/// The model `given` names (the shipped default when none is given).
pub fn choose(given: Option<&Path>) -> anyhow::Result<Chosen> {
    let Some(path) = given else {
        let m = models::find(models::DEFAULT).expect("the default model is compiled in");
        return Ok(Chosen { name: m.name.into(), onnx: m.onnx.to_vec(), card: serde_json::from_str(m.card)? });
    };
    let read_json = |p: &Path| std::fs::read(p).ok().and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
    let is_run = path.is_dir() && !path.join("model.onnx").is_file() && path.join("config.toml").is_file();
    if !is_run {
        let Opened { name, onnx, card } = models::open(path).map_err(anyhow::Error::msg)?;
        let card = card.and_then(|c| serde_json::from_str(&c).ok()).unwrap_or_else(|| serde_json::json!({}));
        return Ok(Chosen { name, onnx, card });
    }
    let name = path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned());
    let trained = Trained::load(path, tch::Device::Cpu)?;
    let onnx = crate::nn::onnx::to_onnx(&trained, &[("name".to_string(), name.clone())])?;
    let card = read_json(&path.join("card.json")).or_else(|| read_json(&path.join("summary.json"))).unwrap_or_else(|| serde_json::json!({}));
    Ok(Chosen { name, onnx, card })
}

/// The default model's folder (its weights and card, for `fer eval`): the shipped tiny model,
/// else the baseline run.
pub fn default_folder() -> anyhow::Result<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    [root.join("models").join(models::DEFAULT), PathBuf::from("runs/baseline")]
        .into_iter()
        .find(|p| p.join("config.toml").is_file())
        .ok_or_else(|| anyhow::anyhow!("no model found: pass --model <run or model folder> (e.g. runs/baseline after `fer train`)"))
}
