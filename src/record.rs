//! The records of a run, shared by every layer above the data: one line of `metrics.jsonl` per
//! epoch, and `summary.json` when it finishes (read by the report, the plots, export and the FLOP
//! table).

use serde::{Deserialize, Serialize};

use crate::config::Tta;

/// Appends `value` to a JSON-lines record (`metrics.jsonl`, a teacher cache's `build.jsonl`).
pub fn append_json_line(path: &std::path::Path, value: &impl Serialize) -> anyhow::Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new().append(true).create(true).open(path)?;
    writeln!(file, "{}", serde_json::to_string(value)?)?;
    Ok(())
}

/// One line of `metrics.jsonl`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    pub epoch: usize,
    pub train_loss: f64,
    pub train_acc: f64,
    /// PublicTest at the epoch's end; none where `eval_from` skipped it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_acc: Option<f64>,
    pub lr: f64,
    /// Wall time of the epoch, its PublicTest evaluations included.
    pub seconds: f64,
    /// Of which the PublicTest evaluations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_seconds: Option<f64>,
    /// The weight EMA (`ema_decay`) on PublicTest at the epoch's end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ema_val_acc: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ema_val_loss: Option<f64>,
    /// The share of Training the epoch saw, where a time budget ended it early.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fraction: Option<f64>,
}

/// Both test splits scored with test-time augmentation, reported apart from the single pass:
/// its FLOPs count every view.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TtaScore {
    pub kind: Tta,
    pub views: usize,
    pub val_acc: f64,
    pub test_acc: f64,
    #[serde(default)]
    pub test_acc_unseen: Option<f64>,
    pub fvcore_flops: i64,
    pub efficiency: f64,
}

/// PublicTest accuracy at one evaluation blur (`eval_blur_choices`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BlurScore {
    pub sigma: f64,
    pub val_acc: f64,
}

/// The weight average of a run's last `epochs` epochs, from `first_epoch`, on PublicTest.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AverageScore {
    pub first_epoch: usize,
    pub epochs: usize,
    pub val_acc: f64,
    pub val_loss: f64,
    /// What it was measured against: the best epoch's PublicTest accuracy.
    pub best_epoch_val_acc: f64,
    pub chosen: bool,
}

impl AverageScore {
    pub fn last_epoch(&self) -> usize {
        self.first_epoch + self.epochs - 1
    }

    /// "the mean of epochs 76-100", for a sentence.
    pub fn in_words(&self) -> String {
        format!("the mean of epochs {}-{}", self.first_epoch, self.last_epoch())
    }
}

/// The finished run's record, `summary.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Summary {
    pub name: String,
    pub seed: u64,
    pub epochs: usize,
    pub best_epoch: usize,
    pub val_acc: f64,
    pub val_loss: f64,
    /// PrivateTest, measured once, on the weights best on PublicTest (the best epoch's, or the
    /// weight average where it did better).
    pub test_acc: f64,
    pub test_loss: f64,
    /// The leak-aware score: PrivateTest accuracy over the faces with no pixel-identical twin
    /// in Training (same single evaluation, a subset of its faces).
    #[serde(default)]
    pub test_acc_unseen: Option<f64>,
    #[serde(default)]
    pub test_unseen_faces: Option<usize>,
    pub params: i64,
    pub fvcore_flops: i64,
    /// test accuracy in % per fvcore GFLOP.
    pub efficiency: f64,
    /// Test-time augmentation, scored separately: the network runs once per view (the blur once).
    #[serde(default)]
    pub tta: Option<TtaScore>,
    /// The evaluation blur the scores use, and PublicTest at each candidate when it was chosen.
    #[serde(default)]
    pub eval_blur: f64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blur_sweep: Vec<BlurScore>,
    /// The mean of the late epochs' weights (`average_from`), scored on PublicTest against the
    /// best epoch; where `chosen`, it is the model the scores and the weights are of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub average: Option<AverageScore>,
    /// The scores are of the weight EMA (`ema_decay`) at the best epoch, which did better on
    /// PublicTest than the weights themselves.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ema: bool,
    /// The epochs' wall time, evaluations included.
    pub train_seconds: f64,
    /// With `train.teacher_cache`: what the teachers took to score every view once, not in
    /// `train_seconds` and shared by every student of the same teachers and views.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teacher_cache_seconds: Option<f64>,
    pub threads: i32,
    pub device: String,
    pub machine: String,
}

impl Summary {
    /// The weight average, where it is what the scores belong to.
    fn chosen_average(&self) -> Option<&AverageScore> {
        self.average.as_ref().filter(|a| a.chosen)
    }

    /// Which weights the scores belong to: the best epoch (`"79"`) or a mean (`"mean of 76-100"`).
    pub fn weights(&self) -> String {
        match self.chosen_average() {
            Some(a) => format!("mean of {}-{}", a.first_epoch, a.last_epoch()),
            None if self.ema => format!("EMA at {}", self.best_epoch),
            None => self.best_epoch.to_string(),
        }
    }

    /// The same in words, for a sentence: "best epoch 79" or "the mean of epochs 76-100".
    pub fn weights_in_words(&self) -> String {
        match self.chosen_average() {
            Some(a) => a.in_words(),
            None if self.ema => format!("the weight EMA at epoch {}", self.best_epoch),
            None => format!("best epoch {}", self.best_epoch),
        }
    }

    /// The epochs trained before those weights were complete.
    pub fn epochs_to_weights(&self) -> usize {
        self.chosen_average().map_or(self.best_epoch, AverageScore::last_epoch)
    }
}

/// The CPU model, for the record of where a run was timed.
pub fn machine_name() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string()))
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{cpu}, {} cores", std::thread::available_parallelism().map_or(0, |n| n.get()))
}
