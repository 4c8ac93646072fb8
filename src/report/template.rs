//! The report's template language: MiniJinja over the run records. A template reaches every
//! record by its path (`run("results/baseline")`, `card("models/tiny")`, `json(...)`), so each
//! number it prints names where it came from; a missing record or field stops the render with
//! its path or name. Figures and tables are numbered in order and cited with `ref(id)`.

use minijinja::value::{Kwargs, Value};
use minijinja::{Environment, Error, ErrorKind, UndefinedBehavior};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::{figures, records, ReportInputs};

/// Figure and table numbers: the first pass collects them, the second prints them (so a
/// sentence may cite a figure that comes later).
#[derive(Default)]
pub struct Numbering {
    /// id -> ("Figure" | "Table", number), from the previous pass.
    known: BTreeMap<String, (&'static str, usize)>,
    seen: BTreeMap<String, (&'static str, usize)>,
    figures: usize,
    tables: usize,
}

impl Numbering {
    fn number(&mut self, id: &str, kind: &'static str) -> Result<usize, Error> {
        if self.seen.contains_key(id) {
            return Err(fail(format!("the id `{id}` names two figures or tables")));
        }
        let n = if kind == "Figure" { &mut self.figures } else { &mut self.tables };
        *n += 1;
        self.seen.insert(id.to_string(), (kind, *n));
        Ok(*n)
    }

    /// Starts the next pass with what this one found.
    pub fn next_pass(&mut self) {
        self.known = std::mem::take(&mut self.seen);
        self.figures = 0;
        self.tables = 0;
    }
}

fn fail(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidOperation, msg.into())
}

fn wrap(e: anyhow::Error) -> Error {
    fail(format!("{e:#}"))
}

/// What every function sees: the inputs, where the figures go, where links start from.
struct Scope {
    inputs: ReportInputs,
    /// The folder of the document being written: links are relative to it.
    base: PathBuf,
    numbering: Arc<Mutex<Numbering>>,
    records: Arc<super::Records>,
}

impl Scope {
    /// A path a template names, from the records' root.
    fn at(&self, path: &str) -> PathBuf {
        self.inputs.root.join(path)
    }

    fn all_at(&self, paths: &[String]) -> Vec<PathBuf> {
        paths.iter().map(|p| self.at(p)).collect()
    }

    fn link(&self, path: &str) -> String {
        super::rel(&self.at(path), &self.base)
    }

    /// A figure file in the output folder.
    fn figure_path(&self, file: &str) -> PathBuf {
        std::path::absolute(self.inputs.out.join(file)).unwrap_or_else(|_| self.inputs.out.join(file))
    }
}

/// `code` spans as HTML, for captions written as raw HTML (where Markdown is not read).
fn inline_code(text: &str) -> String {
    let mut out = String::new();
    for (i, part) in text.split('`').enumerate() {
        let escaped = part.replace('&', "&amp;").replace('<', "&lt;");
        if i % 2 == 1 {
            out += &format!("<code>{escaped}</code>");
        } else {
            out += &escaped;
        }
    }
    out
}

/// 327505392 -> "327,505,392".
fn thousands(v: i64) -> String {
    let digits = v.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if v < 0 {
        out.insert(0, '-');
    }
    out
}

/// A record for the template.
fn value(record: anyhow::Result<serde_json::Value>) -> Result<Value, Error> {
    record.map(|v| Value::from_serialize(&v)).map_err(wrap)
}

fn number(v: &Value) -> Result<f64, Error> {
    f64::try_from(v.clone()).map_err(|_| fail(format!("expected a number, got {v}")))
}

/// The environment for one document written into `base`.
pub fn environment(inputs: &ReportInputs, records: Arc<super::Records>, base: &Path, numbering: Arc<Mutex<Numbering>>) -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_keep_trailing_newline(true);
    let scope = Arc::new(Scope { inputs: inputs.clone(), base: base.to_path_buf(), numbering, records });

