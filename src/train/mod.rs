//! The training loop: shuffled mini-batches over Training, exact validation on PublicTest
//! after each epoch, metrics and checkpoints as it goes, resume after a kill, and one final
//! PrivateTest score for the weights best on PublicTest (the best epoch's, or their mean over
//! the last epochs where the config keeps one and it does better).

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use tch::nn::ModuleT;
use tch::{Device, Kind, Tensor};

use crate::config::{Config, Schedule, Tta};
use crate::data::{write_atomic, Dataset, Faces, Split, NUM_CLASSES};
use crate::nn::score::combine;
use crate::nn::model::{copy_named, param_count, save_atomic, Trained};
use crate::record::{machine_name, AverageScore, BlurScore, EpochMetrics, Summary};
use augment::epoch_batches;
use average::WeightAverage;
use ema::Ema;
use loss::Loss;
use optim::Optimizer;
use teacher_cache::TeacherCache;

pub mod augment;
pub mod average;
pub mod ema;
pub mod loss;
pub mod optim;
pub mod teacher_cache;
pub mod whiten;

/// What `last.json` records: enough to resume exactly.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct RunState {
    epochs_done: usize,
    optimizer_steps: i64,
    checkpoint: String,
    best_val_acc: f64,
    best_epoch: usize,
    history: Vec<EpochMetrics>,
    /// The plateau schedule's current rate and epochs without a PublicTest gain.
    #[serde(default)]
    plateau_lr: f64,
    #[serde(default)]
    plateau_bad_epochs: usize,
    #[serde(default)]
    stopped_early: bool,
    /// Epochs folded into the weight average (`average_from`); the mean is in the checkpoint.
    #[serde(default)]
    averaged_epochs: usize,
    /// The best epoch's weights are the weight EMA's (`ema_decay`), not the weights themselves.
    #[serde(default)]
    best_is_ema: bool,
    /// The time budget ran out (`time_budget_minutes`): the run is complete.
    #[serde(default)]
    budget_spent: bool,
    /// The best candidate's weights as committed with this state (`best-NNNN.safetensors`);
    /// `best.safetensors` is published from it once the state is down.
    #[serde(default)]
    best_weights: String,
}

pub struct TrainOptions {
    pub runs_dir: PathBuf,
    pub resume: bool,
    /// Start over even if the run folder holds an earlier run.
    pub fresh: bool,
    pub device: Device,
    /// Stop after this many epochs in this call (the run stays resumable); for tests.
    pub stop_after: Option<usize>,
    pub quiet: bool,
    /// Where the run's seconds come from (the wall, outside tests).
    pub clock: Clock,
}

/// Where a run's seconds come from: what its time budget, its epochs' `seconds` and its
/// evaluations' are measured in. The wall, except in tests, where `Steps(s)` moves `s` seconds
/// at each training step and not otherwise, so that a budget ends at the same step however
/// loaded the machine. `FER_CLOCK_STEP_SECONDS=s` sets it for a whole process (the command-line
/// tests), as `FER_CRASH_AT` sets crash points.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Clock {
    #[default]
    Wall,
    Steps(f64),
}

impl Clock {
    fn from_env() -> Clock {
        match std::env::var("FER_CLOCK_STEP_SECONDS").ok().and_then(|s| s.parse::<f64>().ok()) {
            Some(s) => Clock::Steps(s),
            None => Clock::Wall,
        }
    }
}

/// A run's seconds since this call began, on its [`Clock`].
struct Stopwatch {
    clock: Clock,
    start: Instant,
    steps: u64,
}

impl Stopwatch {
    fn new(clock: Clock) -> Stopwatch {
        Stopwatch { clock, start: Instant::now(), steps: 0 }
    }

    fn now(&self) -> f64 {
        match self.clock {
            Clock::Wall => self.start.elapsed().as_secs_f64(),
            Clock::Steps(s) => self.steps as f64 * s,
        }
    }

    fn step(&mut self) {
        self.steps += 1;
    }
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            runs_dir: PathBuf::from("runs"),
            resume: false,
            fresh: false,
            device: Device::Cpu,
            stop_after: None,
            quiet: false,
            clock: Clock::from_env(),
        }
    }
}

/// A per-epoch seed, so a resumed epoch shuffles exactly as an uninterrupted one would.
fn epoch_seed(seed: u64, epoch: usize) -> u64 {
    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(epoch as u64 + 1)
}

