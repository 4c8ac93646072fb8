//! `fer ablate`: a base config and named methods (each a set of config changes) become a
//! table of runs with one Y/N column per method, as the competition's report asks.
//! Every row uses the same seed, data and epochs; finished rows are not rerun.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::data::Dataset;
use crate::record::Summary;
use crate::train::{train, TrainOptions};

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AblationFile {
    /// Name of the ablation: runs go to `runs/<name>/`.
    pub name: String,
    /// The base config, relative to this file.
    pub base: PathBuf,
    #[serde(default)]
    pub mode: Mode,
    pub methods: Vec<Method>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Row k turns on the first k methods.
    #[default]
    Cumulative,
    /// The base, each method alone, all of them, and all but each one.
    OneOff,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Method {
    pub name: String,
    /// Dotted config keys and their values, e.g. `"train.label_smoothing" = 0.1`.
    pub set: BTreeMap<String, toml::Value>,
}

/// One row: which methods are on, and the config that results.
pub struct Row {
    pub on: Vec<bool>,
    pub config: Config,
}

/// Sets `key` (dotted) to `value` in a TOML table, creating tables on the way.
fn set_key(table: &mut toml::Table, key: &str, value: toml::Value) -> anyhow::Result<()> {
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts.pop().ok_or_else(|| anyhow::anyhow!("empty key"))?;
    let mut t = table;
    for p in parts {
        let entry = t.entry(p.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        t = entry.as_table_mut().ok_or_else(|| anyhow::anyhow!("`{key}`: `{p}` is not a table"))?;
    }
    t.insert(last.to_string(), value);
    Ok(())
}

fn slug(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect()
}

impl AblationFile {
    pub fn load(path: &Path) -> anyhow::Result<(AblationFile, Config)> {
        let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let file: AblationFile = toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        anyhow::ensure!(!file.methods.is_empty(), "{}: no [[methods]]", path.display());
        let base_path = path.parent().unwrap_or(Path::new(".")).join(&file.base);
        let base = Config::load(&base_path)?;
        Ok((file, base))
    }

    /// Which methods are on in each row, by mode.
    pub fn combinations(&self) -> Vec<Vec<bool>> {
        let k = self.methods.len();
        let mut rows: Vec<Vec<bool>> = match self.mode {
            Mode::Cumulative => (0..=k).map(|n| (0..k).map(|i| i < n).collect()).collect(),
            Mode::OneOff => {
                let mut r = vec![vec![false; k]];
                r.extend((0..k).map(|j| (0..k).map(|i| i == j).collect()));
                r.push(vec![true; k]);
                r.extend((0..k).map(|j| (0..k).map(|i| i != j).collect()));
                r
            }
        };
        let mut seen = std::collections::HashSet::new();
        rows.retain(|r| seen.insert(r.clone()));
        rows
    }

    pub fn rows(&self, base: &Config) -> anyhow::Result<Vec<Row>> {
        let mut out = Vec::new();
        for (r, on) in self.combinations().into_iter().enumerate() {
            let mut table: toml::Table = toml::from_str(&base.to_toml())?;
            let mut names = Vec::new();
            for (m, &enabled) in self.methods.iter().zip(&on) {
                if enabled {
                    for (k, v) in &m.set {
                        set_key(&mut table, k, v.clone())?;
                    }
                    names.push(slug(&m.name));
                }
            }
            let label = if names.is_empty() { "base".to_string() } else { names.join("+") };
            table.insert("name".into(), toml::Value::String(format!("{r:02}-{label}")));
            let config = Config::parse(&toml::to_string(&table)?).map_err(|e| anyhow::anyhow!("row {r} ({label}): {e}"))?;
            out.push(Row { on, config });
        }
        Ok(out)
    }
}

/// Runs (or resumes, or skips) every row, then writes `ablation.md` and `ablation.csv`.
pub fn run(file: &AblationFile, base: &Config, data: &Dataset, runs: &Path, out: &Path) -> anyhow::Result<String> {
    let rows = file.rows(base)?;
    let dir = runs.join(&file.name);
    let mut summaries = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let run_dir = dir.join(&row.config.name);
        let record = out.join(&row.config.name);
        println!("== ablation row {}/{}: {}", i + 1, rows.len(), row.config.name);
        // A row whose record is in `out` (committed, say) is done, even where runs/ is gone.
        let mut done = finished_record(&record, &row.config)?;
        if done.is_none() {
            if let Some((twin, summary)) = same_recipe_beside(out, &row.config)? {
                println!("same recipe as {}: its record is reused", twin.display());
                done = Some(copy_record_renamed(&twin, summary, &record, &row.config)?);
            }
        }
        let summary = match done {
            Some(summary) => summary,
            None => {
                let opts = TrainOptions { runs_dir: dir.clone(), resume: run_dir.join("last.json").exists(), ..Default::default() };
                let summary = train(&row.config, data, &opts)?;
                record_run(&run_dir, &record)?;
                summary
            }
        };
        summaries.push(summary);
        // The table so far, after every row: a killed ablation still leaves its results.
        write_tables(file, &rows[..=i], &summaries, out)?;
    }
    Ok(std::fs::read_to_string(out.join("ablation.md"))?)
}

/// The summary in a row's record folder, if it was trained from exactly this config.
fn finished_record(record: &Path, config: &Config) -> anyhow::Result<Option<Summary>> {
    let (Ok(summary), Ok(recorded)) = (std::fs::read(record.join("summary.json")), Config::load(&record.join("config.toml"))) else {
        return Ok(None);
    };
    // The run may have rewritten its eval blur when it finished; the recipe must match.
    let mut recorded = recorded;
    recorded.train.eval_blur = config.train.eval_blur;
    if recorded.to_toml() != config.to_toml() {
        return Ok(None);
    }
    Ok(Some(serde_json::from_slice(&summary)?))
}

/// A finished record of the same recipe under another name in a sibling ablation (the one-off
/// ablation's base and full rows are the cumulative ablation's first and last): one recipe, one
/// run, one number.
fn same_recipe_beside(out: &Path, config: &Config) -> anyhow::Result<Option<(PathBuf, Summary)>> {
    let Some(Ok(siblings)) = out.parent().map(std::fs::read_dir) else { return Ok(None) };
    for ablation in siblings.flatten().map(|e| e.path()).filter(|p| p.is_dir() && p != out) {
        let Ok(rows) = std::fs::read_dir(&ablation) else { continue };
        for row in rows.flatten().map(|e| e.path()) {
            let Ok(recorded) = Config::load(&row.join("config.toml")) else { continue };
            let renamed = Config { name: recorded.name, ..config.clone() };
            if let Some(summary) = finished_record(&row, &renamed)? {
                return Ok(Some((row, summary)));
            }
        }
    }
    Ok(None)
}

/// Copies the record `from` (whose summary is `summary`) to `to`, renamed to `config`'s name;
/// returns the renamed summary.
fn copy_record_renamed(from: &Path, mut summary: Summary, to: &Path, config: &Config) -> anyhow::Result<Summary> {
    record_run(from, to)?;
    summary.name = config.name.clone();
    crate::data::write_atomic(&to.join("summary.json"), &serde_json::to_vec_pretty(&summary)?)?;
    crate::data::write_atomic(&to.join("config.toml"), config.to_toml().as_bytes())?;
    Ok(summary)
}

fn write_tables(file: &AblationFile, rows: &[Row], summaries: &[Summary], out: &Path) -> anyhow::Result<()> {
    let mut header: Vec<String> = vec!["run".into()];
    header.extend(file.methods.iter().map(|m| m.name.clone()));
    header.extend(
        ["PublicTest acc (%)", "PrivateTest acc (%)", "PrivateTest leak-aware (%)", "GFLOPs (fvcore)", "efficiency (%/GFLOP)", "params", "train time (s)", "epochs"]
            .map(String::from),
    );
    let mut md = format!("| {} |\n|{}|\n", header.join(" | "), header.iter().map(|_| "---").collect::<Vec<_>>().join("|"));
    let mut csv = header.iter().map(|h| format!("\"{h}\"")).collect::<Vec<_>>().join(",") + "\n";
    for (row, s) in rows.iter().zip(summaries) {
        let mut cells = vec![row.config.name.clone()];
        cells.extend(row.on.iter().map(|&b| if b { "Y" } else { "N" }.to_string()));
        cells.extend([
            format!("{:.2}", 100.0 * s.val_acc),
            format!("{:.2}", 100.0 * s.test_acc),
            s.test_acc_unseen.map_or("-".into(), |a| format!("{:.2}", 100.0 * a)),
            format!("{:.5}", s.fvcore_flops as f64 / 1e9),
            format!("{:.1}", s.efficiency),
            s.params.to_string(),
            format!("{:.0}", s.train_seconds),
            s.epochs.to_string(),
        ]);
        md += &format!("| {} |\n", cells.join(" | "));
        csv += &(cells.join(",") + "\n");
    }
    md += &format!(
        "\nMode: {:?}. Every row: seed {}, {} epochs at most, the same data; model selection on PublicTest, PrivateTest scored once per row; leak-aware: PrivateTest accuracy over the faces with no pixel-identical twin in Training.\n",
        file.mode,
        rows[0].config.seed,
        rows[0].config.train.epochs
    );
    std::fs::create_dir_all(out)?;
    crate::data::write_atomic(&out.join("ablation.md"), md.as_bytes())?;
    crate::data::write_atomic(&out.join("ablation.csv"), csv.as_bytes())?;
    Ok(())
}

/// The small files of a finished run that a report needs, copied for committing (no weights).
pub const RECORD_FILES: [&str; 8] = [
    "config.toml",
    "metrics.jsonl",
    "summary.json",
    "test_eval.txt",
    "test_eval.json",
    "accuracy.png",
    "loss.png",
    "confusion_test.png",
];

pub fn record_run(run: &Path, dest: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dest)?;
    for f in RECORD_FILES {
        let src = run.join(f);
        if src.is_file() {
            std::fs::copy(&src, dest.join(f))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(mode: Mode, k: usize) -> AblationFile {
        AblationFile {
            name: "t".into(),
            base: "b.toml".into(),
            mode,
            methods: (0..k).map(|i| Method { name: format!("m{i}"), set: BTreeMap::new() }).collect(),
        }
    }

    #[test]
    fn cumulative_and_one_off_rows() {
        assert_eq!(file(Mode::Cumulative, 3).combinations().len(), 4);
        let one_off = file(Mode::OneOff, 3).combinations();
        // base, 3 alone, all, 3 all-but-one.
        assert_eq!(one_off.len(), 8);
        assert_eq!(one_off[0], vec![false; 3]);
        assert_eq!(one_off[4], vec![true; 3]);
        // With one method, "alone" and "all" are the same row, kept once.
        assert_eq!(file(Mode::OneOff, 1).combinations().len(), 2);
    }

    #[test]
    fn methods_set_dotted_keys() {
        let mut f = file(Mode::Cumulative, 2);
        f.methods[0].set.insert("train.label_smoothing".into(), toml::Value::Float(0.1));
        f.methods[1].set.insert("augment.hflip".into(), toml::Value::Boolean(true));
        let rows = f.rows(&Config::for_network("mobile")).unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].config.train.label_smoothing, 0.0);
        assert_eq!(rows[1].config.train.label_smoothing, 0.1);
        assert!(!rows[1].config.augment.hflip && rows[2].config.augment.hflip);
        assert_eq!(rows[2].config.name, "02-m0+m1");
        f.methods[0].set.insert("train.no_such_lever".into(), toml::Value::Float(0.1));
        assert!(f.rows(&Config::for_network("mobile")).is_err(), "a typo in a method is an error");
    }
}
