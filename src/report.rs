//! `fer report`: the competition report, written from run records only. Every number comes
//! from a `summary.json`, `metrics.jsonl`, `test_eval.json`, an ablation table or the data
//! statistics; nothing is typed in by hand. Writes `REPORT.md` and a self-contained
//! `report.html` (images inlined).

use base64::Engine;
use plotters::prelude::*;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::data::{CLASSES, NUM_CLASSES};
use crate::eval::Evaluation;
use crate::export::Card;
use crate::train::Summary;

pub struct ReportInputs {
    /// The baseline's run record.
    pub baseline: PathBuf,
    /// Other run records (ablation rows are found on their own).
    pub runs: Vec<PathBuf>,
    pub ablation: Option<PathBuf>,
    pub data_stats: Option<PathBuf>,
    /// Extra figures to include (e.g. sample faces); kept out of committed reports.
    pub figures: Vec<PathBuf>,
    pub out: PathBuf,
    /// Shipped model folders (`fer export`: card.json), reported with their folded FLOPs.
    pub models: Vec<PathBuf>,
    /// A second copy of the Markdown (e.g. the repository's REPORT.md), links rebased to it.
    pub copy_to: Option<PathBuf>,
}

/// Published reference points for the accuracy-per-FLOP plot: (name, accuracy %, GFLOPs).
/// GFLOPs are estimates in fvcore's counting, accuracies as published (see the notes).
pub const ANCHORS: [(&str, f64, f64); 4] = [
    ("competition baseline (notebook)", 54.6, 0.3275),
    ("mini-Xception (random split)", 66.0, 0.0059),
    ("VGG, Khaireddin & Chen 2021 (1 crop)", 73.28, 0.35),
    ("Residual Masking Network", 74.14, 15.0),
];

struct Run {
    dir: PathBuf,
    summary: Summary,
    test: Option<Evaluation>,
    config: String,
}

fn load_run(dir: &Path) -> anyhow::Result<Run> {
    let summary = serde_json::from_slice(&std::fs::read(dir.join("summary.json")).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?)?;
    let test = std::fs::read(dir.join("test_eval.json")).ok().and_then(|b| serde_json::from_slice(&b).ok());
    let config = std::fs::read_to_string(dir.join("config.toml")).unwrap_or_default();
    Ok(Run { dir: dir.to_path_buf(), summary, test, config })
}

fn rel(path: &Path, base: &Path) -> String {
    let (p, b) = (std::path::absolute(path).unwrap_or(path.into()), std::path::absolute(base).unwrap_or(base.into()));
    let (pc, bc): (Vec<_>, Vec<_>) = (p.components().collect(), b.components().collect());
    let common = pc.iter().zip(&bc).take_while(|(a, b)| a == b).count();
    let mut parts: Vec<String> = bc[common..].iter().map(|_| "..".to_string()).collect();
    parts.extend(pc[common..].iter().map(|c| c.as_os_str().to_string_lossy().into_owned()));
    parts.join("/")
}

fn pct(v: f64) -> String {
    format!("{:.2}%", 100.0 * v)
}

