//! `fer predict`: every face in photos, folders of photos, videos and standard input, found,
//! framed and classified by the face pipeline; a table, JSON lines or CSV; annotated copies
//! and per-video summaries on request. Bad inputs are reported by name and skipped.

use image::{DynamicImage, RgbImage};
use plotters::style::RGBColor;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::data::{Dataset, Faces, Split, CLASSES, NUM_CLASSES, PIXELS, SIDE};
use crate::face::track::{changes_per_second, Tracked, Tracker};
use crate::face::{argmax, Analysis, FaceResult, Located, Pipeline};
use crate::media::{self, Sampling};
use crate::plot::{face_grid, Tile};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns, one line per face.
    Table,
    /// One JSON object per face and line.
    Json,
    Csv,
}

pub struct PredictOptions {
    /// Find faces first; off: each image is one pre-cropped face.
    pub detect: bool,
    pub format: Format,
    /// Where annotated copies (and per-video summaries) go.
    pub annotate: Option<PathBuf>,
    /// Where each photo's faces go as the 48x48 frames the classifier saw, `<name>-<i>.png`
    /// (lossless: `fer predict --no-detect` on them gives the same probabilities, and so can
    /// another classifier scored on the same faces).
    pub faces: Option<PathBuf>,
    pub sampling: Sampling,
    /// Videos: the half-life of each track's smoothing, in seconds.
    pub half_life: f64,
    pub quiet: bool,
    /// Write JSON lines or CSV to this file instead of standard output.
    pub output: Option<PathBuf>,
    /// Skip the inputs `output` already has (a run that stopped continues).
    pub resume: bool,
    /// This machine's part of the inputs, (index, count): input k when k % count == index.
    pub shard: Option<(usize, usize)>,
    /// A file listing inputs, one path per line (`-`: standard input), read as the work goes.
    pub files_from: Option<PathBuf>,
}

/// Inputs looked at together: their faces go through the classifier in one batch, and their
/// decoding and detection run side by side.
const CHUNK: usize = 64;

/// Where one face was seen.
struct Place<'a> {
    file: &'a str,
    /// Frame number and time in seconds, for videos.
    frame: Option<(u64, f64)>,
    face: usize,
    /// Videos: the face's track and its smoothed probabilities.
    track: Option<Tracked>,
}

/// The output stream: a table, JSON lines or CSV rows on standard output.
struct Sink {
    format: Format,
    header_written: bool,
}

const CSV_HEADER: &str = "file,frame,time,face,x,y,w,h,score,label,angry,disgust,fear,happy,sad,surprise,neutral,track,smoothed_label,smoothed_angry,smoothed_disgust,smoothed_fear,smoothed_happy,smoothed_sad,smoothed_surprise,smoothed_neutral";

