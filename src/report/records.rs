//! The records as template values: a run's summary with what the report derives from it (its
//! methods, network, timing, per-class scores), model cards, JSON files, FLOP tables, seed noise
//! and ablations. Each loader names the file it could not read.

use serde_json::{json, Value};
use std::path::Path;

use super::{load_run, mean_std, network, Ablation, Noise, ReportInputs, Run};
use crate::config::{Config, OptimizerKind, Schedule};
use crate::nn::model::Attention;

/// The methods of the path from the baseline to the shipped models, read from a config: the
/// report's Y/N columns, so no row's marks are typed by hand.
pub fn methods(config: &Config) -> anyhow::Result<Value> {
    let layers = config.layers()?;
    fn any(layers: &[crate::nn::model::Layer], f: &dyn Fn(&crate::nn::model::Layer) -> bool) -> bool {
        use crate::nn::model::Layer;
        layers.iter().any(|l| {
            f(l) || match l {
                Layer::Residual { body } => any(body, f),
                _ => false,
            }
        })
    }
    use crate::nn::model::Layer;
    let convnet = config.model.convnet.as_ref();
    let (t, a) = (&config.train, &config.augment);
    Ok(json!({
        "global_pool": any(&layers, &|l| matches!(l, Layer::GlobalAvgPool)),
        "batch_norm": any(&layers, &|l| matches!(l, Layer::BatchNorm)),
        "crop_flip": a.crop_padding > 0 && a.hflip,
        "rotate_scale_erase": a.rotate_degrees > 0.0 && a.scale > 0.0 && a.erasing > 0.0,
        "label_smoothing": t.label_smoothing > 0.0,
        "adamw_cosine": t.optimizer == OptimizerKind::Adamw && matches!(t.schedule, Schedule::Cosine { .. }),
        "residual": any(&layers, &|l| matches!(l, Layer::Residual { .. })),
        "se": convnet.is_some_and(|c| c.attention == Attention::Se),
        "wide_deep": convnet.is_some_and(|c| c.blocks >= 2 && c.widths.first().is_some_and(|&w| w >= 32)),
        "dropout": convnet.is_some_and(|c| c.dropout > 0.0),
        "long": t.epochs >= 100 && t.time_budget_minutes == 0.0,
        "time_budget": t.time_budget_minutes > 0.0,
        "ema": t.ema_decay > 0.0,
        "progressive_resize": t.progressive_resize.is_some(),
        "distilled": t.teacher.is_some(),
        "mixup": a.mixup_alpha > 0.0,
        "full_res": convnet.is_some_and(|c| c.stem_stride == 1 && c.input_pool <= 1),
        "weight_average": t.average_from > 0,
        "bf16": t.precision == crate::config::Precision::Bf16,
    }))
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| anyhow::anyhow!("no record at {}: {e}", path.display()))
}

/// A run's record: `summary.json`'s fields, and `dir`, `config` (as a table), `methods`,
/// `network`, `weights` (in words), `median_epoch_seconds`, `seconds_to_weights`, `metrics`,
/// `per_class` and `confusion` (PrivateTest, where `test_eval.json` is there).
pub fn run_value(dir: &Path) -> anyhow::Result<Value> {
    let run = load_run(dir)?;
    run_json(&run)
}

pub fn run_json(run: &Run) -> anyhow::Result<Value> {
    let config = Config::parse(&run.config).map_err(|e| anyhow::anyhow!("{}: {e:#}", run.dir.join("config.toml").display()))?;
    let mut v = serde_json::to_value(&run.summary)?;
    let mut secs: Vec<f64> = run.metrics.iter().map(|m| m.seconds).collect();
    secs.sort_by(f64::total_cmp);
    let to_weights: f64 = run.metrics.iter().take(run.summary.epochs_to_weights()).map(|m| m.seconds).sum();
    let extra = json!({
        "dir": run.dir.display().to_string(),
        "config": serde_json::to_value(&config)?,
        "methods": methods(&config)?,
        "network": network(&config),
        "weights": run.summary.weights_in_words(),
        "epochs_run": run.metrics.len(),
        "median_epoch_seconds": secs.get(secs.len() / 2).copied().unwrap_or(0.0),
        "seconds_to_weights": to_weights,
        "metrics": serde_json::to_value(&run.metrics)?,
        "per_class": run.test.as_ref().map(|t| serde_json::to_value(&t.per_class)).transpose()?,
        "confusion": run.test.as_ref().map(|t| serde_json::to_value(t.confusion)).transpose()?,
    });
    merge(&mut v, extra);
    Ok(v)
}