    // Number formats. Fractions (0.7267) print as percentages; differences as signed points.
    env.add_filter("pct", |v: Value| -> Result<String, Error> { Ok(super::pct(number(&v)?)) });
    env.add_filter("pc", |v: Value| -> Result<String, Error> { Ok(format!("{:.2}", 100.0 * number(&v)?)) });
    env.add_filter("pp", |v: Value| -> Result<String, Error> { Ok(format!("{:+.2}", 100.0 * number(&v)?)) });
    env.add_filter("num", |v: Value| -> Result<String, Error> { Ok(thousands(number(&v)?.round() as i64)) });
    env.add_filter("fixed", |v: Value, digits: usize| -> Result<String, Error> { Ok(format!("{:.*}", digits, number(&v)?)) });
    // How many halvings a ratio is (a FLOP saving read per factor of two).
    env.add_filter("log2", |v: Value| -> Result<f64, Error> { Ok(number(&v)?.log2()) });
    // FLOPs as GFLOPs with every digit (0.004553344), so a worked division reproduces.
    env.add_filter("gflops", |v: Value| -> Result<String, Error> { Ok(format!("{}", number(&v)? / 1e9)) });
    env.add_filter("mflops", |v: Value| -> Result<String, Error> { Ok(format!("{:.2}", number(&v)? / 1e6)) });
    env.add_filter("minutes", |v: Value| -> Result<String, Error> { Ok(format!("{:.0}", number(&v)? / 60.0)) });
    let s = scope.clone();
    env.add_filter("run_label", move |path: String| -> Result<String, Error> { Ok(super::load_run(&s.at(&path)).map_err(wrap)?.summary.name) });
    // The sum of a map's values ({"angry": 3995, ...} -> 28709).
    env.add_filter("total", |v: Value| -> Result<f64, Error> {
        let mut sum = 0.0;
        for key in v.try_iter()? {
            sum += number(&v.get_item(&key)?)?;
        }
        Ok(sum)
    });
    env.add_filter("yn", |v: bool| if v { "Y" } else { "N" });
    // Accuracy (a fraction) per GFLOP, in % / GFLOP: the competition's efficiency.
    env.add_function("efficiency", |acc: Value, flops: Value| -> Result<f64, Error> {
        Ok(crate::nn::flops::efficiency(100.0 * number(&acc)?, number(&flops)?.round() as i64))
    });

    // Records, by path.
    let s = scope.clone();
    env.add_function("run", move |path: String| value(records::run_value(&s.at(&path))));
    let s = scope.clone();
    env.add_function("card", move |path: String| value(records::card_value(&s.at(&path))));
    let s = scope.clone();
    env.add_function("json", move |path: String| value(records::json_value(&s.at(&path))));
    let s = scope.clone();
    env.add_function("jsonl", move |path: String| value(records::jsonl_value(&s.at(&path))));
    // A named network (`baseline`), or a config, run or model folder.
    let s = scope.clone();
    env.add_function("flops", move |model: String| {
        let path = s.at(&model);
        value(records::flops_value(if path.exists() { path.to_str().unwrap_or(&model) } else { &model }))
    });
    // Every run record under a folder, at any depth: `run_records("results")`.
    let s = scope.clone();
    env.add_function("run_records", move |path: String| value(records::run_records(&s.at(&path), &path).map(|found| serde_json::json!(found))));
    let s = scope.clone();
    env.add_function("noise", move |paths: Vec<String>| value(records::noise_value(&paths.iter().map(|p| s.at(p)).collect::<Vec<_>>())));
    // Recipe b against recipe a, trained in pairs: the i-th run of each is one pair.
    let s = scope.clone();
    env.add_function("paired", move |a: Vec<String>, b: Vec<String>| {
        let at = |paths: &[String]| paths.iter().map(|p| s.at(p)).collect::<Vec<_>>();
        value(records::paired_value(&at(&a), &at(&b)))
    });
    // The record folders of a run and its other seeds, as `fer train --seed N` names them:
    // `seed_runs("r", 3)` is ["r", "r-seed1", "r-seed2"].
    env.add_function("seed_runs", |run: String, n: usize| -> Vec<String> {
        (0..n).map(|i| if i == 0 { run.clone() } else { format!("{run}-seed{i}") }).collect()
    });
    // The mean, standard deviation and standard error of a list of numbers.
    env.add_function("spread", |values: Vec<f64>| Value::from_serialize(records::stats_json(&values)));
    let s = scope.clone();
    env.add_function("ablation", move |path: String| value(records::ablation_value(&s.at(&path))));
    // The records given on the command line, for the default template.
    env.add_global("inputs", Value::from_serialize(records::inputs_value(&scope.inputs)));

    let s = scope.clone();
    env.add_function("all_runs", move || s.records.all().iter().map(|r| r.dir.display().to_string()).collect::<Vec<_>>());
    let s = scope.clone();
    env.add_function("highlighted_runs", move || s.records.highlighted().iter().map(|r| r.dir.display().to_string()).collect::<Vec<_>>());
    let s = scope.clone();
    env.add_function("link", move |path: String| s.link(&path));

    // Numbered figures and tables.
    let s = scope.clone();
    env.add_function("figure", move |id: String, path: String, caption: String| -> Result<String, Error> {
        let n = s.numbering.lock().unwrap().number(&id, "Figure")?;
        Ok(format!("![Figure {n}: {caption}]({})\n\n*Figure {n}. {caption}*", s.link(&path)))
    });
    let s = scope.clone();
    env.add_function("table", move |id: String, caption: String| -> Result<String, Error> {
        let n = s.numbering.lock().unwrap().number(&id, "Table")?;
        // Raw HTML, so print CSS can keep the caption on the page of its table.
        Ok(format!("<p class=\"caption\"><em>Table {n}.</em> {}</p>\n", inline_code(&caption)))
    });
    let s = scope.clone();
    env.add_function("ref", move |id: String| -> Result<String, Error> {
        let numbering = s.numbering.lock().unwrap();
        match numbering.known.get(&id) {
            Some((kind, n)) => Ok(format!("{kind} {n}")),
            // The first pass has not numbered it yet; the second must have.
            None if numbering.known.is_empty() => Ok("Figure ?".into()),
            None => Err(fail(format!("ref(\"{id}\"): no figure or table has that id"))),
        }
    });

