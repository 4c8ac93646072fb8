//! Face detection: MTCNN (Zhang et al. 2016, "Joint face detection and alignment using
//! multi-task cascaded convolutional networks"), three small networks run by tract. P-Net
//! proposes faces over an image pyramid, R-Net and O-Net refine and rescore them; O-Net also
//! places five landmarks (eyes, nose, mouth corners). The weights are facenet-pytorch's (MIT),
//! converted by `scripts/mtcnn_weights.py` and written as ONNX files by `fer export --detector`
//! (`models/detector/`); the files are compiled into the library: nothing is downloaded or
//! looked up at run time.
//!
//! Chosen by measurement over SeetaFace's cascade (the `rustface` crate): both find all 29
//! faces of the Solvay photo (1.9 megapixels), SeetaFace in 1.0 s, MTCNN in 0.11 s, and MTCNN
//! places landmarks too (README, "Faces in the wild").

use image::RgbImage;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use tract_onnx::prelude::*;

static PNET: &[u8] = include_bytes!("../../../../models/detector/pnet.onnx");
static RNET: &[u8] = include_bytes!("../../../../models/detector/rnet.onnx");
static ONET: &[u8] = include_bytes!("../../../../models/detector/onet.onnx");

/// A box in image pixels: top-left corner and size.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct FaceBox {
    pub x: f64,
    pub y: f64,
    pub w: f64,
    pub h: f64,
}

impl FaceBox {
    pub fn centre(&self) -> (f64, f64) {
        (self.x + self.w / 2.0, self.y + self.h / 2.0)
    }