/// What a budget holds back for the last evaluation, as a multiple of the one before.
const EVAL_MARGIN: f64 = 1.25;

/// The run's clock against `time_budget_minutes`: how many epochs the schedule spans.
struct Budget {
    /// The budget in seconds (0: none, the schedule spans `epochs`).
    seconds: f64,
    epochs: usize,
    /// Seconds of the finished epochs, PublicTest evaluations included.
    spent: f64,
    /// What the next evaluation will take, held back from the training steps' time.
    eval_seconds: f64,
    estimate: Option<f64>,
}

impl Budget {
    fn new(config: &Config, history: &[EpochMetrics]) -> Budget {
        Budget {
            seconds: config.train.time_budget_minutes * 60.0,
            epochs: config.train.epochs,
            spent: history.iter().map(|m| m.seconds).sum(),
            eval_seconds: EVAL_MARGIN * history.iter().rev().find_map(|m| m.eval_seconds).unwrap_or(0.0),
            estimate: None,
        }
    }

    /// The schedule's length in epochs, at `progress` epochs into the run and `in_epoch`
    /// seconds into this epoch: `epochs`, or with a budget the epochs it will hold at the pace
    /// so far (at most `epochs`); `None` once the budget is spent, keeping time for the
    /// evaluation that follows.
    fn total_epochs(&mut self, progress: f64, in_epoch: f64) -> Option<f64> {
        if self.seconds <= 0.0 {
            return Some(self.epochs as f64);
        }
        let spent = self.spent + in_epoch;
        let for_steps = self.seconds - self.eval_seconds;
        if spent >= for_steps {
            return None;
        }
        let total = match progress > 0.0 && spent > 0.0 {
            true => (progress * for_steps / spent).min(self.epochs as f64),
            false => self.epochs as f64,
        };
        self.estimate = Some(total);
        Some(total)
    }

    fn epoch_done(&mut self, metrics: &EpochMetrics) {
        self.spent += metrics.seconds;
        // A margin, as evaluations vary by a few tenths from one epoch to the next; an epoch
        // that skipped PublicTest (`eval_from`) leaves the last evaluation's time held back.
        if let Some(eval) = metrics.eval_seconds {
            self.eval_seconds = EVAL_MARGIN * eval;
        }
    }

    /// How far into the run `epoch` ends, `in_epoch` seconds into it: by time with a budget,
    /// else by epochs.
    fn fraction(&self, epoch: usize, in_epoch: f64) -> f64 {
        match self.seconds > 0.0 {
            true => (self.spent + in_epoch) / self.seconds,
            false => epoch as f64 / self.epochs as f64,
        }
    }

    /// `30`, or with a budget the estimate so far (`~9.4`).
    fn epochs_in_words(&self) -> String {
        match (self.seconds > 0.0, self.estimate) {
            (false, _) => self.epochs.to_string(),
            (true, Some(e)) => format!("~{e:.1}"),
            (true, None) => "?".into(),
        }
    }
}

