//! `fer report`: the competition report, written from run records only. Every number comes
//! from a `summary.json`, `metrics.jsonl`, `test_eval.json`, an ablation table or the data
//! statistics; nothing is typed in by hand. Writes `REPORT.md` and a self-contained
//! `report.html` (images inlined).

use base64::Engine;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::data::{CLASSES, NUM_CLASSES};
use crate::nn::score::Evaluation;
use crate::nn::export::Card;
use crate::record::{EpochMetrics, Summary, TtaScore};

mod figures;
mod pdf;
mod records;
mod template;

#[derive(Clone, Debug, Default)]
pub struct ReportInputs {
    /// The baseline's run record.
    pub baseline: PathBuf,
    /// Other run records (ablation rows are found on their own).
    pub runs: Vec<PathBuf>,
    /// Ablation output folders (table and row records): cumulative, one-off, or both.
    pub ablations: Vec<PathBuf>,
    /// Records of one ablation row (or given run) trained again with other seeds: the noise.
    pub seed_runs: Vec<PathBuf>,
    pub data_stats: Option<PathBuf>,
    /// Extra figures to include (e.g. sample faces); kept out of committed reports.
    pub figures: Vec<PathBuf>,
    pub out: PathBuf,
    /// Shipped model folders (`fer export`: card.json), reported with their folded FLOPs.
    pub models: Vec<PathBuf>,
    /// A second copy of the Markdown (e.g. the repository's REPORT.md), links rebased to it.
    pub copy_to: Option<PathBuf>,
    /// The template to render (MiniJinja over the records); the default gives the tables and
    /// figures of the records above.
    pub template: Option<PathBuf>,
    /// Also print `report.pdf` (headless Chromium).
    pub pdf: bool,
    /// Where the paths a template names start (default: the working directory).
    pub root: PathBuf,
    /// Further documents over the same records: (template, output file), e.g. the README.
    pub documents: Vec<(PathBuf, PathBuf)>,
}

/// Published reference points for the accuracy-per-FLOP plot: (name, accuracy %, GFLOPs).
/// GFLOPs are estimates in fvcore's counting, accuracies as published (see the notes).
pub const ANCHORS: [(&str, f64, f64); 4] = [
    ("notebook baseline", 54.6, 0.3275),
    ("mini-Xception (random split)", 66.0, 0.0059),
    ("VGG (Khaireddin & Chen)", 73.28, 0.35),
    ("RMN (Pham et al.)", 74.14, 15.0),
];

struct Run {
    dir: PathBuf,
    summary: Summary,
    test: Option<Evaluation>,
    config: String,
    metrics: Vec<EpochMetrics>,
}

fn load_run(dir: &Path) -> anyhow::Result<Run> {
    let path = dir.join("summary.json");
    let bytes = std::fs::read(&path).map_err(|e| anyhow::anyhow!("no run record at {}: {e}", path.display()))?;
    let summary = serde_json::from_slice(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let test = std::fs::read(dir.join("test_eval.json")).ok().and_then(|b| serde_json::from_slice(&b).ok());
    let config = std::fs::read_to_string(dir.join("config.toml")).unwrap_or_default();
    let metrics = std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    Ok(Run { dir: dir.to_path_buf(), summary, test, config, metrics })
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

/// PrivateTest accuracy with the leak-aware score beside it, where the record has one.
fn private(acc: f64, unseen: Option<f64>) -> String {
    match unseen {
        Some(u) => format!("{} ({})", pct(acc), pct(u)),
        None => pct(acc),
    }
}

/// One row of the cost table: the scores, the FLOPs and the efficiency worked out.
#[allow(clippy::too_many_arguments)]
fn cost_row(md: &mut String, label: &str, val_acc: f64, test_acc: f64, unseen: Option<f64>, flops: i64, params: i64, efficiency: f64) -> std::fmt::Result {
    writeln!(
        md,
        "| {label} | {} | {} | {flops} | {params} | {:.2} / {:.5} = **{efficiency:.1}** |",
        pct(val_acc),
        private(test_acc, unseen),
        100.0 * test_acc,
        flops as f64 / 1e9,
    )
}

/// A model scored with test-time augmentation: a row of its own, with the FLOPs of every view.
fn tta_row(md: &mut String, name: &str, params: i64, t: &TtaScore) -> std::fmt::Result {
    let label = format!("{name} + {} TTA ({} views)", t.kind, t.views);
    cost_row(md, &label, t.val_acc, t.test_acc, t.test_acc_unseen, t.fvcore_flops, params, t.efficiency)
}

/// Runs found in an ablation folder (one record folder per row), in row order.
fn ablation_rows(dir: &Path) -> Vec<PathBuf> {
    let mut rows: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.join("summary.json").is_file()).collect())
        .unwrap_or_default();
    rows.sort();
    rows
}

