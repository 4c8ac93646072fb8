//! FER-2013 framing. A model trained on FER-2013 expects a face framed the way FER-2013 framed
//! its faces, and a detector's box is not that frame. `fer detect calibrate` (in the `fer` crate, over the data) measures the
//! relation instead of guessing it: it runs the detector on FER-2013 faces (upscaled, with
//! room around them) and records where the box falls relative to the 48x48 frame, as medians
//! over thousands of faces. Photos are then cropped with the inverse of that mapping.
//!
//! The frame's size is taken from the box's width and its centre from the five landmarks'
//! centroid: measured on 600 Training faces, the landmarks place the centre within 2.1 px of
//! 48 (median), the box's own centre within 2.9 px; for the size, the box (9.4% median error)
//! is as good as any landmark distance (9.3% to 11.3%). FER-2013's own framing varies that much.

use image::{imageops::FilterType, GrayImage, RgbImage};
use serde::{Deserialize, Serialize};

use super::detect::{Detection, FaceBox};
use crate::classes::SIDE;

static SHIPPED: &str = include_str!("../../../../models/detector/framing.json");

/// The frame around a detected face, in units of the box's width.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Framing {
    /// Side of the (square) FER frame.
    pub side: f64,
    /// Frame centre minus the landmarks' centroid, horizontally and vertically.
    pub dx: f64,
    pub dy: f64,
    /// How it was measured: faces tried, faces where the detector found the face, the
    /// upscaling and the margin (in 48x48 frames) around each face, the split.
    pub faces_tried: usize,
    pub faces_found: usize,
    pub upscale: u32,
    pub margin: f64,
    pub split: String,
    /// Interquartile ranges of the three measures: how much single faces vary.
    pub side_iqr: [f64; 2],
    pub dx_iqr: [f64; 2],
    pub dy_iqr: [f64; 2],
}

impl Framing {
    /// The calibration compiled into the binary (`models/detector/framing.json`).
    pub fn shipped() -> Framing {
        serde_json::from_str(SHIPPED).expect("models/detector/framing.json is a framing calibration")
    }

    /// The square FER frame around a detected face.
    pub fn frame(&self, face: &Detection) -> FaceBox {
        let (cx, cy) = anchor(face);
        let w = face.bbox.w;
        let side = self.side * w;
        let (fx, fy) = (cx + self.dx * w, cy + self.dy * w);
        FaceBox { x: fx - side / 2.0, y: fy - side / 2.0, w: side, h: side }
    }
}

/// The centroid of a detection's five landmarks.
pub fn anchor(face: &Detection) -> (f64, f64) {
    let l = &face.landmarks;
    (l.iter().map(|p| p.0).sum::<f64>() / 5.0, l.iter().map(|p| p.1).sum::<f64>() / 5.0)
}

/// The part of `gray` under `frame` as a 48x48 face; where the frame leaves the image, its
/// edge pixels are repeated (as FER-2013's own faces at the border of their photos show).
pub fn crop(gray: &GrayImage, frame: &FaceBox) -> Vec<u8> {
    let side = frame.w.round().max(1.0) as u32;
    let (w, h) = (gray.width() as i64, gray.height() as i64);
    let (x0, y0) = (frame.x.round() as i64, frame.y.round() as i64);
    let square = GrayImage::from_fn(side, side, |x, y| {
        let sx = (x0 + x as i64).clamp(0, w - 1);
        let sy = (y0 + y as i64).clamp(0, h - 1);
        *gray.get_pixel(sx as u32, sy as u32)
    });
    // Lanczos resampling widens its kernel when shrinking, so large faces are not aliased.
    image::imageops::resize(&square, SIDE as u32, SIDE as u32, FilterType::Lanczos3).into_raw()
}

/// A 48x48 face enlarged `upscale` times, with `margin` frames of repeated edge around it:
/// what a FER-2013 face would look like inside a photo.
pub fn embed(face: &[u8], upscale: u32, margin: f64) -> (RgbImage, FaceBox) {
    let s = SIDE as u32;
    let small = GrayImage::from_raw(s, s, face.to_vec()).expect("a 48x48 face");
    let big = image::imageops::resize(&small, s * upscale, s * upscale, FilterType::CatmullRom);
    let side = (s * upscale) as f64;
    let pad = (margin * side).round() as i64;
    let total = (side as i64 + 2 * pad) as u32;
    let last = (s * upscale) as i64 - 1;
    let canvas = RgbImage::from_fn(total, total, |x, y| {
        let sx = (x as i64 - pad).clamp(0, last) as u32;
        let sy = (y as i64 - pad).clamp(0, last) as u32;
        let v = big.get_pixel(sx, sy).0[0];
        image::Rgb([v, v, v])
    });
    (canvas, FaceBox { x: pad as f64, y: pad as f64, w: side, h: side })
}

/// The detection that is this face: the best-scoring box whose centre lies inside the frame.
pub fn detection_in(found: &[Detection], frame: &FaceBox) -> Option<Detection> {
    found
        .iter()
        .filter(|d| {
            let (cx, cy) = d.bbox.centre();
            cx > frame.x && cx < frame.x + frame.w && cy > frame.y && cy < frame.y + frame.h
        })
        .max_by(|a, b| a.score.total_cmp(&b.score))
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_inverts_the_measured_mapping() {
        let f = Framing { side: 1.5, dx: 0.1, dy: -0.2, ..Framing::shipped() };
        let bbox = FaceBox { x: 100.0, y: 50.0, w: 40.0, h: 48.0 };
        // Landmarks centred on (120, 74), off the box's own centre.
        let face = Detection { bbox, score: 1.0, landmarks: [(110.0, 64.0), (130.0, 64.0), (120.0, 74.0), (112.0, 84.0), (128.0, 84.0)] };
        let frame = f.frame(&face);
        assert_eq!(frame.w, 60.0);
        assert_eq!(frame.centre(), (124.0, 66.0));
    }

    #[test]
    fn a_face_embedded_then_cropped_comes_back() {
        // Bright in the top-left corner, so that an edge repeated and a black fill differ there.
        let face: Vec<u8> = (0..SIDE * SIDE).map(|i| (200 - 2 * (i % SIDE) - 2 * (i / SIDE)) as u8).collect();
        let (canvas, frame) = embed(&face, 3, 0.5);
        assert_eq!(canvas.width(), 48 * 3 * 2);
        let gray = image::DynamicImage::ImageRgb8(canvas).to_luma8();
        let back = crop(&gray, &frame);
        let err: f64 = back.iter().zip(&face).map(|(&a, &b)| (a as f64 - b as f64).abs()).sum::<f64>() / face.len() as f64;
        assert!(err < 1.5, "mean absolute error {err}");
        // A frame hanging over the image's edge repeats the edge.
        let edge = crop(&gray, &FaceBox { x: -50.0, y: -50.0, w: 100.0, h: 100.0 });
        assert_eq!(edge[0], gray.get_pixel(0, 0).0[0]);
        assert!(edge[0] > 150, "the corner's brightness, not a black fill: {}", edge[0]);
    }
}
