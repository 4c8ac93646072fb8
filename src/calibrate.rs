//! `fer detect calibrate`: how FER-2013 framed its faces, measured. The detector is run on
//! FER-2013 faces (upscaled, with room around them) and the frame's side and centre recorded
//! relative to each detection, as medians over thousands of faces; the core's `Framing` crops
//! photos with the inverse of that mapping (`models/detector/framing.json`).

use crate::data::{Dataset, Split};
use crate::face::detect::FaceDetector;
use crate::face::frame::{anchor, detection_in, embed, Framing};

fn median_and_iqr(mut v: Vec<f64>) -> (f64, [f64; 2]) {
    v.sort_by(f64::total_cmp);
    let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    (q(0.5), [q(0.25), q(0.75)])
}

/// Measures the framing on `faces` faces of `split` (evenly spaced through it).
pub fn calibrate(data: &Dataset, split: Split, faces: usize, detector: &FaceDetector, progress: &indicatif::ProgressBar) -> anyhow::Result<Framing> {
    let (upscale, margin) = (4, 0.5);
    let idx = data.indices(split);
    anyhow::ensure!(!idx.is_empty(), "no {split} faces to calibrate on");
    anyhow::ensure!(faces > 0, "--faces must be at least 1");
    let step = (idx.len() / faces.max(1)).max(1);
    let picks: Vec<usize> = idx.iter().step_by(step).take(faces).copied().collect();
    progress.set_length(picks.len() as u64);
    let (mut side, mut dx, mut dy) = (Vec::new(), Vec::new(), Vec::new());
    for &i in &picks {
        let (canvas, frame) = embed(data.image(i), upscale, margin);
        if let Some(d) = detection_in(&detector.detect(&canvas), &frame) {
            let ((fx, fy), (bx, by)) = (frame.centre(), anchor(&d));
            side.push(frame.w / d.bbox.w);
            dx.push((fx - bx) / d.bbox.w);
            dy.push((fy - by) / d.bbox.w);
        }
        progress.inc(1);
    }
    anyhow::ensure!(side.len() * 2 >= picks.len(), "the detector found only {} of {} faces: no calibration", side.len(), picks.len());
    let found = side.len();
    let ((side, side_iqr), (dx, dx_iqr), (dy, dy_iqr)) = (median_and_iqr(side), median_and_iqr(dx), median_and_iqr(dy));
    Ok(Framing {
        side,
        dx,
        dy,
        faces_tried: picks.len(),
        faces_found: found,
        upscale,
        margin,
        split: split.name().to_string(),
        side_iqr,
        dx_iqr,
        dy_iqr,
    })
}