/// The default template: the tables and figures of whatever records it is given.
pub const DEFAULT_TEMPLATE: &str = include_str!("default.md.j2");

/// The default report's sections, as template functions.
type Section = fn(&ReportInputs, &Records, &Path) -> anyhow::Result<String>;
const SECTIONS: [(&str, Section); 6] = [
    ("data_section", data_section),
    ("baseline_section", baseline_section),
    ("changes_section", changes_section),
    ("cost_section", cost_section),
    ("time_section", time_section),
    ("limitations_section", limitations_section),
];

/// Writes `REPORT.md` and `report.html` into `inputs.out` (the copy, and the PDF, if asked for).
pub fn write(inputs: &ReportInputs) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(&inputs.out)?;
    let records = std::sync::Arc::new(Records::load(inputs)?);
    let report = match &inputs.template {
        Some(path) => template::Template::read(path)?,
        None => template::Template::default_report(DEFAULT_TEMPLATE),
    };
    let md = template::render(&report, inputs, records.clone(), &inputs.out)?;
    let md_path = inputs.out.join("REPORT.md");
    crate::data::write_atomic(&md_path, md.as_bytes())?;
    let page = html(&md, &inputs.out);
    crate::data::write_atomic(&inputs.out.join("report.html"), page.as_bytes())?;
    if inputs.pdf {
        pdf::print(&page, &inputs.out.join("report.pdf"))?;
    }
    if let Some(copy) = &inputs.copy_to {
        let base = copy.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        crate::data::write_atomic(copy, template::render(&report, inputs, records.clone(), base)?.as_bytes())?;
    }
    for (path, out) in &inputs.documents {
        let document = template::Template::read(path)?;
        let base = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::fs::create_dir_all(base)?;
        crate::data::write_atomic(out, template::render(&document, inputs, records.clone(), base)?.as_bytes())?;
    }
    Ok(md_path)
}

fn load_card(dir: &Path) -> anyhow::Result<Card> {
    let path = dir.join("card.json");
    let bytes = std::fs::read(&path).map_err(|e| anyhow::anyhow!("{}: {e} (export the model with `fer export`)", path.display()))?;
    Ok(serde_json::from_slice(&bytes)?)
}

/// One ablation: its table, its methods, and each row's record with the methods it turns on.
struct Ablation {
    dir: PathBuf,
    table: String,
    methods: Vec<String>,
    rows: Vec<(Vec<bool>, Run)>,
}

impl Ablation {
    fn load(dir: &Path) -> anyhow::Result<Ablation> {
        let table = std::fs::read_to_string(dir.join("ablation.md")).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
        let mut csv = csv::Reader::from_path(dir.join("ablation.csv"))?;
        let methods: Vec<String> = csv.headers()?.iter().skip(1).take_while(|h| !h.starts_with("PublicTest")).map(String::from).collect();
        let mut rows = Vec::new();
        for record in csv.records() {
            let record = record?;
            let on = record.iter().skip(1).take(methods.len()).map(|c| c == "Y").collect();
            rows.push((on, load_run(&dir.join(&record[0]))?));
        }
        Ok(Ablation { dir: dir.to_path_buf(), table, methods, rows })
    }

    /// The row with exactly these methods on.
    fn row(&self, on: impl Fn(usize) -> bool) -> Option<&Summary> {
        let want: Vec<bool> = (0..self.methods.len()).map(on).collect();
        self.rows.iter().find(|(o, _)| *o == want).map(|(_, r)| &r.summary)
    }
}

/// Seed-to-seed spread of one recipe: the same config trained with several seeds.
struct Noise {
    name: String,
    seeds: Vec<u64>,
    val: Vec<f64>,
    test: Vec<f64>,
    unseen: Vec<f64>,
    /// With the runs' test-time augmentation, where every run scored one.
    tta_val: Vec<f64>,
    tta_test: Vec<f64>,
}

fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 { v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
    (mean, var.sqrt())
}

impl Noise {
    /// A difference between two single runs is within the noise when it is under twice its
    /// standard deviation: 2 x sqrt(2) x the seed-to-seed standard deviation of PublicTest.
    fn threshold(&self) -> f64 {
        2.0 * std::f64::consts::SQRT_2 * mean_std(&self.val).1
    }
}

/// Everything the report reads, loaded once.
struct Records {
    baseline: Run,
    /// The runs given, then every ablation's rows.
    others: Vec<Run>,
    ablations: Vec<Ablation>,
    noise: Option<Noise>,
    shipped: Vec<Card>,
}

