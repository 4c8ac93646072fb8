//! The teachers' scores for every view of every Training face, computed once
//! (`train.teacher_cache`).
//!
//! Under an augmentation of crops and flips alone, a face has only (2p+1)² crops, each possibly
//! mirrored: 162 views at a padding of 4. A distilled run asks its teachers about one of them per
//! face and epoch, so a long run asks about most views of every face, many more than once, and
//! the teachers' passes are most of its time (a two-pass teacher of 313 MFLOPs took 108 of an
//! epoch's 125 seconds for tiny). Scoring each view once and looking the scores up gives the same
//! targets (up to the bfloat16 teacher's rounding), at the cost of one teacher pass per view, and
//! every later student of the same teachers and views gets them for nothing.
//!
//! The scores live in `<runs>/teacher-cache/<key>/`, one file per chunk of faces, so that a build
//! that is killed goes on from its last chunk; the key is a hash of the teachers' weights, the
//! views and the faces, so another teacher or data set never reads them.

use std::path::{Path, PathBuf};
use std::time::Instant;

use tch::nn::ModuleT;
use tch::{Device, Kind, Tensor};

use super::augment::{render_view, View};
use crate::config::AugmentConfig;
use crate::data::{Faces, PIXELS, SIDE};
use crate::nn::score::combine;
use crate::nn::model::{save_atomic, Trained};

/// Faces per file: about 2 minutes of a 313-MFLOP teacher's passes on 2 cores.
const CHUNK: usize = 512;

/// Every view's scores, `[faces, teachers, views, 7]`, on the CPU.
pub struct TeacherCache {
    scores: Tensor,
    padding: i64,
    mirrors: i64,
    /// What scoring every view took, whichever run built it: the sum of `build.jsonl`'s chunks.
    pub build_seconds: f64,
}

impl TeacherCache {
    /// The cache of `teachers` for `faces` under `augment`, read from `runs_dir` or built there.
    /// With `teacher_flip` the mirrored views are kept even without `hflip`, since the teacher
    /// also scores the mirror of what the student sees.
    pub fn open_or_build(
        teachers: &[Trained],
        faces: &Faces,
        augment: &AugmentConfig,
        teacher_flip: bool,
        runs_dir: &Path,
        device: Device,
        quiet: bool,
    ) -> anyhow::Result<TeacherCache> {
        anyhow::ensure!(!teachers.is_empty(), "teacher_cache needs a teacher (train.teacher)");
        let padding = augment.crop_padding as i64;
        let mirrors = if augment.hflip || teacher_flip { 2 } else { 1 };
        let dir = cache_dir(runs_dir, teachers, faces, padding, mirrors)?;
        std::fs::create_dir_all(&dir)?;
        let views = (2 * padding + 1).pow(2) * mirrors;
        let chunks = faces.len().div_ceil(CHUNK);
        let missing = (0..chunks).filter(|&c| !chunk_path(&dir, c).exists()).count();
        if missing > 0 && !quiet {
            println!(
                "teacher cache {}: scoring {} views of {} faces with {} teacher(s), {missing} of {chunks} chunks to go",
                dir.display(),
                views,
                faces.len(),
                teachers.len()
            );
        }
        let (mut parts, mut scored, mut seconds) = (Vec::with_capacity(chunks), 0, 0.0);
        for c in 0..chunks {
            let path = chunk_path(&dir, c);
            if !path.exists() {
                let started = Instant::now();
                let bar = crate::progress::bar(views as usize, &format!("teacher cache: chunk {}/{chunks}", c + 1), quiet);
                let part = score_chunk(teachers, faces, c * CHUNK..((c + 1) * CHUNK).min(faces.len()), padding, mirrors, device, &bar);
                bar.finish_and_clear();
                save_atomic(&path, |tmp| Ok(Tensor::write_safetensors(&[("scores", &part)], tmp)?))?;
                let took = started.elapsed().as_secs_f64();
                let line = serde_json::json!({"chunk": c, "faces": part.size()[0], "views": views, "seconds": took});
                crate::record::append_json_line(&dir.join("build.jsonl"), &line)?;
                (scored, seconds) = (scored + 1, seconds + took);
                if !quiet {
                    let left = seconds / scored as f64 * (missing - scored) as f64;
                    println!("teacher cache: chunk {}/{chunks} scored in {}, about {} to go", c + 1, crate::progress::duration_in_words(took), crate::progress::duration_in_words(left));
                }
            }
            let read = Tensor::read_safetensors(&path).map_err(|e| anyhow::anyhow!("{}: {e}; delete it to score that chunk again", path.display()))?;
            let part = read.into_iter().find(|(name, _)| name == "scores").map(|(_, t)| t);
            parts.push(part.ok_or_else(|| anyhow::anyhow!("{}: no scores in it; delete it to score that chunk again", path.display()))?);
        }
        let scores = Tensor::cat(&parts, 0);
        let expected = [faces.len() as i64, teachers.len() as i64, views, crate::data::NUM_CLASSES as i64];
        anyhow::ensure!(scores.size() == expected, "{}: scores of shape {:?}, expected {expected:?}; delete the folder to build it again", dir.display(), scores.size());
        Ok(TeacherCache { scores, padding, mirrors, build_seconds: build_seconds(&dir)? })
    }

