//! FER-2013 in memory: the two common releases (Kaggle's CSV and the image folders), a
//! compact on-disk cache, and the tensors training reads.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// The face size and the class names (in label order, as the image-folder release spells its
/// folders) live in the inference core, below every layer.
pub use fer_core::classes::{CLASSES, NUM_CLASSES, PIXELS, SIDE};

/// The three `Usage` values of the CSV release: train, validation and test splits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Split {
    Training,
    PublicTest,
    PrivateTest,
}

impl Split {
    pub const ALL: [Split; 3] = [Split::Training, Split::PublicTest, Split::PrivateTest];

    pub fn name(self) -> &'static str {
        match self {
            Split::Training => "Training",
            Split::PublicTest => "PublicTest",
            Split::PrivateTest => "PrivateTest",
        }
    }

    pub fn from_name(s: &str) -> Option<Split> {
        Split::ALL.into_iter().find(|split| split.name() == s)
    }

    /// Accepts the usage names and the roles the notebook gives them.
    pub fn parse(s: &str) -> Option<Split> {
        match s.to_ascii_lowercase().as_str() {
            "training" | "train" => Some(Split::Training),
            "publictest" | "public" | "val" | "validation" => Some(Split::PublicTest),
            "privatetest" | "private" | "test" => Some(Split::PrivateTest),
            _ => None,
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Bad input: where it is (file, line or image) and what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("{location}: {problem}")]
pub struct DataError {
    pub location: String,
    pub problem: String,
}

fn bad(location: impl fmt::Display, problem: impl Into<String>) -> DataError {
    DataError { location: location.to_string(), problem: problem.into() }
}

/// All faces of a release, in a fixed order: u8 pixels row-major, one label and split each.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Dataset {
    pub pixels: Vec<u8>,
    pub labels: Vec<u8>,
    pub splits: Vec<Split>,
    /// Where each face came from (file name, or `line N`), for messages and duplicate reports.
    pub sources: Vec<String>,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn image(&self, i: usize) -> &[u8] {
        &self.pixels[i * PIXELS..(i + 1) * PIXELS]
    }

    fn push(&mut self, pixels: &[u8], label: u8, split: Split, source: String) {
        self.pixels.extend_from_slice(pixels);
        self.labels.push(label);
        self.splits.push(split);
        self.sources.push(source);
    }

    /// Indices of the faces in `split`, in dataset order.
    pub fn indices(&self, split: Split) -> Vec<usize> {
        (0..self.len()).filter(|&i| self.splits[i] == split).collect()
    }

    /// The faces of one split as a compact copy.
    pub fn split(&self, split: Split) -> Faces {
        let idx = self.indices(split);
        let mut pixels = Vec::with_capacity(idx.len() * PIXELS);
        for &i in &idx {
            pixels.extend_from_slice(self.image(i));
        }
        let twin_in_training = if split == Split::Training { Vec::new() } else { self.twins_in_training(&idx) };
        Faces { pixels, labels: idx.iter().map(|&i| self.labels[i]).collect(), twin_in_training }
    }

    /// For each face of `idx`, whether a Training face has exactly its pixels: a model may have
    /// memorised the answer (FER-2013 holds 278 such PrivateTest faces).
    pub fn twins_in_training(&self, idx: &[usize]) -> Vec<bool> {
        let training: std::collections::HashSet<&[u8]> =
            self.indices(Split::Training).into_iter().map(|i| self.image(i)).collect();
        idx.iter().map(|&i| training.contains(self.image(i))).collect()
    }

    /// Counts per split and class: `counts[split][class]`.
    pub fn counts(&self) -> [[usize; NUM_CLASSES]; 3] {
        let mut counts = [[0; NUM_CLASSES]; 3];
        for (label, split) in self.labels.iter().zip(&self.splits) {
            counts[*split as usize][*label as usize] += 1;
        }
        counts
    }
}

/// The faces of one split, ready to become tensors.
#[derive(Clone, Debug, Default)]
pub struct Faces {
    pub pixels: Vec<u8>,
    pub labels: Vec<u8>,
    /// Per face, whether Training holds a pixel-identical twin (empty when unknown, and for
    /// Training itself): evaluations score the faces without one apart, the leak-aware score.
    pub twin_in_training: Vec<bool>,
}