impl Records {
    fn load(inputs: &ReportInputs) -> anyhow::Result<Records> {
        let ablations: Vec<Ablation> = inputs.ablations.iter().map(|d| Ablation::load(d)).collect::<anyhow::Result<_>>()?;
        let row_dirs: Vec<PathBuf> = ablations.iter().flat_map(|a| ablation_rows(&a.dir)).collect();
        let others: Vec<Run> = inputs.runs.iter().chain(&row_dirs).map(|d| load_run(d)).collect::<anyhow::Result<_>>()?;
        let seed_runs: Vec<Run> = inputs.seed_runs.iter().map(|d| load_run(d)).collect::<anyhow::Result<_>>()?;
        Ok(Records {
            noise: noise(&seed_runs, &others)?,
            baseline: load_run(&inputs.baseline)?,
            others,
            ablations,
            shipped: inputs.models.iter().map(|d| load_card(d)).collect::<anyhow::Result<_>>()?,
        })
    }

    /// The baseline, then every other run.
    fn all(&self) -> Vec<&Run> {
        std::iter::once(&self.baseline).chain(&self.others).collect()
    }

    /// The baseline and the five runs best on PublicTest among the timed ones: a plot's lines.
    fn highlighted(&self) -> Vec<&Run> {
        let mut rest: Vec<&Run> = self.timed().into_iter().skip(1).collect();
        rest.sort_by(|a, b| b.summary.val_acc.total_cmp(&a.summary.val_acc));
        std::iter::once(&self.baseline).chain(rest.into_iter().take(5)).collect()
    }

    /// The runs whose training time is worth a line: the baseline, the runs given, and each
    /// ablation's last row.
    fn timed(&self) -> Vec<&Run> {
        let given = self.others.len() - self.ablations.iter().map(|a| a.rows.len()).sum::<usize>();
        let mut runs: Vec<&Run> = std::iter::once(&self.baseline).chain(&self.others[..given]).collect();
        runs.extend(self.ablations.iter().filter_map(|a| a.rows.last().map(|(_, r)| r)));
        runs
    }
}

/// A recipe: the config with the seed and name left out.
fn recipe(config: &crate::config::Config) -> String {
    crate::config::Config { seed: 0, name: String::new(), ..config.clone() }.to_toml()
}

/// The seed runs, with the run among `others` that has their recipe (seed and name aside).
fn noise(seed_runs: &[Run], others: &[Run]) -> anyhow::Result<Option<Noise>> {
    let Some(first) = seed_runs.first() else { return Ok(None) };
    let recipe = |r: &Run| -> anyhow::Result<String> { Ok(recipe(&crate::config::Config::parse(&r.config)?)) };
    let want = recipe(first)?;
    for r in seed_runs {
        anyhow::ensure!(recipe(r)? == want, "the seed runs must share one recipe");
    }
    let mut group: Vec<&Run> = seed_runs.iter().collect();
    for r in others {
        if !group.iter().any(|g| g.summary.seed == r.summary.seed) && recipe(r)? == want {
            group.push(r);
        }
    }
    let original = group.iter().find(|r| !seed_runs.iter().any(|s| s.dir == r.dir)).unwrap_or(&group[0]).summary.name.clone();
    Ok(Some(Noise::of(original, group)))
}

impl Noise {
    fn of(name: String, mut group: Vec<&Run>) -> Noise {
        group.sort_by_key(|r| r.summary.seed);
        Noise {
            name,
            seeds: group.iter().map(|r| r.summary.seed).collect(),
            val: group.iter().map(|r| r.summary.val_acc).collect(),
            test: group.iter().map(|r| r.summary.test_acc).collect(),
            unseen: group.iter().filter_map(|r| r.summary.test_acc_unseen).collect(),
            tta_val: group.iter().map(|r| r.summary.tta.as_ref().map(|t| t.val_acc)).collect::<Option<_>>().unwrap_or_default(),
            tta_test: group.iter().map(|r| r.summary.tta.as_ref().map(|t| t.test_acc)).collect::<Option<_>>().unwrap_or_default(),
        }
    }

