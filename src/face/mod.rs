//! Faces in the wild: find them in a photo (`detect`), cut each out the way FER-2013 framed its
//! faces (`frame`), and classify the 48x48 result; in a video, link each face to its track
//! across frames and smooth its probabilities (`track`). One pipeline serves `fer predict` on
//! photos, folders and videos alike.

pub mod detect;
pub mod frame;
pub mod track;

use image::DynamicImage;
use serde::Serialize;
use std::time::{Duration, Instant};

use crate::data::{Faces, CLASSES, NUM_CLASSES, SIDE};
use crate::nn::model::Trained;
use detect::{DetectorOptions, FaceBox, FaceDetector};
use frame::Framing;

/// One face found and classified.
#[derive(Clone, Debug, Serialize)]
pub struct FaceResult {
    /// The detector's box (the whole image when detection is off).
    pub bbox: FaceBox,
    /// The detector's confidence (None when detection is off).
    pub score: Option<f64>,
    /// The FER-2013 frame cut out around the box.
    pub frame: FaceBox,
    pub label: &'static str,
    pub probabilities: [f32; NUM_CLASSES],
}

/// What one image gave, and where its time went.
#[derive(Clone, Debug, Default)]
pub struct Analysis {
    pub faces: Vec<FaceResult>,
    pub detect: Duration,
    pub classify: Duration,
}

/// Photos over this many pixels are searched at this size (faces too small to find there
/// carry little expression at 48x48 anyway); boxes come back in the photo's own pixels.
pub const DETECT_MAX_PIXELS: f64 = 4e6;

/// The face pipeline: a classifier, the detector and the FER-2013 framing, loaded once.
pub struct Pipeline {
    pub model: Trained,
    pub detector: FaceDetector,
    pub framing: Framing,
}

impl Pipeline {
    pub fn new(model: Trained, options: DetectorOptions) -> anyhow::Result<Pipeline> {
        Ok(Pipeline { model, detector: FaceDetector::new(options)?, framing: Framing::shipped() })
    }

    /// Finds, frames and classifies every face in `image`. With `detect` off, or for an image
    /// that already is a 48x48 grayscale face, the whole image is the face.
    pub fn analyse(&self, image: &DynamicImage, detect: bool) -> Analysis {
        let gray = image.to_luma8();
        let (w, h) = (gray.width() as f64, gray.height() as f64);
        let pre_cropped = matches!(image, DynamicImage::ImageLuma8(_)) && gray.dimensions() == (SIDE as u32, SIDE as u32);
        let started = Instant::now();
        let boxes: Vec<(FaceBox, Option<f64>, FaceBox)> = if detect && !pre_cropped {
            self.detect(image).into_iter().map(|d| (d.bbox, Some(d.score), self.framing.frame(&d))).collect()
        } else {
            let whole = FaceBox { x: 0.0, y: 0.0, w, h };
            vec![(whole, None, whole)]
        };
        let detected = started.elapsed();
        let mut faces = Faces::default();
        for (_, score, frame) in &boxes {
            let pixels = if score.is_none() {
                // The whole image, squeezed: what a pre-cropped face needs.
                image::imageops::resize(&gray, SIDE as u32, SIDE as u32, image::imageops::FilterType::Lanczos3).into_raw()
            } else {
                frame::crop(&gray, frame)
            };
            faces.pixels.extend_from_slice(&pixels);
            faces.labels.push(0);
        }
        let probs = if faces.is_empty() { Vec::new() } else { self.model.probabilities(&faces) };
        let results = boxes
            .into_iter()
            .zip(probs)
            .map(|((bbox, score, frame), p)| FaceResult { bbox, score, frame, label: CLASSES[argmax(&p)], probabilities: p })
            .collect();
        Analysis { faces: results, detect: detected, classify: started.elapsed() - detected }
    }

    fn detect(&self, image: &DynamicImage) -> Vec<detect::Detection> {
        let (w, h) = (image.width() as f64, image.height() as f64);
        let factor = (w * h / DETECT_MAX_PIXELS).sqrt();
        if factor <= 1.0 {
            return self.detector.detect(&image.to_rgb8());
        }
        let small = image.resize_exact((w / factor) as u32, (h / factor) as u32, image::imageops::FilterType::Triangle).to_rgb8();
        let (fx, fy) = (w / small.width() as f64, h / small.height() as f64);
        let mut found = self.detector.detect_down_to(&small, self.detector.options.min_face / fx);
        for d in &mut found {
            d.bbox = FaceBox { x: d.bbox.x * fx, y: d.bbox.y * fy, w: d.bbox.w * fx, h: d.bbox.h * fy };
            for p in &mut d.landmarks {
                *p = (p.0 * fx, p.1 * fy);
            }
        }
        found
    }
}

pub fn argmax(p: &[f32; NUM_CLASSES]) -> usize {
    (0..NUM_CLASSES).max_by(|&a, &b| p[a].total_cmp(&p[b])).unwrap()
}