impl Faces {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn image(&self, i: usize) -> &[u8] {
        &self.pixels[i * PIXELS..(i + 1) * PIXELS]
    }

    /// Images as an `[N, 1, 48, 48]` u8 tensor and labels as int64.
    pub fn tensors(&self) -> (tch::Tensor, tch::Tensor) {
        let n = self.len() as i64;
        let x = tch::Tensor::from_slice(&self.pixels).reshape([n, 1, SIDE as i64, SIDE as i64]);
        let y = tch::Tensor::from_slice(&self.labels).to_kind(tch::Kind::Int64);
        (x, y)
    }
}

/// Scales u8 pixels to [-1, 1] as the notebook does: (x / 255 - 0.5) / 0.5.
pub fn normalize(x: &tch::Tensor) -> tch::Tensor {
    (x.to_kind(tch::Kind::Float) / 255.0 - 0.5) / 0.5
}

// ---------------------------------------------------------------------------------------
// Kaggle CSV release

/// Reads Kaggle's `fer2013.csv` (`emotion,pixels,Usage`); CRLF, a BOM and quotes are fine.
pub fn read_csv(path: &Path) -> Result<Dataset, DataError> {
    let bytes = std::fs::read(path).map_err(|e| bad(path.display(), format!("cannot read: {e}")))?;
    parse_csv(&bytes, &path.display().to_string())
}

pub fn parse_csv(bytes: &[u8], name: &str) -> Result<Dataset, DataError> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(bad(name, "empty file: expected the header `emotion,pixels,Usage` and one row per face"));
    }
    let mut reader = csv::ReaderBuilder::new().has_headers(true).flexible(true).from_reader(bytes);
    let header = reader.byte_headers().map_err(|e| bad(name, format!("unreadable header: {e}")))?.clone();
    let column = |want: &str| header.iter().position(|h| h.trim_ascii().eq_ignore_ascii_case(want.as_bytes()));
    let (Some(c_emotion), Some(c_pixels), Some(c_usage)) = (column("emotion"), column("pixels"), column("Usage"))
    else {
        return Err(bad(
            format!("{name}, line 1"),
            format!("header is `{}`, expected `emotion,pixels,Usage`", String::from_utf8_lossy(header.as_slice())),
        ));
    };
    let width = header.len();

    // Rows are parsed in parallel: the full-size file has 35,887 rows of 2,304 numbers.
    let mut rows = Vec::new();
    let mut record = csv::ByteRecord::new();
    loop {
        match reader.read_byte_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {
                let line = record.position().map_or(0, |p| p.line());
                if record.len() == 1 && record[0].trim_ascii().is_empty() {
                    continue; // a blank line
                }
                if record.len() != width {
                    return Err(bad(
                        format!("{name}, line {line}"),
                        format!("{} fields, expected {width} (truncated or malformed row)", record.len()),
                    ));
                }
                rows.push((line, record.clone()));
            }
            Err(e) => return Err(bad(name, format!("malformed CSV: {e}"))),
        }
    }
    if rows.is_empty() {
        return Err(bad(name, "no faces: the file has a header but no rows"));
    }
    let parsed: Vec<Result<([u8; PIXELS], u8, Split), DataError>> = rows
        .par_iter()
        .map(|(line, rec)| {
            let at = || format!("{name}, line {line}");
            let label = parse_label(rec[c_emotion].trim_ascii()).map_err(|p| bad(at(), p))?;
            let usage = std::str::from_utf8(rec[c_usage].trim_ascii()).unwrap_or("?");
            let split = Split::from_name(usage).ok_or_else(|| {
                bad(at(), format!("unknown Usage `{usage}` (expected Training, PublicTest or PrivateTest)"))
            })?;
            let pixels = parse_pixels(&rec[c_pixels]).map_err(|p| bad(at(), p))?;
            Ok((pixels, label, split))
        })
        .collect();
    let mut data = Dataset::default();
    for (result, (line, _)) in parsed.into_iter().zip(&rows) {
        let (pixels, label, split) = result?;
        data.push(&pixels, label, split, format!("line {line}"));
    }
    Ok(data)
}

