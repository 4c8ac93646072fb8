//! `fer pipeline`, the main job: the competition end to end in about twenty minutes. The data
//! analysed, the notebook's baseline (its committed record, or trained again), the speedrun
//! model trained to its time budget, each scored once on PrivateTest, their FLOPs and
//! efficiency, a grid of predictions, and the default report over the two. Every stage says
//! what it does and how long it should take; killed at any point, a rerun continues.

use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::config::Config;
use crate::data::{Dataset, Split};
use crate::record::Summary;
use crate::train::{train, TrainOptions};

pub struct PipelineOptions {
    pub data: PathBuf,
    /// The notebook's baseline recipe.
    pub baseline: PathBuf,
    /// Its committed record, reused unless `retrain_baseline`.
    pub baseline_record: PathBuf,
    pub retrain_baseline: bool,
    /// The model trained to a time budget.
    pub speedrun: PathBuf,
    pub runs: PathBuf,
}

/// `runs/pipeline.json`: what each stage took, for the README's quick start.
#[derive(Debug, Default, Serialize)]
pub struct PipelineRecord {
    pub stages: Vec<StageTime>,
    pub total_seconds: f64,
    pub baseline_retrained: bool,
    pub machine: String,
}

#[derive(Debug, Serialize)]
pub struct StageTime {
    pub stage: String,
    pub seconds: f64,
}

const STAGES: usize = 7;

/// Prints the stage's line, runs it, and keeps its time.
fn stage<T>(record: &mut PipelineRecord, name: &str, what: &str, expect: &str, work: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    let n = record.stages.len() + 1;
    println!("\n== [{n}/{STAGES}] {name}: {what} ({expect})");
    let started = Instant::now();
    let out = work()?;
    let seconds = started.elapsed().as_secs_f64();
    println!("   {name} done in {}", crate::progress::duration_in_words(seconds));
    record.stages.push(StageTime { stage: name.into(), seconds });
    Ok(out)
}

/// Trains `config` into `runs`, resuming what an earlier, killed call left.
fn train_or_resume(config: &Config, data: &Dataset, runs: &Path) -> anyhow::Result<(PathBuf, Summary)> {
    let dir = runs.join(&config.name);
    let resume = dir.join("last.json").exists();
    if resume {
        println!("   continuing {} from its checkpoint", dir.display());
    }
    let summary = train(config, data, &TrainOptions { runs_dir: runs.to_path_buf(), resume, ..Default::default() })?;
    Ok((dir, summary))
}

fn summary_of(dir: &Path) -> anyhow::Result<Summary> {
    let path = dir.join("summary.json");
    let bytes = std::fs::read(&path).map_err(|e| anyhow::anyhow!("{}: {e} (train it with --retrain-baseline)", path.display()))?;
    Ok(serde_json::from_slice(&bytes)?)
}

fn scores_in_words(s: &Summary) -> String {
    format!(
        "PublicTest {:.2}%, PrivateTest {:.2}% ({:.2}% on the {} faces without a twin in Training), trained {}",
        100.0 * s.val_acc,
        100.0 * s.test_acc,
        100.0 * s.test_acc_unseen.unwrap_or(f64::NAN),
        s.test_unseen_faces.unwrap_or(0),
        crate::progress::duration_in_words(s.train_seconds)
    )
}

