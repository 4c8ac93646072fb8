//! Shipping a trained run as a model folder: batch norm folded into the convolutions, the
//! weights, a config that loads them, the training config that made them, and a model card.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;
use tch::Tensor;

use crate::config::{Config, ModelConfig, Tta};
use crate::data::{write_atomic, Dataset, Split};
use crate::nn::model::{fold_batch_norm, param_count};
use crate::nn::onnx::Agreement;
use crate::nn::model::Trained;
use crate::nn::model::copy_named;
use crate::record::{AverageScore, Summary, TtaScore};

/// The same model with every conv + batch-norm pair folded into one convolution.
pub fn fold(model: &Trained) -> anyhow::Result<Trained> {
    let vars: HashMap<String, Tensor> = model.vs.variables();
    let (layers, folded_vars) = fold_batch_norm(&model.config.layers()?, &vars)?;
    let config = Config { model: ModelConfig { network: None, convnet: None, layers: Some(layers) }, ..model.config.clone() };
    let folded = Trained::new(&config, model.vs.device())?;
    let named: HashMap<String, Tensor> = folded_vars.into_iter().collect();
    copy_named(&folded.vs, &named, "").map_err(|e| anyhow::anyhow!("folding: {e}"))?;
    anyhow::ensure!(named.len() == folded.vs.len(), "folding produced variables the folded network does not have");
    Ok(folded)
}

/// `card.json`: what the model card says, from the run's records and the folded model.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Card {
    pub name: String,
    pub architecture: String,
    /// fvcore FLOPs of one forward pass of the folded model (with the eval blur).
    pub fvcore_flops: i64,
    /// Before folding, as the run was trained and scored.
    pub fvcore_flops_unfolded: i64,
    pub params: i64,
    pub val_acc: f64,
    /// PrivateTest, scored once when the run finished (the folded model computes the same).
    pub test_acc: f64,
    /// The leak-aware score: PrivateTest accuracy over the faces with no pixel-identical twin in
    /// Training, from the same single evaluation.
    #[serde(default)]
    pub test_acc_unseen: Option<f64>,
    #[serde(default)]
    pub test_unseen_faces: Option<usize>,
    /// test accuracy in % per fvcore GFLOP of the folded model.
    pub efficiency: f64,
    /// PublicTest accuracy of the folded model, measured at export (None without the data).
    pub folded_val_acc: Option<f64>,
    pub seed: u64,
    pub epochs: usize,
    pub best_epoch: usize,
    pub train_seconds: f64,
    /// The teacher cache's scoring, apart from `train_seconds` (see the run's summary).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teacher_cache_seconds: Option<f64>,
    pub threads: i32,
    pub device: String,
    pub machine: String,
    pub teacher: Option<String>,
    /// The weight average the run kept (`average_from`), and whether it is these weights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub average: Option<AverageScore>,
    /// The commands that retrain and re-export it.
    pub reproduce: String,
    /// `model.onnx`, checked against libtorch by an independent runtime (absent until
    /// `fer export --onnx` writes it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub onnx: Option<OnnxCheck>,
    /// The model with its mirror image averaged in (two forward passes), scored on both test
    /// splits when the run finished (`tta = "flip"`), apart from the single pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flip_tta: Option<TtaScore>,
}

/// What the check of `model.onnx` found: tract's run of the file against libtorch's run of the
/// model, on PublicTest (or on synthetic faces without the data).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OnnxCheck {
    pub opset: i64,
    /// The faces checked: "PublicTest" or "synthetic".
    pub faces_from: String,
    pub agreement: Agreement,
    /// PublicTest accuracy through tract (None without the data).
    pub val_acc: Option<f64>,
}

