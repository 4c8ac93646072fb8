//! `fer predict`: every face in photos, folders of photos, videos and standard input, found,
//! framed and classified by the face pipeline; a table, JSON lines or CSV; annotated copies
//! and per-video summaries on request. Bad inputs are reported by name and skipped.

use image::{DynamicImage, RgbImage};
use plotters::style::RGBColor;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::data::{Dataset, Faces, Split, CLASSES, NUM_CLASSES, PIXELS};
use crate::face::track::{changes_per_second, Tracked, Tracker};
use crate::face::{argmax, Analysis, FaceResult, Pipeline};
use crate::media::{self, Sampling};
use crate::plot::{face_grid, Tile};
use crate::nn::model::Trained;

/// The model used when none is given: the shipped tiny model, else the baseline run.
pub fn default_model() -> anyhow::Result<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    [root.join("models/tiny"), PathBuf::from("runs/baseline")]
        .into_iter()
        .find(|p| p.join("config.toml").is_file())
        .ok_or_else(|| anyhow::anyhow!("no model found: pass --model <run or model folder> (e.g. runs/baseline after `fer train`)"))
}

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
    pub sampling: Sampling,
    /// Videos: the half-life of each track's smoothing, in seconds.
    pub half_life: f64,
    pub quiet: bool,
}

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

/// Counts and time spent, for the closing line.
#[derive(Default)]
struct Tally {
    images: usize,
    frames: usize,
    faces: usize,
    no_face: usize,
    decode: Duration,
    detect: Duration,
    classify: Duration,
    failed: Vec<(String, String)>,
}

