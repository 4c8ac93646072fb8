mod common;

use common::{synthetic, tiny_config};
use fer::ablate::{AblationFile, Method, Mode};
use fer::train::{train, TrainOptions};
use std::collections::BTreeMap;
use std::path::Path;

#[test]
fn ablation_then_report_from_run_records() {
    tch::set_num_threads(1);
    let data = synthetic([140, 35, 35], 41);
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    let opts = TrainOptions { runs_dir: runs.clone(), quiet: true, ..Default::default() };
    let baseline = train(&tiny_config("base", 1), &data, &opts).unwrap();

    let method = |name: &str, key: &str, value: toml::Value| Method { name: name.into(), set: BTreeMap::from([(key.to_string(), value)]) };
    let ablation = AblationFile {
        name: "abl".into(),
        base: "unused.toml".into(),
        mode: Mode::Cumulative,
        methods: vec![
            method("smoothing", "train.label_smoothing", toml::Value::Float(0.1)),
            method("flip", "augment.hflip", toml::Value::Boolean(true)),
        ],
    };
    let out = dir.path().join("results/abl");
    let table = fer::ablate::run(&ablation, &tiny_config("abl-base", 2), &data, &runs, &out).unwrap();
    assert_eq!(table.lines().filter(|l| l.starts_with("| 0")).count(), 3, "{table}");
    assert!(table.contains("| 02-smoothing+flip | Y | Y |"), "{table}");
    let csv = std::fs::read_to_string(out.join("ablation.csv")).unwrap();
    assert_eq!(csv.lines().count(), 4);
    // A second call finds every row finished and trains nothing: same table.
    let again = fer::ablate::run(&ablation, &tiny_config("abl-base", 2), &data, &runs, &out).unwrap();
    assert_eq!(table, again);
    // So does a call whose runs/ folder is gone: the rows' records are enough.
    let elsewhere = dir.path().join("runs-elsewhere");
    assert_eq!(table, fer::ablate::run(&ablation, &tiny_config("abl-base", 2), &data, &elsewhere, &out).unwrap());
    assert!(!elsewhere.join("abl").exists(), "nothing was retrained");
    // The same methods one at a time, and the last row again with another seed (the noise).
    let one_off = AblationFile { name: "abl-one-off".into(), mode: Mode::OneOff, ..ablation.clone() };
    let out_one_off = dir.path().join("results/abl-one-off");
    fer::ablate::run(&one_off, &tiny_config("abl-base", 2), &data, &runs, &out_one_off).unwrap();
    // Its rows with a cumulative twin (the base, smoothing alone, both) are reused, not rerun.
    let summary = |dir: std::path::PathBuf| -> fer::record::Summary { serde_json::from_slice(&std::fs::read(dir.join("summary.json")).unwrap()).unwrap() };
    for (cumulative, one_off_row) in [("00-base", "00-base"), ("01-smoothing", "01-smoothing"), ("02-smoothing+flip", "03-smoothing+flip")] {
        let (a, b) = (summary(out.join(cumulative)), summary(out_one_off.join(one_off_row)));
        assert_eq!((a.test_acc, a.val_acc, b.name.as_str()), (b.test_acc, b.val_acc, one_off_row));
        assert!(!runs.join("abl-one-off").join(one_off_row).exists(), "{one_off_row} was not retrained");
    }
    assert!(runs.join("abl-one-off/02-flip").exists(), "the row without a twin was trained");
    let mut reseeded = ablation.rows(&tiny_config("abl-base", 2)).unwrap().pop().unwrap().config;
    reseeded.seed = 5;
    reseeded.name += "-seed5";
    train(&reseeded, &data, &opts).unwrap();

    // Beyond the ablation: a run distilled from the baseline, its twin without the teacher,
    // and the student shipped as a model folder.
    let mut student = tiny_config("student", 2);
    student.train.teacher = Some(fer::config::Teacher::One(runs.join("base").display().to_string()));
    // Flip TTA is scored as the run finishes (the card carries it), here and on the twin.
    student.train.tta = fer::config::Tta::Flip;
    train(&student, &data, &opts).unwrap();
    let mut plain_config = tiny_config("plain", 2);
    plain_config.train.tta = fer::config::Tta::Flip;
    let plain = train(&plain_config, &data, &opts).unwrap();
    // The plain recipe again with another seed: its spread is reported beside it.
    let mut plain_reseeded = plain_config.clone();
    plain_reseeded.name = "plain-seed3".into();
    plain_reseeded.seed = 3;
    let reseeded_summary = train(&plain_reseeded, &data, &opts).unwrap();
    // The student's recipe taught by another teacher: compared with the student once.
    let mut retaught = student.clone();
    retaught.name = "retaught".into();
    retaught.train.teacher = Some(fer::config::Teacher::One(runs.join("plain").display().to_string()));
    train(&retaught, &data, &opts).unwrap();
    let model_dir = dir.path().join("models/student");
    fer::nn::export::export(&runs.join("student"), &model_dir, Some(&data)).unwrap();

    let inputs = fer::report::ReportInputs {
        baseline: runs.join("base"),
        runs: vec![runs.join("student"), runs.join("plain"), runs.join("plain-seed3"), runs.join("retaught")],
        ablations: vec![out.clone(), out_one_off.clone()],
        seed_runs: vec![runs.join("02-smoothing+flip-seed5")],
        data_stats: None,
        figures: vec![],
        out: dir.path().join("report"),
        models: vec![model_dir],
        copy_to: Some(dir.path().join("REPORT.md")),
        ..Default::default()
    };
    let md_path = fer::report::write(&inputs).unwrap();
    let md = std::fs::read_to_string(&md_path).unwrap();
    for section in ["## 1. The task", "## 2. What was changed", "## 3. Cost and efficiency", "## 4. Limitations and conclusions"] {
        assert!(md.contains(section), "missing {section}");
    }
    // Numbers come from the records: the baseline's PrivateTest accuracy, in the sentence that
    // states it (a bare percentage could be any run's), and its efficiency sum.
    let stated = format!("PublicTest accuracy {:.2}% at epoch {}, PrivateTest {:.2}% for that checkpoint", 100.0 * baseline.val_acc, baseline.best_epoch, 100.0 * baseline.test_acc);
    assert!(md.contains(&stated), "{stated} not in\n{md}");
    assert!(md.contains(&format!("= **{:.1}**", baseline.efficiency)));
    assert!(md.contains("| 01-smoothing | Y | N |"));
    // Leak-aware beside PrivateTest; what each method bought, three ways; the seed noise.
    assert!(md.contains("PrivateTest (leak-aware)"), "{md}");
    assert!(md.contains("| method | added to the rows before it | alone, against the base | removed from all, against all |"));
    assert!(md.contains("**Seed noise.** `02-smoothing+flip` trained with seeds 5, 7"), "{md}");
    assert_eq!(md.matches("| smoothing | +").count(), 2, "one effects row per ablation");
    // Time to accuracy: a table and a plot.
    assert!(md.contains("### Time to accuracy") && md.contains("](time_to_accuracy.png)"));
    assert!(dir.path().join("report/time_to_accuracy.png").is_file());
    assert!(md.contains("Distillation (`student` against `plain`"), "the distillation is measured against its twin");
    let teacher_line = format!("Teacher (`retaught` against `student`: the same network, recipe and seed, taught by {} instead of {})", runs.join("plain").display(), runs.join("base").display());
    assert!(md.contains(&teacher_line), "{md}");
    assert!(!md.contains("against `retaught`"), "one comparison per pair, neither called distillation: {md}");
    let mean = 50.0 * (plain.val_acc + reseeded_summary.val_acc);
    assert!(md.contains(&format!("Seeds: `plain` trained with seeds 3, 7: PublicTest {mean:.2}% ± ")), "{md}");
    assert_eq!(md.matches("Seeds: ").count(), 1, "the student, with its teacher, is another recipe");
    // The distillation's gain is judged against plain's seed spread: 2√2 x the sample std of two.
    let student_summary: fer::record::Summary = serde_json::from_slice(&std::fs::read(runs.join("student/summary.json")).unwrap()).unwrap();
    let threshold = 2.0 * std::f64::consts::SQRT_2 * 100.0 * (plain.val_acc - reseeded_summary.val_acc).abs() / std::f64::consts::SQRT_2;
    let gain = 100.0 * (student_summary.val_acc - plain.val_acc);
    let line = md.lines().find(|l| l.starts_with("Distillation (`student`")).unwrap();
    assert_eq!(line.contains("*(noise: under the"), gain.abs() < threshold, "gain {gain}, threshold {threshold}: {line}");
    assert!(md.contains("| **student** (shipped, BN folded) |"));
    assert!(md.contains("| **student** (shipped) + flip TTA (2 views) |"), "the card's flip TTA has a row apart");
    assert!(md.contains("Shipped as `models/student`"), "the conclusion names the shipped model");
    assert!(md.contains("](pareto.png)"));
    // The copy's links are relative to where it lies.
    let copy = std::fs::read_to_string(dir.path().join("REPORT.md")).unwrap();
    assert!(copy.contains("](report/pareto.png)") && copy.contains("](runs/base/accuracy.png)"), "{copy}");
    let html = std::fs::read_to_string(dir.path().join("report/report.html")).unwrap();
    assert!(html.contains("<table>") && html.contains("data:image/png;base64,"));
    assert!(!html.contains("src=\"pareto.png\""), "images are inlined");
}