fn parse_label(field: &[u8]) -> Result<u8, String> {
    let text = String::from_utf8_lossy(field);
    match text.parse::<i64>() {
        Ok(v) if (0..NUM_CLASSES as i64).contains(&v) => Ok(v as u8),
        Ok(v) => Err(format!("emotion label {v} is outside 0..6")),
        Err(_) => Err(format!("emotion label `{text}` is not a number")),
    }
}

fn parse_pixels(field: &[u8]) -> Result<[u8; PIXELS], String> {
    let mut out = [0u8; PIXELS];
    let mut n = 0;
    for token in field.split(|&b| b == b' ').filter(|t| !t.is_empty()) {
        let mut value: u32 = 0;
        if token.len() > 4 || !token.iter().all(u8::is_ascii_digit) {
            let text = String::from_utf8_lossy(token);
            return Err(match text.parse::<f64>() {
                Ok(v) if v.fract() == 0.0 => format!("pixel {} is {text}, outside 0..255", n + 1),
                _ => format!("pixel {} is `{text}`, not a whole number", n + 1),
            });
        }
        for d in token {
            value = value * 10 + (d - b'0') as u32;
        }
        if value > 255 {
            return Err(format!("pixel {} is {value}, outside 0..255", n + 1));
        }
        if n < PIXELS {
            out[n] = value as u8;
        }
        n += 1;
    }
    if n != PIXELS {
        return Err(format!("{n} pixel values, expected {PIXELS} (48x48)"));
    }
    Ok(out)
}

/// Writes the Kaggle CSV (header `emotion,pixels,Usage`, LF line ends, no quotes).
pub fn write_csv(data: &Dataset, out: &mut impl Write) -> std::io::Result<()> {
    out.write_all(b"emotion,pixels,Usage\n")?;
    let mut line = String::with_capacity(PIXELS * 4 + 32);
    for i in 0..data.len() {
        line.clear();
        line.push_str(&data.labels[i].to_string());
        line.push(',');
        for (j, p) in data.image(i).iter().enumerate() {
            if j > 0 {
                line.push(' ');
            }
            line.push_str(&p.to_string());
        }
        line.push(',');
        line.push_str(data.splits[i].name());
        line.push('\n');
        out.write_all(line.as_bytes())?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// FER+ relabelling

/// Where FER+ (`fer2013new.csv`) is found by default: beside the FER-2013 release.
pub const FERPLUS_DEFAULT: &str = "../shared/data/ferplus/fer2013new.csv";

/// FER+'s vote columns, and the FER-2013 class of each (contempt, unknown and not-a-face have none).
const FERPLUS_COLUMNS: [(&str, Option<u8>); 10] = [
    ("neutral", Some(6)),
    ("happiness", Some(3)),
    ("surprise", Some(5)),
    ("sadness", Some(4)),
    ("anger", Some(0)),
    ("disgust", Some(1)),
    ("fear", Some(2)),
    ("contempt", None),
    ("unknown", None),
    ("NF", None),
];

/// FER+ (Barsoum et al., 2016): ten annotators' votes for every face of `fer2013.csv`, row for
/// row. Per row: its Usage, and its majority label as a FER-2013 class, as the FER+ authors'
/// "majority" mode has it (the emotion with more than half of the votes, once every emotion only
/// one annotator chose is dropped); `None` where no emotion has that majority or where it is
/// contempt, unknown or not a face.
pub fn read_ferplus(path: &Path) -> Result<Vec<(Split, Option<u8>)>, DataError> {
    let bytes = std::fs::read(path).map_err(|e| bad(path.display(), format!("cannot read: {e}")))?;
    let name = path.display().to_string();
    let mut reader = csv::ReaderBuilder::new().has_headers(true).from_reader(bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes));
    let header = reader.headers().map_err(|e| bad(&name, format!("unreadable header: {e}")))?.clone();
    let column = |want: &str| header.iter().position(|h| h.trim() == want);
    let usage = column("Usage").ok_or_else(|| bad(format!("{name}, line 1"), "no Usage column: not FER+'s fer2013new.csv"))?;
    let votes: Vec<(usize, Option<u8>)> = FERPLUS_COLUMNS
        .iter()
        .map(|&(c, class)| column(c).map(|i| (i, class)).ok_or_else(|| bad(format!("{name}, line 1"), format!("no `{c}` column: not FER+'s fer2013new.csv"))))
        .collect::<Result<_, _>>()?;
    let mut rows = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let line = format!("{name}, line {}", i + 2);
        let record = record.map_err(|e| bad(&line, format!("unreadable row: {e}")))?;
        let split = Split::from_name(record.get(usage).unwrap_or("").trim()).ok_or_else(|| bad(&line, "Usage must be Training, PublicTest or PrivateTest"))?;
        let counts: Vec<u32> = votes
            .iter()
            .map(|&(c, _)| record.get(c).unwrap_or("").trim().parse().map_err(|_| bad(&line, "vote counts must be whole numbers")))
            .collect::<Result<_, _>>()?;
        // As the FER+ authors do: an emotion only one annotator chose is an outlier, dropped.
        let counts: Vec<u32> = counts.into_iter().map(|n| if n > 1 { n } else { 0 }).collect();
        let total: u32 = counts.iter().sum();
        let majority = counts.iter().position(|&n| 2 * n > total).and_then(|c| votes[c].1);
        rows.push((split, majority));
    }
    Ok(rows)
}