impl Sink {
    /// Writes one face; a closed output (`fer predict ... | head`) ends the program quietly.
    fn face(&mut self, out: &mut impl Write, at: &Place, r: &FaceResult) -> std::io::Result<()> {
        match self.write_face(out, at, r) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
            other => other,
        }
    }

    fn write_face(&mut self, out: &mut impl Write, at: &Place, r: &FaceResult) -> std::io::Result<()> {
        let b = &r.bbox;
        match self.format {
            Format::Json => {
                let probs = |p: &[f32; NUM_CLASSES]| -> serde_json::Map<String, serde_json::Value> {
                    CLASSES.iter().zip(p).map(|(c, v)| (c.to_string(), (*v as f64).into())).collect()
                };
                let line = serde_json::json!({
                    "file": at.file,
                    "frame": at.frame.map(|f| f.0),
                    "time": at.frame.map(|f| f.1),
                    "face": at.face,
                    "box": {"x": b.x, "y": b.y, "w": b.w, "h": b.h},
                    "score": r.score,
                    "label": r.label,
                    "probabilities": probs(&r.probabilities),
                    "track": at.track.map(|t| t.track),
                    "smoothed_label": at.track.map(|t| CLASSES[argmax(&t.smoothed)]),
                    "smoothed": at.track.map(|t| probs(&t.smoothed)),
                });
                writeln!(out, "{line}")
            }
            Format::Csv => {
                if !self.header_written {
                    writeln!(out, "{CSV_HEADER}")?;
                    self.header_written = true;
                }
                let mut w = csv::Writer::from_writer(Vec::new());
                let mut row = vec![
                    at.file.to_string(),
                    at.frame.map_or(String::new(), |f| f.0.to_string()),
                    at.frame.map_or(String::new(), |f| format!("{:.3}", f.1)),
                    at.face.to_string(),
                    format!("{:.1}", b.x),
                    format!("{:.1}", b.y),
                    format!("{:.1}", b.w),
                    format!("{:.1}", b.h),
                    r.score.map_or(String::new(), |s| format!("{s:.4}")),
                    r.label.to_string(),
                ];
                row.extend(r.probabilities.iter().map(|p| format!("{p:.4}")));
                match at.track {
                    Some(t) => {
                        row.push(t.track.to_string());
                        row.push(CLASSES[argmax(&t.smoothed)].to_string());
                        row.extend(t.smoothed.iter().map(|p| format!("{p:.4}")));
                    }
                    None => row.extend(std::iter::repeat_n(String::new(), 2 + NUM_CLASSES)),
                }
                w.write_record(&row).map_err(std::io::Error::other)?;
                out.write_all(&w.into_inner().map_err(|e| std::io::Error::other(e.to_string()))?)
            }
            Format::Table => {
                if !self.header_written {
                    writeln!(out, "{:<32} {:>9} {:>4} {:>24} {:>6}  {:<9} top probabilities", "file", "time", "face", "box (x, y, w, h)", "score", "label")?;
                    self.header_written = true;
                }
                let mut order: Vec<usize> = (0..NUM_CLASSES).collect();
                order.sort_by(|&a, &c| r.probabilities[c].total_cmp(&r.probabilities[a]));
                let top: Vec<String> = order[..3].iter().map(|&c| format!("{} {:.2}", CLASSES[c], r.probabilities[c])).collect();
                writeln!(
                    out,
                    "{:<32} {:>9} {:>4} {:>24} {:>6}  {:<9} {}",
                    at.file,
                    at.frame.map_or("-".into(), |f| format!("{:.2}s", f.1)),
                    at.face,
                    format!("{:.0}, {:.0}, {:.0}, {:.0}", b.x, b.y, b.w, b.h),
                    r.score.map_or("-".into(), |s| format!("{s:.3}")),
                    r.label,
                    top.join(", ")
                )
            }
        }
    }
}

impl Sink {
    /// The line of an input without a face (JSON and CSV), so that every input finished has a
    /// line and `--resume` knows it.
    fn no_face(&mut self, out: &mut impl Write, file: &str) -> std::io::Result<()> {
        let result = match self.format {
            Format::Json => writeln!(out, "{}", serde_json::json!({ "file": file, "face": null })),
            Format::Csv => {
                if !self.header_written {
                    writeln!(out, "{CSV_HEADER}")?;
                    self.header_written = true;
                }
                let mut w = csv::Writer::from_writer(Vec::new());
                let mut row = vec![file.to_string()];
                row.extend(std::iter::repeat_n(String::new(), CSV_HEADER.split(',').count() - 1));
                w.write_record(&row).map_err(std::io::Error::other)?;
                out.write_all(&w.into_inner().map_err(|e| std::io::Error::other(e.to_string()))?)
            }
            Format::Table => Ok(()),
        };
        match result {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
            other => other,
        }
    }
}

/// Counts and time spent, for the closing line.
#[derive(Default)]
struct Tally {
    inputs: usize,
    images: usize,
    frames: usize,
    faces: usize,
    no_face: usize,
    decode: Duration,
    detect: Duration,
    classify: Duration,
    failed: Vec<(String, String)>,
}

/// One input: a path (a file, or `-` for standard input), or why it cannot be one.
type Item = Result<PathBuf, (String, String)>;

/// The inputs as given: files, `-`, folders (searched, sorted).
fn expand(inputs: &[PathBuf]) -> Vec<Item> {
    let mut out = Vec::new();
    for p in inputs {
        if p.as_os_str() == "-" || p.is_file() {
            out.push(Ok(p.clone()));
        } else if p.is_dir() {
            let mut found = Vec::new();
            walk(p, &mut found);
            found.sort();
            if found.is_empty() {
                out.push(Err((p.display().to_string(), "no images or videos in this folder".into())));
            }
            out.extend(found.into_iter().map(Ok));
        } else {
            out.push(Err((p.display().to_string(), "no such file or folder".into())));
        }
    }
    out
}

