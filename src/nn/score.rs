//! Scoring a model: exact loss and accuracy over a whole split, per-class precision, recall
//! and F1, and the confusion matrix.

use serde::{Deserialize, Serialize};
use tch::nn::ModuleT;
use tch::{Device, Kind, Tensor};

use crate::config::Tta;
use crate::data::{normalize, Faces, CLASSES, NUM_CLASSES, SIDE};
use crate::nn::blur::blur;
use crate::nn::model::Trained;
use crate::record::TtaScore;

/// How far flip-shift moves the face: half the crop padding of the recipes that train with it
/// (4), as airbench moves CIFAR-10 images by half of theirs.
pub const TTA_SHIFT: i64 = 2;

/// Crop offsets (y, x) and mirroring of each test-time view of a 48x48 face; an offset past the
/// face's edge brings in black, as the training crops' padding does.
fn views(side: i64, tta: Tta) -> Vec<(i64, i64, bool)> {
    let m = SIDE as i64 - side;
    let c = m / 2;
    let mirrored = |crops: &[(i64, i64)]| -> Vec<(i64, i64, bool)> { crops.iter().flat_map(|&(y, x)| [(y, x, false), (y, x, true)]).collect() };
    match tta {
        Tta::None => vec![(c, c, false)],
        Tta::Flip => mirrored(&[(c, c)]),
        Tta::TenCrop => mirrored(&[(0, 0), (0, m), (m, 0), (m, m), (c, c)]),
        Tta::FlipShift => mirrored(&[(c, c), (c - TTA_SHIFT, c - TTA_SHIFT), (c + TTA_SHIFT, c + TTA_SHIFT)]),
    }
}

/// The faces in batches of at most `batch_size`, as every model sees them before its crop: on
/// `device`, normalised, blurred by `blur_sigma`.
pub fn input_batches(faces: &Faces, batch_size: usize, device: Device, blur_sigma: f64) -> impl Iterator<Item = Tensor> {
    let (x, _) = faces.tensors();
    let n = faces.len() as i64;
    let batch = batch_size.max(1);
    (0..n).step_by(batch).map(move |start| blur(&normalize(&x.narrow(0, start, (batch as i64).min(n - start)).to_device(device)), blur_sigma))
}

/// The `side` x `side` view of a normalised batch at `(y, x)`, mirrored when `flip`; where the
/// window leaves the face, black (-1 once normalised) fills it.
fn view(batch: &Tensor, (y, x, flip): (i64, i64, bool), side: i64) -> Tensor {
    let face = batch.size()[2];
    let pad = [-y, -x, y + side - face, x + side - face].into_iter().max().unwrap_or(0).max(0);
    let v = if pad == 0 {
        batch.narrow(2, y, side).narrow(3, x, side)
    } else {
        ((batch + 1.0).constant_pad_nd([pad, pad, pad, pad]) - 1.0).narrow(2, y + pad, side).narrow(3, x + pad, side)
    };
    if flip {
        v.flip([3])
    } else {
        v
    }
}

/// The centre `side` x `side` crop of a batch: the single-pass view.
pub fn centre_view(batch: &Tensor, side: usize) -> Tensor {
    view(batch, views(side as i64, Tta::None)[0], side as i64)
}

/// Class scores for every face, `[N, 7]` on the CPU, in eval mode without gradients: the
/// network's logits, or with several views their [`combine`]d scores.
pub fn logits(net: &dyn ModuleT, faces: &Faces, batch_size: usize, device: Device, side: usize, tta: Tta, blur_sigma: f64) -> Tensor {
    let views = views(side as i64, tta);
    let parts: Vec<Tensor> = tch::no_grad(|| {
        input_batches(faces, batch_size, device, blur_sigma)
            .map(|xb| {
                let outs: Vec<Tensor> = views.iter().map(|&v| net.forward_t(&view(&xb, v, side as i64), false)).collect();
                combine(&outs).to_device(Device::Cpu)
            })
            .collect()
    });
    if parts.is_empty() {
        return Tensor::zeros([0, NUM_CLASSES as i64], (Kind::Float, Device::Cpu));
    }
    Tensor::cat(&parts, 0)
}

