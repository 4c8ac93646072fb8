//! One config object per experiment, read from a TOML file (see `configs/`).

use serde::{Deserialize, Serialize};
use std::path::Path;

use crate::nn::model::{named, ConvNet, Layer, NAMED};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The run's name: its folder is `runs/<name>/`.
    pub name: String,
    #[serde(default)]
    pub seed: u64,
    pub model: ModelConfig,
    #[serde(default)]
    pub train: TrainConfig,
    #[serde(default)]
    pub augment: AugmentConfig,
}

/// A named network (`baseline`, `mobile`, `vgg`, `resnet`), a `[model.convnet]` family
/// member, or an explicit list of layers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub convnet: Option<ConvNet>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers: Option<Vec<Layer>>,
}

/// The run or model folder a distilled run learns from, or several taught as an ensemble
/// (their mean probabilities, as `fer eval` scores an ensemble).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Teacher {
    One(String),
    Ensemble(Vec<String>),
}

impl Teacher {
    /// One path is one teacher, several an ensemble.
    pub fn new(mut paths: Vec<String>) -> Option<Teacher> {
        match paths.len() {
            0 => None,
            1 => paths.pop().map(Teacher::One),
            _ => Some(Teacher::Ensemble(paths)),
        }
    }

    pub fn paths(&self) -> &[String] {
        match self {
            Teacher::One(path) => std::slice::from_ref(path),
            Teacher::Ensemble(paths) => paths,
        }
    }
}

impl std::fmt::Display for Teacher {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(&self.paths().join(" + "))
    }
}

/// Test-time augmentation: extra views of each face whose predictions are averaged.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Tta {
    None,
    /// The face and its mirror image: 2 forward passes.
    Flip,
    /// Four corner crops and the centre, and their mirrors: 10 passes (needs input_size < 48).
    TenCrop,
    /// The face, and the face moved 2 pixels up-left and down-right (black coming in, as in the
    /// training crops' padding), each also mirrored: 6 passes (airbench's TTA for CIFAR-10).
    FlipShift,
}

impl std::fmt::Display for Tta {
    /// As on the command line: none, flip, ten-crop, flip-shift.
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        let value = clap::ValueEnum::to_possible_value(self).expect("every kind has a name");
        f.write_str(value.get_name())
    }
}

impl Tta {
    /// Whether a model that sees `side` x `side` crops of the face can take these views: ten
    /// crops of the whole face would all be the same one.
    pub fn check_input(self, side: usize) -> anyhow::Result<()> {
        anyhow::ensure!(
            self != Tta::TenCrop || side < crate::data::SIDE,
            "ten-crop test-time augmentation needs a model trained on crops smaller than the face (input_size under 48, not {side})"
        );
        Ok(())
    }

