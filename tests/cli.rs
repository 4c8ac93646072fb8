mod common;

use common::{csv_text, synthetic, tiny_config};
use std::path::Path;
use std::process::{Command, Output};

fn fer(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fer"))
        .current_dir(dir)
        .args(["--threads", "1"])
        .args(args)
        .env("FER_CACHE", dir.join("cache"))
        // A run's time budget counted in steps, not the wall's seconds, so a loaded machine
        // trains the same epochs (src/train/mod.rs: Clock).
        .env("FER_CLOCK_STEP_SECONDS", "0.05")
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    assert!(o.status.success(), "fer failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn bad_data_exits_non_zero_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.csv");
    let pixels = vec!["7"; 2304].join(" ");
    std::fs::write(&bad, format!("emotion,pixels,Usage\n3,{pixels},Training\n12,{pixels},Training\n")).unwrap();
    let o = fer(dir.path(), &["--data", "bad.csv", "data", "stats", "--out", "stats"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1));
    assert!(err.contains("bad.csv, line 3: emotion label 12 is outside 0..6"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!dir.path().join("stats").exists() && !dir.path().join("cache").exists(), "nothing half-written");

    let o = fer(dir.path(), &["--data", "nowhere", "data", "stats"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("nowhere: no such file or folder"));
}

#[test]
fn flops_json_has_fvcores_totals() {
    let dir = tempfile::tempdir().unwrap();
    let v: serde_json::Value = serde_json::from_str(&stdout(&fer(dir.path(), &["flops", "vgg", "--json"]))).unwrap();
    assert_eq!(v["fvcore_total"], 118_593_280);
    assert_eq!(v["layers"].as_array().unwrap().len(), fer::nn::model::vgg().len());
    let table = stdout(&fer(dir.path(), &["flops", "baseline"]));
    assert!(table.contains("327505392 FLOPs as fvcore counts them"), "{table}");
}

#[test]
fn stats_export_train_eval_predict_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = synthetic([280, 70, 70], 21);
    std::fs::write(d.join("fer2013.csv"), csv_text(&data)).unwrap();
    let csv = d.join("fer2013.csv");
    let csv = csv.to_str().unwrap();

    let s = stdout(&fer(d, &["--data", csv, "data", "stats", "--out", "stats"]));
    assert!(s.contains("| total    | 280"), "{s}");
    for f in ["stats.json", "stats.md", "samples.png", "mean_faces.png"] {
        assert!(d.join("stats").join(f).is_file(), "{f}");
    }

    // Export is byte-for-byte what was read.
    stdout(&fer(d, &["--data", csv, "data", "export-csv", "--out", "again.csv"]));
    assert_eq!(std::fs::read(d.join("again.csv")).unwrap(), std::fs::read(csv).unwrap());

    // Flip TTA is scored when the run finishes, with the single pass: PrivateTest once.
    let mut tiny = tiny_config("tiny", 3);
    tiny.train.tta = fer::config::Tta::Flip;
    std::fs::write(d.join("tiny.toml"), tiny.to_toml()).unwrap();
    stdout(&fer(d, &["--data", csv, "train", "--config", "tiny.toml"]));
    let summary: serde_json::Value = serde_json::from_slice(&std::fs::read(d.join("runs/tiny/summary.json")).unwrap()).unwrap();

    // `fer eval` on PrivateTest reproduces the run's test accuracy.
    let out = stdout(&fer(d, &["--data", csv, "eval", "--model", "runs/tiny", "--split", "test", "--json", "--png", "cm.png"]));
    let eval: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(eval["accuracy"], summary["test_acc"]);
    assert_eq!(eval["samples"], 70);
    assert!(d.join("cm.png").is_file());
    // A bare `fer eval` scores PublicTest, the split choices are made on: PrivateTest only by name.
    let bare: serde_json::Value = serde_json::from_str(&stdout(&fer(d, &["--data", csv, "eval", "--model", "runs/tiny", "--json"]))).unwrap();
    assert_eq!(bare["accuracy"], summary["val_acc"], "the default split is PublicTest");
    // With the mirror image averaged in: two forward passes, each counted.
    let o = fer(d, &["--data", csv, "eval", "--model", "runs/tiny", "--split", "test", "--tta", "flip", "--json"]);
    let flipped: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(flipped["samples"], 70);
    let flops = fer::nn::flops::count_config(&tiny_config("tiny", 3)).unwrap().fvcore_total;
    assert_eq!((flipped["fvcore_flops"].as_i64(), flipped["forward_passes"].as_u64(), flipped["tta"].as_str()), (Some(2 * flops), Some(2), Some("flip")), "the record says what was scored");
    let note = String::from_utf8_lossy(&o.stderr);
    assert!(note.contains(&format!("2 forward passes, {} fvcore FLOPs a face", 2 * flops)), "{note}");
    // An ensemble of a model with itself is that model, at twice its FLOPs.
    let o = fer(d, &["--data", csv, "eval", "--model", "runs/tiny", "--model", "runs/tiny", "--split", "test", "--json"]);
    let twice: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(twice["confusion"], eval["confusion"]);
    let note = String::from_utf8_lossy(&o.stderr);
    assert!(note.contains(&format!("an ensemble of 2 models: 2 forward passes, {} fvcore FLOPs a face", 2 * flops)), "{note}");
    let o = fer(d, &["--data", csv, "eval", "--model", "runs/tiny", "--tta", "ten-crop"]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("try --tta flip"));
    // FER+ labels the whole of fer2013.csv row for row: a part of it is refused, with why.
    std::fs::write(d.join("fer2013new.csv"), "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF\nTraining,a.png,10,0,0,0,0,0,0,0,0,0\n").unwrap();
    let o = fer(d, &["--data", csv, "eval", "--model", "runs/tiny", "--ferplus", "fer2013new.csv"]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("FER+ needs the whole of fer2013.csv"), "{}", String::from_utf8_lossy(&o.stderr));

    // `fer export --onnx`: a run becomes a model folder with a checked model.onnx.
    let out = stdout(&fer(d, &["--data", csv, "export", "runs/tiny", "--out", "shipped", "--onnx"]));
    assert!(out.contains("shipped/model.onnx: tract runs it on 70 PublicTest faces") && out.contains("the same label on 70 of them"), "{out}");
    let card: fer::nn::export::Card = serde_json::from_slice(&std::fs::read(d.join("shipped/card.json")).unwrap()).unwrap();
    assert_eq!(card.onnx.unwrap().val_acc, Some(card.val_acc), "PublicTest through tract is the card's");
    let flip = card.flip_tta.expect("the card carries the flip TTA the run scored");
    assert_eq!((flip.val_acc, flip.test_acc), (summary["tta"]["val_acc"].as_f64().unwrap(), summary["tta"]["test_acc"].as_f64().unwrap()), "not scored again at export");
    assert_eq!((flip.views, flip.fvcore_flops), (2, 2 * card.fvcore_flops));
    let eval_flipped = stdout(&fer(d, &["--data", csv, "eval", "--model", "shipped", "--split", "test", "--tta", "flip", "--json"]));
    assert_eq!(serde_json::from_str::<serde_json::Value>(&eval_flipped).unwrap()["accuracy"], flip.test_acc);
    std::fs::remove_file(d.join("shipped/model.onnx")).unwrap();
    let out = stdout(&fer(d, &["--data", csv, "export", "shipped", "--onnx"]));
    assert!(out.contains("shipped/model.onnx") && d.join("shipped/model.onnx").is_file(), "a model folder gains its model.onnx: {out}");
    // Re-exporting without --onnx takes away the file of the earlier weights.
    stdout(&fer(d, &["--data", csv, "export", "runs/tiny", "--out", "shipped"]));
    assert!(!d.join("shipped/model.onnx").exists(), "no stale model.onnx beside new weights");
    let o = fer(d, &["--data", csv, "export", "shipped"]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("is a model folder, not a run"));

    // Predict any image file: converted to 48x48 grayscale, 7 probabilities that sum to 1.
    image::RgbImage::from_pixel(96, 80, image::Rgb([90, 20, 200])).save(d.join("face.png")).unwrap();
    let out = stdout(&fer(d, &["predict", "--model", "runs/tiny", "--json", "--no-detect", "face.png"]));
    let p: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    let probs = p["probabilities"].as_object().unwrap();
    assert_eq!(probs.len(), 7);
    let total: f64 = probs.values().map(|v| v.as_f64().unwrap()).sum();
    assert!((total - 1.0).abs() < 1e-4);
    assert!(fer::data::CLASSES.contains(&p["label"].as_str().unwrap()));

    let out = stdout(&fer(d, &["--data", csv, "predict", "--model", "runs/tiny", "--random", "12", "--out", "grid.png"]));
    assert!(out.contains("12 random PublicTest faces"), "{out}");
    let grid = image::open(d.join("grid.png")).unwrap();
    assert!(grid.width() > 8 * 96 && grid.height() > 2 * 96);
}

#[test]
fn pipeline_runs_the_main_job_and_resumes_a_finished_run() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("fer2013.csv"), csv_text(&synthetic([140, 35, 35], 22))).unwrap();
    std::fs::write(d.join("base.toml"), tiny_config("base", 2).to_toml()).unwrap();
    let mut speedrun = tiny_config("speed", 50);
    speedrun.train.time_budget_minutes = 0.02;
    speedrun.train.ema_decay = 0.9;
    std::fs::write(d.join("speed.toml"), speedrun.to_toml()).unwrap();
    let args = ["--data", "fer2013.csv", "pipeline", "--baseline", "base.toml", "--speedrun", "speed.toml"];
    // Without the baseline's record, it says how to make one.
    let o = fer(d, &[&args[..], &["--baseline-record", "nowhere"]].concat());
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("--retrain-baseline"));
    let out = stdout(&fer(d, &[&args[..], &["--retrain-baseline"]].concat()));
    for part in ["[1/7] data", "[2/7] baseline", "trained as the notebook trains it", "[3/7] speedrun", "[4/7] PrivateTest", "[5/7] FLOPs", "efficiency of speed", "[6/7] predictions", "[7/7] report", "fer pipeline done"] {
        assert!(out.contains(part), "missing {part}: {out}");
    }
    for file in ["runs/predictions.png", "runs/data/stats.json", "runs/report/REPORT.md", "runs/pipeline.json", "runs/speed/summary.json"] {
        assert!(d.join(file).is_file(), "{file} missing");
    }
    let timings: serde_json::Value = serde_json::from_slice(&std::fs::read(d.join("runs/pipeline.json")).unwrap()).unwrap();
    assert_eq!(timings["stages"].as_array().unwrap().len(), 7);
    // Again, reusing the baseline's record: nothing is retrained, PrivateTest is not rescored.
    let summaries = || ["runs/base/summary.json", "runs/speed/summary.json"].map(|f| std::fs::read(d.join(f)).unwrap());
    let before = summaries();
    let out = stdout(&fer(d, &[&args[..], &["--baseline-record", "runs/base"]].concat()));
    assert!(out.contains("the committed record runs/base reused") && out.contains("(not retrained)"), "{out}");
    assert_eq!(summaries(), before);
}

#[test]
fn bench_emits_the_fields_the_comparison_needs() {
    let dir = tempfile::tempdir().unwrap();
    for mode in ["step", "infer"] {
        let out = stdout(&fer(dir.path(), &["bench", mode, "--model", "mobile", "--batch", "8", "--steps", "2", "--warmup", "1"]));
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        for key in ["engine", "mode", "model", "batch", "threads", "img_per_s"] {
            assert!(!v[key].is_null(), "{mode}: {key} missing in {v}");
        }
        assert_eq!(v["mode"], mode);
        assert!(v["img_per_s"].as_f64().unwrap() > 0.0);
    }
}