fn merge(into: &mut Value, from: Value) {
    if let (Value::Object(a), Value::Object(b)) = (into, from) {
        a.extend(b);
    }
}

/// A shipped model's `card.json`, with `dir` and `run`, the name of the run it was exported
/// from (read from the card's `fer export runs/NAME` line).
pub fn card_value(dir: &Path) -> anyhow::Result<Value> {
    let path = dir.join("card.json");
    let mut v: Value = serde_json::from_slice(&read(&path)?).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let run = v["reproduce"].as_str().and_then(|r| r.split("fer export runs/").nth(1)).and_then(|r| r.split_whitespace().next()).map(String::from);
    merge(&mut v, json!({ "dir": dir.display().to_string(), "run": run }));
    Ok(v)
}

/// Any JSON record (the data statistics, a benchmark).
pub fn json_value(path: &Path) -> anyhow::Result<Value> {
    serde_json::from_slice(&read(path)?).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// Every run record (a folder holding a `summary.json`, so scored once on PrivateTest) under
/// `dir`, at any depth, as `name` joined with its path below `dir`, sorted.
pub fn run_records(dir: &Path, name: &str) -> anyhow::Result<Vec<String>> {
    fn walk(dir: &Path, name: &str, found: &mut Vec<String>) -> anyhow::Result<()> {
        if dir.join("summary.json").is_file() {
            found.push(name.to_string());
        }
        let entries = std::fs::read_dir(dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
        for entry in entries {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                walk(&entry.path(), &format!("{name}/{}", entry.file_name().to_string_lossy()), found)?;
            }
        }
        Ok(())
    }
    let mut found = Vec::new();
    walk(dir, name.trim_end_matches('/'), &mut found)?;
    found.sort();
    Ok(found)
}

/// A JSON-lines record (one object a line: metrics, benchmarks), as a list.
pub fn jsonl_value(path: &Path) -> anyhow::Result<Value> {
    let text = String::from_utf8(read(path)?)?;
    let lines: Vec<Value> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| anyhow::anyhow!("{}, line {}: {e}", path.display(), i + 1)))
        .collect::<anyhow::Result<_>>()?;
    Ok(Value::Array(lines))
}

/// Per-layer FLOPs of a named network, a config or a run, as `fer flops --json` prints them,
/// with the totals per layer kind (`by_kind`: conv, linear, batch_norm, pool, ...).
pub fn flops_value(model: &str) -> anyhow::Result<Value> {
    let (config, _) = crate::nn::flops::resolve(model)?;
    let report = crate::nn::flops::count_config(&config)?;
    let mut kinds = crate::nn::flops::by_kind(&config.layers()?, config.train.input_size as i64)?;
    // The evaluation blur is a row of its own before the network.
    for blur in report.layers.iter().filter(|l| l.kind.starts_with("gaussian_blur")) {
        kinds.entry("blur".into()).or_default().0 += blur.fvcore;
    }
    anyhow::ensure!(
        kinds.values().map(|k| k.0).sum::<i64>() == report.fvcore_total,
        "{model}: the FLOPs per layer kind do not add up to the total"
    );
    let by_kind: serde_json::Map<String, Value> = kinds.into_iter().map(|(k, (fvcore, params))| (k, json!({"fvcore": fvcore, "params": params}))).collect();
    let mut v = serde_json::to_value(&report)?;
    merge(&mut v, json!({ "by_kind": by_kind }));
    Ok(v)
}

/// The spread of one recipe over seeds: the runs given, each trained with another seed.
pub fn noise_value(dirs: &[std::path::PathBuf]) -> anyhow::Result<Value> {
    let runs: Vec<Run> = dirs.iter().map(|d| load_run(d)).collect::<anyhow::Result<_>>()?;
    anyhow::ensure!(runs.len() >= 2, "noise() needs at least two runs of one recipe, got {}", runs.len());
    let noise = Noise::of(runs[0].summary.name.clone(), runs.iter().collect());
    Ok(noise_json(&noise))
}

pub fn noise_json(n: &Noise) -> Value {
    let stat = |v: &[f64]| {
        let (m, s) = mean_std(v);
        json!({ "mean": m, "std": s, "min": v.iter().copied().fold(f64::MAX, f64::min), "max": v.iter().copied().fold(f64::MIN, f64::max) })
    };
    json!({
        "name": n.name,
        "seeds": n.seeds,
        "val": stat(&n.val),
        "test": stat(&n.test),
        "unseen": if n.unseen.is_empty() { Value::Null } else { stat(&n.unseen) },
        "tta_val": if n.tta_val.is_empty() { Value::Null } else { stat(&n.tta_val) },
        "tta_test": if n.tta_test.is_empty() { Value::Null } else { stat(&n.tta_test) },
        "threshold": n.threshold(),
    })
}