/// The lines of a list of inputs, read as they are needed; blank lines are skipped.
fn listed(list: &Path) -> anyhow::Result<Box<dyn Iterator<Item = Item>>> {
    use std::io::BufRead;
    let reader: Box<dyn BufRead> = if list.as_os_str() == "-" {
        Box::new(std::io::BufReader::new(std::io::stdin()))
    } else {
        Box::new(std::io::BufReader::new(std::fs::File::open(list).map_err(|e| anyhow::anyhow!("{}: {e}", list.display()))?))
    };
    let name = list.display().to_string();
    Ok(Box::new(reader.lines().filter_map(move |line| match line {
        Ok(l) if l.trim().is_empty() => None,
        Ok(l) => {
            let p = PathBuf::from(l.trim_end_matches(['\r', '\n']));
            Some(if p.is_file() { Ok(p) } else { Err((p.display().to_string(), "no such file".into())) })
        }
        Err(e) => Some(Err((name.clone(), format!("cannot read the list: {e}")))),
    })))
}

/// The images and videos under `dir`, each folder once: a symbolic link back up the tree (a
/// loop) is not followed again.
fn walk(dir: &Path, found: &mut Vec<PathBuf>) {
    walk_once(dir, found, &mut std::collections::HashSet::new());
}

fn walk_once(dir: &Path, found: &mut Vec<PathBuf>, seen: &mut std::collections::HashSet<PathBuf>) {
    let Ok(real) = dir.canonicalize() else { return };
    if !seen.insert(real) {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let p = entry.path();
        if p.is_dir() {
            walk_once(&p, found, seen);
        } else if media::has_extension(&p, &media::IMAGE_EXTENSIONS) || media::has_extension(&p, &media::VIDEO_EXTENSIONS) {
            found.push(p);
        }
    }
}

/// An input's name in the output and in messages.
fn display_name(item: &Item) -> String {
    match item {
        Ok(p) if p.as_os_str() == "-" => "<stdin>".to_string(),
        Ok(p) => p.display().to_string(),
        Err((name, _)) => name.clone(),
    }
}