/// An input as given: a path (file or folder) or `-` for standard input.
fn expand(inputs: &[PathBuf]) -> Vec<Result<PathBuf, (String, String)>> {
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

/// Labels every face of every input; returns an error saying how many inputs failed.
pub fn run(pipeline: &Pipeline, inputs: &[PathBuf], opts: &PredictOptions) -> anyhow::Result<()> {
    anyhow::ensure!(!inputs.is_empty(), "give image or video files, folders, or - for standard input (or --random N)");
    if let Some(dir) = &opts.annotate {
        std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
    }
    let items = expand(inputs);
    let stems = annotated_stems(&items);
    let bar = crate::progress::bar(items.len(), "predict", opts.quiet || items.len() < 2);
    let mut sink = Sink { format: opts.format, header_written: false };
    let mut tally = Tally::default();
    let started = Instant::now();
    let stdout = std::io::stdout();
    for (item, stem) in items.iter().zip(&stems) {
        let path = match item {
            Ok(p) => p,
            Err((name, why)) => {
                bar.suspend(|| eprintln!("error: {name}: {why}"));
                tally.failed.push((name.clone(), why.clone()));
                continue;
            }
        };
        let name = if path.as_os_str() == "-" { "<stdin>".to_string() } else { path.display().to_string() };
        let mut out = stdout.lock();
        let result = bar.suspend(|| {
            if media::has_extension(path, &media::VIDEO_EXTENSIONS) {
                video(pipeline, path, stem, &name, opts, &mut sink, &mut tally, &mut out)
            } else {
                photo(pipeline, path, stem, &name, opts, &mut sink, &mut tally, &mut out)
            }
        });
        if let Err(why) = result {
            bar.suspend(|| eprintln!("error: {name}: {why}"));
            tally.failed.push((name, why));
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    if !opts.quiet && tally.images + tally.frames > 0 {
        eprintln!("{}", tally.summary(started.elapsed()));
    }
    let n = tally.failed.len();
    anyhow::ensure!(n == 0, "{n} of {} inputs failed: {}", items.len(), tally.failed.iter().map(|f| f.0.as_str()).collect::<Vec<_>>().join(", "));
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

#[allow(clippy::too_many_arguments)]
fn photo(pipeline: &Pipeline, path: &Path, stem: &str, name: &str, opts: &PredictOptions, sink: &mut Sink, tally: &mut Tally, out: &mut impl Write) -> Result<(), String> {
    let t = Instant::now();
    let bytes = if path.as_os_str() == "-" { media::read_stdin()? } else { std::fs::read(path).map_err(|e| format!("cannot read: {e}"))? };
    let image = media::decode_image(&bytes).map_err(|e| e.to_string())?;
    tally.decode += t.elapsed();
    let analysis = pipeline.analyse(&image, opts.detect);
    tally.count(&analysis);
    tally.images += 1;
    if analysis.faces.is_empty() {
        tally.no_face += 1;
        eprintln!("{name}: no face found");
    }
    for (i, r) in analysis.faces.iter().enumerate() {
        sink.face(out, &Place { file: name, frame: None, face: i, track: None }, r).map_err(|e| e.to_string())?;
    }
    if let Some(dir) = &opts.annotate {
        let mut rgb = image.to_rgb8();
        let captions: Vec<String> = analysis.faces.iter().enumerate().map(|(i, f)| format!("{i} {}", f.label)).collect();
        crate::plot::annotate(&mut rgb, &analysis.faces, &captions).map_err(|e| e.to_string())?;
        let dest = dir.join(annotated_name(stem, "png"));
        rgb.save(&dest).map_err(|e| format!("writing {}: {e}", dest.display()))?;
    }
    Ok(())
}

/// The annotated copy's file name for an input named `stem`, with `extension`.
fn annotated_name(stem: &str, extension: &str) -> String {
    format!("{stem}.annotated.{extension}")
}

/// Each input's name in `--annotate`'s folder: its file's stem, and where two inputs share one
/// (`a/x.jpg`, `b/x.png`) the later ones numbered (`x-2`), so no copy overwrites another.
fn annotated_stems(items: &[Result<PathBuf, (String, String)>]) -> Vec<String> {
    let mut used = std::collections::HashSet::<String>::new();
    items
        .iter()
        .map(|item| {
            let stem = match item {
                Ok(p) if p.as_os_str() != "-" => p.file_stem().map_or("stdin".into(), |s| s.to_string_lossy().into_owned()),
                _ => "stdin".to_string(),
            };
            // Case-insensitively: some file systems would still put two copies in one file.
            let name = (1..).map(|n| if n == 1 { stem.clone() } else { format!("{stem}-{n}") }).find(|s| !used.contains(&s.to_lowercase())).expect("a free name");
            used.insert(name.to_lowercase());
            name
        })
        .collect()
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
    if let Some(w) = writer {
        w.finish()?;
    }
    // The track seen in most frames, smoothed, is the video's summary.
    let mut frames_of = std::collections::BTreeMap::<u64, usize>::new();
    for (_, faces) in &seen {
        for (t, _) in faces {
            *frames_of.entry(t.track).or_default() += 1;
        }
    }
    let main = frames_of.iter().max_by_key(|&(id, n)| (*n, std::cmp::Reverse(*id))).map(|(&id, _)| id);
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
    eprintln!("{name}: {} frames sampled over {:.1} s, {} tracks, the longest (#{}) in {} frames: {}", seen.len(), info.seconds, frames_of.len(), main.map_or("-".into(), |m| m.to_string()), with_face.len(), shares.join(", "));
    let (raw, smoothed) = flicker(&seen);
    if frames_of.values().any(|&n| n > 1) {
        eprintln!("{name}: labels change {raw:.2} times a second along a track, {smoothed:.2} smoothed (half-life {} s)", opts.half_life);
    }
    if let Some(dir) = &opts.annotate {
        let dest = dir.join(annotated_name(stem, "summary.png"));
        let title = format!("{name}: track #{} (seen longest), smoothed over a half-life of {} s", main.map_or("-".into(), |m| m.to_string()), opts.half_life);
        crate::plot::emotion_timeline(&dest, &title, &timeline).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Label changes per second along each track, raw and smoothed, over all tracks' time.
fn flicker(seen: &[(f64, Vec<(Tracked, [f32; NUM_CLASSES])>)]) -> (f64, f64) {
    let mut by_track = std::collections::BTreeMap::<u64, Vec<(f64, usize, usize)>>::new();
    for (time, faces) in seen {
        for (t, raw) in faces {
            by_track.entry(t.track).or_default().push((*time, argmax(raw), argmax(&t.smoothed)));
        }
    }
    let (mut raw, mut smoothed, mut span) = (0.0, 0.0, 0.0);
    for labels in by_track.values().filter(|l| l.len() > 1) {
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
pub fn random_grid(model: &Trained, data: &Dataset, split: Split, n: usize, seed: u64, out: &Path) -> anyhow::Result<f64> {
    let all = data.indices(split);
    anyhow::ensure!(!all.is_empty(), "no {split} faces");
    let mut rng = fastrand::Rng::with_seed(seed);
    let picks: Vec<usize> = (0..n.min(all.len())).map(|_| all[rng.usize(..all.len())]).collect();
    let mut faces = Faces::default();
    for &i in &picks {
        faces.pixels.extend_from_slice(data.image(i));
        faces.labels.push(data.labels[i]);
    }
    let probs = model.probabilities(&faces);
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