    pub fn views(self) -> usize {
        match self {
            Tta::None => 1,
            Tta::Flip => 2,
            Tta::TenCrop => 10,
            Tta::FlipShift => 6,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    F32,
    Bf16,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerKind {
    Adam,
    Adamw,
    Sgd,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Epochs to train; with a time budget, the most it may train.
    pub epochs: usize,
    /// Train to wall time instead (minutes, 0 = off): the schedule is laid over the budget, so
    /// it ends where the budget does on any machine (or at `epochs`, if that comes first).
    /// Every PublicTest evaluation counts against it.
    pub time_budget_minutes: f64,
    /// Score PublicTest only from this fraction of the run on (by epochs, or time with a
    /// budget; 0 = every epoch). The last epoch is always scored. Early in a one-cycle run the
    /// best epoch is never chosen, so its evaluations are time a budget can train with
    /// instead; schedules and stopping rules that read every epoch's score refuse it.
    pub eval_from: f64,
    pub batch_size: usize,
    pub optimizer: OptimizerKind,
    pub lr: f64,
    pub weight_decay: f64,
    /// SGD momentum.
    pub momentum: f64,
    pub nesterov: bool,
    /// Batch size for validation and test passes (no gradients, so it can be large).
    pub eval_batch_size: usize,
    pub schedule: Schedule,
    /// Soft targets: (1 - s) on the label, s spread over all classes.
    pub label_smoothing: f64,
    /// Focal loss exponent (0 = plain cross-entropy).
    pub focal_gamma: f64,
    /// Weight classes by inverse frequency in Training.
    pub class_weighted: bool,
    /// Stop when PublicTest accuracy has not improved for this many epochs (0 = never).
    pub early_stopping_patience: usize,
    /// Clip the gradients' total norm to this (0 = no clipping).
    pub grad_clip: f64,
    /// Side of the square the network sees: 48, or less for random crops in training and
    /// a centre crop (or ten crops) at test time.
    pub input_size: usize,
    /// Extra test-time views, scored separately from the single pass.
    pub tta: Tta,
    /// Gaussian blur (sigma in pixels) applied to every face at evaluation and prediction
    /// (0 = none): matches sharp test faces to blurred training faces (see `fer data stats`).
    pub eval_blur: f64,
    /// When the run ends, score the best checkpoint on PublicTest at each of these blurs and
    /// keep the best (before PrivateTest is scored); empty = keep `eval_blur`.
    pub eval_blur_choices: Vec<f64>,
    /// Arithmetic of training: `f32`, or `bf16` mixed precision (convolutions and linear layers
    /// in bfloat16, everything else and the weights in f32; fast where the CPU has AMX or
    /// AVX512-BF16). Evaluation is always f32.
    pub precision: Precision,
    /// Knowledge distillation: a trained run or model folder whose softened outputs the
    /// network also learns from, or a list of them taught as an ensemble (unset = no
    /// distillation).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub teacher: Option<Teacher>,
    /// Stochastic weight averaging: from this epoch on (0 = never), the mean of the weights at
    /// each epoch's end is kept; when the run ends it is scored on PublicTest, its batch-norm
    /// statistics recomputed over Training, and takes the best epoch's place if it does better.
    pub average_from: usize,
    /// An exponential moving average of the weights, updated after every step with this decay
    /// (0 = off; 0.99 averages over about 100 steps). Each epoch scores it on PublicTest beside
    /// the weights themselves, and the better of the two is that epoch's candidate.
    pub ema_decay: f64,
    /// Progressive resizing: the faces are seen smaller early in training, where an epoch costs
    /// less (`{ start = 32, until = 0.5 }`: from 32x32 to `input_size` by half the run).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progressive_resize: Option<ProgressiveResize>,
    /// The teachers also see each face mirrored, and teach the mean of the two views: a more
    /// accurate target, the same for a face and its mirror image (twice their cost).
    pub teacher_flip: bool,
    /// The teachers score every view a face can be given (every crop and mirror image) once,
    /// before training, and keep the scores in `runs/teacher-cache/`; training looks them up
    /// instead of running the teachers (see `train/teacher_cache.rs`). Needs an augmentation
    /// of crops and flips alone, at full size.
    pub teacher_cache: bool,
    /// Softmax temperature of the distillation term.
    pub distill_temperature: f64,
    /// Weight of the distillation term; the label loss gets 1 minus this.
    pub distill_weight: f64,
    /// The first convolution starts as the whitening of Training's patches (airbench's first
    /// layer: the patches' principal directions and their negatives, each scaled to unit
    /// variance) and is not trained; see `train/whiten.rs`.
    pub whiten_stem: bool,
}

impl Default for TrainConfig {
    /// The notebook's recipe: Adam lr 1e-3, batch 400, 10 epochs.
    fn default() -> Self {
        TrainConfig {
            epochs: 10,
            time_budget_minutes: 0.0,
            eval_from: 0.0,
            batch_size: 400,
            optimizer: OptimizerKind::Adam,
            lr: 1e-3,
            weight_decay: 0.0,
            momentum: 0.9,
            nesterov: false,
            eval_batch_size: 1000,
            schedule: Schedule::Constant,
            label_smoothing: 0.0,
            focal_gamma: 0.0,
            class_weighted: false,
            early_stopping_patience: 0,
            grad_clip: 0.0,
            input_size: 48,
            tta: Tta::None,
            eval_blur: 0.0,
            eval_blur_choices: Vec::new(),
            precision: Precision::F32,
            teacher: None,
            average_from: 0,
            ema_decay: 0.0,
            progressive_resize: None,
            teacher_flip: false,
            teacher_cache: false,
            distill_temperature: 4.0,
            distill_weight: 0.5,
            whiten_stem: false,
        }
    }
}

/// Training faces resized from `start` pixels square, growing linearly to the input size over
/// the first `until` of the run (by progress: epochs, or time with a budget).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProgressiveResize {
    pub start: usize,
    pub until: f64,
}

impl ProgressiveResize {
    /// The side at `fraction` of the run, in steps of 4 pixels, for inputs of `side`.
    pub fn side_at(&self, fraction: f64, side: usize) -> usize {
        let t = if self.until > 0.0 { (fraction / self.until).clamp(0.0, 1.0) } else { 1.0 };
        let grown = self.start as f64 + (side as f64 - self.start as f64) * t;
        ((grown / 4.0).round() as usize * 4).clamp(self.start.min(side), side)
    }
}

impl Config {
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", path.display()))?;
        Config::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<Config> {
        let config: Config = toml::from_str(text)?;
        config.layers()?;
        anyhow::ensure!(config.train.batch_size > 0 && config.train.eval_batch_size > 0, "batch sizes must be positive");
        let t = &config.train;
        anyhow::ensure!(t.epochs > 0, "epochs must be at least 1");
        anyhow::ensure!((0.0..=1.0).contains(&t.distill_weight), "distill_weight {} must be between 0 and 1", t.distill_weight);
        anyhow::ensure!(t.eval_blur >= 0.0 && t.eval_blur_choices.iter().all(|&s| s >= 0.0), "blur sigmas must not be negative");
        anyhow::ensure!(t.average_from <= t.epochs, "average_from {} is past the last epoch ({})", t.average_from, t.epochs);
        anyhow::ensure!(t.time_budget_minutes >= 0.0 && t.time_budget_minutes.is_finite(), "time_budget_minutes must be a positive number of minutes (or 0 for none)");
        anyhow::ensure!((0.0..1.0).contains(&t.eval_from), "eval_from {} must be at least 0 and below 1 (the last epoch is always scored)", t.eval_from);
        anyhow::ensure!(
            t.eval_from == 0.0 || (t.early_stopping_patience == 0 && !matches!(t.schedule, Schedule::Plateau { .. })),
            "eval_from {}: early stopping and the plateau schedule read PublicTest after every epoch; set eval_from = 0 to use them",
            t.eval_from
        );
        anyhow::ensure!((0.0..1.0).contains(&t.ema_decay), "ema_decay {} must be at least 0 and below 1", t.ema_decay);
        if let Some(r) = t.progressive_resize {
            anyhow::ensure!(
                (8..=t.input_size).contains(&r.start) && (0.0..=1.0).contains(&r.until),
                "progressive_resize: start {} must be between 8 and input_size ({}), until {} between 0 and 1",
                r.start,
                t.input_size,
                r.until
            );
        }
        anyhow::ensure!(t.distill_temperature > 0.0, "distill_temperature must be positive");
        anyhow::ensure!(t.teacher.as_ref().is_none_or(|t| !t.paths().is_empty()), "teacher: an empty list; leave it out to train without one");
        anyhow::ensure!(!t.teacher_flip || t.teacher.is_some(), "teacher_flip needs a teacher (train.teacher)");
        if t.teacher_cache {
            anyhow::ensure!(t.teacher.is_some(), "teacher_cache needs a teacher (train.teacher)");
            let a = &config.augment;
            let other = [
                ("augment.rotate_degrees", a.rotate_degrees),
                ("augment.scale", a.scale),
                ("augment.shift", a.shift),
                ("augment.brightness", a.brightness),
                ("augment.contrast", a.contrast),
                ("augment.erasing", a.erasing),
                ("augment.mixup_alpha", a.mixup_alpha),
                ("augment.cutmix_alpha", a.cutmix_alpha),
            ];
            let mut uncached: Vec<String> = other.iter().filter(|(_, v)| *v != 0.0).map(|(k, v)| format!("{k} = {v}")).collect();
            if t.input_size != crate::data::SIDE {
                uncached.push(format!("train.input_size = {}", t.input_size));
            }
            if t.progressive_resize.is_some() {
                uncached.push("train.progressive_resize".into());
            }
            anyhow::ensure!(
                uncached.is_empty(),
                "teacher_cache keeps the teachers' scores for each crop and mirror image of a 48x48 face, and this recipe makes other views too ({}): turn those off, or teacher_cache",
                uncached.join(", ")
            );
        }
        if t.whiten_stem {
            crate::nn::model::stem(&config.layers()?)?;
        }
        Ok(config)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a config always serialises")
    }

    /// A config that trains the named network with the default recipe.
    pub fn for_network(network: &str) -> Config {
        Config {
            name: network.to_string(),
            seed: 0,
            model: ModelConfig { network: Some(network.to_string()), convnet: None, layers: None },
            train: TrainConfig::default(),
            augment: AugmentConfig::default(),
        }
    }

    /// The network's layers, checked to fit together.
    pub fn layers(&self) -> anyhow::Result<Vec<Layer>> {
        let layers = match (&self.model.network, &self.model.convnet, &self.model.layers) {
            (Some(name), None, None) => named(name)
                .ok_or_else(|| anyhow::anyhow!("unknown network `{name}` (known: {})", NAMED.join(", ")))?,
            (None, Some(convnet), None) => convnet.layers(),
            (None, None, Some(layers)) => layers.clone(),
            _ => anyhow::bail!("[model] needs exactly one of `network`, `convnet` or `layers`"),
        };
        let side = self.train.input_size;
        anyhow::ensure!((8..=48).contains(&side), "input_size {side} must be between 8 and 48");
        self.train.tta.check_input(side)?;
        let shapes = crate::nn::model::shapes_at(&layers, side as i64)?;
        if let Some(r) = self.train.progressive_resize.filter(|r| (8..side).contains(&r.start)) {
            // Smaller faces must reach the first linear layer as the same number of features.
            let small = crate::nn::model::shapes_at(&layers, r.start as i64);
            let same_features = small.is_ok_and(|small| {
                small.iter().zip(&shapes).all(|((a, _), (b, _))| !matches!(b, crate::nn::model::Shape::Flat(_)) || a == b)
            });
            anyhow::ensure!(
                same_features,
                "progressive_resize: this network cannot take {0}x{0} faces the way it takes {side}x{side} ones (it needs global pooling before its linear layers)",
                r.start
            );
        }
        Ok(layers)
    }
}

/// Every augmentation is off by default.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AugmentConfig {
    /// Random crop with this much zero padding on each side (torchvision's RandomCrop(48, p)).
    pub crop_padding: usize,
    /// Mirror left-right with probability 1/2.
    pub hflip: bool,
    /// Random rotation in ±degrees.
    pub rotate_degrees: f64,
    /// Random scale in 1 ± scale.
    pub scale: f64,
    /// Random shift in ± this fraction of the side.
    pub shift: f64,
    /// Brightness factor in 1 ± brightness.
    pub brightness: f64,
    /// Contrast factor in 1 ± contrast (around the face's mean).
    pub contrast: f64,
    /// Probability of random erasing (a rectangle of 2-33% of the face set to 0 after scaling).
    pub erasing: f64,
    /// Mixup: blend pairs of faces and their labels with weight ~ Beta(alpha, alpha).
    pub mixup_alpha: f64,
    /// CutMix: paste a box from another face, labels blended by area, ratio ~ Beta(alpha, alpha).
    pub cutmix_alpha: f64,
}

/// Learning-rate schedules. Step, cosine and one-cycle are functions of progress; the plateau
/// schedule reacts to PublicTest accuracy and keeps its state in the run's checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Schedule {
    Constant,
    /// Multiply by `gamma` every `every` epochs.
    Step { every: usize, #[serde(default = "half")] gamma: f64 },
    /// Linear warm-up over `warmup_epochs`, then cosine decay to `min_lr`.
    Cosine {
        #[serde(default)]
        warmup_epochs: f64,
        #[serde(default)]
        min_lr: f64,
    },
    /// One-cycle (as PyTorch's OneCycleLR, cosine): up to lr over `pct_start`, then down.
    OneCycle {
        #[serde(default = "pct_start")]
        pct_start: f64,
        #[serde(default = "div_factor")]
        div_factor: f64,
        #[serde(default = "final_div_factor")]
        final_div_factor: f64,
    },
    /// Up in a straight line from `base x start_factor` to `base` over the first `warmup` of
    /// the run, then straight down to zero at its end: the speedruns' triangle.
    Linear {
        #[serde(default = "linear_warmup")]
        warmup: f64,
        #[serde(default = "start_factor")]
        start_factor: f64,
    },
    /// Multiply by `factor` when PublicTest accuracy has not improved for `patience` epochs.
    Plateau {
        #[serde(default = "patience")]
        patience: usize,
        #[serde(default = "half")]
        factor: f64,
        #[serde(default)]
        min_lr: f64,
    },
}

fn half() -> f64 {
    0.5
}
fn pct_start() -> f64 {
    0.3
}
fn linear_warmup() -> f64 {
    0.2
}
fn start_factor() -> f64 {
    0.1
}
fn div_factor() -> f64 {
    25.0
}
fn final_div_factor() -> f64 {
    1e4
}
fn patience() -> usize {
    2
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule::Constant
    }
}