/// Trains `config` on `data` and returns the finished run's summary.
pub fn train(config: &Config, data: &Dataset, opts: &TrainOptions) -> anyhow::Result<Summary> {
    let dir = opts.runs_dir.join(&config.name);
    let state_file = dir.join("last.json");
    if opts.fresh && dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    if state_file.exists() && !opts.resume {
        anyhow::bail!(
            "{} holds an earlier run: pass --resume to continue it, or --fresh to start over",
            dir.display()
        );
    }
    std::fs::create_dir_all(&dir)?;
    remove_partial_files(&dir)?;
    if opts.resume && state_file.exists() {
        check_same_recipe(config, &dir)?;
        if let Ok(bytes) = std::fs::read(dir.join("summary.json")) {
            // Finished: PrivateTest was scored; nothing is trained, chosen or written again.
            return Ok(serde_json::from_slice(&bytes)?);
        }
    } else {
        write_atomic(&dir.join("config.toml"), config.to_toml().as_bytes())?;
    }

    let train_faces = data.split(Split::Training);
    let val_faces = data.split(Split::PublicTest);
    anyhow::ensure!(!train_faces.is_empty(), "no Training faces in the data");
    anyhow::ensure!(!val_faces.is_empty(), "no PublicTest faces in the data");

    tch::manual_seed(config.seed as i64);
    let model = Trained::new(config, opts.device)?;
    if config.train.whiten_stem {
        whiten::whiten_stem(&model, &train_faces)?;
    }
    let mut optimizer = Optimizer::new(&model.vs, &config.train);
    let mut state = RunState::default();
    let mut average = WeightAverage::default();
    let mut ema = (config.train.ema_decay > 0.0).then(|| Ema::new(config, opts.device, &model)).transpose()?;
    if opts.resume && state_file.exists() {
        state = serde_json::from_slice(&std::fs::read(&state_file)?)?;
        // On the run's device: the weight average and the EMA keep these tensors as they are.
        let tensors: HashMap<String, Tensor> =
            Tensor::read_safetensors(dir.join(&state.checkpoint))?.into_iter().map(|(k, t)| (k, t.to_device(opts.device))).collect();
        copy_named(&model.vs, &tensors, "model.")?;
        optimizer.load_state(&tensors, state.optimizer_steps)?;
        average = WeightAverage::from_checkpoint(&tensors, state.averaged_epochs)?;
        if let Some(ema) = &mut ema {
            ema.load(&tensors)?;
        }
        if !opts.quiet {
            println!("resuming {} after epoch {}", config.name, state.epochs_done);
        }
    }
    // What a crash left that the state does not name goes, and the best weights it names are
    // the published ones.
    remove_stray_files(&dir, &state)?;
    publish_best(&dir, &state)?;
    // metrics.jsonl is rewritten from the state, dropping any line written after the checkpoint.
    let metrics_path = dir.join("metrics.jsonl");
    let lines: String = state.history.iter().map(|m| serde_json::to_string(m).unwrap() + "\n").collect();
    write_atomic(&metrics_path, lines.as_bytes())?;

    let mut teachers = load_teachers(config, opts.device)?;
    let cache = match config.train.teacher_cache {
        true => Some(TeacherCache::open_or_build(&teachers, &train_faces, &config.augment, config.train.teacher_flip, &opts.runs_dir, opts.device, opts.quiet)?),
        false => None,
    };
    if cache.is_some() {
        teachers.clear(); // the cache answers for them
    }
    let teacher_cache_seconds = cache.as_ref().map(|c| c.build_seconds);
    let counts = data.counts()[Split::Training as usize];
    let loss_fn = Loss::new(&config.train, &counts, opts.device);
    let train_faces = Arc::new(train_faces);
    let n = train_faces.len();
    let batch = config.train.batch_size;
    let batches = n.div_ceil(batch);
    let side = config.train.input_size;
    let schedule = &config.train.schedule;
    if state.plateau_lr == 0.0 {
        state.plateau_lr = config.train.lr;
    }
    let mut budget = Budget::new(config, &state.history);

    let last_epoch = match opts.stop_after {
        Some(k) => (state.epochs_done + k).min(config.train.epochs),
        None => config.train.epochs,
    };
    // Epochs are timed back to back, so each one's time holds the previous one's checkpoint.
    let mut watch = Stopwatch::new(opts.clock);
    let mut epoch_start = watch.now();
    for epoch in state.epochs_done + 1..=last_epoch {
        if state.stopped_early || state.budget_spent {
            break;
        }
        let started = epoch_start;
        tch::manual_seed(epoch_seed(config.seed, epoch) as i64);
        let mut order: Vec<i64> = (0..n as i64).collect();
        fastrand::Rng::with_seed(epoch_seed(config.seed, epoch)).shuffle(&mut order);
        let batches_rx = epoch_batches(train_faces.clone(), order, batch, side, config.augment.clone(), config.seed, epoch);

        let bar = crate::progress::bar(batches, &format!("epoch {epoch}/{}", budget.epochs_in_words()), opts.quiet);
        let (mut loss_sum, mut correct, mut seen) = (0.0, 0i64, 0usize);
        for (b, batch_data) in batches_rx.iter().enumerate() {
            let len = batch_data.len() as i64;
            let progress_epochs = (epoch - 1) as f64 + b as f64 / batches as f64;
            let Some(total) = budget.total_epochs(progress_epochs, watch.now() - started) else {
                state.budget_spent = true;
                break;
            };
            optimizer.lr = schedule.lr(config.train.lr, progress_epochs, total, state.plateau_lr);
            let mut xb = Tensor::from_slice(&batch_data.images).reshape([len, 1, side as i64, side as i64]).to_device(opts.device);
            if let Some(resize) = config.train.progressive_resize {
                let now = resize.side_at(progress_epochs / total, side) as i64;
                if now < side as i64 {
                    xb = xb.internal_upsample_bilinear2d_aa([now, now], false, None, None);
                }
            }
            let yb = Tensor::from_slice(&batch_data.labels).to_device(opts.device);
            let targets = Tensor::from_slice(&batch_data.targets).reshape([len, NUM_CLASSES as i64]).to_device(opts.device);
            let out = model.net.forward_t(&xb, true);
            let mut loss = loss_fn.soft(&out, &targets);
            let taught = match &cache {
                Some(cache) => Some(cache.teach(&batch_data.indices, &batch_data.views, config.train.teacher_flip).to_device(opts.device)),
                None => (!teachers.is_empty()).then(|| teach(&teachers, &xb, config.train.teacher_flip)),
            };
            if let Some(taught) = taught {
                let w = config.train.distill_weight;
                loss = loss * (1.0 - w) + Loss::distill(&out, &taught, config.train.distill_temperature) * w;
            }
            optimizer.zero_grad();
            loss.backward();
            if config.train.grad_clip > 0.0 {
                optimizer.clip_grad_norm(config.train.grad_clip);
            }
            optimizer.step();
            watch.step();
            if let Some(ema) = &mut ema {
                ema.update(optimizer.steps);
            }
            loss_sum += loss.double_value(&[]) * len as f64;
            correct += out.argmax(-1, false).eq_tensor(&yb).sum(Kind::Int64).int64_value(&[]);
            seen += len as usize;
            bar.set_position(b as u64 + 1);
            bar.set_message(format!(
                "loss {:.4} acc {:.1}% lr {:.2e} {:.0} img/s",
                loss_sum / seen as f64,
                100.0 * correct as f64 / seen as f64,
                optimizer.lr,
                seen as f64 / (watch.now() - started).max(1e-9)
            ));
        }
        bar.finish_and_clear();
        if seen == 0 && state.budget_spent {
            break; // the budget ran out before this epoch's first step
        }
        // A worker that died (a panic, printed above) ends the batches early: that epoch must
        // not be recorded as complete.
        anyhow::ensure!(
            seen == n || state.budget_spent,
            "epoch {epoch}: the augmentation worker stopped after {seen} of {n} faces (see the error above); rerun with --resume to redo the epoch"
        );

        // `eval_from` skips PublicTest early in the run; the last epoch is always scored. With a
        // budget, an epoch that leaves less than a tenth of itself is the last: a next one
        // would end before its first step, after an epoch that may not have been scored.
        let in_epoch = watch.now() - started;
        let skips = config.train.eval_from > 0.0;
        if skips && budget.total_epochs(epoch as f64, 1.1 * in_epoch).is_none() {
            state.budget_spent = true;
        }
        let scored = state.budget_spent || epoch == config.train.epochs || budget.fraction(epoch, in_epoch) >= config.train.eval_from;
        let eval_started = watch.now();
        let val = scored.then(|| model.evaluate(&val_faces));
        let ema_val = ema.as_ref().filter(|_| scored).map(|e| e.model.evaluate(&val_faces));
        let eval_seconds = scored.then(|| watch.now() - eval_started);
        epoch_start = watch.now();
        let metrics = EpochMetrics {
            epoch,
            train_loss: loss_sum / seen as f64,
            train_acc: correct as f64 / seen as f64,
            val_loss: val.as_ref().map(|v| v.loss),
            val_acc: val.as_ref().map(|v| v.accuracy),
            lr: optimizer.lr,
            seconds: epoch_start - started,
            eval_seconds,
            ema_val_acc: ema_val.as_ref().map(|e| e.accuracy),
            ema_val_loss: ema_val.as_ref().map(|e| e.loss),
            fraction: (seen < n).then(|| seen as f64 / n as f64),
        };
        if !opts.quiet {
            let val_words = match &val {
                Some(v) => format!("val loss {:.4} acc {:.2}%", v.loss, 100.0 * v.accuracy),
                None => "PublicTest not scored yet (eval_from)".into(),
            };
            let ema_words = ema_val.as_ref().map_or(String::new(), |e| format!("  EMA {:.2}%", 100.0 * e.accuracy));
            let partial = metrics.fraction.map_or(String::new(), |f| format!("  ({:.0}% of an epoch: the time budget is spent)", 100.0 * f));
            println!(
                "epoch {epoch:>3}/{}  train loss {:.4} acc {:.2}%  {val_words}{ema_words}  {:.0}s{partial}",
                budget.epochs_in_words(),
                metrics.train_loss,
                100.0 * metrics.train_acc,
                metrics.seconds
            );
        }

        // The best weights and the resumable checkpoint first, then the state naming both (the
        // commit point), then best.safetensors published from the committed best: a kill at
        // any point leaves `last.json` naming complete files, and a resume publishes again.
        if let Some(val_acc) = metrics.val_acc {
            let ema_better = metrics.ema_val_acc.is_some_and(|e| e > val_acc);
            let candidate = if ema_better { metrics.ema_val_acc.unwrap_or_default() } else { val_acc };
            if state.best_epoch == 0 || candidate > state.best_val_acc {
                state.best_val_acc = candidate;
                state.best_epoch = epoch;
                state.best_is_ema = ema_better;
                state.plateau_bad_epochs = 0;
                let best = format!("best-{epoch:04}.safetensors");
                match (&ema, ema_better) {
                    (Some(ema), true) => ema.model.save(&dir.join(&best))?,
                    _ => model.save(&dir.join(&best))?,
                }
                state.best_weights = best;
            } else {
                state.plateau_bad_epochs += 1;
                if let Schedule::Plateau { patience, factor, min_lr } = *schedule {
                    if state.plateau_bad_epochs > patience {
                        state.plateau_lr = (state.plateau_lr * factor).max(min_lr);
                        state.plateau_bad_epochs = 0;
                    }
                }
                let patience = config.train.early_stopping_patience;
                if patience > 0 && epoch - state.best_epoch >= patience {
                    state.stopped_early = true;
                    if !opts.quiet {
                        println!("early stop: no PublicTest gain for {patience} epochs (best epoch {})", state.best_epoch);
                    }
                }
            }
        }
        let average_from = config.train.average_from;
        if average_from > 0 && epoch >= average_from {
            average.add(&model.vs);
        }
        let checkpoint = format!("checkpoint-{epoch:04}.safetensors");
        let mut tensors: Vec<(String, Tensor)> =
            model.vs.variables().into_iter().map(|(k, v)| (format!("model.{k}"), v)).collect();
        tensors.extend(optimizer.state());
        tensors.extend(average.tensors());
        if let Some(ema) = &ema {
            tensors.extend(ema.tensors());
        }
        save_atomic(&dir.join(&checkpoint), |tmp| Ok(Tensor::write_safetensors(&tensors, tmp)?))?;
        state.checkpoint = checkpoint;
        state.epochs_done = epoch;
        state.optimizer_steps = optimizer.steps;
        state.averaged_epochs = average.epochs;
        budget.epoch_done(&metrics);
        state.history.push(metrics.clone());
        write_atomic(&state_file, &serde_json::to_vec_pretty(&state)?)?;
        if state.best_epoch == epoch {
            publish_best(&dir, &state)?;
        }
        remove_stray_files(&dir, &state)?;
        crate::record::append_json_line(&metrics_path, &metrics)?;
    }

    crate::plot::training_curves(&dir, &state.history)?;
    if state.epochs_done < config.train.epochs && !state.stopped_early && !state.budget_spent {
        anyhow::bail!("stopped after epoch {} of {}; continue with --resume", state.epochs_done, config.train.epochs);
    }
    anyhow::ensure!(
        state.best_epoch > 0,
        "no epoch of {} was scored on PublicTest (eval_from {} came after the budget's end): lower eval_from and train it again with --fresh",
        config.name,
        config.train.eval_from
    );
    finish(config, data, &dir, &state, &average, teacher_cache_seconds, opts)
}