    /// Intersection over union with `other` (0 when they do not touch).
    pub fn iou(&self, other: &FaceBox) -> f64 {
        let iw = ((self.x + self.w).min(other.x + other.w) - self.x.max(other.x)).max(0.0);
        let ih = ((self.y + self.h).min(other.y + other.h) - self.y.max(other.y)).max(0.0);
        let inter = iw * ih;
        let union = self.w * self.h + other.w * other.h - inter;
        if union > 0.0 {
            inter / union
        } else {
            0.0
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Detection {
    pub bbox: FaceBox,
    /// O-Net's face probability.
    pub score: f64,
    /// Left eye, right eye, nose, left and right mouth corners (as seen in the image), pixels.
    pub landmarks: [(f64, f64); 5],
}

/// How hard the detector looks.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DetectorOptions {
    /// Smallest face side searched, in pixels (P-Net's window is 12).
    pub min_face: f64,
    /// Face probability each stage needs (P-Net, R-Net, O-Net).
    pub thresholds: [f64; 3],
    /// Ratio between the sizes of neighbouring pyramid levels.
    pub pyramid_factor: f64,
}

impl Default for DetectorOptions {
    fn default() -> Self {
        // MTCNN's published settings, but for the smallest face: the classifier sees 48x48
        // pixels, so a face under 40 px has little expression left to read, and searching down
        // to 20 px costs three times as long (measured on the Solvay photo: 29 faces either way).
        DetectorOptions { min_face: 40.0, thresholds: [0.6, 0.7, 0.7], pyramid_factor: 0.709 }
    }
}

/// At most this many P-Net windows of one pyramid level go on to its non-maximum suppression,
/// the best first, and at most `MAX_PROPOSALS` proposals to R-Net: the suppression is
/// quadratic, and a photo of noise would otherwise pass every window.
const MAX_WINDOWS_PER_LEVEL: usize = 4000;
pub const MAX_PROPOSALS: usize = 2000;
/// R-Net and O-Net take the proposals in batches of this many, run side by side (tract's cost
/// per crop is the same from one crop to hundreds, so small batches share the cores best).
const BATCH: usize = 16;
/// P-Net plans kept, one per image size at a pyramid level: tract runs a plan made for a fixed
/// size 1.2 to 1.5 times faster than one for any size, and a video's frames reuse them.
const PNET_PLANS: usize = 64;

/// A candidate box: corners, score, and the regression the stage predicted for it.
#[derive(Clone, Copy, Debug)]
struct Candidate {
    b: [f32; 4],
    score: f32,
    reg: [f32; 4],
    /// O-Net's landmarks: five x, then five y, in pixels.
    marks: [f32; 10],
}

/// Crops for one of MTCNN's networks: `n` RGB images of `h` x `w`, channels first
/// (`[n, 3, h, w]`), scaled as (v - 127.5) / 128.
pub struct Crops {
    pub data: Vec<f32>,
    pub n: usize,
    pub h: usize,
    pub w: usize,
}

/// What runs MTCNN's three networks. The core runs them in tract ([`TractNetworks`]); a program
/// that links a faster engine can bring its own (`fer` runs them in libtorch, 3 to 4 times
/// faster on this CPU), and the rest of the detector stays the same.
pub trait Networks: Send + Sync {
    /// P-Net over one image: (face probability per output cell, row-major; box regression as
    /// four planes of the same size; the output's height; its width).
    fn pnet(&self, x: Crops) -> (Vec<f32>, Vec<f32>, usize, usize);
    /// R-Net on 24x24 crops: (regression, face probability) per crop.
    fn rnet(&self, x: Crops) -> (Vec<[f32; 4]>, Vec<f32>);
    /// O-Net on 48x48 crops: (regression, landmarks, face probability) per crop.
    fn onet(&self, x: Crops) -> (Vec<[f32; 4]>, Vec<[f32; 10]>, Vec<f32>);
    /// Crops per run, and whether runs (and pyramid levels) go side by side on rayon's threads;
    /// an engine with threads of its own runs one thing at a time, in larger batches.
    fn batching(&self) -> (usize, bool);
}

type Plan = Arc<TypedRunnableModel>;

/// MTCNN's networks in tract, from the ONNX files compiled in.
pub struct TractNetworks {
    /// P-Net as loaded (any size), and its plans made for fixed sizes (oldest first).
    pnet: InferenceModel,
    pnet_plans: std::sync::Mutex<Vec<((usize, usize), Plan)>>,
    rnet: Plan,
    onet: Plan,
}

fn plan(bytes: &[u8]) -> TractResult<Plan> {
    tract_onnx::onnx().model_for_read(&mut &bytes[..])?.into_optimized()?.into_runnable()
}

/// A network's outputs, in the order the file lists them.
fn outputs(plan: &Plan, x: Crops) -> TVec<TValue> {
    let input = tract_ndarray::Array4::from_shape_vec((x.n, 3, x.h, x.w), x.data).expect("the crops fill their shape").into_tensor();
    plan.run(tvec!(input.into())).expect("the detector's networks run on any crop batch")
}

fn flat(t: &TValue) -> Vec<f32> {
    t.to_plain_array_view::<f32>().expect("float outputs").iter().copied().collect()
}

impl TractNetworks {
    pub fn new() -> anyhow::Result<TractNetworks> {
        let load = |name: &str, bytes: &[u8]| plan(bytes).map_err(|e| anyhow::anyhow!("face detector ({name}): {e:#}"));
        let pnet = tract_onnx::onnx().model_for_read(&mut &PNET[..]).map_err(|e| anyhow::anyhow!("face detector (P-Net): {e:#}"))?;
        Ok(TractNetworks { pnet, pnet_plans: Default::default(), rnet: load("R-Net", RNET)?, onet: load("O-Net", ONET)? })
    }

    /// P-Net's plan for images of `h` x `w`, made on first use.
    fn pnet_plan(&self, h: usize, w: usize) -> Plan {
        let lock = || self.pnet_plans.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, plan)) = lock().iter().find(|(size, _)| *size == (h, w)) {
            return plan.clone();
        }
        let plan = (|| -> TractResult<Plan> {
            let mut model = self.pnet.clone();
            model.set_input_fact(0, f32::fact([1, 3, h, w]).into())?;
            model.into_optimized()?.into_runnable()
        })()
        .expect("P-Net takes images of any size from 12x12");
        let mut plans = lock();
        if plans.len() >= PNET_PLANS {
            plans.remove(0);
        }
        plans.push(((h, w), plan.clone()));
        plan
    }
}

impl Networks for TractNetworks {
    fn pnet(&self, x: Crops) -> (Vec<f32>, Vec<f32>, usize, usize) {
        let out = outputs(&self.pnet_plan(x.h, x.w), x);
        let (ph, pw) = (out[0].shape()[2], out[0].shape()[3]);
        let prob = flat(&out[0]);
        (prob[ph * pw..].to_vec(), flat(&out[1]), ph, pw)
    }

    fn rnet(&self, x: Crops) -> (Vec<[f32; 4]>, Vec<f32>) {
        let out = outputs(&self.rnet, x);
        (rows::<4>(&flat(&out[1])), flat(&out[0]).chunks(2).map(|p| p[1]).collect())
    }