    /// Where `view` is in a face's row of views.
    fn index(&self, view: View) -> i64 {
        let side = 2 * self.padding + 1;
        ((view.dy + self.padding) * side + view.dx + self.padding) * self.mirrors + i64::from(view.mirrored && self.mirrors == 2)
    }

    /// What the teachers teach for the faces at `indices` seen as `views`: as
    /// [`super::teach`] computes it from the images, the [`combine`]d scores of every teacher
    /// and, with `flip`, of the mirror image too.
    pub fn teach(&self, indices: &[i64], views: &[View], flip: bool) -> Tensor {
        let (teachers, per_face) = (self.scores.size()[1], self.scores.size()[2]);
        let rows = self.scores.view([-1, crate::data::NUM_CLASSES as i64]);
        let mut members = Vec::new();
        for t in 0..teachers {
            let seen: &[bool] = if flip { &[false, true] } else { &[false] };
            for &mirror in seen {
                let at: Vec<i64> = indices
                    .iter()
                    .zip(views)
                    .map(|(&i, &v)| (i * teachers + t) * per_face + self.index(View { mirrored: v.mirrored != mirror, ..v }))
                    .collect();
                members.push(rows.index_select(0, &Tensor::from_slice(&at)));
            }
        }
        combine(&members)
    }
}

/// Scores every view of the faces in `range` with every teacher: `[faces, teachers, views, 7]`.
fn score_chunk(teachers: &[Trained], faces: &Faces, range: std::ops::Range<usize>, padding: i64, mirrors: i64, device: Device, bar: &indicatif::ProgressBar) -> Tensor {
    let n = range.len();
    let mut images = vec![0f32; n * PIXELS];
    let mut per_view = Vec::new();
    for dy in -padding..=padding {
        for dx in -padding..=padding {
            for mirrored in [false, true].into_iter().take(mirrors as usize) {
                for (k, i) in range.clone().enumerate() {
                    render_view(faces.image(i), &mut images[k * PIXELS..(k + 1) * PIXELS], View { dx, dy, mirrored });
                }
                let x = Tensor::from_slice(&images).reshape([n as i64, 1, SIDE as i64, SIDE as i64]).to_device(device);
                let scores: Vec<Tensor> = tch::no_grad(|| teachers.iter().map(|t| t.net.forward_t(&x, false).to_kind(Kind::Float).to_device(Device::Cpu)).collect());
                per_view.push(Tensor::stack(&scores, 1));
                bar.inc(1);
            }
        }
    }
    Tensor::stack(&per_view, 2)
}

/// `<runs_dir>/teacher-cache/<hash of the teachers' weights, the views and the faces>`.
fn cache_dir(runs_dir: &Path, teachers: &[Trained], faces: &Faces, padding: i64, mirrors: i64) -> anyhow::Result<PathBuf> {
    let mut hash = blake3::Hasher::new();
    hash.update(format!("teachers {} padding {padding} mirrors {mirrors} faces {}\n", teachers.len(), faces.len()).as_bytes());
    for teacher in teachers {
        let mut named: Vec<(String, Tensor)> = teacher.vs.variables().into_iter().collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, tensor) in named {
            let values = Vec::<f32>::try_from(tensor.to_kind(Kind::Float).flatten(0, -1))?;
            hash.update(name.as_bytes());
            hash.update(&values.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>());
        }
    }
    hash.update(&faces.pixels);
    Ok(runs_dir.join("teacher-cache").join(&hash.finalize().to_hex()[..16]))
}

/// The seconds each chunk took, from `build.jsonl`; a chunk scored again (its file deleted)
/// counts at its last scoring.
fn build_seconds(dir: &Path) -> anyhow::Result<f64> {
    let path = dir.join("build.jsonl");
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let mut seconds = std::collections::BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let entry: serde_json::Value = serde_json::from_str(line).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        if let (Some(chunk), Some(s)) = (entry["chunk"].as_u64(), entry["seconds"].as_f64()) {
            seconds.insert(chunk, s);
        }
    }
    Ok(seconds.values().sum())
}

fn chunk_path(dir: &Path, chunk: usize) -> PathBuf {
    dir.join(format!("chunk-{chunk:04}.safetensors"))
}
