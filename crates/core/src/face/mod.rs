//! Faces in the wild: find them in a photo (`detect`), cut each out the way FER-2013 framed its
//! faces (`frame`), and classify the 48x48 result; in a video, link each face to its track
//! across frames and smooth its probabilities (`track`). One pipeline serves `fer predict` on
//! photos, folders and videos, `fer serve` and the Python package alike.

pub mod detect;
pub mod frame;
pub mod track;

use image::DynamicImage;
use serde::Serialize;
use std::time::{Duration, Instant};

pub use crate::classes::argmax;
use crate::classes::{CLASSES, NUM_CLASSES, PIXELS, SIDE};
use crate::classify::Classifier;
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

/// The faces of one image, found and framed but not yet classified.
#[derive(Clone, Debug)]
pub struct Located {
    /// Each face's detector box, score (None when detection is off) and FER-2013 frame.
    pub boxes: Vec<(FaceBox, Option<f64>, FaceBox)>,
    /// The faces' 48x48 grayscale frames, one after another.
    pub pixels: Vec<u8>,
    pub detect: Duration,
}

/// Photos over this many pixels are searched at this size (faces too small to find there
/// carry little expression at 48x48 anyway); boxes come back in the photo's own pixels.
pub const DETECT_MAX_PIXELS: f64 = 4e6;

/// The face pipeline: a classifier, the detector and the FER-2013 framing, loaded once.
pub struct Pipeline {
    pub classifier: Classifier,
    pub detector: FaceDetector,
    pub framing: Framing,
}

impl Pipeline {
    /// The pipeline with the detector's networks in tract.
    pub fn new(classifier: Classifier, options: DetectorOptions) -> anyhow::Result<Pipeline> {
        Ok(Pipeline::with_detector(classifier, FaceDetector::new(options)?))
    }

    pub fn with_detector(classifier: Classifier, detector: FaceDetector) -> Pipeline {
        Pipeline { classifier, detector, framing: Framing::shipped() }
    }

    /// Finds, frames and classifies every face in `image`. With `detect` off, or for an image
    /// that already is a 48x48 grayscale face, the whole image is the face.
    pub fn analyse(&self, image: &DynamicImage, detect: bool) -> Analysis {
        self.classify(vec![self.locate(image, detect)]).pop().expect("one image in, one out")
    }

    /// The first half of [`Pipeline::analyse`]: every face found and cut out as a 48x48 frame,
    /// not yet classified (so that faces of many images go through the classifier together).
    pub fn locate(&self, image: &DynamicImage, detect: bool) -> Located {
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
        let mut pixels = Vec::with_capacity(boxes.len() * PIXELS);
        for (_, score, frame) in &boxes {
            let face = if score.is_none() {
                // The whole image, squeezed: what a pre-cropped face needs.
                image::imageops::resize(&gray, SIDE as u32, SIDE as u32, image::imageops::FilterType::Lanczos3).into_raw()
            } else {
                frame::crop(&gray, frame)
            };
            pixels.extend_from_slice(&face);
        }
        Located { boxes, pixels, detect: started.elapsed() }
    }

    /// The second half: the faces of any number of images classified in one go, each image's
    /// analysis in order.
    pub fn classify(&self, located: Vec<Located>) -> Vec<Analysis> {
        let started = Instant::now();
        let pixels: Vec<u8> = located.iter().flat_map(|l| l.pixels.iter().copied()).collect();
        let mut probs = self.classifier.probabilities(&pixels).into_iter();
        let faces = located.iter().map(|l| l.boxes.len()).sum::<usize>().max(1);
        let share = started.elapsed() / faces as u32;
        located
            .into_iter()
            .map(|l| {
                let n = l.boxes.len() as u32;
                let faces = l
                    .boxes
                    .into_iter()
                    .zip(probs.by_ref())
                    .map(|((bbox, score, frame), p)| FaceResult { bbox, score, frame, label: CLASSES[argmax(&p)], probabilities: p })
                    .collect();
                // Classification time shared out by faces.
                Analysis { faces, detect: l.detect, classify: share * n }
            })
            .collect()
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
