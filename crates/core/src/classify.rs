//! The expression classifier: an ONNX file as `fer export --onnx` writes it (input `pixels`,
//! float32 `[N, 1, 48, 48]` grayscale in 0..255; outputs `logits` and `probabilities`,
//! `[N, 7]`), run by tract for any number of faces.

use rayon::prelude::*;
use tract_onnx::prelude::*;

use crate::classes::{NUM_CLASSES, PIXELS, SIDE};

/// Faces per run of the network in [`Classifier::probabilities`]: tract runs a plan made for one
/// face 4 to 5 times faster per face than one made for any batch size (measured on the tiny
/// model: 0.64 ms a face against 3.7 ms at batch 1 and 3.8 ms at batch 16), so faces go one at
/// a time, side by side on every core.
pub const BATCH: usize = 1;

/// Why an ONNX file is not a usable classifier.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("not a readable ONNX model: {0}")]
    Unreadable(String),
    #[error("not a FER-2013 classifier: {0}")]
    WrongShape(String),
}

/// A classifier loaded and optimised by tract.
pub struct Classifier {
    /// For any number of faces at once.
    plan: Arc<TypedRunnableModel>,
    /// For [`BATCH`] faces.
    fixed: Arc<TypedRunnableModel>,
    /// What the file's metadata says of it (name, accuracy, FLOPs), as (key, value).
    pub metadata: Vec<(String, String)>,
}

impl Classifier {
    pub fn from_onnx(bytes: &[u8]) -> Result<Classifier, ModelError> {
        let unreadable = |e: TractError| ModelError::Unreadable(format!("{e:#}"));
        let proto = tract_onnx::onnx().proto_model_for_read(&mut &bytes[..]).map_err(unreadable)?;
        let metadata = proto.metadata_props.iter().map(|p| (p.key.clone(), p.value.clone())).collect();
        let model = tract_onnx::onnx().model_for_proto_model(&proto).map_err(unreadable)?;
        let plan = model.clone().into_optimized().and_then(|m| m.into_runnable()).map_err(unreadable)?;
        let fixed = model
            .with_input_fact(0, f32::fact([BATCH, 1, SIDE, SIDE]).into())
            .and_then(|m| m.into_optimized())
            .and_then(|m| m.into_runnable())
            .map_err(|e| ModelError::WrongShape(format!("{e:#}")))?;
        let classifier = Classifier { plan, fixed, metadata };
        // One black face through it: a wrong input or output shape shows here, not mid-run.
        let (_, p) = classifier.run(&[0u8; PIXELS]).map_err(|e| ModelError::WrongShape(format!("{e:#}")))?;
        if p.len() != NUM_CLASSES {
            return Err(ModelError::WrongShape(format!("it gives {} probabilities per face, not {NUM_CLASSES}", p.len())));
        }
        Ok(classifier)
    }

    /// One value of the file's metadata.
    pub fn meta(&self, key: &str) -> Option<&str> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// (logits, probabilities), each `[N, 7]` row-major, for `[N, 48, 48]` u8 faces in one run.
    pub fn run(&self, pixels: &[u8]) -> TractResult<(Vec<f32>, Vec<f32>)> {
        anyhow::ensure!(pixels.len() % PIXELS == 0, "{} pixels are not whole 48x48 faces", pixels.len());
        let n = pixels.len() / PIXELS;
        let x: Vec<f32> = pixels.iter().map(|&p| p as f32).collect();
        let input = tract_ndarray::Array4::from_shape_vec((n, 1, SIDE, SIDE), x)?.into_tensor();
        let plan = if n == BATCH { &self.fixed } else { &self.plan };
        let out = plan.run(tvec!(input.into()))?;
        anyhow::ensure!(out.len() == 2, "the model gives {} outputs, not logits and probabilities", out.len());
        let flat = |t: &TValue| -> TractResult<Vec<f32>> { Ok(t.to_plain_array_view::<f32>()?.iter().copied().collect()) };
        Ok((flat(&out[0])?, flat(&out[1])?))
    }

    /// Each face's class probabilities, for `[N, 48, 48]` u8 faces, run side by side.
    pub fn probabilities(&self, pixels: &[u8]) -> Vec<[f32; NUM_CLASSES]> {
        let batches: Vec<Vec<f32>> = pixels
            .par_chunks(BATCH * PIXELS)
            .map(|chunk| self.run(chunk).map(|(_, p)| p).expect("a classifier that ran once runs on any faces"))
            .collect();
        batches.concat().chunks(NUM_CLASSES).map(|c| c.try_into().expect("7 probabilities")).collect()
    }
}