    /// "`name` trained with seeds 0, 1, 2: PublicTest m ± s points (...), PrivateTest m ± s, ..."
    fn describe(&self) -> String {
        let (v, t) = (mean_std(&self.val), mean_std(&self.test));
        let seeds: Vec<String> = self.seeds.iter().map(u64::to_string).collect();
        let unseen = (!self.unseen.is_empty()).then(|| mean_std(&self.unseen));
        format!(
            "`{}` trained with seeds {}: PublicTest {} ± {:.2} points (mean ± standard deviation; {} to {}), PrivateTest {} ± {:.2}{}",
            self.name,
            seeds.join(", "),
            pct(v.0),
            100.0 * v.1,
            pct(self.val.iter().copied().fold(f64::MAX, f64::min)),
            pct(self.val.iter().copied().fold(f64::MIN, f64::max)),
            pct(t.0),
            100.0 * t.1,
            unseen.map_or(String::new(), |u| format!(", leak-aware PrivateTest {} ± {:.2}", pct(u.0), 100.0 * u.1)),
        )
    }
}

/// The report's Markdown, its links relative to `base`.
/// What every section of the default report reads: the records, and the run best on PublicTest.
struct View<'a> {
    out: &'a Path,
    baseline: &'a Run,
    others: &'a [Run],
    ablations: &'a [Ablation],
    noise: &'a Option<Noise>,
    shipped: &'a [Card],
    all: Vec<&'a Run>,
    /// The model choice, on PublicTest only.
    best: &'a Run,
    b: &'a Summary,
}

impl<'a> View<'a> {
    fn new(records: &'a Records, out: &'a Path) -> View<'a> {
        let all = records.all();
        let best = all.iter().copied().max_by(|a, b| a.summary.val_acc.total_cmp(&b.summary.val_acc)).expect("the baseline is always there");
        let Records { baseline, others, ablations, noise, shipped } = records;
        View { out, baseline, others, ablations, noise, shipped, all, best, b: &baseline.summary }
    }
}

/// The data: counts per class and split, duplicates, sharpness, extra figures.
fn data_section(inputs: &ReportInputs, records: &Records, base: &Path) -> anyhow::Result<String> {
    let View { out, .. } = View::new(records, base);
    let mut md = String::new();
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
    Ok(md)
}

/// The baseline: its scores, cost and curves.
fn baseline_section(_inputs: &ReportInputs, records: &Records, base: &Path) -> anyhow::Result<String> {
    let View { out, baseline, b, .. } = View::new(records, base);
    let mut md = String::new();
    writeln!(md, "**Baseline** (the notebook's network: 7 conv + 6 linear layers, Adam lr 1e-3, batch 400, 10 epochs, cross-entropy, inputs in [-1, 1]): best PublicTest accuracy {} at epoch {}, PrivateTest {} for that checkpoint ({}); {} FLOPs (fvcore), {} parameters, {:.0} s of training on {} ({} threads, {}). The notebook reported about 54.6% validation accuracy. (Source: `{}`.)\n",
        pct(b.val_acc), b.best_epoch, pct(b.test_acc), b.test_acc_unseen.map_or("no leak-aware score recorded".into(), |u| format!("{} on the faces with no twin in Training", pct(u))), b.fvcore_flops, b.params, b.train_seconds, b.machine, b.threads, b.device, rel(&baseline.dir, out))?;
    writeln!(md, "![baseline accuracy]({}) ![baseline loss]({})\n", rel(&baseline.dir.join("accuracy.png"), out), rel(&baseline.dir.join("loss.png"), out))?;

    Ok(md)
}

/// The seed noise, every ablation with what each method bought, and the runs beyond it.
fn changes_section(inputs: &ReportInputs, records: &Records, base: &Path) -> anyhow::Result<String> {
    let View { out, others, ablations, noise, .. } = View::new(records, base);
    let mut md = String::new();
    if ablations.is_empty() {
        writeln!(md, "No ablation was given to this report.\n")?;
    }
    if let Some(n) = noise {
        writeln!(
            md,
            "**Seed noise.** {}. A difference between two single runs has a standard deviation of about √2 x that, so below a difference of **{:.2} points** on PublicTest (2√2 σ) two rows are not told apart; such effects are marked *(noise)* below.\n",
            n.describe(),
            100.0 * n.threshold()
        )?;
    }
    let effect = |a: Option<&Summary>, b: Option<&Summary>| -> String {
        let (Some(a), Some(b)) = (a, b) else { return "-".into() };
        let d = 100.0 * (b.val_acc - a.val_acc);
        let within = noise.as_ref().is_some_and(|n| d.abs() < 100.0 * n.threshold());
        format!("{d:+.2} ({:+.2}){}", 100.0 * (b.test_acc - a.test_acc), if within { " *(noise)*" } else { "" })
    };
    for ab in ablations {
        writeln!(md, "Each row is a full training run of the same network family with the same seed, data and epochs; Y marks the methods turned on; PrivateTest is followed by its leak-aware score (the faces with no pixel-identical twin in Training). (Source: `{}`.)\n", rel(&ab.dir, out))?;
        writeln!(md, "{}", ab.table)?;
        let k = ab.methods.len();
        writeln!(md, "What each method bought, in PublicTest points (PrivateTest in brackets); PublicTest decides:\n")?;
        writeln!(md, "| method | added to the rows before it | alone, against the base | removed from all, against all |\n|---|---:|---:|---:|")?;
        for (m, name) in ab.methods.iter().enumerate() {
            writeln!(
                md,
                "| {name} | {} | {} | {} |",
                effect(ab.row(|i| i < m), ab.row(|i| i <= m)),
                effect(ab.row(|_| false), ab.row(|i| i == m)),
                effect(ab.row(|i| i != m), ab.row(|_| true)),
            )?;
        }
        writeln!(md, "\n(- where this ablation has no such pair of rows; it has {} of the {} possible.)\n", ab.rows.len(), 1usize << k.min(20))?;
    }
    if let Some((_, first)) = ablations.first().and_then(|a| a.rows.first()) {
        writeln!(md, "The ablation's base config (row 0):\n\n```toml\n{}```\n", first.config)?;
    }
    beyond_the_ablation(&mut md, &others[..inputs.runs.len()], out)?;

    Ok(md)
}