    fn onet(&self, x: Crops) -> (Vec<[f32; 4]>, Vec<[f32; 10]>, Vec<f32>) {
        let out = outputs(&self.onet, x);
        (rows::<4>(&flat(&out[1])), rows::<10>(&flat(&out[2])), flat(&out[0]).chunks(2).map(|p| p[1]).collect())
    }

    fn batching(&self) -> (usize, bool) {
        (BATCH, true)
    }
}

/// The face detector: MTCNN's networks and the search around them.
pub struct FaceDetector {
    nets: Box<dyn Networks>,
    pub options: DetectorOptions,
}

impl FaceDetector {
    /// The detector with its networks in tract.
    pub fn new(options: DetectorOptions) -> anyhow::Result<FaceDetector> {
        FaceDetector::with_networks(Box::new(TractNetworks::new()?), options)
    }

    /// The detector with its networks run by `nets`.
    pub fn with_networks(nets: Box<dyn Networks>, options: DetectorOptions) -> anyhow::Result<FaceDetector> {
        anyhow::ensure!(options.min_face >= 12.0, "the smallest face the detector can search is 12 px");
        anyhow::ensure!((0.1..0.95).contains(&options.pyramid_factor), "the pyramid factor must lie in 0.1..0.95");
        Ok(FaceDetector { nets, options })
    }

    /// `f` over `items`, side by side where the networks allow.
    fn each<T: Sync, R: Send>(&self, items: &[T], f: impl Fn(&T) -> R + Sync + Send) -> Vec<R> {
        if self.nets.batching().1 {
            items.par_iter().map(f).collect()
        } else {
            items.iter().map(f).collect()
        }
    }

    /// Every face found in an image, best score first.
    pub fn detect(&self, image: &RgbImage) -> Vec<Detection> {
        self.detect_down_to(image, self.options.min_face)
    }

    /// Every face of at least `min_face` pixels (never under 12).
    pub fn detect_down_to(&self, image: &RgbImage, min_face: f64) -> Vec<Detection> {
        let (w, h) = (image.width() as i64, image.height() as i64);
        if w.min(h) < 12 {
            return Vec::new();
        }
        {
            let img = Integral::new(image);
            let mut cands = self.propose(&img, min_face.max(12.0));
            if cands.is_empty() {
                return Vec::new();
            }
            // R-Net: rescore and refine each square proposal.
            let (mut reg, mut prob) = (Vec::new(), Vec::new());
            let batches: Vec<&[Candidate]> = cands.chunks(self.nets.batching().0).collect();
            for (r, p) in self.each(&batches, |batch| self.nets.rnet(crops(&img, batch, 24))) {
                reg.extend(r);
                prob.extend(p);
            }
            cands = keep(&cands, &prob, &reg, self.options.thresholds[1]);
            cands = nms(cands, 0.7, Overlap::Union);
            cands.iter_mut().for_each(regress);
            cands.iter_mut().for_each(square);
            if cands.is_empty() {
                return Vec::new();
            }
            // O-Net: the final score, box and landmarks.
            let (mut reg, mut marks, mut prob) = (Vec::new(), Vec::new(), Vec::new());
            let batches: Vec<&[Candidate]> = cands.chunks(self.nets.batching().0).collect();
            for (r, m, p) in self.each(&batches, |batch| self.nets.onet(crops(&img, batch, 48))) {
                reg.extend(r);
                marks.extend(m);
                prob.extend(p);
            }
            let mut faces = Vec::new();
            for (i, c) in cands.iter().enumerate() {
                if (prob[i] as f64) <= self.options.thresholds[2] {
                    continue;
                }
                // Landmarks are fractions of the box before its last regression.
                let (bw, bh) = (c.b[2] - c.b[0] + 1.0, c.b[3] - c.b[1] + 1.0);
                let m = marks[i];
                let mut face = Candidate { score: prob[i], reg: reg[i], ..*c };
                for k in 0..5 {
                    face.marks[k] = bw * m[k] + c.b[0] - 1.0;
                    face.marks[k + 5] = bh * m[k + 5] + c.b[1] - 1.0;
                }
                regress(&mut face);
                faces.push(face);
            }
            nms(faces, 0.7, Overlap::Min)
                .into_iter()
                .map(|c| Detection {
                    bbox: FaceBox { x: c.b[0] as f64, y: c.b[1] as f64, w: (c.b[2] - c.b[0]) as f64, h: (c.b[3] - c.b[1]) as f64 },
                    score: c.score as f64,
                    landmarks: std::array::from_fn(|k| (c.marks[k] as f64, c.marks[k + 5] as f64)),
                })
                .collect()
        }
    }