/// The project's records as a template sees them: results/, configs/ and the model cards.
fn copy_records(to: &Path) {
    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy_dir(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), target).unwrap();
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    copy_dir(&root.join("results"), &to.join("results"));
    copy_dir(&root.join("configs"), &to.join("configs"));
    for model in ["accurate", "small", "tiny", "nano"] {
        std::fs::create_dir_all(to.join("models").join(model)).unwrap();
        for file in ["card.json", "config.toml"] {
            std::fs::copy(root.join("models").join(model).join(file), to.join("models").join(model).join(file)).unwrap();
        }
    }
}

/// The project's report rendered over the records at `root`, into `root/report`.
fn render_project(root: &Path) -> String {
    let out = root.join("report");
    fer::report::write(&project_inputs(root, &out)).unwrap();
    std::fs::read_to_string(out.join("REPORT.md")).unwrap()
}

fn project_inputs(root: &Path, out: &Path) -> fer::report::ReportInputs {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    fer::report::ReportInputs {
        baseline: root.join("results/baseline"),
        template: Some(manifest.join("docs/report/report.md.j2")),
        out: out.to_path_buf(),
        root: root.to_path_buf(),
        ..Default::default()
    }
}

#[test]
fn the_committed_readme_and_speedrun_notes_are_what_their_templates_render() {
    // README.md and results/speedrun/README.md are rendered from docs/report/ over the records: a
    // hand edit, or a record changed without re-rendering, fails here (scripts/report.sh renders
    // them again). The speedrun's notes import their definitions from docs/report/speedrun.j2.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = tempfile::tempdir().unwrap();
    let documents = [("docs/report/README.md.j2", "README.md"), ("docs/report/speedrun.md.j2", "results/speedrun/README.md")];
    let inputs = fer::report::ReportInputs {
        documents: documents.iter().map(|(t, o)| (root.join(t), out.path().join(o))).collect(),
        ..project_inputs(root, out.path())
    };
    fer::report::write(&inputs).unwrap();
    for (_, document) in documents {
        let rendered = std::fs::read_to_string(out.path().join(document)).unwrap();
        let committed = std::fs::read_to_string(root.join(document)).unwrap();
        assert!(rendered == committed, "{document} is stale: run scripts/report.sh");
    }
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    assert!(readme.lines().count() <= 250, "the README is a front page: {} lines", readme.lines().count());
}