pub fn run(opts: &PipelineOptions) -> anyhow::Result<PipelineRecord> {
    let started = Instant::now();
    let baseline_config = Config::load(&opts.baseline)?;
    let speedrun_config = Config::load(&opts.speedrun)?;
    let budget = speedrun_config.train.time_budget_minutes;
    let mut record = PipelineRecord { baseline_retrained: opts.retrain_baseline, machine: crate::record::machine_name(), ..Default::default() };
    println!(
        "fer pipeline: the competition end to end, about {} on 2 cores: data, the notebook's baseline, {} trained to {}, PrivateTest once each, FLOPs, predictions, report",
        // The speedrun's budget, a minute for the rest, and the baseline's hour where it is retrained.
        format!("{:.0} minutes", budget + 1.0 + if opts.retrain_baseline { 66.0 } else { 0.0 }),
        speedrun_config.name,
        if budget > 0.0 { format!("a {budget}-minute budget") } else { format!("{} epochs", speedrun_config.train.epochs) },
    );

    let data = stage(&mut record, "data", "FER-2013 read and analysed: classes, splits, duplicates, blur", "under a minute", || {
        let data = crate::data::load(&opts.data)?;
        let stats = crate::stats::write(&data, &opts.runs.join("data"), 8)?;
        println!("{}", stats.text());
        Ok(data)
    })?;

    let baseline_dir = if opts.retrain_baseline {
        stage(&mut record, "baseline", &format!("{} trained as the notebook trains it", opts.baseline.display()), "about an hour", || {
            let (dir, summary) = train_or_resume(&baseline_config, &data, &opts.runs)?;
            println!("   {}: {}", baseline_config.name, scores_in_words(&summary));
            Ok(dir)
        })?
    } else {
        stage(&mut record, "baseline", &format!("the committed record {} reused", opts.baseline_record.display()), "instant; --retrain-baseline trains it, about an hour", || {
            let summary = summary_of(&opts.baseline_record)?;
            println!("   {} (not retrained): {}", summary.name, scores_in_words(&summary));
            Ok(opts.baseline_record.clone())
        })?
    };

    let expect = if budget > 0.0 { format!("{:.0} minutes", budget + 1.0) } else { "as long as its epochs take".into() };
    let scored = match speedrun_config.train.eval_from {
        from if from > 0.0 => format!("PublicTest after each epoch of its last {:.0}%", 100.0 * (1.0 - from)),
        _ => "PublicTest after each epoch".to_string(),
    };
    let (speedrun_dir, speedrun) = stage(&mut record, "speedrun", &format!("{} trained, {scored}", opts.speedrun.display()), &expect, || {
        train_or_resume(&speedrun_config, &data, &opts.runs)
    })?;

    stage(&mut record, "PrivateTest", "each model scored once, on the weights PublicTest chose", "done as each run finished", || {
        for dir in [&baseline_dir, &speedrun_dir] {
            let summary = summary_of(dir)?;
            println!("   {}: {}", summary.name, scores_in_words(&summary));
            println!("{}", std::fs::read_to_string(dir.join("test_eval.txt"))?);
        }
        Ok(())
    })?;

    stage(&mut record, "FLOPs", "one forward pass of each, counted as fvcore counts them", "a second", || {
        for dir in [&baseline_dir, &speedrun_dir] {
            let summary = summary_of(dir)?;
            crate::nn::flops::print(&dir.to_string_lossy(), false)?;
            println!(
                "   efficiency of {}: {:.2}% / {:.6} GFLOPs = {:.1} %/GFLOP",
                summary.name,
                100.0 * summary.test_acc,
                summary.fvcore_flops as f64 / 1e9,
                summary.efficiency
            );
        }
        Ok(())
    })?;

    let grid = opts.runs.join("predictions.png");
    stage(&mut record, "predictions", "32 random PublicTest faces with the speedrun model's labels", "a second", || {
        let classifier = crate::models::choose(Some(&speedrun_dir))?.classifier()?;
        let right = crate::predict::random_grid(&classifier, &data, Split::PublicTest, 32, 0, &grid)?;
        println!("   {:.0}% of them right: {}", 100.0 * right, grid.display());
        Ok(())
    })?;

    let report = stage(&mut record, "report", "the default report over the two runs", "seconds", || {
        let inputs = crate::report::ReportInputs {
            baseline: baseline_dir.clone(),
            runs: vec![speedrun_dir.clone()],
            data_stats: Some(opts.runs.join("data/stats.json")),
            out: opts.runs.join("report"),
            ..Default::default()
        };
        crate::report::write(&inputs)
    })?;

    record.total_seconds = started.elapsed().as_secs_f64();
    std::fs::write(opts.runs.join("pipeline.json"), serde_json::to_vec_pretty(&record)?)?;
    let baseline = summary_of(&baseline_dir)?;
    println!(
        "\nfer pipeline done in {}: {} PrivateTest {:.2}% at {:.1} %/GFLOP against the baseline's {:.2}% at {:.1}; report {}, predictions {}",
        crate::progress::duration_in_words(record.total_seconds),
        speedrun.name,
        100.0 * speedrun.test_acc,
        speedrun.efficiency,
        100.0 * baseline.test_acc,
        baseline.efficiency,
        report.display(),
        grid.display()
    );
    Ok(record)
}