    /// P-Net over the pyramid: square proposals, after non-maximum suppression.
    fn propose(&self, img: &Integral, min_face: f64) -> Vec<Candidate> {
        let (w, h) = (img.w as f64, img.h as f64);
        let mut scales = Vec::new();
        let (mut scale, mut side) = (12.0 / min_face, w.min(h) * 12.0 / min_face);
        while side >= 12.0 {
            scales.push(scale);
            scale *= self.options.pyramid_factor;
            side *= self.options.pyramid_factor;
        }
        // The levels are independent: searched side by side, gathered in order.
        let levels: Vec<Vec<Candidate>> = self.each(&scales, |&scale| self.level(img, scale));
        let mut cands = best(nms(levels.concat(), 0.7, Overlap::Union), MAX_PROPOSALS);
        for c in cands.iter_mut() {
            // P-Net's regression is relative to the box's size without the +1.
            let (bw, bh) = (c.b[2] - c.b[0], c.b[3] - c.b[1]);
            c.b = [c.b[0] + c.reg[0] * bw, c.b[1] + c.reg[1] * bh, c.b[2] + c.reg[2] * bw, c.b[3] + c.reg[3] * bh];
            square(c);
        }
        cands
    }

    /// One pyramid level: the image at `scale`, P-Net's windows that pass, after suppression.
    fn level(&self, img: &Integral, scale: f64) -> Vec<Candidate> {
        let (w, h) = (img.w as i64, img.h as i64);
        let (sh, sw) = ((h as f64 * scale + 1.0) as i64, (w as f64 * scale + 1.0) as i64);
        let (prob, reg, _, pw) = self.nets.pnet(img.resample(&[[0, 0, w, h]], sw, sh));
        let plane = prob.len();
        let mut level = Vec::new();
        for (i, &p) in prob.iter().enumerate() {
            if (p as f64) >= self.options.thresholds[0] {
                let (y, x) = ((i / pw) as f64, (i % pw) as f64);
                // Each P-Net output sees a 12x12 window at stride 2 of this level.
                let corner = |v: f64, off: f64| ((2.0 * v + off) / scale).floor() as f32;
                level.push(Candidate {
                    b: [corner(x, 1.0), corner(y, 1.0), corner(x, 12.0), corner(y, 12.0)],
                    score: p,
                    reg: std::array::from_fn(|k| reg[k * plane + i]),
                    marks: [0.0; 10],
                });
            }
        }
        nms(best(level, MAX_WINDOWS_PER_LEVEL), 0.5, Overlap::Union)
    }
}

/// The `n` best-scoring candidates.
fn best(mut cands: Vec<Candidate>, n: usize) -> Vec<Candidate> {
    if cands.len() > n {
        cands.select_nth_unstable_by(n, |a, b| b.score.total_cmp(&a.score));
        cands.truncate(n);
    }
    cands
}

/// Moves a box's corners by its regression, relative to its size.
fn regress(c: &mut Candidate) {
    let (bw, bh) = (c.b[2] - c.b[0] + 1.0, c.b[3] - c.b[1] + 1.0);
    c.b = [c.b[0] + c.reg[0] * bw, c.b[1] + c.reg[1] * bh, c.b[2] + c.reg[2] * bw, c.b[3] + c.reg[3] * bh];
}

/// The square of the box's longer side, on the same centre.
fn square(c: &mut Candidate) {
    let (bw, bh) = (c.b[2] - c.b[0], c.b[3] - c.b[1]);
    let l = bw.max(bh);
    let (x, y) = (c.b[0] + bw * 0.5 - l * 0.5, c.b[1] + bh * 0.5 - l * 0.5);
    c.b = [x, y, x + l, y + l];
}

/// The candidates whose new score passes, with the stage's score and regression.
fn keep(cands: &[Candidate], prob: &[f32], reg: &[[f32; 4]], threshold: f64) -> Vec<Candidate> {
    cands
        .iter()
        .enumerate()
        .filter(|&(i, _)| prob[i] as f64 > threshold)
        .map(|(i, c)| Candidate { score: prob[i], reg: reg[i], ..*c })
        .collect()
}

/// A flat `[N, K]` output as rows.
fn rows<const K: usize>(flat: &[f32]) -> Vec<[f32; K]> {
    flat.chunks(K).map(|c| c.try_into().expect("whole rows")).collect()
}