#[test]
fn a_changed_record_changes_the_rendered_number() {
    let root = tempfile::tempdir().unwrap();
    copy_records(root.path());
    let render = || render_project(root.path());
    let before = render();
    // nano is the efficiency submission (the cheapest shipped model over the baseline on PublicTest).
    let card_path = root.path().join("models/nano/card.json");
    let mut card: serde_json::Value = serde_json::from_slice(&std::fs::read(&card_path).unwrap()).unwrap();
    let old = format!("{:.2}%", 100.0 * card["test_acc"].as_f64().unwrap());
    assert!(before.contains(&format!("**{old}** at")), "the summary states nano's PrivateTest score");
    card["test_acc"] = serde_json::json!(0.612345);
    std::fs::write(&card_path, serde_json::to_vec(&card).unwrap()).unwrap();
    let after = render();
    assert!(after.contains("**61.23%** at") && !after.contains(&format!("**{old}** at")), "the new score replaces the old");
    // The efficiency's worked division uses the new operand.
    assert!(after.contains("- nano: 61.2345 / 0.000808944 = "), "the calculation is redone");
}

#[test]
fn a_new_run_of_the_front_joins_the_report_with_its_teacher_cache_time() {
    // A run finished after the template's list was written still gets its row in the table of
    // every run, and its PrivateTest score is counted; a cached teacher's scoring shows apart.
    let root = tempfile::tempdir().unwrap();
    copy_records(root.path());
    let render = || render_project(root.path());
    let count = |text: &str| -> usize { text.split(" run records under `results/` hold a PrivateTest score").next().unwrap().rsplit(' ').next().unwrap().parse().unwrap() };
    let before = render();
    let (from, to) = (root.path().join("results/frontier/tiny-ensemble"), root.path().join("results/frontier/tiny-late-arrival"));
    std::fs::create_dir_all(&to).unwrap();
    for entry in std::fs::read_dir(&from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
    let mut summary: serde_json::Value = serde_json::from_slice(&std::fs::read(to.join("summary.json")).unwrap()).unwrap();
    summary["name"] = "tiny-late-arrival".into();
    summary["train_seconds"] = 600.0.into();
    summary["teacher_cache_seconds"] = 7200.0.into();
    std::fs::write(to.join("summary.json"), serde_json::to_vec(&summary).unwrap()).unwrap();
    let after = render();
    assert_eq!(count(&after), count(&before) + 1);
    assert!(!before.contains("| tiny-late-arrival |"));
    let row = after.lines().find(|l| l.starts_with("| tiny-late-arrival |")).expect("a row for the new run");
    assert!(row.ends_with("| 10 + 120 |"), "{row}");
}

#[test]
fn records_of_the_shipped_models_scores_are_of_the_weights_shipped_now() {
    // The FER+ and ensemble records score models/<name>; shipping new weights there without
    // scoring them again would leave the report quoting the old model (scripts/ferplus.sh and
    // scripts/ensembles.sh write them again).
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut checked = 0;
    for folder in ["results/ferplus", "results/ensembles"] {
        for entry in std::fs::read_dir(root.join(folder)).unwrap() {
            let path = entry.unwrap().path();
            let record: serde_json::Value = match path.extension().and_then(|e| e.to_str()) {
                Some("json") => serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap(),
                _ => continue,
            };
            let Some(models) = record["models"].as_array() else { continue }; // not a model's scores
            let weights = record["weights"].as_array().unwrap_or_else(|| panic!("{}: no weights fingerprints; score it again", path.display()));
            assert_eq!(models.len(), weights.len(), "{}", path.display());
            for (model, fingerprint) in models.iter().zip(weights) {
                let now = fer::nn::model::weights_fingerprint(&root.join(model.as_str().unwrap())).unwrap();
                assert_eq!(fingerprint.as_str(), Some(now.as_str()), "{}: {model} has been shipped again since it was scored", path.display());
                checked += 1;
            }
        }
    }
    assert!(checked >= 8, "the FER+ records of the four models at least: {checked}");
}

#[test]
fn a_missing_record_fails_with_its_path() {
    let root = tempfile::tempdir().unwrap();
    copy_records(root.path());
    std::fs::remove_file(root.path().join("results/frontier/tiny-ensemble/summary.json")).unwrap();
    let err = fer::report::write(&project_inputs(root.path(), &root.path().join("report"))).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("tiny-ensemble/summary.json"), "{msg}");
    assert!(msg.contains("report.md.j2:16"), "the template and line are named: {msg}");
    // A field the record lacks is an error too, not an empty cell.
    let template = root.path().join("t.md.j2");
    std::fs::write(&template, "{{ card(\"models/tiny\").no_such_field }}\n").unwrap();
    let inputs = fer::report::ReportInputs { template: Some(template), ..project_inputs(root.path(), &root.path().join("r2")) };
    let msg = format!("{:#}", fer::report::write(&inputs).unwrap_err());
    assert!(msg.contains("undefined"), "{msg}");
}