/// The trained models a distilled run learns from (none, one, or an ensemble), each checked
/// to see the same input. Their forward passes are most of a distilled epoch, so they run as
/// they ship: batch norm folded, convolutions in bfloat16 (the accurate network: 53 ms a batch
/// of 128 on 2 cores against 96 in f32; on PublicTest the three accurate runs' soft targets at
/// temperature 4 move by at most 7e-3, their labels stay on 99.6% of the faces).
fn load_teachers(config: &Config, device: Device) -> anyhow::Result<Vec<Trained>> {
    let paths = config.train.teacher.as_ref().map_or(&[][..], |t| t.paths());
    paths
        .iter()
        .map(|path| {
            let named = |e: anyhow::Error| anyhow::anyhow!("teacher {path}: {e}");
            let teacher = Trained::load(Path::new(path), device).map_err(named)?;
            let (want, got) = (config.train.input_size, teacher.config.train.input_size);
            anyhow::ensure!(want == got, "teacher {path} takes {got}x{got} inputs, this run {want}x{want}");
            let mut teacher = crate::nn::export::fold(&teacher).map_err(named)?;
            teacher.net.bf16_inference = true;
            Ok(teacher)
        })
        .collect()
}

/// What the teachers teach for a batch: the [`combine`]d scores of every teacher, over the batch
/// and, with `flip`, its mirror image too.
pub fn teach(teachers: &[Trained], xb: &Tensor, flip: bool) -> Tensor {
    let views = if flip { vec![xb.shallow_clone(), xb.flip([3])] } else { vec![xb.shallow_clone()] };
    tch::no_grad(|| combine(&teachers.iter().flat_map(|t| views.iter().map(|v| t.net.forward_t(v, false))).collect::<Vec<_>>()))
}