/// Exports the finished run in `run` (its `summary.json` must exist) to the folder `out`:
/// `model.safetensors` + `config.toml` (folded, loadable by `fer eval --model out`),
/// `train.toml` (the run's own config), `card.md` and `card.json`.
pub fn export(run: &Path, out: &Path, data: Option<&Dataset>) -> anyhow::Result<Card> {
    let summary: Summary = serde_json::from_slice(
        &std::fs::read(run.join("summary.json"))
            .map_err(|e| anyhow::anyhow!("{}: no summary.json ({e}); finish the run first", run.display()))?,
    )?;
    let model = Trained::load(run, tch::Device::Cpu)?;
    let folded = fold(&model)?;
    let flops = super::flops::count_config(&folded.config)?;
    let val_faces = data.map(|d| d.split(Split::PublicTest));
    let folded_val_acc = val_faces.as_ref().map(|faces| folded.evaluate(faces).accuracy);
    if let (Some(acc), Some(faces)) = (folded_val_acc, &val_faces) {
        anyhow::ensure!(
            ((acc - summary.val_acc) * faces.len() as f64).abs() <= 1.0,
            "the folded model scores {:.2}% on PublicTest, the run {:.2}%: folding changed the model",
            100.0 * acc,
            100.0 * summary.val_acc
        );
    }
    let train_config = &model.config;
    let name = out.file_name().map_or(summary.name.clone(), |n| n.to_string_lossy().into_owned());
    let mut reproduce = String::new();
    if let Some(t) = &train_config.train.teacher {
        reproduce += &format!("# train the teacher, {t}, first (scripts/frontier.sh trains the whole front in order)\n");
    }
    reproduce += &format!(
        "./fer train --config {out}/train.toml\n./fer export {run} --out {out}",
        out = out.display(),
        run = run.display()
    );
    let card = Card {
        name,
        architecture: folded.config.layers()?.iter().map(|l| l.kind()).collect::<Vec<_>>().join(" → "),
        fvcore_flops: flops.fvcore_total,
        fvcore_flops_unfolded: summary.fvcore_flops,
        params: param_count(&folded.vs),
        val_acc: summary.val_acc,
        test_acc: summary.test_acc,
        test_acc_unseen: summary.test_acc_unseen,
        test_unseen_faces: summary.test_unseen_faces,
        efficiency: super::flops::efficiency(100.0 * summary.test_acc, flops.fvcore_total),
        folded_val_acc,
        seed: summary.seed,
        epochs: summary.epochs,
        best_epoch: summary.best_epoch,
        train_seconds: summary.train_seconds,
        teacher_cache_seconds: summary.teacher_cache_seconds,
        threads: summary.threads,
        device: summary.device.clone(),
        machine: summary.machine.clone(),
        teacher: train_config.train.teacher.as_ref().map(|t| t.to_string()),
        average: summary.average.clone(),
        reproduce,
        onnx: None,
        // As the run scored it when it finished: PrivateTest is not read again here.
        // Its FLOPs are the folded model's, two passes.
        flip_tta: summary.tta.clone().filter(|t| t.kind == Tta::Flip).map(|t| {
            let fvcore_flops = flops.with_views(t.views);
            TtaScore { fvcore_flops, efficiency: super::flops::efficiency(100.0 * t.test_acc, fvcore_flops), ..t }
        }),
    };
    std::fs::create_dir_all(out)?;
    // An ONNX file from earlier weights would contradict these: `export_onnx` writes a new one.
    match std::fs::remove_file(out.join("model.onnx")) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
        _ => {}
    }
    folded.save(&out.join("model.safetensors"))?;
    write_atomic(&out.join("config.toml"), folded.config.to_toml().as_bytes())?;
    write_atomic(&out.join("train.toml"), train_config.to_toml().as_bytes())?;
    write_atomic(&out.join("card.json"), &serde_json::to_vec_pretty(&card)?)?;
    write_atomic(&out.join("card.md"), card_markdown(&card, train_config).as_bytes())?;
    Ok(card)
}