#[test]
fn a_template_imports_definitions_from_the_folder_it_is_in() {
    // The report, the README and the speedrun's notes share definitions this way (speedrun.j2).
    let root = tempfile::tempdir().unwrap();
    copy_records(root.path());
    let templates = root.path().join("templates");
    std::fs::create_dir_all(&templates).unwrap();
    std::fs::write(templates.join("shared.j2"), "{% set acc = run(\"results/baseline\").val_acc %}\n").unwrap();
    std::fs::write(templates.join("t.md.j2"), "{% from \"shared.j2\" import acc %}{{ acc }}\n").unwrap();
    let out = root.path().join("r");
    fer::report::write(&fer::report::ReportInputs { template: Some(templates.join("t.md.j2")), ..project_inputs(root.path(), &out) }).unwrap();
    let text = std::fs::read_to_string(out.join("REPORT.md")).unwrap();
    let summary: fer::record::Summary = serde_json::from_slice(&std::fs::read(root.path().join("results/baseline/summary.json")).unwrap()).unwrap();
    assert_eq!(text.trim().parse::<f64>().unwrap(), summary.val_acc);
    // An import that is not there names itself.
    std::fs::write(templates.join("t.md.j2"), "{% import \"missing.j2\" as m %}\n").unwrap();
    let err = fer::report::write(&fer::report::ReportInputs { template: Some(templates.join("t.md.j2")), ..project_inputs(root.path(), &out) }).unwrap_err();
    assert!(format!("{err:#}").contains("missing.j2"), "{err:#}");
}