/// Accuracy against GFLOPs (log scale) for the runs and the published anchors.
fn pareto_plot(path: &Path, runs: &[&Run], shipped: &[Card]) -> anyhow::Result<()> {
    crate::plot::register_font();
    // Ablation rows are labelled by their number ("03-test-blur+..." as "03"), which the table names.
    let short = |n: &str| match n.split_once('-') {
        Some((num, _)) if num.chars().all(|c| c.is_ascii_digit()) => num.to_string(),
        _ => n.to_string(),
    };
    let pts: Vec<(String, f64, f64)> =
        runs.iter().map(|r| (short(&r.summary.name), 100.0 * r.summary.test_acc, r.summary.fvcore_flops as f64 / 1e9)).collect();
    let stars: Vec<(String, f64, f64)> =
        shipped.iter().map(|c| (format!("{} (shipped, BN folded)", c.name), 100.0 * c.test_acc, c.fvcore_flops as f64 / 1e9)).collect();
    let all_x = pts.iter().chain(&stars).map(|p| p.2).chain(ANCHORS.iter().map(|a| a.2));
    let all_y = pts.iter().chain(&stars).map(|p| p.1).chain(ANCHORS.iter().map(|a| a.1));
    let (x0, x1) = all_x.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let (y0, y1) = all_y.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption("PrivateTest accuracy vs fvcore GFLOPs (one forward pass)", ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(55)
        .build_cartesian_2d((x0 / 1.6..x1 * 6.0).log_scale(), (y0 - 4.0)..(y1 + 4.0))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc("GFLOPs (log scale)")
        .x_label_formatter(&|v| format!("{v}"))
        .y_desc("accuracy (%)")
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let blue = RGBColor(31, 119, 180);
    let grey = RGBColor(120, 120, 120);
    for (name, y, x) in &pts {
        chart.draw_series([Circle::new((*x, *y), 5, blue.filled())]).map_err(|e| anyhow::anyhow!("{e}"))?;
        chart
            .draw_series([Text::new(name.clone(), (*x, *y), ("sans-serif", 12).into_font().color(&blue))])
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let orange = RGBColor(230, 110, 0);
    for (name, y, x) in &stars {
        chart.draw_series([Cross::new((*x, *y), 7, orange.stroke_width(3))]).map_err(|e| anyhow::anyhow!("{e}"))?;
        chart
            .draw_series([Text::new(name.clone(), (*x, *y - 1.5), ("sans-serif", 13).into_font().color(&orange))])
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    for (name, y, x) in ANCHORS {
        chart.draw_series([TriangleMarker::new((x, y), 6, grey.filled())]).map_err(|e| anyhow::anyhow!("{e}"))?;
        chart.draw_series([Text::new(name, (x, y), ("sans-serif", 12).into_font().color(&grey))]).map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

/// Runs found in an ablation folder (one record folder per row), in row order.
fn ablation_rows(dir: &Path) -> Vec<PathBuf> {
    let mut rows: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.join("summary.json").is_file()).collect())
        .unwrap_or_default();
    rows.sort();
    rows
}

/// Writes `REPORT.md` and `report.html` into `inputs.out` (and the copy, if asked for).
pub fn write(inputs: &ReportInputs) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(&inputs.out)?;
    let records = Records::load(inputs)?;
    pareto_plot(&inputs.out.join("pareto.png"), &records.all(), &records.shipped)?;
    let md = render(inputs, &records, &inputs.out)?;
    let md_path = inputs.out.join("REPORT.md");
    crate::data::write_atomic(&md_path, md.as_bytes())?;
    crate::data::write_atomic(&inputs.out.join("report.html"), html(&md, &inputs.out).as_bytes())?;
    if let Some(copy) = &inputs.copy_to {
        let base = copy.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        crate::data::write_atomic(copy, render(inputs, &records, base)?.as_bytes())?;
    }
    Ok(md_path)
}

fn load_card(dir: &Path) -> anyhow::Result<Card> {
    let path = dir.join("card.json");
    let bytes = std::fs::read(&path).map_err(|e| anyhow::anyhow!("{}: {e} (export the model with `fer export`)", path.display()))?;
    Ok(serde_json::from_slice(&bytes)?)
}

/// Everything the report reads, loaded once.
struct Records {
    baseline: Run,
    /// The runs given, then the ablation's rows.
    others: Vec<Run>,
    ablation_dirs: Vec<PathBuf>,
    shipped: Vec<Card>,
}

impl Records {
    fn load(inputs: &ReportInputs) -> anyhow::Result<Records> {
        let ablation_dirs = inputs.ablation.as_deref().map(ablation_rows).unwrap_or_default();
        Ok(Records {
            baseline: load_run(&inputs.baseline)?,
            others: inputs.runs.iter().chain(&ablation_dirs).map(|d| load_run(d)).collect::<anyhow::Result<_>>()?,
            ablation_dirs,
            shipped: inputs.models.iter().map(|d| load_card(d)).collect::<anyhow::Result<_>>()?,
        })
    }

    /// The baseline, then every other run.
    fn all(&self) -> Vec<&Run> {
        std::iter::once(&self.baseline).chain(&self.others).collect()
    }
}

/// The report's Markdown, its links relative to `base`.
fn render(inputs: &ReportInputs, records: &Records, base: &Path) -> anyhow::Result<String> {
    let out = base;
    let Records { baseline, others, ablation_dirs, shipped } = records;
    // The ablation's rows are the tail of `others`.
    let ablation_runs = &others[inputs.runs.len()..];
    let all = records.all();
    // Model choice on PublicTest only.
    let best = all.iter().copied().max_by(|a, b| a.summary.val_acc.total_cmp(&b.summary.val_acc)).unwrap();

    let mut md = String::new();
    let b = &baseline.summary;
    writeln!(md, "# Facial-expression recognition on FER-2013: report\n")?;
    writeln!(md, "Generated by `fer report` from run records; every figure below traces to the folder named beside it.\n")?;

    // 1. Task, data, baseline.
    writeln!(md, "## 1. The task, the data and the baseline\n")?;
    writeln!(md, "FER-2013: 48x48 grayscale faces in 7 classes ({}). Training is used for training, PublicTest for every choice (early stopping, best checkpoint, which model), PrivateTest once per finished model for the reported number.\n", CLASSES.join(", "))?;
    if let Some(stats_path) = &inputs.data_stats {
        let stats: serde_json::Value = serde_json::from_slice(&std::fs::read(stats_path)?)?;
        writeln!(md, "| class | Training | PublicTest | PrivateTest |\n|---|---:|---:|---:|")?;
        for c in CLASSES {
            writeln!(md, "| {c} | {} | {} | {} |", stats["counts"]["Training"][c], stats["counts"]["PublicTest"][c], stats["counts"]["PrivateTest"][c])?;
        }
        writeln!(
            md,
            "\n{} faces. Imbalance in Training: the largest class is {:.1}x the smallest (disgust). Exact duplicates: {} groups holding {} faces; {} groups cross splits ({}); {} groups carry conflicting labels; {} faces are blank or near-constant. (Source: `{}`.)\n",
            stats["total"],
            stats["imbalance"].as_f64().unwrap_or(0.0),
            stats["duplicate_groups"],
            stats["faces_in_duplicate_groups"],
            stats["cross_split_groups"].as_array().map_or(0, Vec::len),
            stats["cross_split_pairs"],
            stats["conflicting_label_groups"],
            stats["near_constant"].as_array().map_or(0, Vec::len),
            rel(stats_path, out)
        )?;
        if let Some(sharp) = stats["sharpness"].as_object() {
            let get = |k: &str| sharp.get(k).and_then(|v| v.as_f64()).unwrap_or(0.0);
            let (train, public, private) = (get("Training"), get("PublicTest"), get("PrivateTest"));
            writeln!(md, "Sharpness (mean absolute difference of neighbouring pixels): Training {train:.2}, PublicTest {public:.2}, PrivateTest {private:.2}.")?;
            if train > 0.0 && public > 1.5 * train {
                let sigma = stats["training_blur_sigma"].as_f64().map_or(String::new(), |s| format!(" (as smooth as the test faces blurred by a Gaussian of σ = {s:.2} px)"));
                writeln!(md, " **The Training faces of this release are {:.1}x smoother than the test faces**{sigma}: they were blurred before encoding, so every model trained on them meets sharper faces at test time. Blurring test faces to match (`eval_blur`, chosen on PublicTest) is one of the methods below. A blur this wide leaves nothing above about 0.15 cycles per pixel, so a face averaged down to 16x16 keeps what the Training faces carry (`input_pool`).", public / train)?;
            }
            writeln!(md)?;
        }
    }
    for fig in &inputs.figures {
        writeln!(md, "![{}]({})\n", fig.file_stem().unwrap_or_default().to_string_lossy(), rel(fig, out))?;
    }
    writeln!(md, "**Baseline** (the notebook's network: 7 conv + 6 linear layers, Adam lr 1e-3, batch 400, 10 epochs, cross-entropy, inputs in [-1, 1]): best PublicTest accuracy {} at epoch {}, PrivateTest {} for that checkpoint; {} FLOPs (fvcore), {} parameters, {:.0} s of training on {} ({} threads). The notebook reported about 54.6% validation accuracy. (Source: `{}`.)\n",
        pct(b.val_acc), b.best_epoch, pct(b.test_acc), b.fvcore_flops, b.params, b.train_seconds, b.machine, b.threads, rel(&baseline.dir, out))?;
    writeln!(md, "![baseline accuracy]({}) ![baseline loss]({})\n", rel(&baseline.dir.join("accuracy.png"), out), rel(&baseline.dir.join("loss.png"), out))?;

    // 2. Modifications and the ablation.
    writeln!(md, "## 2. What was changed, and what each change bought\n")?;
    if let Some(ab) = &inputs.ablation {
        let table = std::fs::read_to_string(ab.join("ablation.md"))?;
        writeln!(md, "Each row is a full training run of the same network family with the same seed, data and epochs; Y marks the methods turned on. (Source: `{}`.)\n", rel(ab, out))?;
        writeln!(md, "{table}")?;
        // What each method bought, row against the previous row (cumulative ablations).
        let rows = ablation_runs;
        let csv = std::fs::read_to_string(ab.join("ablation.csv")).unwrap_or_default();
        let methods: Vec<String> = csv.lines().next().unwrap_or("").split(',').skip(1).map(|h| h.trim_matches('"').to_string()).take_while(|h| !h.starts_with("PublicTest")).collect();
        if rows.len() == methods.len() + 1 {
            writeln!(md, "Row by row (PublicTest decides; PrivateTest shown for the record):\n")?;
            for (k, m) in methods.iter().enumerate() {
                let (a, b) = (&rows[k].summary, &rows[k + 1].summary);
                writeln!(
                    md,
                    "- adding **{m}**: PublicTest {:+.2} points ({} -> {}), PrivateTest {:+.2} points, FLOPs {:+}",
                    100.0 * (b.val_acc - a.val_acc),
                    pct(a.val_acc),
                    pct(b.val_acc),
                    100.0 * (b.test_acc - a.test_acc),
                    b.fvcore_flops - a.fvcore_flops
                )?;
            }
            writeln!(md)?;
        }
        if let Some(first) = ablation_dirs.first() {
            let config = std::fs::read_to_string(first.join("config.toml")).unwrap_or_default();
            writeln!(md, "The ablation's base config (row 0):\n\n```toml\n{}```\n", config)?;
        }
    } else {
        writeln!(md, "No ablation was given to this report.\n")?;
    }
    beyond_the_ablation(&mut md, &others[..inputs.runs.len()], out)?;

    // 3. Cost.
    writeln!(md, "## 3. Cost and efficiency\n")?;
    writeln!(md, "FLOPs are counted as fvcore counts them for one 1x48x48 forward pass in eval mode: one multiply-add is one flop; convolutions count output elements x in-channels/groups x kh x kw, linear layers in x out, batch norm 2 per element, adaptive average pooling 1 per input element; activations, max pooling, dropout and additions count nothing. Efficiency = PrivateTest accuracy in % / GFLOPs.\n")?;
    writeln!(md, "| run | PublicTest | PrivateTest | FLOPs (fvcore) | params | efficiency calculation |\n|---|---:|---:|---:|---:|---|")?;
    for r in &all {
        let s = &r.summary;
        writeln!(
            md,
            "| {} | {} | {} | {} | {} | {:.2} / {:.5} = **{:.1}** |",
            s.name,
            pct(s.val_acc),
            pct(s.test_acc),
            s.fvcore_flops,
            s.params,
            100.0 * s.test_acc,
            s.fvcore_flops as f64 / 1e9,
            s.efficiency
        )?;
        if let Some(t) = &s.tta {
            writeln!(md, "| {} + {:?} TTA ({} views) | {} | {} | {} | {} | {:.2} / {:.5} = **{:.1}** |", s.name, t.kind, t.views, pct(t.val_acc), pct(t.test_acc), t.fvcore_flops, s.params, 100.0 * t.test_acc, t.fvcore_flops as f64 / 1e9, t.efficiency)?;
        }
    }
    for c in shipped {
        writeln!(
            md,
            "| **{}** (shipped, BN folded) | {} | {} | {} | {} | {:.2} / {:.5} = **{:.1}** |",
            c.name,
            pct(c.val_acc),
            pct(c.test_acc),
            c.fvcore_flops,
            c.params,
            100.0 * c.test_acc,
            c.fvcore_flops as f64 / 1e9,
            c.efficiency
        )?;
    }
    let cut = b.fvcore_flops as f64 / best.summary.fvcore_flops as f64;
    let baseline_flops = crate::flops::count_config(&crate::config::Config::parse(&baseline.config)?)?;
    let sum_of = |prefix: &str| -> i64 { baseline_flops.layers.iter().filter(|l| l.kind.starts_with(prefix)).map(|l| l.fvcore).sum() };
    let (head_flops, conv_flops) = (sum_of("linear"), sum_of("conv"));
    writeln!(
        md,
        "\nThe model chosen on PublicTest, `{}`, needs {:.1}x {} FLOPs than the baseline ({} vs {}) and scores {} on PrivateTest against the baseline's {}: efficiency {:.1} vs {:.1} %/GFLOP. Most of the baseline's cost is in its convolutions ({} FLOPs: 3x3 convolutions up to 256 channels on 48x48, 24x24 and 12x12 maps) and little in its fully connected head ({} FLOPs, though nearly all of its parameters); the small networks cut the convolutions by downsampling at once (a stride-2 first layer) and keeping widths small, and replace the head with global average pooling and one linear layer.\n",
        best.summary.name,
        if cut >= 1.0 { cut } else { 1.0 / cut },
        if cut >= 1.0 { "fewer" } else { "more" },
        best.summary.fvcore_flops,
        b.fvcore_flops,
        pct(best.summary.test_acc),
        pct(b.test_acc),
        best.summary.efficiency,
        b.efficiency,
        conv_flops,
        head_flops
    )?;
    if !shipped.is_empty() {
        writeln!(md, "\nA shipped model is its run with every batch norm folded into the convolution before it (`fer export`): the same function (checked on PublicTest at export, and by a test on random statistics), without the 2 FLOPs per element that fvcore counts for eval-mode batch norm. Its efficiency uses the folded count.")?;
    }
    let pareto = inputs.out.join("pareto.png");
    writeln!(md, "\n![accuracy vs GFLOPs]({})\n\nBlue dots are this project's runs (ablation rows by number), orange crosses the shipped models; grey triangles are published reference points, placed by their reported accuracy and an estimate of their fvcore GFLOPs; mini-Xception's 66% is on a random split, not PrivateTest.\n", rel(&pareto, out))?;

    // 4. Limitations and conclusions.
    writeln!(md, "## 4. Limitations and conclusions\n")?;
    if let Some(test) = &best.test {
        let mut by_recall: Vec<usize> = (0..NUM_CLASSES).collect();
        by_recall.sort_by(|&a, &b| test.per_class[a].recall.total_cmp(&test.per_class[b].recall));
        let worst: Vec<String> = by_recall[..3].iter().map(|&c| format!("{} (recall {:.2}, F1 {:.2})", CLASSES[c], test.per_class[c].recall, test.per_class[c].f1)).collect();
        let mut confusions: Vec<(u64, usize, usize)> = Vec::new();
        for t in 0..NUM_CLASSES {
            for p in 0..NUM_CLASSES {
                if t != p {
                    confusions.push((test.confusion[t][p], t, p));
                }
            }
        }
        confusions.sort_by(|a, b| b.0.cmp(&a.0));
        let top: Vec<String> = confusions[..3].iter().map(|(n, t, p)| format!("{} taken for {} ({n} faces)", CLASSES[*t], CLASSES[*p])).collect();
        writeln!(md, "- Per class (PrivateTest, `{}`): the weakest classes are {}. The most frequent confusions: {}.", best.summary.name, worst.join(", "), top.join("; "))?;
        writeln!(md, "\n![confusion matrix]({})\n", rel(&best.dir.join("confusion_test.png"), out))?;
    }
    writeln!(md, "- Label noise: FER-2013 holds exact duplicate faces, some across splits and some with conflicting labels (section 1); human accuracy on it is about 65 ± 5%, which bounds what any label-faithful model can show.")?;
    writeln!(md, "- Each configuration was trained once, with one seed: differences of a point or less between rows are within seed-to-seed noise and should not be read as effects.")?;
    writeln!(md, "- Runs were trained on a 2-core CPU: the ablation's rows are 10-epoch runs of small networks, and the longer runs and distillation above were tried once each rather than tuned; larger teachers and ten-crop test-time augmentation were not tried.")?;
    writeln!(md, "- The image-folder release went through JPEG once, so its pixels differ slightly from the CSV release; accuracies are comparable with published ones to within noise.")?;
    writeln!(
        md,
        "\nConclusion: the best model on PublicTest, `{}`, reaches {} on PrivateTest at {:.5} GFLOPs, against the baseline's {} at {:.4} GFLOPs.",
        best.summary.name,
        pct(best.summary.test_acc),
        best.summary.fvcore_flops as f64 / 1e9,
        pct(b.test_acc),
        b.fvcore_flops as f64 / 1e9
    )?;
    for c in shipped {
        writeln!(
            md,
            "Shipped as `models/{}` (batch norm folded): {} on PrivateTest at {:.5} GFLOPs, efficiency {:.1} %/GFLOP.",
            c.name,
            pct(c.test_acc),
            c.fvcore_flops as f64 / 1e9,
            c.efficiency
        )?;
    }

    Ok(md)
}

/// A short description of a run's network, from its config.
fn network(config: &crate::config::Config) -> String {
    match (&config.model.network, &config.model.convnet) {
        (Some(name), _) => name.clone(),
        (None, Some(c)) => {
            let mut s = format!("convnet {:?} x{}", c.widths, c.blocks);
            if c.input_pool > 1 {
                s += &format!(", input averaged /{}", c.input_pool);
            }
            for (on, what) in [(c.separable, "separable"), (c.residual, "residual"), (c.batch_norm, "BN")] {
                if on {
                    s += &format!(", {what}");
                }
            }
            s
        }
        _ => "explicit layers".into(),
    }
}

/// The runs given beyond the ablation (longer training, distillation), with the distillation
/// measured against the same config trained without a teacher, where both were run.
fn beyond_the_ablation(md: &mut String, runs: &[Run], out: &Path) -> anyhow::Result<()> {
    if runs.is_empty() {
        return Ok(());
    }
    let configs: Vec<crate::config::Config> = runs.iter().map(|r| crate::config::Config::parse(&r.config)).collect::<anyhow::Result<_>>()?;
    writeln!(md, "### Beyond the ablation: longer training and distillation
")?;
    writeln!(md, "| run | network | epochs (best) | distilled from | eval blur (σ, chosen on PublicTest) | PublicTest | PrivateTest | FLOPs (fvcore) | efficiency |\n|---|---|---:|---|---|---:|---:|---:|---:|")?;
    for (r, c) in runs.iter().zip(&configs) {
        let s = &r.summary;
        let blur = if s.blur_sweep.is_empty() {
            format!("{}", c.train.eval_blur)
        } else {
            let tried: Vec<String> = s.blur_sweep.iter().map(|b| format!("{}: {}", b.sigma, pct(b.val_acc))).collect();
            format!("**{}** ({})", s.eval_blur, tried.join(", "))
        };
        writeln!(
            md,
            "| [{}]({}) | {} | {} ({}) | {} | {} | {} | {} | {} | {:.1} |",
            s.name,
            rel(&r.dir, out),
            network(c),
            s.epochs,
            s.best_epoch,
            c.train.teacher.as_deref().unwrap_or("none"),
            blur,
            pct(s.val_acc),
            pct(s.test_acc),
            s.fvcore_flops,
            s.efficiency
        )?;
    }
    writeln!(md)?;
    for (i, c) in configs.iter().enumerate() {
        if c.train.teacher.is_none() {
            continue;
        }
        let twin = configs.iter().enumerate().position(|(j, o)| {
            let mut o = o.clone();
            o.name = c.name.clone();
            o.train.teacher = c.train.teacher.clone();
            o.train.distill_weight = c.train.distill_weight;
            o.train.distill_temperature = c.train.distill_temperature;
            // The blur chosen at the end may differ between the two; the recipe may not.
            o.train.eval_blur = c.train.eval_blur;
            j != i && o == *c
        });
        if let Some(j) = twin {
            let (on, off) = (&runs[i].summary, &runs[j].summary);
            writeln!(
                md,
                "Distillation (`{}` against `{}`: the same network, recipe and seed, plus the teacher's outputs softened at temperature {} with weight {}): PublicTest {:+.2} points ({} -> {}), PrivateTest {:+.2} points.\n",
                on.name,
                off.name,
                c.train.distill_temperature,
                c.train.distill_weight,
                100.0 * (on.val_acc - off.val_acc),
                pct(off.val_acc),
                pct(on.val_acc),
                100.0 * (on.test_acc - off.test_acc)
            )?;
        }
    }
    Ok(())
}

/// The Markdown as one HTML page, with every local image inlined as a data URI.
fn html(md: &str, base: &Path) -> String {
    let mut opts = pulldown_cmark::Options::empty();
    opts.insert(pulldown_cmark::Options::ENABLE_TABLES);
    let events = pulldown_cmark::Parser::new_ext(md, opts).map(|event| match event {
        pulldown_cmark::Event::Start(pulldown_cmark::Tag::Image { link_type, dest_url, title, id }) => {
            let inlined = std::fs::read(base.join(dest_url.as_ref()))
                .map(|bytes| format!("data:image/png;base64,{}", base64::engine::general_purpose::STANDARD.encode(bytes)))
                .unwrap_or_else(|_| dest_url.to_string());
            pulldown_cmark::Event::Start(pulldown_cmark::Tag::Image { link_type, dest_url: inlined.into(), title, id })
        }
        other => other,
    });
    let mut body = String::new();
    pulldown_cmark::html::push_html(&mut body, events);
    format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>FER-2013 report</title><style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto;line-height:1.45}}table{{border-collapse:collapse}}td,th{{border:1px solid #bbb;padding:3px 8px}}img{{max-width:48%}}pre{{background:#f4f4f4;padding:8px}}</style></head><body>\n{body}</body></html>\n"
    )
}