/// Writes `model.onnx` into the model folder `dir` (as [`export`] leaves it), checks it in tract
/// against libtorch on PublicTest (synthetic faces without the data), and records the check in
/// the card. A file that disagrees is an error, not a shipped model.
pub fn export_onnx(dir: &Path, data: Option<&Dataset>) -> anyhow::Result<OnnxCheck> {
    let card_file = dir.join("card.json");
    let mut card: Card = serde_json::from_slice(
        &std::fs::read(&card_file).map_err(|e| anyhow::anyhow!("{}: no card.json ({e}); export a finished run first", dir.display()))?,
    )?;
    let model = Trained::load(dir, tch::Device::Cpu)?;
    let pct = |x: f64| format!("{:.2}", 100.0 * x);
    let mut metadata = vec![
        ("name".to_string(), card.name.clone()),
        ("fvcore_flops".to_string(), card.fvcore_flops.to_string()),
        ("publictest_accuracy_percent".to_string(), pct(card.val_acc)),
        ("privatetest_accuracy_percent".to_string(), pct(card.test_acc)),
    ];
    if let Some(unseen) = card.test_acc_unseen {
        metadata.push(("privatetest_leak_aware_accuracy_percent".to_string(), pct(unseen)));
    }
    let onnx = super::onnx::to_onnx(&model, &metadata)?;
    let (faces, faces_from) = match data {
        Some(d) => (d.split(Split::PublicTest), "PublicTest"),
        None => {
            let mut rng = fastrand::Rng::with_seed(0);
            let n = 64;
            let pixels = (0..n * crate::data::SIDE * crate::data::SIDE).map(|_| rng.u8(..)).collect();
            (crate::data::Faces { pixels, labels: vec![0; n], twin_in_training: Vec::new() }, "synthetic")
        }
    };
    let (agreement, tract_logits) = super::onnx::check(&onnx, &model, &faces)?;
    anyhow::ensure!(
        agreement.max_probability_diff < 1e-4 && agreement.same_label == agreement.faces,
        "the ONNX graph disagrees with libtorch: probabilities differ by up to {:.2e}, labels on {} of {} faces",
        agreement.max_probability_diff,
        agreement.faces - agreement.same_label,
        agreement.faces
    );
    let val_acc = data.map(|_| crate::nn::score::evaluate(&tract_logits, &faces.labels).accuracy);
    write_atomic(&dir.join("model.onnx"), &onnx)?;
    let check = OnnxCheck { opset: super::onnx::OPSET, faces_from: faces_from.into(), agreement, val_acc };
    card.onnx = Some(check.clone());
    let train_config = Config::load(&dir.join("train.toml"))?;
    write_atomic(&card_file, &serde_json::to_vec_pretty(&card)?)?;
    write_atomic(&dir.join("card.md"), card_markdown(&card, &train_config).as_bytes())?;
    Ok(check)
}