#[test]
fn paired_recipes_are_compared_pair_by_pair() {
    let root = tempfile::tempdir().unwrap();
    copy_records(root.path());
    let a = ["results/speedrun/ablation/speedrun-no-ema", "results/speedrun/ablation/speedrun-no-ema-seed1"];
    let b = ["results/speedrun/ablation/speedrun-no-resize", "results/speedrun/ablation/speedrun-no-label-smoothing"];
    let template = root.path().join("t.md.j2");
    std::fs::write(&template, format!("{{% set p = paired({a:?}, {b:?}) %}}{{{{ p.n }}}} {{{{ p.val.mean }}}} {{{{ p.val.se }}}} {{{{ p.epochs.mean }}}} {{{{ p.pairs[1].b.val_acc }}}}\n")).unwrap();
    let out = root.path().join("r");
    fer::report::write(&fer::report::ReportInputs { template: Some(template), ..project_inputs(root.path(), &out) }).unwrap();
    let text = std::fs::read_to_string(out.join("REPORT.md")).unwrap();
    let got: Vec<f64> = text.split_whitespace().map(|w| w.parse().unwrap()).collect();
    let summary = |p: &str| -> fer::record::Summary { serde_json::from_slice(&std::fs::read(root.path().join(p).join("summary.json")).unwrap()).unwrap() };
    let gains: Vec<f64> = a.iter().zip(&b).map(|(a, b)| summary(b).val_acc - summary(a).val_acc).collect();
    let epochs = a.iter().zip(&b).map(|(a, b)| summary(b).epochs as f64 - summary(a).epochs as f64).sum::<f64>() / 2.0;
    // Two pairs: the standard error of the mean gain is half their difference's size.
    let (mean, se) = ((gains[0] + gains[1]) / 2.0, (gains[0] - gains[1]).abs() / 2.0);
    let want = [2.0, mean, se, epochs, summary(b[1]).val_acc];
    assert!(got.iter().zip(want).all(|(g, w)| (g - w).abs() < 1e-9), "{got:?} against {want:?}");
    // Recipes of unequal runs are not pairs.
    let bad = root.path().join("bad.md.j2");
    std::fs::write(&bad, format!("{{{{ paired({a:?}, {:?}).n }}}}\n", &b[..1])).unwrap();
    let err = fer::report::write(&fer::report::ReportInputs { template: Some(bad), ..project_inputs(root.path(), &root.path().join("r2")) }).unwrap_err();
    assert!(format!("{err:#}").contains("as many runs"), "{err:#}");
}