/// Every run's cost and efficiency, the shipped models, and the accuracy-per-FLOP plot.
fn cost_section(_inputs: &ReportInputs, records: &Records, base: &Path) -> anyhow::Result<String> {
    let View { baseline, shipped, all, best, b, .. } = View::new(records, base);
    let mut md = String::new();
    writeln!(md, "FLOPs are counted as fvcore counts them for one 1x48x48 forward pass in eval mode: one multiply-add is one flop; convolutions count output elements x in-channels/groups x kh x kw, linear layers in x out, batch norm 2 per element, adaptive average pooling 1 per input element; activations, max pooling, dropout and additions count nothing. Efficiency = PrivateTest accuracy in % / GFLOPs.\n")?;
    writeln!(md, "| run | PublicTest | PrivateTest (leak-aware) | FLOPs (fvcore) | params | efficiency calculation |\n|---|---:|---:|---:|---:|---|")?;
    for r in &all {
        let s = &r.summary;
        cost_row(&mut md, &s.name, s.val_acc, s.test_acc, s.test_acc_unseen, s.fvcore_flops, s.params, s.efficiency)?;
        if let Some(t) = &s.tta {
            tta_row(&mut md, &s.name, s.params, t)?;
        }
    }
    for c in shipped {
        let label = format!("**{}** (shipped, BN folded)", c.name);
        cost_row(&mut md, &label, c.val_acc, c.test_acc, c.test_acc_unseen, c.fvcore_flops, c.params, c.efficiency)?;
        if let Some(t) = &c.flip_tta {
            tta_row(&mut md, &format!("**{}** (shipped)", c.name), c.params, t)?;
        }
    }
    let cut = b.fvcore_flops as f64 / best.summary.fvcore_flops as f64;
    // Within 10% either way a ratio reads oddly ("1.0x fewer"); a share says it plainly.
    let compared = if cut >= 1.1 {
        format!("{cut:.1}x fewer FLOPs than")
    } else if cut <= 1.0 / 1.1 {
        format!("{:.1}x more FLOPs than", 1.0 / cut)
    } else {
        format!("{:.0}% of the FLOPs of", 100.0 / cut)
    };
    let baseline_flops = crate::nn::flops::count_config(&crate::config::Config::parse(&baseline.config)?)?;
    let sum_of = |prefix: &str| -> i64 { baseline_flops.layers.iter().filter(|l| l.kind.starts_with(prefix)).map(|l| l.fvcore).sum() };
    let (head_flops, conv_flops) = (sum_of("linear"), sum_of("conv"));
    writeln!(
        md,
        "\nThe model chosen on PublicTest, `{}`, needs {compared} the baseline ({} vs {}) and scores {} on PrivateTest (leak-aware in brackets) against the baseline's {}: efficiency {:.1} vs {:.1} %/GFLOP. Most of the baseline's cost is in its convolutions ({} FLOPs: 3x3 convolutions up to 256 channels on 48x48, 24x24 and 12x12 maps) and little in its fully connected head ({} FLOPs, though nearly all of its parameters); the small networks cut the convolutions by downsampling at once (a stride-2 first layer) and keeping widths small, and replace the head with global average pooling and one linear layer.\n",
        best.summary.name,
        best.summary.fvcore_flops,
        b.fvcore_flops,
        private(best.summary.test_acc, best.summary.test_acc_unseen),
        private(b.test_acc, b.test_acc_unseen),
        best.summary.efficiency,
        b.efficiency,
        conv_flops,
        head_flops
    )?;
    if !shipped.is_empty() {
        writeln!(md, "\nA shipped model is its run with every batch norm folded into the convolution before it (`fer export`): the same function (checked on PublicTest at export, and by a test on random statistics), without the 2 FLOPs per element that fvcore counts for eval-mode batch norm. Its efficiency uses the folded count. A row with TTA is the same weights with test-time augmentation (the face and its mirror image, or ten crops and their mirrors, averaged): each view is one more forward pass, counted in its FLOPs; it is reported apart and never replaces the single pass.")?;
    }

    Ok(md)
}