/// Several class scores for the same faces (views, ensemble members, teachers) as one: the log
/// of their mean softmax, so accuracy and cross-entropy read as for a single model; a single
/// score passes through unchanged. Computed as a log-sum-exp, so a confident member's zero
/// probabilities stay finite.
pub fn combine(scores: &[Tensor]) -> Tensor {
    match scores {
        [one] => one.shallow_clone(),
        _ => {
            let log_probs: Vec<Tensor> = scores.iter().map(|s| s.log_softmax(-1, Kind::Float)).collect();
            Tensor::stack(&log_probs, 0).logsumexp([0], false) - (scores.len() as f64).ln()
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClassScores {
    pub class: String,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub support: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Evaluation {
    pub samples: usize,
    /// Fraction correct, over all samples.
    pub accuracy: f64,
    /// Mean cross-entropy over all samples.
    pub loss: f64,
    /// `confusion[true][predicted]`.
    pub confusion: [[u64; NUM_CLASSES]; NUM_CLASSES],
    pub per_class: Vec<ClassScores>,
    /// The leak-aware score: accuracy over the faces with no pixel-identical twin in Training.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unseen: Option<UnseenScore>,
}

/// Accuracy over the faces of a split that Training does not hold pixel for pixel.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct UnseenScore {
    pub faces: usize,
    pub accuracy: f64,
}

/// Scores logits against the faces' labels, and apart over the faces without a Training twin
/// where the faces say which those are.
pub fn evaluate_faces(logits: &Tensor, faces: &Faces) -> Evaluation {
    let mut eval = evaluate(logits, &faces.labels);
    if !faces.twin_in_training.is_empty() {
        let predicted: Vec<i64> = Vec::try_from(logits.argmax(-1, false)).unwrap_or_default();
        let (mut n, mut correct) = (0usize, 0usize);
        for ((&twin, &label), &p) in faces.twin_in_training.iter().zip(&faces.labels).zip(&predicted) {
            if !twin {
                n += 1;
                correct += (p == label as i64) as usize;
            }
        }
        eval.unseen = Some(UnseenScore { faces: n, accuracy: if n == 0 { 0.0 } else { correct as f64 / n as f64 } });
    }
    eval
}

/// Scores logits against labels.
pub fn evaluate(logits: &Tensor, labels: &[u8]) -> Evaluation {
    let n = labels.len();
    assert_eq!(logits.size()[0] as usize, n, "one row of logits per label");
    let y = Tensor::from_slice(labels).to_kind(Kind::Int64);
    let loss = if n == 0 { 0.0 } else { logits.cross_entropy_for_logits(&y).double_value(&[]) };
    let predicted: Vec<i64> = Vec::try_from(logits.argmax(-1, false)).unwrap_or_default();
    let mut confusion = [[0u64; NUM_CLASSES]; NUM_CLASSES];
    for (&t, &p) in labels.iter().zip(&predicted) {
        confusion[t as usize][p as usize] += 1;
    }
    let correct: u64 = (0..NUM_CLASSES).map(|c| confusion[c][c]).sum();
    let per_class = (0..NUM_CLASSES)
        .map(|c| {
            let tp = confusion[c][c] as f64;
            let support: u64 = confusion[c].iter().sum();
            let predicted: u64 = (0..NUM_CLASSES).map(|t| confusion[t][c]).sum();
            let precision = if predicted > 0 { tp / predicted as f64 } else { 0.0 };
            let recall = if support > 0 { tp / support as f64 } else { 0.0 };
            let f1 = if precision + recall > 0.0 { 2.0 * precision * recall / (precision + recall) } else { 0.0 };
            ClassScores { class: CLASSES[c].to_string(), precision, recall, f1, support }
        })
        .collect();
    Evaluation {
        samples: n,
        accuracy: if n == 0 { 0.0 } else { correct as f64 / n as f64 },
        loss,
        confusion,
        per_class,
        unseen: None,
    }
}

impl Evaluation {
    /// Per-class scores and the confusion matrix as text tables.
    pub fn tables(&self) -> String {
        let mut scores = comfy_table::Table::new();
        scores.load_preset(comfy_table::presets::ASCII_MARKDOWN);
        scores.set_header(["class", "precision", "recall", "F1", "support"]);
        for c in &self.per_class {
            scores.add_row([
                c.class.clone(),
                format!("{:.3}", c.precision),
                format!("{:.3}", c.recall),
                format!("{:.3}", c.f1),
                c.support.to_string(),
            ]);
        }
        let mut confusion = comfy_table::Table::new();
        confusion.load_preset(comfy_table::presets::ASCII_MARKDOWN);
        let mut header = vec!["true \\ predicted".to_string()];
        header.extend(CLASSES.iter().map(|c| c.to_string()));
        confusion.set_header(header);
        for (t, row) in self.confusion.iter().enumerate() {
            let mut cells = vec![CLASSES[t].to_string()];
            cells.extend(row.iter().map(|v| v.to_string()));
            confusion.add_row(cells);
        }
        let unseen = match self.unseen {
            Some(u) => format!(
                "\nleak-aware: {:.2}% on the {} faces with no pixel-identical twin in Training ({} have one)",
                100.0 * u.accuracy,
                u.faces,
                self.samples - u.faces
            ),
            None => String::new(),
        };
        format!(
            "accuracy {:.2}% ({} faces), loss {:.4}{unseen}\n\n{scores}\n\nconfusion matrix (rows: true class)\n{confusion}\n",
            100.0 * self.accuracy,
            self.samples,
            self.loss
        )
    }
}

/// Scoring a trained model: single pass, with test-time augmentation, and both test splits.
impl Trained {
    /// Single-pass class scores (the centre crop when the input is smaller than 48).
    pub fn logits(&self, faces: &Faces) -> Tensor {
        self.logits_with(faces, Tta::None)
    }

    pub fn logits_with(&self, faces: &Faces, tta: Tta) -> Tensor {
        let t = &self.config.train;
        logits(&self.net, faces, t.eval_batch_size, self.vs.device(), t.input_size, tta, t.eval_blur)
    }

    /// Softmax probabilities of the single pass, one row of 7 per face.
    pub fn probabilities(&self, faces: &Faces) -> Vec<[f32; NUM_CLASSES]> {
        let probs = self.logits(faces).softmax(-1, Kind::Float);
        let flat: Vec<f32> = Vec::try_from(probs.flatten(0, -1)).unwrap_or_default();
        flat.chunks(NUM_CLASSES).map(|c| c.try_into().unwrap()).collect()
    }

    pub fn evaluate(&self, faces: &Faces) -> Evaluation {
        evaluate_faces(&self.logits(faces), faces)
    }

    pub fn evaluate_with(&self, faces: &Faces, tta: Tta) -> Evaluation {
        evaluate_faces(&self.logits_with(faces, tta), faces)
    }

    /// Both test splits scored with `tta`, reported apart from the single pass: each view is
    /// one more forward pass.
    pub fn tta_score(&self, val_faces: &Faces, test_faces: &Faces, tta: Tta) -> anyhow::Result<TtaScore> {
        let test = self.evaluate_with(test_faces, tta);
        let flops = self.flops_with(tta)?;
        Ok(TtaScore {
            kind: tta,
            views: tta.views(),
            val_acc: self.evaluate_with(val_faces, tta).accuracy,
            test_acc: test.accuracy,
            test_acc_unseen: test.unseen.map(|u| u.accuracy),
            fvcore_flops: flops,
            efficiency: crate::nn::flops::efficiency(100.0 * test.accuracy, flops),
        })
    }
}

/// Several models scored as one (each with `tta`), [`combine`]d.
pub fn ensemble_logits(models: &[Trained], faces: &Faces, tta: Tta) -> Tensor {
    let scores: Vec<Tensor> = models.iter().map(|m| m.logits_with(faces, tta)).collect();
    combine(&scores)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combined_scores_are_the_log_of_the_mean_probability() {
        let a = Tensor::from_slice(&[2.0f32, 0., -1., 0., 0., 0., 1.]).reshape([1, 7]);
        let b = Tensor::from_slice(&[0.0f32, 3., 0., 0., 1., 0., 0.]).reshape([1, 7]);
        // One score passes through as it is (a single teacher teaches exactly as before).
        assert_eq!(combine(&[a.shallow_clone()]), a);
        let mean = (a.softmax(-1, Kind::Float) + b.softmax(-1, Kind::Float)) / 2.0;
        let diff = (combine(&[a.shallow_clone(), b.shallow_clone()]).exp() - mean).abs().max().double_value(&[]);
        assert!(diff < 1e-6, "{diff}");
        // A member sure of one class (zero probability elsewhere in f32) leaves no -inf behind.
        let sure = Tensor::from_slice(&[500.0f32, 0., 0., 0., 0., 0., 0.]).reshape([1, 7]);
        let both = combine(&[sure.shallow_clone(), sure]);
        assert!(both.isfinite().all().int64_value(&[]) == 1, "{both}");
        assert!((both.double_value(&[0, 1]) + 500.0).abs() < 1e-3);
    }

    #[test]
    fn scores_known_logits() {
        // Three faces: two right (classes 0 and 3), one class-3 face called class 0.
        let logits = Tensor::from_slice(&[
            5.0f32, 0., 0., 0., 0., 0., 0., //
            0., 0., 0., 5., 0., 0., 0., //
            5., 0., 0., 0., 0., 0., 0.,
        ])
        .reshape([3, 7]);
        let e = evaluate(&logits, &[0, 3, 3]);
        assert!((e.accuracy - 2.0 / 3.0).abs() < 1e-9);
        assert_eq!(e.confusion[3][0], 1);
        assert_eq!(e.confusion[0][0], 1);
        assert!((e.per_class[0].precision - 0.5).abs() < 1e-9);
        assert!((e.per_class[3].recall - 0.5).abs() < 1e-9);
        assert!((e.per_class[3].precision - 1.0).abs() < 1e-9);
        // Cross-entropy is the mean over the three faces.
        let p_right = (5f64.exp()) / (5f64.exp() + 6.0);
        let expect = -(2.0 * p_right.ln() + (1.0 / (5f64.exp() + 6.0)).ln()) / 3.0;
        assert!((e.loss - expect).abs() < 1e-5, "{} vs {expect}", e.loss);
        assert_eq!(e.unseen, None, "no twin information, no leak-aware score");

        // The same faces, the first (right) one with a twin in Training: 1 of the other 2 right.
        let faces = Faces { pixels: vec![0; 3 * crate::data::PIXELS], labels: vec![0, 3, 3], twin_in_training: vec![true, false, false] };
        let e = evaluate_faces(&logits, &faces);
        assert!((e.accuracy - 2.0 / 3.0).abs() < 1e-9);
        assert_eq!(e.unseen, Some(UnseenScore { faces: 2, accuracy: 0.5 }));
        assert!(e.tables().contains("50.00% on the 2 faces"), "{}", e.tables());
    }
}