    // Figures drawn at render time from the records, into the output folder.
    let s = scope.clone();
    env.add_function("pareto_plot", move |file: String, kwargs: Kwargs| -> Result<String, Error> {
        let runs: Vec<String> = kwargs.get("runs")?;
        let models: Vec<String> = kwargs.get("models")?;
        kwargs.assert_all_used()?;
        let path = s.figure_path(&file);
        figures::pareto(&path, &s.all_at(&runs), &s.all_at(&models)).map_err(wrap)?;
        Ok(path.display().to_string())
    });
    let s = scope.clone();
    env.add_function("time_plot", move |file: String, kwargs: Kwargs| -> Result<String, Error> {
        let runs: Vec<String> = kwargs.get("runs")?;
        let labels: Vec<String> = kwargs.get("labels")?;
        kwargs.assert_all_used()?;
        let path = s.figure_path(&file);
        figures::time_to_accuracy(&path, &s.all_at(&runs), &labels).map_err(wrap)?;
        Ok(path.display().to_string())
    });
    let s = scope.clone();
    env.add_function("curves_plot", move |file: String, run: String| -> Result<String, Error> {
        let path = s.figure_path(&file);
        figures::curves(&path, &s.at(&run)).map_err(wrap)?;
        Ok(path.display().to_string())
    });
    let s = scope.clone();
    env.add_function("confusion_plot", move |file: String, run: String| -> Result<String, Error> {
        let path = s.figure_path(&file);
        let dir = s.at(&run);
        let eval = super::load_run(&dir).map_err(wrap)?.test.ok_or_else(|| fail(format!("{}: no test_eval.json to plot", dir.display())))?;
        crate::plot::confusion_matrix(&path, &eval, "PrivateTest").map_err(wrap)?;
        Ok(path.display().to_string())
    });
    let s = scope.clone();
    env.add_function("classes_plot", move |file: String, stats: String| -> Result<String, Error> {
        let path = s.figure_path(&file);
        figures::class_counts(&path, &s.at(&stats)).map_err(wrap)?;
        Ok(path.display().to_string())
    });

    // The default report's sections, from the records given on the command line.
    for (name, section) in super::SECTIONS {
        let s = scope.clone();
        env.add_function(name, move || -> Result<String, Error> { section(&s.inputs, &s.records, &s.base).map_err(wrap) });
    }
    env
}

/// A template to render: its file name (for errors), its text, and the folder that
/// `{% import "x.j2" %}` reads other templates from (none for the built-in default).
pub struct Template {
    name: String,
    source: String,
    dir: Option<PathBuf>,
}

impl Template {
    pub fn read(path: &Path) -> anyhow::Result<Template> {
        let source = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("report template {}: {e}", path.display()))?;
        let name = path.file_name().map_or("template".into(), |n| n.to_string_lossy().into_owned());
        let dir = path.parent().map(|d| if d.as_os_str().is_empty() { PathBuf::from(".") } else { d.to_path_buf() });
        Ok(Template { name, source, dir })
    }

    pub fn default_report(source: &str) -> Template {
        Template { name: "default.md.j2".into(), source: source.into(), dir: None }
    }
}

/// Renders a template twice (numbers first, then references to them) for a document in `base`.
pub fn render(template: &Template, inputs: &ReportInputs, records: Arc<super::Records>, base: &Path) -> anyhow::Result<String> {
    let numbering = Arc::new(Mutex::new(Numbering::default()));
    let mut env = environment(inputs, records, base, numbering.clone());
    if let Some(dir) = template.dir.clone() {
        // Shared definitions (e.g. the speedrun's records, read by the report and its notes)
        // live beside the templates that import them.
        env.set_loader(move |name| match std::fs::read_to_string(dir.join(name)) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(fail(format!("{}: {e}", dir.join(name).display()))),
        });
    }
    let mut text = String::new();
    for _ in 0..2 {
        text = env.render_named_str(&template.name, &template.source, ()).map_err(|e| anyhow::anyhow!("{}", describe(&e)))?;
        numbering.lock().unwrap().next_pass();
    }
    Ok(text)
}

/// The error with where it happened in the template, and what caused it.
fn describe(e: &Error) -> String {
    let mut msg = format!("report template: {e}");
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        msg += &format!(": {cause}");
        source = cause.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::thousands;

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(327505392), "327,505,392");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(-4553344), "-4,553,344");
    }
}