/// The model card, for people.
pub fn card_markdown(card: &Card, train_config: &Config) -> String {
    let pct = |x: f64| format!("{:.2}%", 100.0 * x);
    let mut md = format!("# Model card: {}\n\n", card.name);
    md += "Facial-expression classifier for 48x48 grayscale faces, 7 classes (Angry, Disgust, Fear, Happy, Sad, Surprise, Neutral), trained on FER-2013 Training with `fer`.\n\n";
    md += "| | |\n|---|---|\n";
    let rows = [
        ("PublicTest accuracy (model selection)", pct(card.val_acc)),
        ("PrivateTest accuracy (scored once)", pct(card.test_acc)),
        (
            "leak-aware PrivateTest accuracy (faces with no pixel-identical twin in Training)",
            match (card.test_acc_unseen, card.test_unseen_faces) {
                (Some(acc), Some(n)) => format!("{} ({n} faces)", pct(acc)),
                _ => "not recorded".into(),
            },
        ),
        ("fvcore FLOPs, one forward pass (BN folded)", format!("{} ({:.5} GFLOPs)", card.fvcore_flops, card.fvcore_flops as f64 / 1e9)),
        ("fvcore FLOPs before folding", card.fvcore_flops_unfolded.to_string()),
        ("efficiency (PrivateTest % / GFLOP)", format!("{:.1}", card.efficiency)),
        ("parameters", card.params.to_string()),
        ("seed", card.seed.to_string()),
        (
            "epochs (best on PublicTest)",
            match &card.average {
                Some(a) if a.chosen => format!(
                    "{} ({}: PublicTest {} against {} for the best epoch, {})",
                    card.epochs,
                    a.in_words(),
                    pct(a.val_acc),
                    pct(a.best_epoch_val_acc),
                    card.best_epoch
                ),
                _ => format!("{} ({})", card.epochs, card.best_epoch),
            },
        ),
        ("distilled from", card.teacher.clone().unwrap_or_else(|| "none".into())),
        (
            "training time",
            format!(
                "{:.0} s on {}, {} threads ({}){}",
                card.train_seconds,
                card.machine,
                card.threads,
                card.device,
                card.teacher_cache_seconds.map_or(String::new(), |s| format!(", after {s:.0} s of the teachers scoring every view once (the teacher cache, shared with other students)"))
            ),
        ),
        (
            "folded model on PublicTest",
            card.folded_val_acc.map_or("not checked (no data at export)".into(), pct),
        ),
    ];
    let flip_row = card.flip_tta.as_ref().map(|t| {
        let unseen = t.test_acc_unseen.map_or(String::new(), |u| format!(" ({} leak-aware)", pct(u)));
        let v = format!(
            "PublicTest {}, PrivateTest {}{unseen}, at {} fvcore FLOPs ({} passes): efficiency {:.1}; `fer eval --tta flip`",
            pct(t.val_acc),
            pct(t.test_acc),
            t.fvcore_flops,
            t.views,
            t.efficiency
        );
        ("with its mirror image averaged in (flip test-time augmentation, reported apart)", v)
    });
    let onnx_row = card.onnx.as_ref().map(|o| {
        let a = &o.agreement;
        let mut v = format!(
            "`model.onnx` (opset {}), run by tract on {} {} faces: probabilities within {:.1e} of libtorch's, the same label on {} of them",
            o.opset, a.faces, o.faces_from, a.max_probability_diff, a.same_label
        );
        if let Some(acc) = o.val_acc {
            v += &format!("; PublicTest through tract {}", pct(acc));
        }
        ("ONNX", v)
    });
    for (k, v) in rows.into_iter().chain(flip_row).chain(onnx_row) {
        md += &format!("| {k} | {v} |\n");
    }
    md += &format!("\n## Architecture (as deployed)\n\n{}\n\n", card.architecture);
    md += "## Use\n\n```sh\n./fer predict face.png                      # the tiny model is the default\n";
    md += &format!("./fer eval --model models/{} --split PrivateTest\n```\n\n", card.name);
    if card.onnx.is_some() {
        md += &format!("From Python with onnxruntime: input `pixels`, float32 `[N, 1, 48, 48]` grayscale in 0..255 (the scaling is inside the graph); outputs `logits` and `probabilities`, `[N, 7]`, classes in the order of the metadata's `classes`.\n\n```python\n{}```\n\n", super::onnx::python_example(&format!("models/{}/model.onnx", card.name)));
    }
    md += &format!("## Reproduce\n\n```sh\n{}\n```\n\n", card.reproduce);
    md += &format!("## Training config (`train.toml`)\n\n```toml\n{}```\n\n", train_config.to_toml());
    md += "## Limitations\n\nAccuracy is per the PrivateTest split of FER-2013; faces from other sources (other crops, lighting, ages, ethnic groups) will score differently. FER-2013's labels are noisy (57 groups of identical faces carry conflicting labels), and some PrivateTest faces have pixel-identical twins in Training: the leak-aware accuracy leaves those out. Expression is not emotion.\n";
    md
}