/// Reads an output that a stopped run left, for `--resume`: the inputs it finished. The last
/// input named may have been cut off mid-way (a video, a half-written line): its lines are cut
/// from the file, so that it is done again, whole.
fn resume_from(path: &Path, format: Format) -> anyhow::Result<std::collections::HashSet<String>> {
    let mut done = std::collections::HashSet::new();
    let Ok(bytes) = std::fs::read(path) else { return Ok(done) };
    let (mut last, mut last_start, mut offset) = (None::<String>, 0usize, 0usize);
    let mut keep = 0;
    for line in bytes.split_inclusive(|&b| b == b'\n') {
        let start = offset;
        offset += line.len();
        if !line.ends_with(b"\n") {
            break; // cut off while it was written
        }
        let file = match format {
            Format::Json => serde_json::from_slice::<serde_json::Value>(line).ok().and_then(|v| v["file"].as_str().map(String::from)),
            Format::Csv if start == 0 => {
                keep = offset; // the header
                continue;
            }
            Format::Csv => csv::ReaderBuilder::new().has_headers(false).from_reader(line).records().next().and_then(|r| r.ok()).and_then(|r| r.get(0).map(String::from)),
            Format::Table => anyhow::bail!("--resume needs --json or --csv output"),
        };
        let Some(file) = file else { anyhow::bail!("{}: line {} is not fer predict's output: cannot resume from it", path.display(), bytes[..start].iter().filter(|&&b| b == b'\n').count() + 1) };
        if last.as_deref() != Some(&file) {
            if let Some(previous) = last.replace(file) {
                done.insert(previous);
            }
            last_start = start;
        }
        keep = offset;
    }
    // The last input is done again; so is a line cut off.
    let cut = if last.is_some() { last_start } else { keep };
    let file = std::fs::OpenOptions::new().write(true).open(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    file.set_len(cut as u64)?;
    Ok(done)
}

/// Labels every face of every input; returns an error saying how many inputs failed.
pub fn run(pipeline: &Pipeline, inputs: &[PathBuf], opts: &PredictOptions) -> anyhow::Result<()> {
    anyhow::ensure!(!inputs.is_empty() || opts.files_from.is_some(), "give image or video files, folders, or - for standard input (or --files-from LIST, or --random N)");
    anyhow::ensure!(!opts.resume || opts.output.is_some(), "--resume continues an --output file: give one");
    for dir in opts.annotate.iter().chain(&opts.faces) {
        std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
    }
    let given = expand(inputs);
    let known = opts.files_from.is_none().then_some(given.len());
    let mut items: Box<dyn Iterator<Item = Item>> = Box::new(given.into_iter());
    if let Some(list) = &opts.files_from {
        items = Box::new(items.chain(listed(list)?));
    }
    if let Some((index, count)) = opts.shard {
        anyhow::ensure!(count > 0 && index < count, "--shard {index}/{count}: the index runs from 0 to the count less one");
        items = Box::new(items.enumerate().filter(move |(k, _)| k % count == index).map(|(_, item)| item));
    }
    let mut sink = Sink { format: opts.format, header_written: false };
    let mut out: Box<dyn Write> = match &opts.output {
        Some(path) => {
            anyhow::ensure!(opts.format != Format::Table, "--output writes JSON lines or CSV: add --json or --csv");
            let done = if opts.resume { resume_from(path, opts.format)? } else { Default::default() };
            if opts.resume && !done.is_empty() {
                eprintln!("{}: {} inputs already done, going on with the rest", path.display(), done.len());
            }
            let file = std::fs::OpenOptions::new().create(true).append(opts.resume).write(true).truncate(!opts.resume).open(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            sink.header_written = file.metadata().map(|m| m.len() > 0).unwrap_or(false);
            items = Box::new(items.filter(move |item| !done.contains(&display_name(item))));
            Box::new(std::io::BufWriter::new(file))
        }
        None => Box::new(std::io::BufWriter::new(std::io::stdout())),
    };
    let bar = match known {
        Some(n) => crate::progress::bar(n, "predict", opts.quiet || n < 2),
        None => crate::progress::counter("predict", opts.quiet),
    };
    let mut stems = Stems::default();
    let mut tally = Tally::default();
    let started = Instant::now();
    let mut items = items.peekable();
    while items.peek().is_some() {
        // Photos go in chunks (one at a time when annotated: its image is kept for drawing);
        // a video goes alone.
        let mut chunk: Vec<(Item, String, String)> = Vec::new();
        while let Some(item) = items.next_if(|item| chunk.is_empty() || (opts.annotate.is_none() && chunk.len() < CHUNK && !is_video(item))) {
            // Names for annotated copies and faces are kept only when there are some.
            let stem = if opts.annotate.is_some() || opts.faces.is_some() { stems.next(&item) } else { String::new() };
            let name = display_name(&item);
            chunk.push((item, name, stem));
            tally.inputs += 1;
            if is_video(&chunk[0].0) {
                break;
            }
        }
        if let [(Ok(path), name, stem)] = &chunk[..] {
            if is_video(&Ok(path.clone())) {
                let result = bar.suspend(|| video(pipeline, path, stem, name, opts, &mut sink, &mut tally, &mut out));
                if let Err(why) = result {
                    bar.suspend(|| eprintln!("error: {name}: {why}"));
                    tally.failed.push((name.clone(), why));
                }
                out.flush()?;
                bar.inc(1);
                continue;
            }
        }
        photos(pipeline, &chunk, opts, &mut sink, &mut tally, &mut out, &bar)?;
        out.flush()?;
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    if !opts.quiet && tally.images + tally.frames > 0 {
        eprintln!("{}", tally.summary(started.elapsed()));
    }
    let n = tally.failed.len();
    let shown: Vec<&str> = tally.failed.iter().take(10).map(|f| f.0.as_str()).collect();
    anyhow::ensure!(n == 0, "{n} of {} inputs failed: {}{}", tally.inputs, shown.join(", "), if n > shown.len() { ", ..." } else { "" });
    Ok(())
}

/// `--shard`: `I/N` (part I of N, from 0), or `N` alone with the index from the scheduler's
/// environment: a Slurm array task (`SLURM_ARRAY_TASK_ID`, counted from `SLURM_ARRAY_TASK_MIN`)
/// or a Kubernetes indexed job (`JOB_COMPLETION_INDEX`).
pub fn parse_shard(spec: &str, env: impl Fn(&str) -> Option<String>) -> Result<(usize, usize), String> {
    let number = |s: &str, what: &str| s.trim().parse::<usize>().map_err(|_| format!("--shard {spec}: {what} `{s}` is not a whole number"));
    let (index, count) = match spec.split_once('/') {
        Some((i, n)) => (number(i, "the index")?, number(n, "the count")?),
        None => {
            let count = number(spec, "the count")?;
            let index = if let Some(id) = env("SLURM_ARRAY_TASK_ID") {
                let min = env("SLURM_ARRAY_TASK_MIN").map_or(Ok(0), |m| number(&m, "SLURM_ARRAY_TASK_MIN"))?;
                number(&id, "SLURM_ARRAY_TASK_ID")?.checked_sub(min).ok_or_else(|| format!("SLURM_ARRAY_TASK_ID {id} is under SLURM_ARRAY_TASK_MIN {min}"))?
            } else if let Some(i) = env("JOB_COMPLETION_INDEX") {
                number(&i, "JOB_COMPLETION_INDEX")?
            } else {
                return Err(format!("--shard {spec}: give the index too (--shard I/{spec}), or run as a Slurm array task or a Kubernetes indexed job"));
            };
            (index, count)
        }
    };
    if count == 0 || index >= count {
        return Err(format!("--shard {index}/{count}: the index runs from 0 to {}", count.saturating_sub(1)));
    }
    Ok((index, count))
}

fn is_video(item: &Item) -> bool {
    item.as_ref().is_ok_and(|p| media::has_extension(p, &media::VIDEO_EXTENSIONS))
}

/// A chunk of photos: read, decoded and searched side by side, their faces classified in one
/// batch, then written in order.
fn photos(pipeline: &Pipeline, chunk: &[(Item, String, String)], opts: &PredictOptions, sink: &mut Sink, tally: &mut Tally, out: &mut impl Write, bar: &indicatif::ProgressBar) -> anyhow::Result<()> {
    use rayon::prelude::*;
    let keep_image = opts.annotate.is_some();
    let found: Vec<Result<(Located, Option<DynamicImage>, Duration), String>> = chunk
        .par_iter()
        .map(|(item, _, _)| {
            let path = item.as_ref().map_err(|(_, why)| why.clone())?;
            let t = Instant::now();
            let bytes = if path.as_os_str() == "-" { media::read_stdin()? } else { std::fs::read(path).map_err(|e| format!("cannot read: {e}"))? };
            let image = media::decode_image(&bytes).map_err(|e| e.to_string())?;
            let decoded = t.elapsed();
            let located = pipeline.locate(&image, opts.detect);
            Ok((located, keep_image.then_some(image), decoded))
        })
        .collect();
    let (mut located, mut images, mut errors) = (Vec::new(), Vec::new(), Vec::new());
    for ((_, name, stem), f) in chunk.iter().zip(found) {
        match f {
            Ok((l, image, decoded)) => {
                if let Some(dir) = &opts.faces {
                    for (i, pixels) in l.pixels.chunks(PIXELS).enumerate() {
                        let dest = dir.join(format!("{stem}-{i}.png"));
                        let face = image::GrayImage::from_raw(SIDE as u32, SIDE as u32, pixels.to_vec()).expect("48x48 frames");
                        if let Err(e) = face.save(&dest) {
                            tally.failed.push((name.clone(), format!("writing {}: {e}", dest.display())));
                        }
                    }
                }
                tally.decode += decoded;
                located.push(l);
                images.push(image);
                errors.push(None);
            }
            Err(why) => errors.push(Some(why)),
        }
    }
    let mut analyses = pipeline.classify(located).into_iter().zip(images);
    for ((_, name, stem), error) in chunk.iter().zip(errors) {
        if let Some(why) = error {
            bar.suspend(|| eprintln!("error: {name}: {why}"));
            tally.failed.push((name.clone(), why));
            continue;
        }
        let (analysis, image) = analyses.next().expect("one analysis per decoded photo");
        tally.count(&analysis);
        tally.images += 1;
        if analysis.faces.is_empty() {
            tally.no_face += 1;
            bar.suspend(|| eprintln!("{name}: no face found"));
            sink.no_face(out, name)?;
        }
        for (i, r) in analysis.faces.iter().enumerate() {
            sink.face(out, &Place { file: name, frame: None, face: i, track: None }, r)?;
        }
        if let (Some(dir), Some(image)) = (&opts.annotate, image) {
            let mut rgb = image.to_rgb8();
            let captions: Vec<String> = analysis.faces.iter().enumerate().map(|(i, f)| format!("{i} {}", f.label)).collect();
            crate::plot::annotate(&mut rgb, &analysis.faces, &captions)?;
            let dest = dir.join(annotated_name(stem, "png"));
            if let Err(e) = rgb.save(&dest) {
                tally.failed.push((name.clone(), format!("writing {}: {e}", dest.display())));
            }
        }
    }
    Ok(())
}

impl Tally {
    fn count(&mut self, a: &Analysis) {
        self.faces += a.faces.len();
        self.detect += a.detect;
        self.classify += a.classify;
    }

    fn summary(&self, wall: Duration) -> String {
        let busy = (self.decode + self.detect + self.classify).as_secs_f64().max(1e-9);
        let share = |d: Duration| 100.0 * d.as_secs_f64() / busy;
        let mut parts = Vec::new();
        if self.images > 0 || self.frames == 0 {
            parts.push(format!("{} images", self.images));
        }
        if self.frames > 0 {
            parts.push(format!("{} video frames", self.frames));
        }
        let mut s = parts.join(", ");
        s += &format!(
            ": {} faces in {:.2} s ({:.1} per second); decode {:.0}%, detection {:.0}%, classification {:.0}%",
            self.faces,
            wall.as_secs_f64(),
            (self.images + self.frames) as f64 / wall.as_secs_f64().max(1e-9),
            share(self.decode),
            share(self.detect),
            share(self.classify)
        );
        if self.no_face > 0 {
            s += &format!("; {} without a face", self.no_face);
        }
        s
    }
}

/// The annotated copy's file name for an input named `stem`, with `extension`.
fn annotated_name(stem: &str, extension: &str) -> String {
    format!("{stem}.annotated.{extension}")
}

/// Each input's name in `--annotate`'s folder: its file's stem, and where two inputs share one
/// (`a/x.jpg`, `b/x.png`) the later ones numbered (`x-2`), so no copy overwrites another.
#[derive(Default)]
struct Stems {
    used: std::collections::HashSet<String>,
}

impl Stems {
    fn next(&mut self, item: &Item) -> String {
        let stem = match item {
            Ok(p) if p.as_os_str() != "-" => p.file_stem().map_or("stdin".into(), |s| s.to_string_lossy().into_owned()),
            _ => "stdin".to_string(),
        };
        // Case-insensitively: some file systems would still put two copies in one file.
        let name = (1..).map(|n| if n == 1 { stem.clone() } else { format!("{stem}-{n}") }).find(|s| !self.used.contains(&s.to_lowercase())).expect("a free name");
        self.used.insert(name.to_lowercase());
        name
    }
}

#[allow(clippy::too_many_arguments)]
fn video(pipeline: &Pipeline, path: &Path, stem: &str, name: &str, opts: &PredictOptions, sink: &mut Sink, tally: &mut Tally, out: &mut impl Write) -> Result<(), String> {
    let t = Instant::now();
    let mut frames = media::Frames::open(path, opts.sampling)?;
    let info = frames.info;
    let rate = match opts.sampling {
        Sampling::EveryNth(n) => info.fps / n.max(1) as f64,
        Sampling::EverySeconds(s) => 1.0 / s,
    };
    let mut writer = match &opts.annotate {
        Some(dir) => Some(media::VideoWriter::create(&dir.join(annotated_name(stem, "mp4")), info.width, info.height, rate)?),
        None => None,
    };
    let mut tracker = Tracker::new(opts.half_life);
    // Per sampled frame: its time, and each face's track with its raw and smoothed
    // probabilities.
    let mut seen: Vec<(f64, Vec<(Tracked, [f32; NUM_CLASSES])>)> = Vec::new();
    let mut decode_start = t;
    while let Some((k, frame)) = frames.next() {
        tally.decode += decode_start.elapsed();
        let time = frames.time_of(k);
        let image = DynamicImage::ImageRgb8(frame);
        let analysis = pipeline.analyse(&image, opts.detect);
        tally.count(&analysis);
        tally.frames += 1;
        let tracked = tracker.update(time, &analysis.faces.iter().map(|f| (f.bbox, f.probabilities)).collect::<Vec<_>>());
        for (i, (r, t)) in analysis.faces.iter().zip(&tracked).enumerate() {
            sink.face(out, &Place { file: name, frame: Some((frames.frame_of(k), time)), face: i, track: Some(*t) }, r).map_err(|e| e.to_string())?;
        }
        seen.push((time, tracked.iter().zip(&analysis.faces).map(|(t, f)| (*t, f.probabilities)).collect()));
        if let Some(w) = writer.as_mut() {
            // Each face as its track sees it: its number and its smoothed label and bars.
            let shown: Vec<FaceResult> = analysis
                .faces
                .iter()
                .zip(&tracked)
                .map(|(f, t)| FaceResult { probabilities: t.smoothed, label: CLASSES[argmax(&t.smoothed)], ..f.clone() })
                .collect();
            let captions: Vec<String> = shown.iter().zip(&tracked).map(|(f, t)| format!("#{} {}", t.track, f.label)).collect();
            let mut rgb: RgbImage = image.into_rgb8();
            crate::plot::annotate(&mut rgb, &shown, &captions).map_err(|e| e.to_string())?;
            w.write(&rgb)?;
        }
        decode_start = Instant::now();
    }
    frames.finish()?;
    if seen.is_empty() {
        return Err("ffmpeg gave no frames".into());
    }
    if seen.iter().all(|(_, faces)| faces.is_empty()) {
        sink.no_face(out, name).map_err(|e| e.to_string())?;
    }
    if let Some(w) = writer {
        w.finish()?;
    }
    // The track seen in most frames, smoothed, is the video's summary.
    let tracks = labels_by_track(&seen);
    let main = tracks.iter().max_by_key(|&(id, l)| (l.len(), std::cmp::Reverse(*id))).map(|(&id, _)| id);
    let timeline: Vec<(f64, Option<[f32; NUM_CLASSES]>)> =
        seen.iter().map(|(time, faces)| (*time, faces.iter().find(|(t, _)| Some(t.track) == main).map(|(t, _)| t.smoothed))).collect();
    let with_face: Vec<usize> = timeline.iter().filter_map(|(_, p)| p.as_ref().map(argmax)).collect();
    let mut shares: Vec<String> = (0..NUM_CLASSES)
        .map(|c| (c, with_face.iter().filter(|&&l| l == c).count()))
        .filter(|&(_, n)| n > 0)
        .map(|(c, n)| format!("{} {:.0}%", CLASSES[c], 100.0 * n as f64 / with_face.len() as f64))
        .collect();
    if shares.is_empty() {
        shares.push("no face in any frame".into());
    }
    eprintln!("{name}: {} frames sampled over {:.1} s, {} tracks, the longest (#{}) in {} frames: {}", seen.len(), info.seconds, tracks.len(), main.map_or("-".into(), |m| m.to_string()), with_face.len(), shares.join(", "));
    let (raw, smoothed) = flicker(&tracks);
    if tracks.values().any(|l| l.len() > 1) {
        eprintln!("{name}: labels change {raw:.2} times a second along a track, {smoothed:.2} smoothed (half-life {} s)", opts.half_life);
    }
    if let Some(dir) = &opts.annotate {
        let dest = dir.join(annotated_name(stem, "summary.png"));
        let title = format!("{name}: track #{} (seen longest), smoothed over a half-life of {} s", main.map_or("-".into(), |m| m.to_string()), opts.half_life);
        let (lanes, step) = track_lanes(&tracks, &seen);
        crate::plot::emotion_timeline(&dest, &title, &timeline, &lanes, tracks.len(), step).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Each track's sampled frames: (time, raw label, smoothed label), in time order.
type TrackLabels = std::collections::BTreeMap<u64, Vec<(f64, usize, usize)>>;

fn labels_by_track(seen: &[(f64, Vec<(Tracked, [f32; NUM_CLASSES])>)]) -> TrackLabels {
    let mut by_track = TrackLabels::new();
    for (time, faces) in seen {
        for (t, raw) in faces {
            by_track.entry(t.track).or_default().push((*time, argmax(raw), argmax(&t.smoothed)));
        }
    }
    by_track
}

/// The summary's lanes: the tracks seen in most frames (at most `plot::MAX_LANES`), in order of
/// appearance, each with its smoothed label per frame; and the sampling interval (the median
/// time between sampled frames).
fn track_lanes(tracks: &TrackLabels, seen: &[(f64, Vec<(Tracked, [f32; NUM_CLASSES])>)]) -> (Vec<crate::plot::TrackLane>, f64) {
    let mut lanes: Vec<crate::plot::TrackLane> =
        tracks.iter().map(|(&id, l)| crate::plot::TrackLane { id, labels: l.iter().map(|&(t, _, smoothed)| (t, smoothed)).collect() }).collect();
    lanes.sort_by_key(|l| (std::cmp::Reverse(l.labels.len()), l.id));
    lanes.truncate(crate::plot::MAX_LANES);
    lanes.sort_by(|a, b| a.labels[0].0.total_cmp(&b.labels[0].0).then(a.id.cmp(&b.id)));
    let mut gaps: Vec<f64> = seen.windows(2).map(|w| w[1].0 - w[0].0).filter(|g| *g > 0.0).collect();
    gaps.sort_by(f64::total_cmp);
    let step = gaps.get(gaps.len() / 2).copied().unwrap_or(1.0);
    (lanes, step)
}

/// Label changes per second along each track, raw and smoothed, over all tracks' time.
fn flicker(tracks: &TrackLabels) -> (f64, f64) {
    let (mut raw, mut smoothed, mut span) = (0.0, 0.0, 0.0);
    for labels in tracks.values().filter(|l| l.len() > 1) {
        let s = labels.last().map_or(0.0, |l| l.0) - labels[0].0;
        raw += s * changes_per_second(&labels.iter().map(|l| (l.0, l.1)).collect::<Vec<_>>());
        smoothed += s * changes_per_second(&labels.iter().map(|l| (l.0, l.2)).collect::<Vec<_>>());
        span += s;
    }
    if span > 0.0 {
        (raw / span, smoothed / span)
    } else {
        (0.0, 0.0)
    }
}

/// A grid of `n` random faces of `split`: true label, predicted label and its probability.
pub fn random_grid(model: &fer_core::Classifier, data: &Dataset, split: Split, n: usize, seed: u64, out: &Path) -> anyhow::Result<f64> {
    let all = data.indices(split);
    anyhow::ensure!(!all.is_empty(), "no {split} faces");
    let mut rng = fastrand::Rng::with_seed(seed);
    let picks: Vec<usize> = (0..n.min(all.len())).map(|_| all[rng.usize(..all.len())]).collect();
    let mut faces = Faces::default();
    for &i in &picks {
        faces.pixels.extend_from_slice(data.image(i));
        faces.labels.push(data.labels[i]);
    }
    let probs = model.probabilities(&faces.pixels);
    let mut right = 0;
    let tiles: Vec<Tile> = probs
        .iter()
        .enumerate()
        .map(|(k, p)| {
            let (truth, pred) = (faces.labels[k] as usize, argmax(p));
            right += usize::from(truth == pred);
            Tile {
                pixels: faces.pixels[k * PIXELS..(k + 1) * PIXELS].to_vec(),
                caption: vec![format!("true {}", CLASSES[truth]), format!("pred {}", CLASSES[pred]), format!("p = {:.2}", p[pred])],
                color: if truth == pred { RGBColor(0, 120, 0) } else { RGBColor(200, 0, 0) },
            }
        })
        .collect();
    let title = format!("{} random {split} faces: {right} of {} right (green right, red wrong)", tiles.len(), tiles.len());
    face_grid(out, &title, &tiles, 8)?;
    Ok(right as f64 / tiles.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_come_from_the_flag_or_the_schedulers_environment() {
        let none = |_: &str| None;
        assert_eq!(parse_shard("2/5", none), Ok((2, 5)));
        assert!(parse_shard("5/5", none).unwrap_err().contains("from 0 to 4"));
        assert!(parse_shard("1/0", none).is_err());
        assert!(parse_shard("x/4", none).unwrap_err().contains("`x` is not a whole number"));
        assert!(parse_shard("4", none).unwrap_err().contains("Slurm array task"));
        let slurm = |k: &str| match k {
            "SLURM_ARRAY_TASK_ID" => Some("7".to_string()),
            "SLURM_ARRAY_TASK_MIN" => Some("5".to_string()),
            _ => None,
        };
        assert_eq!(parse_shard("4", slurm), Ok((2, 4)));
        let k8s = |k: &str| (k == "JOB_COMPLETION_INDEX").then(|| "3".to_string());
        assert_eq!(parse_shard("4", k8s), Ok((3, 4)));
        assert!(parse_shard("3", k8s).is_err(), "index 3 of 3");
    }

    #[test]
    fn resuming_keeps_finished_inputs_and_cuts_the_last_one_and_any_half_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let a = r#"{"file":"a.jpg","face":0}"#;
        let b0 = r#"{"file":"b.mp4","face":0,"frame":0}"#;
        let b1 = r#"{"file":"b.mp4","face":0,"frame":10}"#;
        std::fs::write(&path, format!("{a}\n{a}\n{b0}\n{b1}\n{{\"file\":\"c.j")).unwrap();
        let done = resume_from(&path, Format::Json).unwrap();
        assert_eq!(done, ["a.jpg".to_string()].into_iter().collect());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), format!("{a}\n{a}\n"), "b.mp4 may be incomplete: done again");
        // A CSV's header stays; a file that is not fer's output is refused.
        let csv = dir.path().join("out.csv");
        std::fs::write(&csv, format!("{CSV_HEADER}\nx.png,,,0\ny.png,,,0\n")).unwrap();
        assert_eq!(resume_from(&csv, Format::Csv).unwrap().len(), 1);
        assert_eq!(std::fs::read_to_string(&csv).unwrap(), format!("{CSV_HEADER}\nx.png,,,0\n"));
        std::fs::write(&path, "hello\n").unwrap();
        assert!(resume_from(&path, Format::Json).unwrap_err().to_string().contains("line 1 is not fer predict's output"));
        assert!(resume_from(&dir.path().join("missing"), Format::Json).unwrap().is_empty());
    }
}