/// Two recipes trained in pairs, seed by seed and back to back (`scripts/speedrun.sh`): each
/// pair's records (`a`, `b`) and b's gain over a (`val`, `tta_val`, `epochs`), and over the pairs
/// the mean and spread of each gain with `se`, the standard error of its mean.
pub fn paired_value(a_dirs: &[std::path::PathBuf], b_dirs: &[std::path::PathBuf]) -> anyhow::Result<Value> {
    anyhow::ensure!(a_dirs.len() == b_dirs.len() && !a_dirs.is_empty(), "paired() needs as many runs of one recipe as of the other, and some: {} and {}", a_dirs.len(), b_dirs.len());
    let (mut pairs, mut val, mut tta_val, mut epochs) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (a, b) in a_dirs.iter().zip(b_dirs) {
        let (a, b) = (load_run(a)?, load_run(b)?);
        let gain = (b.summary.val_acc - a.summary.val_acc, b.summary.epochs as f64 - a.summary.epochs as f64);
        let tta_gain = a.summary.tta.as_ref().zip(b.summary.tta.as_ref()).map(|(ta, tb)| tb.val_acc - ta.val_acc);
        val.push(gain.0);
        epochs.push(gain.1);
        tta_val.extend(tta_gain);
        pairs.push(json!({ "a": run_json(&a)?, "b": run_json(&b)?, "val": gain.0, "tta_val": tta_gain, "epochs": gain.1 }));
    }
    Ok(json!({
        "pairs": pairs,
        "n": val.len(),
        "val": stats_json(&val),
        "tta_val": if tta_val.len() == val.len() { stats_json(&tta_val) } else { Value::Null },
        "epochs": stats_json(&epochs),
    }))
}

/// The mean of some values, their standard deviation and `se`, the standard error of the mean.
pub fn stats_json(v: &[f64]) -> Value {
    let (mean, std) = mean_std(v);
    json!({ "n": v.len(), "mean": mean, "std": std, "se": std / (v.len() as f64).sqrt() })
}

/// An ablation: its methods, its rows (each a run record with `on`, the methods it turns on),
/// and what each method bought three ways (`added`, `alone`, `removed`: PublicTest and
/// PrivateTest differences, null where the ablation has no such pair of rows).
pub fn ablation_value(dir: &Path) -> anyhow::Result<Value> {
    let ab = Ablation::load(dir)?;
    let rows: Vec<Value> = ab
        .rows
        .iter()
        .map(|(on, run)| -> anyhow::Result<Value> {
            let mut v = run_json(run)?;
            merge(&mut v, json!({ "on": on }));
            Ok(v)
        })
        .collect::<anyhow::Result<_>>()?;
    let effect = |a: Option<&crate::record::Summary>, b: Option<&crate::record::Summary>| match (a, b) {
        (Some(a), Some(b)) => json!({ "val": b.val_acc - a.val_acc, "test": b.test_acc - a.test_acc }),
        _ => Value::Null,
    };
    let effects: Vec<Value> = ab
        .methods
        .iter()
        .enumerate()
        .map(|(m, name)| {
            json!({
                "method": name,
                "added": effect(ab.row(|i| i < m), ab.row(|i| i <= m)),
                "alone": effect(ab.row(|_| false), ab.row(|i| i == m)),
                "removed": effect(ab.row(|i| i != m), ab.row(|_| true)),
            })
        })
        .collect();
    Ok(json!({ "dir": dir.display().to_string(), "methods": ab.methods, "rows": rows, "effects": effects }))
}

/// The records named on the command line, for the default template.
pub fn inputs_value(inputs: &ReportInputs) -> Value {
    let paths = |v: &[std::path::PathBuf]| v.iter().map(|p| p.display().to_string()).collect::<Vec<_>>();
    json!({
        "baseline": inputs.baseline.display().to_string(),
        "runs": paths(&inputs.runs),
        "ablations": paths(&inputs.ablations),
        "seed_runs": paths(&inputs.seed_runs),
        "models": paths(&inputs.models),
        "data_stats": inputs.data_stats.as_ref().map(|p| p.display().to_string()),
    })
}
