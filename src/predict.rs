//! `fer predict`: labels for image files, or a labelled grid of random test faces.

use plotters::style::RGBColor;
use std::path::{Path, PathBuf};
use tch::Kind;

use crate::data::{load_any_image, Dataset, Faces, Split, CLASSES, NUM_CLASSES, PIXELS};
use crate::plot::{face_grid, Tile};
use crate::train::Trained;

/// The model used when none is given: the shipped tiny model, else the baseline run.
pub fn default_model() -> anyhow::Result<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    [root.join("models/tiny"), PathBuf::from("runs/baseline")]
        .into_iter()
        .find(|p| p.join("config.toml").is_file())
        .ok_or_else(|| anyhow::anyhow!("no model found: pass --model <run or model folder> (e.g. runs/baseline after `fer train`)"))
}

/// Softmax probabilities, one row of 7 per face.
pub fn probabilities(model: &Trained, faces: &Faces) -> Vec<[f32; NUM_CLASSES]> {
    let probs = model.logits(faces).softmax(-1, Kind::Float);
    let flat: Vec<f32> = Vec::try_from(probs.flatten(0, -1)).unwrap_or_default();
    flat.chunks(NUM_CLASSES).map(|c| c.try_into().unwrap()).collect()
}

fn argmax(p: &[f32; NUM_CLASSES]) -> usize {
    (0..NUM_CLASSES).max_by(|&a, &b| p[a].total_cmp(&p[b])).unwrap()
}

/// Prints the label and the seven probabilities of each image file.
pub fn files(model: &Trained, paths: &[PathBuf], json: bool) -> anyhow::Result<()> {
    let mut faces = Faces::default();
    let mut notes = Vec::new();
    for path in paths {
        let (pixels, note) = load_any_image(path)?;
        faces.pixels.extend_from_slice(&pixels);
        faces.labels.push(0);
        notes.push(note);
    }
    let probs = probabilities(model, &faces);
    for ((path, p), note) in paths.iter().zip(&probs).zip(&notes) {
        let label = CLASSES[argmax(p)];
        if json {
            let by_class: serde_json::Map<String, serde_json::Value> =
                CLASSES.iter().zip(p).map(|(c, v)| (c.to_string(), (*v as f64).into())).collect();
            println!("{}", serde_json::json!({"file": path, "label": label, "probabilities": by_class}));
        } else {
            let list: Vec<String> = CLASSES.iter().zip(p).map(|(c, v)| format!("{c} {:.3}", v)).collect();
            println!("{}: {label} ({})", path.display(), list.join(", "));
            if let Some(n) = note {
                println!("  note: {n}");
            }
        }
    }
    Ok(())
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
    let probs = probabilities(model, &faces);
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