/// How FER-2013's labels of one split agree with FER+'s majority labels.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LabelAgreement {
    pub split: String,
    pub faces: usize,
    /// The faces FER+ gives a majority label among the seven expressions.
    pub relabelled: usize,
    /// Of those, the faces whose FER-2013 label is the same.
    pub agree: usize,
    pub agreement: f64,
}

/// Per split, how often FER-2013's label is FER+'s majority label: what a model that reproduced
/// FER-2013's labels exactly would score against FER+.
pub fn ferplus_agreement(data: &Dataset, ferplus: &[(Split, Option<u8>)]) -> Result<Vec<LabelAgreement>, DataError> {
    data.check_ferplus_rows(ferplus)?;
    Ok(Split::ALL
        .iter()
        .map(|&split| {
            let rows = data.indices(split);
            // FER+'s label beside FER-2013's, for the faces FER+ gives one.
            let pairs: Vec<(u8, u8)> = rows.iter().filter_map(|&i| ferplus[i].1.map(|l| (l, data.labels[i]))).collect();
            let agree = pairs.iter().filter(|(l, old)| l == old).count();
            LabelAgreement { split: split.name().to_string(), faces: rows.len(), relabelled: pairs.len(), agree, agreement: agree as f64 / pairs.len().max(1) as f64 }
        })
        .collect())
}

impl Dataset {
    /// The faces FER+ gives a majority label among FER-2013's seven, with that label instead of
    /// FER-2013's (`ferplus` from [`read_ferplus`], one row per face of the whole release).
    pub fn with_ferplus_labels(&self, ferplus: &[(Split, Option<u8>)]) -> Result<Dataset, DataError> {
        self.check_ferplus_rows(ferplus)?;
        let mut out = Dataset::default();
        for (i, &(split, label)) in ferplus.iter().enumerate() {
            if let Some(label) = label {
                out.push(self.image(i), label, split, self.sources[i].clone());
            }
        }
        Ok(out)
    }