/// Each candidate's box cut from the image (clipped to it) and resampled to `side` x `side`.
fn crops(img: &Integral, cands: &[Candidate], side: i64) -> Crops {
    let (w, h) = (img.w as i64, img.h as i64);
    let regions: Vec<[i64; 4]> = cands
        .iter()
        .map(|c| {
            // MTCNN's 1-based, inclusive corners, clipped to the image.
            let x0 = ((c.b[0] as i64).max(1) - 1).min(w - 1);
            let y0 = ((c.b[1] as i64).max(1) - 1).min(h - 1);
            let x1 = (c.b[2] as i64).min(w).max(x0 + 1);
            let y1 = (c.b[3] as i64).min(h).max(y0 + 1);
            [x0, y0, x1, y1]
        })
        .collect();
    img.resample(&regions, side, side)
}

/// A summed-area table of an RGB image: the mean of any rectangle in constant time, so the
/// pyramid levels and every crop are "area" resampled (as `adaptive_avg_pool2d` would) without
/// reading the whole image each time.
struct Integral {
    w: usize,
    h: usize,
    /// `sums[((y * (w + 1)) + x) * 3 + c]`: channel `c` summed over rows < y and columns < x.
    sums: Vec<u32>,
}

impl Integral {
    fn new(image: &RgbImage) -> Integral {
        let (w, h) = (image.width() as usize, image.height() as usize);
        let stride = (w + 1) * 3;
        let mut sums = vec![0u32; (h + 1) * stride];
        let px = image.as_raw();
        for y in 0..h {
            let mut row = [0u32; 3];
            for x in 0..w {
                for c in 0..3 {
                    row[c] += px[(y * w + x) * 3 + c] as u32;
                    sums[(y + 1) * stride + (x + 1) * 3 + c] = sums[y * stride + (x + 1) * 3 + c] + row[c];
                }
            }
        }
        Integral { w, h, sums }
    }