/// Training time to accuracy: a table and a plot.
fn time_section(_inputs: &ReportInputs, records: &Records, _base: &Path) -> anyhow::Result<String> {
    let mut md = String::new();
    writeln!(md, "| run | device | machine | threads | epochs | median s / epoch | time to the chosen weights | total |\n|---|---|---|---:|---:|---:|---:|---:|")?;
    for r in records.timed() {
        let s = &r.summary;
        let mut secs: Vec<f64> = r.metrics.iter().map(|m| m.seconds).collect();
        secs.sort_by(f64::total_cmp);
        let median = secs.get(secs.len() / 2).copied().unwrap_or(0.0);
        let to_best: f64 = r.metrics.iter().take(s.epochs_to_weights()).map(|m| m.seconds).sum();
        writeln!(md, "| {} | {} | {} | {} | {} | {:.1} | {:.1} min | {:.1} min |", s.name, s.device, s.machine, s.threads, s.epochs, median, to_best / 60.0, s.train_seconds / 60.0)?;
    }
    writeln!(md, "\nTimes are wall clock, as recorded: where a run shared the cores with builds, tests or another job, its epochs took longer than its recipe needs alone (the median per epoch resists a few slow epochs, not a whole shared run).\n")?;

    Ok(md)
}

/// Per-class errors, noise, leakage and the conclusion.
fn limitations_section(_inputs: &ReportInputs, records: &Records, base: &Path) -> anyhow::Result<String> {
    let View { out, noise, shipped, best, b, .. } = View::new(records, base);
    let mut md = String::new();
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
    match noise {
        Some(n) => writeln!(md, "- Seed noise was measured on the ablation's recipe `{}` ({} seeds, section 2; repeated runs of any other recipe are summarised beside them); the other configurations were trained once, and an effect under {:.2} points of PublicTest is not distinguishable from a different seed.", n.name, n.seeds.len(), 100.0 * n.threshold())?,
        None => writeln!(md, "- Each configuration was trained once, with one seed: differences of a point or less between rows are within seed-to-seed noise and should not be read as effects.")?,
    }
    writeln!(md, "- Leakage: some PrivateTest faces have a pixel-identical twin in Training, which a model may simply remember. Every PrivateTest figure above is followed by the leak-aware score, over the faces without one; the gap between the two shows how much of a number rests on memorised duplicates.")?;
    writeln!(md, "- Runs were trained on a 2-core CPU unless their record names another device; the longer runs and distillation above were not tuned, and each recipe ran with one seed unless a `Seeds:` line gives its spread.")?;
    writeln!(
        md,
        "\nConclusion: the best model on PublicTest, `{}`, reaches {} on PrivateTest (leak-aware in brackets) at {:.5} GFLOPs, against the baseline's {} at {:.4} GFLOPs.",
        best.summary.name,
        private(best.summary.test_acc, best.summary.test_acc_unseen),
        best.summary.fvcore_flops as f64 / 1e9,
        private(b.test_acc, b.test_acc_unseen),
        b.fvcore_flops as f64 / 1e9
    )?;
    for c in shipped {
        writeln!(
            md,
            "Shipped as `models/{}` (batch norm folded): {} on PrivateTest at {:.5} GFLOPs, efficiency {:.1} %/GFLOP.",
            c.name,
            private(c.test_acc, c.test_acc_unseen),
            c.fvcore_flops as f64 / 1e9,
            c.efficiency
        )?;
    }

    Ok(md)
}


/// A short description of a run's network (and its training precision when not f32), from its config.
fn network(config: &crate::config::Config) -> String {
    let layers = match (&config.model.network, &config.model.convnet) {
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
    };
    let precision = if config.train.precision == crate::config::Precision::Bf16 { ", trained in bf16" } else { "" };
    layers + precision
}