    /// FER+ labels fer2013.csv row for row: the same number of faces, each in the same split.
    fn check_ferplus_rows(&self, ferplus: &[(Split, Option<u8>)]) -> Result<(), DataError> {
        if ferplus.len() != self.len() {
            return Err(bad("FER+", format!("it labels {} faces, row for row, and this data set holds {}: FER+ needs the whole of fer2013.csv", ferplus.len(), self.len())));
        }
        match ferplus.iter().zip(&self.splits).position(|((theirs, _), ours)| theirs != ours) {
            Some(i) => Err(bad(&self.sources[i], format!("FER+ row {} is in {} and this face in {}: the rows are not fer2013.csv's", i + 1, ferplus[i].0.name(), self.splits[i].name()))),
            None => Ok(()),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Image-folder release

/// One face file of the image-folder release, before decoding.
struct FaceFile {
    path: PathBuf,
    label: u8,
    split: Split,
    id: u64,
}

/// Lists `train/<class>/*` and `test/<class>/*`; the split comes from the file-name prefix.
fn list_folder(root: &Path) -> Result<Vec<FaceFile>, DataError> {
    let mut files = Vec::new();
    let mut found_any_part = false;
    for part in ["train", "test"] {
        let dir = root.join(part);
        if !dir.is_dir() {
            continue;
        }
        found_any_part = true;
        for class_entry in read_dir_sorted(&dir)? {
            if !class_entry.is_dir() {
                continue; // stray files beside the class folders carry no label
            }
            let class = file_name(&class_entry);
            if class.starts_with('.') {
                continue;
            }
            let label = CLASSES.iter().position(|c| c.eq_ignore_ascii_case(&class)).ok_or_else(|| {
                bad(class_entry.display(), format!("unknown class folder `{class}` (expected one of {})", CLASSES.join(", ")))
            })? as u8;
            for path in read_dir_sorted(&class_entry)? {
                let name = file_name(&path);
                if name.starts_with('.') {
                    continue;
                }
                let (split, id) = split_of(&name).ok_or_else(|| {
                    bad(path.display(), "cannot tell the split: the name must start with Training_, PublicTest_ or PrivateTest_")
                })?;
                files.push(FaceFile { path, label, split, id });
            }
        }
    }
    if !found_any_part {
        return Err(bad(root.display(), "not an FER-2013 image folder: no train/ or test/ inside"));
    }
    if files.is_empty() {
        return Err(bad(root.display(), "no face images under train/ or test/"));
    }
    // The CSV's order: Training, then PublicTest, then PrivateTest; by id within a split.
    files.sort_by(|a, b| (a.split, a.id, &a.path).cmp(&(b.split, b.id, &b.path)));
    Ok(files)
}

fn split_of(name: &str) -> Option<(Split, u64)> {
    let (prefix, rest) = name.split_once('_')?;
    let split = Split::from_name(prefix)?;
    let stem = rest.split('.').next().unwrap_or("");
    Some((split, stem.parse().unwrap_or(u64::MAX)))
}

fn read_dir_sorted(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let entries = std::fs::read_dir(dir).map_err(|e| bad(dir.display(), format!("cannot list: {e}")))?;
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    Ok(paths)
}

fn file_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Reads the image-folder release (JPEG or PNG, 48x48 8-bit grayscale), decoding in parallel.
pub fn read_folder(root: &Path) -> Result<Dataset, DataError> {
    let files = list_folder(root)?;
    let decoded: Vec<Result<Vec<u8>, DataError>> = files.par_iter().map(|f| decode_face(&f.path)).collect();
    let mut data = Dataset::default();
    data.pixels.reserve(files.len() * PIXELS);
    for (f, pixels) in files.iter().zip(decoded) {
        data.push(&pixels?, f.label, f.split, file_name(&f.path));
    }
    Ok(data)
}

/// Decodes one face file, insisting on 48x48 8-bit grayscale: nothing is converted silently.
pub fn decode_face(path: &Path) -> Result<Vec<u8>, DataError> {
    let bytes = std::fs::read(path).map_err(|e| bad(path.display(), format!("cannot read: {e}")))?;
    if bytes.is_empty() {
        return Err(bad(path.display(), "empty file, not an image"));
    }
    let img = image::load_from_memory(&bytes)
        .map_err(|e| bad(path.display(), format!("unreadable image: {e}")))?;
    if img.width() as usize != SIDE || img.height() as usize != SIDE {
        return Err(bad(path.display(), format!("image is {}x{}, expected 48x48", img.width(), img.height())));
    }
    match img {
        image::DynamicImage::ImageLuma8(gray) => Ok(gray.into_raw()),
        other => Err(bad(
            path.display(),
            format!("image is {:?}, expected 8-bit grayscale (convert it first, e.g. with `fer predict` for single files)", other.color()),
        )),
    }
}

/// Any image file as a 48x48 grayscale face: converted and resized when needed (for predict).
pub fn load_any_image(path: &Path) -> Result<(Vec<u8>, Option<String>), DataError> {
    let img = image::open(path).map_err(|e| bad(path.display(), format!("unreadable image: {e}")))?;
    let mut note = None;
    if img.width() as usize != SIDE || img.height() as usize != SIDE || !matches!(img, image::DynamicImage::ImageLuma8(_)) {
        note = Some(format!("converted {}x{} {:?} to 48x48 grayscale", img.width(), img.height(), img.color()));
    }
    let gray = img.to_luma8();
    let gray = if gray.width() as usize == SIDE && gray.height() as usize == SIDE {
        gray
    } else {
        image::imageops::resize(&gray, SIDE as u32, SIDE as u32, image::imageops::FilterType::Triangle)
    };
    Ok((gray.into_raw(), note))
}

// ---------------------------------------------------------------------------------------
// Source detection and the cache

/// Where the faces come from.
#[derive(Clone, Debug, PartialEq)]
pub enum Source {
    Csv(PathBuf),
    Folder(PathBuf),
}

impl Source {
    /// A `.csv` file, a folder holding `fer2013.csv`, or an image-folder release.
    pub fn detect(path: &Path) -> Result<Source, DataError> {
        if path.is_file() {
            return Ok(Source::Csv(path.to_path_buf()));
        }
        if !path.exists() {
            return Err(bad(path.display(), "no such file or folder (give the FER-2013 data with --data)"));
        }
        if path.join("train").is_dir() || path.join("test").is_dir() {
            return Ok(Source::Folder(path.to_path_buf()));
        }
        let csv = path.join("fer2013.csv");
        if csv.is_file() {
            return Ok(Source::Csv(csv));
        }
        Err(bad(path.display(), "neither fer2013.csv nor train/ and test/ image folders found here"))
    }

    fn read(&self) -> Result<Dataset, DataError> {
        match self {
            Source::Csv(p) => read_csv(p),
            Source::Folder(p) => read_folder(p),
        }
    }

    /// A key that changes when any source file is added, removed, resized or touched.
    pub fn key(&self) -> Result<String, DataError> {
        let mut h = blake3::Hasher::new();
        h.update(CACHE_MAGIC);
        let stamp = |h: &mut blake3::Hasher, p: &Path| -> Result<(), DataError> {
            let meta = std::fs::metadata(p).map_err(|e| bad(p.display(), format!("cannot stat: {e}")))?;
            let mtime = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
            h.update(p.as_os_str().as_encoded_bytes());
            h.update(&meta.len().to_le_bytes());
            h.update(&mtime.map_or(0, |d| d.as_nanos()).to_le_bytes());
            Ok(())
        };
        match self {
            Source::Csv(p) => stamp(&mut h, &std::path::absolute(p).unwrap_or(p.clone()))?,
            Source::Folder(root) => {
                let root = std::path::absolute(root).unwrap_or(root.clone());
                for f in list_folder(&root)? {
                    stamp(&mut h, &f.path)?;
                }
            }
        }
        Ok(h.finalize().to_hex()[..16].to_string())
    }
}

const CACHE_MAGIC: &[u8; 8] = b"FERDATA2";

/// The cache folder: `$FER_CACHE` or `cache/` under the working directory.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("FER_CACHE").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("cache"))
}

/// Loads the data set at `path`, decoding it only when the cache misses.
pub fn load(path: &Path) -> anyhow::Result<Dataset> {
    load_with_cache(path, &cache_dir())
}

pub fn load_with_cache(path: &Path, cache: &Path) -> anyhow::Result<Dataset> {
    let source = Source::detect(path)?;
    let file = cache.join(format!("fer2013-{}.bin", source.key()?));
    if let Ok(data) = read_cache(&file) {
        return Ok(data);
    }
    let data = source.read()?;
    std::fs::create_dir_all(cache)?;
    write_cache(&data, &file)?;
    Ok(data)
}

/// Layout: magic, the BLAKE3 hash of everything after it, count (u64 LE), pixels, labels,
/// split ids, sources joined by '\n'. The hash is checked on every read: a flipped byte must
/// not move a face to another split or change its label without a word.
pub fn write_cache(data: &Dataset, file: &Path) -> std::io::Result<()> {
    let mut bytes = Vec::with_capacity(data.pixels.len() + data.len() * 40 + 16);
    bytes.extend_from_slice(&(data.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&data.pixels);
    bytes.extend_from_slice(&data.labels);
    bytes.extend(data.splits.iter().map(|s| *s as u8));
    bytes.extend_from_slice(data.sources.join("\n").as_bytes());
    let header: Vec<u8> = CACHE_MAGIC.iter().copied().chain(*blake3::hash(&bytes).as_bytes()).collect();
    write_atomic(file, &[header, bytes].concat())
}

pub fn read_cache(file: &Path) -> anyhow::Result<Dataset> {
    let mut bytes = Vec::new();
    std::fs::File::open(file)?.read_to_end(&mut bytes)?;
    anyhow::ensure!(bytes.len() >= 48 && &bytes[..8] == CACHE_MAGIC, "not a fer data cache");
    let (hash, body) = bytes[8..].split_at(32);
    anyhow::ensure!(blake3::hash(body).as_bytes() == hash, "{}: the data cache is corrupt (its checksum does not match)", file.display());
    let n = u64::from_le_bytes(body[..8].try_into()?) as usize;
    let (pixels, rest) = body[8..].split_at_checked(n * PIXELS).ok_or_else(|| anyhow::anyhow!("truncated cache"))?;
    let (labels, rest) = rest.split_at_checked(n).ok_or_else(|| anyhow::anyhow!("truncated cache"))?;
    let (splits, rest) = rest.split_at_checked(n).ok_or_else(|| anyhow::anyhow!("truncated cache"))?;
    let sources: Vec<String> = std::str::from_utf8(rest)?.split('\n').map(str::to_owned).collect();
    anyhow::ensure!(sources.len() == n, "truncated cache");
    let splits = splits
        .iter()
        .map(|&s| Split::ALL.get(s as usize).copied().ok_or_else(|| anyhow::anyhow!("{}: split id {s} in the data cache", file.display())))
        .collect::<anyhow::Result<_>>()?;
    anyhow::ensure!(labels.iter().all(|&l| (l as usize) < NUM_CLASSES), "{}: a label outside 0..6 in the data cache", file.display());
    Ok(Dataset { pixels: pixels.to_vec(), labels: labels.to_vec(), splits, sources })
}

/// Writes through a temporary file in the same folder and renames it: never half-written.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_durably(path, |tmp| std::fs::write(tmp, bytes))
}

/// Copies `from` over `to` durably (see [`write_durably`]).
pub fn copy_durably(from: &Path, to: &Path) -> std::io::Result<()> {
    write_durably(to, |tmp| std::fs::copy(from, tmp).map(drop))
}

/// Has `write` fill a temporary file beside `path`, then syncs it, renames it into place and
/// syncs the folder: after a crash or a power cut, `path` holds the old content or the new,
/// whole, and what names it (a run's `last.json`) never points at a file still in a cache.
pub fn write_durably(path: &Path, write: impl FnOnce(&Path) -> std::io::Result<()>) -> std::io::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    // The same extension, for writers that choose the format by it (tch's VarStore::save).
    let suffix = path.extension().map_or(String::new(), |e| format!(".{}", e.to_string_lossy()));
    let tmp = tempfile::Builder::new().prefix(".tmp").suffix(&suffix).tempfile_in(dir)?.into_temp_path();
    write(&tmp)?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    // Written but not yet durable or in place: the file is only a temporary one.
    crate::crash::point(&format!("write:{name}"));
    std::fs::File::open(&tmp)?.sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    std::fs::File::open(dir)?.sync_all()?;
    crate::crash::point(&format!("written:{name}"));
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Analysis

/// Groups of identical images (two or more faces with the same pixels).
pub fn duplicate_groups(data: &Dataset) -> Vec<Vec<usize>> {
    let mut groups: HashMap<&[u8], Vec<usize>> = HashMap::new();
    for i in 0..data.len() {
        groups.entry(data.image(i)).or_default().push(i);
    }
    let mut out: Vec<Vec<usize>> = groups.into_values().filter(|g| g.len() > 1).collect();
    out.sort();
    out
}

/// Faces whose pixels barely vary (blank frames, solid fills): standard deviation below `max_std`.
pub fn near_constant(data: &Dataset, max_std: f64) -> Vec<(usize, f64)> {
    (0..data.len())
        .filter_map(|i| {
            let img = data.image(i);
            let mean = img.iter().map(|&p| p as f64).sum::<f64>() / PIXELS as f64;
            let var = img.iter().map(|&p| (p as f64 - mean).powi(2)).sum::<f64>() / PIXELS as f64;
            (var.sqrt() < max_std).then_some((i, var.sqrt()))
        })
        .collect()
}