    /// Regions `[x0, y0, x1, y1)` resampled to `out_w` x `out_h` each, normalised as MTCNN
    /// expects: `[N, 3, out_h, out_w]`.
    fn resample(&self, regions: &[[i64; 4]], out_w: i64, out_h: i64) -> Crops {
        let stride = (self.w + 1) * 3;
        let (ow, oh) = (out_w as usize, out_h as usize);
        let mut data = vec![0f32; regions.len() * 3 * ow * oh];
        // Output cell i of n over an input span of `len` covers [floor(i len / n), ceil((i+1) len / n)).
        let bins = |start: i64, len: i64, n: usize| -> Vec<(usize, usize)> {
            let (len, start) = (len as usize, start as usize);
            (0..n).map(|i| (start + i * len / n, start + ((i + 1) * len).div_ceil(n))).collect()
        };
        for (k, r) in regions.iter().enumerate() {
            let (xs, ys) = (bins(r[0], r[2] - r[0], ow), bins(r[1], r[3] - r[1], oh));
            let out = &mut data[k * 3 * ow * oh..(k + 1) * 3 * ow * oh];
            for (j, &(y0, y1)) in ys.iter().enumerate() {
                for (i, &(x0, x1)) in xs.iter().enumerate() {
                    let area = ((y1 - y0) * (x1 - x0)) as f32;
                    for c in 0..3 {
                        let s = self.sums[y1 * stride + x1 * 3 + c] + self.sums[y0 * stride + x0 * 3 + c]
                            - self.sums[y0 * stride + x1 * 3 + c]
                            - self.sums[y1 * stride + x0 * 3 + c];
                        out[(c * oh + j) * ow + i] = (s as f32 / area - 127.5) * 0.0078125;
                    }
                }
            }
        }
        Crops { data, n: regions.len(), h: oh, w: ow }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Overlap {
    /// Intersection over union.
    Union,
    /// Intersection over the smaller box: drops boxes nested in a better one.
    Min,
}

/// Greedy non-maximum suppression: best score first, dropping boxes that overlap a kept one
/// by more than `threshold`.
fn nms(mut cands: Vec<Candidate>, threshold: f32, overlap: Overlap) -> Vec<Candidate> {
    cands.sort_by(|a, b| b.score.total_cmp(&a.score));
    let area = |b: &[f32; 4]| (b[2] - b[0] + 1.0) * (b[3] - b[1] + 1.0);
    let mut kept: Vec<Candidate> = Vec::new();
    for c in cands {
        let overlaps = kept.iter().any(|k| {
            let iw = (c.b[2].min(k.b[2]) - c.b[0].max(k.b[0]) + 1.0).max(0.0);
            let ih = (c.b[3].min(k.b[3]) - c.b[1].max(k.b[1]) + 1.0).max(0.0);
            let inter = iw * ih;
            let o = match overlap {
                Overlap::Union => inter / (area(&c.b) + area(&k.b) - inter),
                Overlap::Min => inter / area(&c.b).min(area(&k.b)),
            };
            o > threshold
        });
        if !overlaps {
            kept.push(c);
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(b: [f32; 4], score: f32) -> Candidate {
        Candidate { b, score, reg: [0.0; 4], marks: [0.0; 10] }
    }

    #[test]
    fn nms_keeps_the_best_of_overlapping_boxes() {
        let kept = nms(vec![cand([0., 0., 9., 9.], 0.5), cand([1., 1., 10., 10.], 0.9), cand([50., 50., 60., 60.], 0.7)], 0.5, Overlap::Union);
        assert_eq!(kept.len(), 2);
        assert_eq!(kept[0].score, 0.9);
        // A small box inside a big one overlaps it little by union, fully by the smaller area.
        let nested = vec![cand([0., 0., 99., 99.], 0.9), cand([10., 10., 29., 29.], 0.8)];
        assert_eq!(nms(nested.clone(), 0.7, Overlap::Union).len(), 2);
        assert_eq!(nms(nested, 0.7, Overlap::Min).len(), 1);
    }

    #[test]
    fn area_resampling_averages_each_cell_as_adaptive_average_pooling_does() {
        let image = RgbImage::from_fn(37, 23, |x, y| image::Rgb([(x * 7 + y) as u8, (y * 11) as u8, ((x * y) % 251) as u8]));
        let img = Integral::new(&image);
        for (region, ow, oh) in [([0, 0, 37, 23], 12, 9), ([3, 2, 30, 20], 24, 24), ([5, 5, 9, 8], 24, 24)] {
            let got = img.resample(&[region], ow, oh).data;
            let (rw, rh) = ((region[2] - region[0]) as usize, (region[3] - region[1]) as usize);
            let mut worst = 0f32;
            for c in 0..3 {
                for j in 0..oh as usize {
                    for i in 0..ow as usize {
                        // PyTorch's adaptive pooling bins, summed pixel by pixel.
                        let (y0, y1) = (j * rh / oh as usize, ((j + 1) * rh).div_ceil(oh as usize));
                        let (x0, x1) = (i * rw / ow as usize, ((i + 1) * rw).div_ceil(ow as usize));
                        let mut sum = 0f32;
                        for y in y0..y1 {
                            for x in x0..x1 {
                                sum += image.get_pixel(region[0] as u32 + x as u32, region[1] as u32 + y as u32).0[c] as f32;
                            }
                        }
                        let expect = (sum / ((y1 - y0) * (x1 - x0)) as f32 - 127.5) * 0.0078125;
                        worst = worst.max((got[(c * oh as usize + j) * ow as usize + i] - expect).abs());
                    }
                }
            }
            assert!(worst < 1e-5, "{region:?} -> {ow}x{oh}: {worst}");
        }
    }

    #[test]
    fn a_photo_of_noise_sends_a_bounded_number_of_proposals_on() {
        // Every window passes P-Net at threshold 0: without the bounds, a 2-megapixel photo
        // would send hundreds of thousands of windows through the suppression and R-Net.
        let mut rng = fastrand::Rng::with_seed(3);
        let noise = RgbImage::from_fn(1600, 1200, |_, _| image::Rgb([rng.u8(..), rng.u8(..), rng.u8(..)]));
        let detector = FaceDetector::new(DetectorOptions { thresholds: [0.0, 0.7, 0.7], ..Default::default() }).unwrap();
        let proposals = detector.propose(&Integral::new(&noise), 40.0);
        assert!(proposals.len() <= MAX_PROPOSALS && proposals.len() > MAX_PROPOSALS / 2, "{} proposals", proposals.len());
        let kept = best(vec![cand([0.; 4], 0.1), cand([0.; 4], 0.9), cand([0.; 4], 0.5)], 2);
        let mut scores: Vec<f32> = kept.iter().map(|c| c.score).collect();
        scores.sort_by(f32::total_cmp);
        assert_eq!(scores, [0.5, 0.9]);
    }

    #[test]
    fn square_keeps_the_centre() {
        let mut c = cand([10., 20., 30., 60.], 1.0);
        square(&mut c);
        assert_eq!(c.b, [0., 20., 40., 60.]);
    }
}