#[test]
fn the_report_prints_to_a_pdf_whose_pages_are_not_blank() {
    let have = |tool: &str| std::process::Command::new(tool).arg("-v").output().is_ok();
    if !have("pdftoppm") || !["chromium", "chromium-browser", "google-chrome"].iter().any(|b| std::process::Command::new(b).arg("--version").output().is_ok()) {
        common::skip("needs chromium and pdftoppm (scripts/test.sh installs them as root)");
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = tempfile::tempdir().unwrap();
    let inputs = fer::report::ReportInputs { pdf: true, ..project_inputs(root, out.path()) };
    fer::report::write(&inputs).unwrap();
    let pdf = out.path().join("report.pdf");
    let pages = out.path().join("page");
    let status = std::process::Command::new("pdftoppm").args(["-r", "30", "-png"]).arg(&pdf).arg(&pages).status().unwrap();
    assert!(status.success());
    let mut count = 0;
    for entry in std::fs::read_dir(out.path()).unwrap() {
        let path = entry.unwrap().path();
        if !path.file_name().unwrap().to_string_lossy().starts_with("page") {
            continue;
        }
        count += 1;
        let img = image::open(&path).unwrap().to_luma8();
        let ink = img.pixels().filter(|p| p.0[0] < 240).count() as f64 / img.pixels().len() as f64;
        assert!(ink > 0.01, "{} is blank ({ink})", path.display());
    }
    // About 24 pages today (sections, appendix tables and figures); far more would be a layout
    // broken into a page per table or figure.
    assert!((8..=28).contains(&count), "{count} pages");
    // Numbered figures and tables, cited in the text.
    let md = std::fs::read_to_string(out.path().join("REPORT.md")).unwrap();
    assert!(md.contains("*Figure 1.") && md.contains("<em>Table 1.</em>") && md.contains("(Figure 1)"), "numbered and cited");
}

#[test]
fn every_command_the_readme_names_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_fer")).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    let listed: Vec<&str> = help.lines().filter_map(|l| l.trim_start().split_whitespace().next()).collect();
    let mut named = 0;
    for line in readme.lines().filter(|l| l.starts_with("| `fer ")) {
        let command = line["| `fer ".len()..].split([' ', '`']).next().unwrap();
        assert!(listed.contains(&command), "README names `fer {command}`, which `fer --help` does not list");
        named += 1;
    }
    assert!(named >= 10, "the commands table lists {named} commands");
}