/// The runs given beyond the ablation (longer training, distillation), with the distillation
/// measured against the same config trained without a teacher, where both were run.
fn beyond_the_ablation(md: &mut String, runs: &[Run], out: &Path) -> anyhow::Result<()> {
    if runs.is_empty() {
        return Ok(());
    }
    let configs: Vec<crate::config::Config> = runs.iter().map(|r| crate::config::Config::parse(&r.config)).collect::<anyhow::Result<_>>()?;
    writeln!(md, "### Beyond the ablation: longer training, distillation, precision\n")?;
    // The evaluation blur gets a column only where some run used it.
    let blurred = runs.iter().zip(&configs).any(|(r, c)| c.train.eval_blur > 0.0 || !r.summary.blur_sweep.is_empty());
    let blur_head = if blurred { " eval blur (σ, chosen on PublicTest) |" } else { "" };
    let blur_rule = if blurred { "---|" } else { "" };
    writeln!(md, "| run | network | epochs (best) | distilled from |{blur_head} PublicTest | PrivateTest (leak-aware) | FLOPs (fvcore) | efficiency |\n|---|---|---:|---|{blur_rule}---:|---:|---:|---:|")?;
    for (r, c) in runs.iter().zip(&configs) {
        let s = &r.summary;
        let blur = if !blurred {
            String::new()
        } else if s.blur_sweep.is_empty() {
            format!(" {} |", c.train.eval_blur)
        } else {
            let tried: Vec<String> = s.blur_sweep.iter().map(|b| format!("{}: {}", b.sigma, pct(b.val_acc))).collect();
            format!(" **{}** ({}) |", s.eval_blur, tried.join(", "))
        };
        writeln!(
            md,
            "| [{}]({}) | {} | {} ({}) | {} |{} {} | {} | {} | {:.1} |",
            s.name,
            rel(&r.dir, out),
            network(c),
            s.epochs,
            s.weights(),
            c.train.teacher.as_ref().map_or("none".to_string(), |t| t.to_string()),
            blur,
            pct(s.val_acc),
            private(s.test_acc, s.test_acc_unseen),
            s.fvcore_flops,
            s.efficiency
        )?;
    }
    writeln!(md)?;
    // Runs of one recipe with different seeds (indices into `runs`), and their spread.
    let recipes: Vec<String> = configs.iter().map(recipe).collect();
    let mut groups: Vec<(Vec<usize>, Noise)> = Vec::new();
    for i in 0..runs.len() {
        if groups.iter().any(|(members, _)| members.contains(&i)) {
            continue;
        }
        let mut members = vec![i];
        for j in i + 1..runs.len() {
            if recipes[j] == recipes[i] && !members.iter().any(|&m| runs[m].summary.seed == runs[j].summary.seed) {
                members.push(j);
            }
        }
        if members.len() > 1 {
            let noise = Noise::of(runs[i].summary.name.clone(), members.iter().map(|&m| &runs[m]).collect());
            groups.push((members, noise));
        }
    }
    for (i, c) in configs.iter().enumerate() {
        let Some(ours) = &c.train.teacher else { continue };
        // A twin taught by another teacher is compared once: the run listed later against the one listed first.
        let twin = configs.iter().enumerate().position(|(j, o)| {
            if j == i || (o.train.teacher.is_some() && j > i) {
                return false;
            }
            let mut o = o.clone();
            o.name = c.name.clone();
            o.train.teacher = c.train.teacher.clone();
            o.train.distill_weight = c.train.distill_weight;
            o.train.distill_temperature = c.train.distill_temperature;
            // The blur chosen at the end may differ between the two; the recipe may not.
            o.train.eval_blur = c.train.eval_blur;
            o == *c
        });
        if let Some(j) = twin {
            let (on, off) = (&runs[i].summary, &runs[j].summary);
            let gain = 100.0 * (on.val_acc - off.val_acc);
            // Judged against the spread of the twin's recipe, where it was trained with other seeds.
            let verdict = match groups.iter().find(|(members, _)| members.contains(&j)) {
                Some((_, n)) if gain.abs() < 100.0 * n.threshold() => format!(" *(noise: under the {:.2} points that tell two single runs of `{}` apart)*", 100.0 * n.threshold(), n.name),
                _ => String::new(),
            };
            let what = match &configs[j].train.teacher {
                None => format!(
                    "Distillation (`{}` against `{}`: the same network, recipe and seed, plus the teacher's outputs softened at temperature {} with weight {})",
                    on.name, off.name, c.train.distill_temperature, c.train.distill_weight
                ),
                Some(theirs) => format!(
                    "Teacher (`{}` against `{}`: the same network, recipe and seed, taught by {ours} instead of {theirs})",
                    on.name, off.name
                ),
            };
            writeln!(
                md,
                "{what}: PublicTest {:+.2} points ({} -> {}){verdict}, PrivateTest {:+.2} points.\n",
                gain,
                pct(off.val_acc),
                pct(on.val_acc),
                100.0 * (on.test_acc - off.test_acc)
            )?;
        }
    }
    for (_, noise) in &groups {
        writeln!(md, "Seeds: {}.\n", noise.describe())?;
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
    let body = keep_short_tables_whole(&body);
    format!("<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>FER-2013 report</title><style>{STYLE}</style></head><body>\n{body}</body></html>\n")
}

/// Wraps each table of at most `SHORT_TABLE_ROWS` rows, with the caption just above it, in a
/// block the printer keeps on one page; longer tables may break between rows, their caption
/// kept with their first rows.
fn keep_short_tables_whole(body: &str) -> String {
    const SHORT_TABLE_ROWS: usize = 16;
    let mut out = String::with_capacity(body.len() + 256);
    let mut rest = body;
    while let Some(start) = rest.find("<table>") {
        let end = rest[start..].find("</table>").map_or(rest.len(), |e| start + e + "</table>".len());
        let (before, table) = (&rest[..start], &rest[start..end]);
        let caption = before.rfind("<p class=\"caption\">").filter(|&c| {
            before[c..].find("</p>").is_some_and(|close| before[c + close + "</p>".len()..].trim().is_empty())
        });
        if table.matches("<tr>").count() <= SHORT_TABLE_ROWS {
            let head = caption.unwrap_or(start);
            out.push_str(&before[..head]);
            out.push_str("<div class=\"whole\">");
            out.push_str(&before[head..]);
            out.push_str(table);
            out.push_str("</div>");
        } else {
            out.push_str(before);
            out.push_str(table);
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// One style for the screen and the printed PDF: A4 pages numbered at the foot, figures and
/// tables kept whole, wide tables in a smaller type, figures no taller than a third of a page
/// so that they share it with the text around them.
const STYLE: &str = "
body { font-family: 'DejaVu Serif', Georgia, serif; max-width: 980px; margin: 2em auto; line-height: 1.45; color: #111; }
h1, h2, h3 { font-family: 'DejaVu Sans', Helvetica, sans-serif; }
h1 { font-size: 1.7em; } h2 { font-size: 1.35em; margin-top: 1.6em; } h3 { font-size: 1.1em; }
table { border-collapse: collapse; margin: 0.6em 0 1.2em; font-size: 0.86em; break-inside: avoid; }
td, th { border: 1px solid #bbb; padding: 2px 6px; }
th { background: #f0f0f0; }
img { display: block; max-width: 100%; margin: 0.8em auto 0.2em; break-inside: avoid; break-after: avoid; }
.caption { font-size: 0.9em; break-after: avoid; margin-bottom: 0.2em; }
.whole { break-inside: avoid; }
pre { background: #f4f4f4; padding: 8px; font-size: 0.8em; white-space: pre-wrap; }
code { font-size: 0.9em; }
@page { size: A4; margin: 16mm 14mm 18mm; @bottom-center { content: counter(page); font-family: sans-serif; font-size: 9pt; } }
@media print { body { max-width: none; margin: 0; font-size: 10.2pt; } h2, h3 { break-after: avoid; } table { font-size: 8.5pt; break-inside: auto; } tr { break-inside: avoid; } img { max-height: 9.5cm; width: auto; } }
";

#[cfg(test)]
mod tests {
    use super::keep_short_tables_whole;

    fn table(rows: usize) -> String {
        format!("<table>{}</table>", "<tr><td>1</td></tr>".repeat(rows))
    }

    #[test]
    fn a_short_table_and_its_caption_are_printed_whole_a_long_one_may_break() {
        let short = format!("<p>text</p>\n<p class=\"caption\"><em>Table 1.</em> c</p>\n\n{}", table(3));
        let got = keep_short_tables_whole(&short);
        assert_eq!(got, format!("<p>text</p>\n<div class=\"whole\"><p class=\"caption\"><em>Table 1.</em> c</p>\n\n{}</div>", table(3)));
        let long = format!("<p class=\"caption\">c</p>\n{}<p>after</p>", table(40));
        assert_eq!(keep_short_tables_whole(&long), long);
        // A caption with text between it and the table is not the table's.
        let apart = format!("<p class=\"caption\">c</p><p>text</p>{}", table(2));
        assert_eq!(keep_short_tables_whole(&apart), format!("<p class=\"caption\">c</p><p>text</p><div class=\"whole\">{}</div>", table(2)));
    }
}