/// A resumed run must go on with the recipe it began with: its record claims one recipe for
/// every epoch. Only what `finish` chooses after training (the evaluation blur) may differ.
fn check_same_recipe(config: &Config, dir: &Path) -> anyhow::Result<()> {
    let path = dir.join("config.toml");
    let text = std::fs::read_to_string(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let mut before = Config::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    before.train.eval_blur = config.train.eval_blur;
    let (old, new) = (toml::Value::try_from(&before)?, toml::Value::try_from(config)?);
    let mut changes = Vec::new();
    differences("", &old, &new, &mut changes);
    anyhow::ensure!(
        changes.is_empty(),
        "{} was trained with another recipe than the one given now ({}): resuming would mix the two under one record. Start it over with --fresh, or give the new recipe another name",
        dir.display(),
        changes.join("; ")
    );
    Ok(())
}

/// `key: old -> new` for every leaf where two TOML values differ.
fn differences(key: &str, old: &toml::Value, new: &toml::Value, out: &mut Vec<String>) {
    match (old, new) {
        (toml::Value::Table(a), toml::Value::Table(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for k in keys {
                let sub = if key.is_empty() { k.clone() } else { format!("{key}.{k}") };
                match (a.get(k), b.get(k)) {
                    (Some(x), Some(y)) => differences(&sub, x, y, out),
                    (x, y) => out.push(format!("{sub}: {} -> {}", x.map_or("unset".into(), |v| v.to_string()), y.map_or("unset".into(), |v| v.to_string()))),
                }
            }
        }
        (a, b) if a != b => out.push(format!("{key}: {a} -> {b}")),
        _ => {}
    }
}

/// Drops what a killed run was in the middle of writing (temporary and partial files).
/// Makes `best.safetensors` the committed best weights that `state` names.
fn publish_best(dir: &Path, state: &RunState) -> anyhow::Result<()> {
    if state.best_weights.is_empty() {
        return Ok(()); // a run from before best weights were committed with the state
    }
    let from = dir.join(&state.best_weights);
    crate::data::copy_durably(&from, &dir.join("best.safetensors")).map_err(|e| anyhow::anyhow!("{}: {e}", from.display()))
}

/// Checkpoints and best weights that `state` does not name: older ones, and those of an epoch
/// a crash cut short before its state was down.
fn remove_stray_files(dir: &Path, state: &RunState) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
        let kept = name == state.checkpoint || name == state.best_weights;
        let numbered = |prefix: &str| name.starts_with(prefix) && name.ends_with(".safetensors");
        if !kept && (numbered("checkpoint-") || numbered("best-")) {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

fn remove_partial_files(dir: &Path) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if name.ends_with(".partial.safetensors") || name.starts_with(".tmp") {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

/// What a run chose on PublicTest alone: the weights (now in `best.safetensors`), the blur
/// (in `config.toml`), and their PublicTest (accuracy, loss).
struct Choice {
    model: Trained,
    val: (f64, f64),
    average: Option<AverageScore>,
    blur_sweep: Vec<BlurScore>,
}

/// Picks the weights on PublicTest (the best epoch's, or the weight average) and the blur. It is
/// given PublicTest and, where the run kept a weight average, Training (for its batch-norm
/// statistics) only, so no choice can read PrivateTest.
fn choose(config: &Config, training: Option<&Faces>, val_faces: &Faces, dir: &Path, state: &RunState, average: &WeightAverage, opts: &TrainOptions) -> anyhow::Result<Choice> {
    let best = &state.history[state.best_epoch - 1];
    // (accuracy, loss) on PublicTest of the weights the scores use.
    let mut val = match (state.best_is_ema, best.ema_val_acc, best.ema_val_loss) {
        (true, Some(acc), Some(loss)) => (acc, loss),
        _ => (best.val_acc.expect("the best epoch was scored"), best.val_loss.expect("the best epoch was scored")),
    };
    let best_val_acc = val.0;
    // The weight average, where the run kept one, takes the best epoch's place only if it does
    // better on PublicTest.
    let average = match training {
        None => None,
        Some(training) => {
            let epochs = average.epochs;
            let mean = average.model(config, opts.device, training)?;
            let eval = mean.evaluate(val_faces);
            let score = AverageScore {
                first_epoch: state.epochs_done + 1 - epochs,
                epochs,
                val_acc: eval.accuracy,
                val_loss: eval.loss,
                best_epoch_val_acc: best_val_acc,
                chosen: eval.accuracy > best_val_acc,
            };
            mean.save(&dir.join("averaged.safetensors"))?;
            if score.chosen {
                crate::data::copy_durably(&dir.join("averaged.safetensors"), &dir.join("best.safetensors"))?;
                val = (eval.accuracy, eval.loss);
            }
            if !opts.quiet {
                println!(
                    "{} of the weights: PublicTest {:.2}% against {:.2}% for epoch {}: {}",
                    score.in_words(),
                    100.0 * eval.accuracy,
                    100.0 * best_val_acc,
                    state.best_epoch,
                    if score.chosen { "the mean is kept" } else { "the best epoch is kept" }
                );
            }
            Some(score)
        }
    };
    let mut model = Trained::load(dir, opts.device)?;
    let blur_sweep: Vec<BlurScore> = config
        .train
        .eval_blur_choices
        .iter()
        .map(|&sigma| {
            model.config.train.eval_blur = sigma;
            BlurScore { sigma, val_acc: model.evaluate(val_faces).accuracy }
        })
        .collect();
    // The blur the scores use; ties go to the earlier choice.
    if let Some(chosen) = blur_sweep.iter().reduce(|a, b| if b.val_acc > a.val_acc { b } else { a }) {
        model.config.train.eval_blur = chosen.sigma;
        let eval = model.evaluate(val_faces);
        val = (eval.accuracy, eval.loss);
        write_atomic(&dir.join("config.toml"), model.config.to_toml().as_bytes())?;
    }
    Ok(Choice { model, val, average, blur_sweep })
}

/// Takes the run's choice on PublicTest ([`choose`]), then scores it on PrivateTest once, and
/// writes `summary.json`.
fn finish(config: &Config, data: &Dataset, dir: &Path, state: &RunState, average: &WeightAverage, teacher_cache_seconds: Option<f64>, opts: &TrainOptions) -> anyhow::Result<Summary> {
    let summary_path = dir.join("summary.json");
    if let Ok(bytes) = std::fs::read(&summary_path) {
        // PrivateTest was already scored for this run: never touch it again.
        return Ok(serde_json::from_slice(&bytes)?);
    }
    let val_faces = data.split(Split::PublicTest);
    let training = (average.epochs > 0).then(|| data.split(Split::Training));
    let Choice { model, val, average, blur_sweep } = choose(config, training.as_ref(), &val_faces, dir, state, average, opts)?;
    let config = &model.config;
    let test_faces = data.split(Split::PrivateTest);
    let test = model.evaluate(&test_faces);
    let flops = crate::nn::flops::count_config(config)?;
    let tta = config.train.tta;
    let tta = (tta != Tta::None).then(|| model.tta_score(&val_faces, &test_faces, tta)).transpose()?;
    let summary = Summary {
        name: config.name.clone(),
        seed: config.seed,
        epochs: state.epochs_done,
        best_epoch: state.best_epoch,
        val_acc: val.0,
        val_loss: val.1,
        test_acc: test.accuracy,
        test_loss: test.loss,
        test_acc_unseen: test.unseen.map(|u| u.accuracy),
        test_unseen_faces: test.unseen.map(|u| u.faces),
        params: param_count(&model.vs),
        fvcore_flops: flops.fvcore_total,
        efficiency: crate::nn::flops::efficiency(100.0 * test.accuracy, flops.fvcore_total),
        tta,
        eval_blur: config.train.eval_blur,
        blur_sweep,
        ema: state.best_is_ema && !average.as_ref().is_some_and(|a| a.chosen),
        average,
        train_seconds: state.history.iter().map(|m| m.seconds).sum(),
        teacher_cache_seconds,
        threads: tch::get_num_threads(),
        device: format!("{:?}", opts.device),
        machine: machine_name(),
    };
    write_atomic(&summary_path, &serde_json::to_vec_pretty(&summary)?)?;
    write_atomic(&dir.join("test_eval.txt"), test.tables().as_bytes())?;
    write_atomic(&dir.join("test_eval.json"), &serde_json::to_vec_pretty(&test)?)?;
    crate::plot::confusion_matrix(&dir.join("confusion_test.png"), &test, "PrivateTest")?;
    if !opts.quiet {
        println!(
            "{}: {} (PublicTest {:.2}%), PrivateTest {:.2}% ({:.2}% leak-aware), {:.4} GFLOPs, efficiency {:.1} %/GFLOP",
            config.name,
            summary.weights_in_words(),
            100.0 * summary.val_acc,
            100.0 * summary.test_acc,
            100.0 * summary.test_acc_unseen.unwrap_or(f64::NAN),
            flops.gflops(),
            summary.efficiency
        );
        if let Some(t) = &summary.tta {
            println!(
                "  with {:?} test-time augmentation ({} views): PrivateTest {:.2}% at {:.4} GFLOPs, efficiency {:.1} %/GFLOP",
                t.kind,
                t.views,
                100.0 * t.test_acc,
                t.fvcore_flops as f64 / 1e9,
                t.efficiency
            );
        }
    }
    Ok(summary)
}


#[cfg(test)]
mod tests {
    use super::*;

    fn metrics(seconds: f64, eval_seconds: f64) -> EpochMetrics {
        let m = EpochMetrics { epoch: 1, train_loss: 0.0, train_acc: 0.0, val_loss: Some(0.0), val_acc: Some(0.0), lr: 0.0, seconds, ..Default::default() };
        EpochMetrics { eval_seconds: Some(eval_seconds), ..m }
    }

    #[test]
    fn a_time_budget_spans_the_epochs_that_fit_and_keeps_time_for_the_last_evaluation() {
        let mut config = Config::for_network("baseline");
        config.train.epochs = 100;
        let mut none = Budget::new(&config, &[]);
        assert_eq!(none.total_epochs(3.5, 1e9), Some(100.0), "without a budget the schedule spans the epochs");
        config.train.time_budget_minutes = 10.0;
        // Resumed after two 60-second epochs, each with 4 seconds of evaluation: 595 seconds
        // are left for steps (600 minus 1.25 x the next evaluation), at 1 epoch a minute.
        let history = [metrics(60.0, 4.0), metrics(60.0, 4.0)];
        let mut clock = Budget::new(&config, &history);
        assert_eq!(clock.total_epochs(0.0, 0.0), Some(100.0), "no pace yet: any length starts alike");
        assert!((clock.total_epochs(2.5, 30.0).unwrap() - 9.916_666).abs() < 1e-4);
        assert_eq!(clock.epochs_in_words(), "~9.9");
        assert!(clock.total_epochs(9.9, 474.9).is_some());
        assert_eq!(clock.total_epochs(9.9, 475.0), None, "spent: 120 + 475 = 595 seconds");
        // A cap of 5 epochs comes first on a fast machine.
        config.train.epochs = 5;
        let mut capped = Budget::new(&config, &history);
        assert_eq!(capped.total_epochs(2.5, 30.0), Some(5.0));
        // A slower evaluation holds back more of the budget: 600 - 180 spent - 1.25 x 16 = 400 left.
        capped.epoch_done(&metrics(60.0, 16.0));
        assert!(capped.total_epochs(3.0, 399.9).is_some());
        assert_eq!(capped.total_epochs(3.0, 400.0), None);
    }
}
