//! Data augmentation in Rust, batch by batch on a worker thread that runs ahead of training.
//! Every batch's randomness comes from (seed, epoch, batch), so results do not depend on
//! thread timing and a resumed epoch sees exactly the same batches.

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;

use crate::config::AugmentConfig;
use crate::data::{Faces, NUM_CLASSES, SIDE};

/// One training batch: images scaled to [-1, 1] (`side` x `side`), labels and, when mixed,
/// soft targets `[n, 7]`; and per face, which face of the split it is and the crop and flip it
/// was given (what the teacher cache looks its scores up by).
pub struct Batch {
    pub images: Vec<f32>,
    pub labels: Vec<i64>,
    pub targets: Vec<f32>,
    pub side: usize,
    pub indices: Vec<i64>,
    pub views: Vec<View>,
}

/// The crop offset (within `crop_padding`) and mirroring one face was given. Under an
/// augmentation of crops and flips alone (at full size), it is the whole of what was done to
/// the face: [`render_view`] draws the same image again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct View {
    pub dx: i64,
    pub dy: i64,
    pub mirrored: bool,
}

/// A 48x48 face as a view of it (crop offset and mirror) shows it, scaled to [-1, 1]: what the
/// training batches hold for that view under crops and flips alone.
pub fn render_view(img: &[u8], out: &mut [f32], view: View) {
    place(img, out, SIDE, view.dx as f64, view.dy as f64, 0.0, 1.0, view.mirrored);
    to_unit(out);
}

impl Batch {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// A seed for one batch of one epoch.
pub fn batch_seed(seed: u64, epoch: usize, batch: usize) -> u64 {
    let mut h = seed ^ 0x5851_F42D_4C95_7F2D;
    for v in [epoch as u64, batch as u64] {
        h = (h ^ v).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        h ^= h >> 31;
    }
    h
}

fn uniform(rng: &mut fastrand::Rng, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * rng.f64()
}

/// Gamma(shape, 1) by Marsaglia and Tsang, for Beta draws.
fn gamma(rng: &mut fastrand::Rng, shape: f64) -> f64 {
    if shape < 1.0 {
        return gamma(rng, shape + 1.0) * rng.f64().max(1e-12).powf(1.0 / shape);
    }
    let d = shape - 1.0 / 3.0;
    let c = 1.0 / (9.0 * d).sqrt();
    loop {
        // A standard normal by Box-Muller.
        let z = (-2.0 * rng.f64().max(1e-12).ln()).sqrt() * (std::f64::consts::TAU * rng.f64()).cos();
        let v = (1.0 + c * z).powi(3);
        if v > 0.0 && rng.f64().max(1e-12).ln() < 0.5 * z * z + d - d * v + d * v.ln() {
            return d * v;
        }
    }
}

pub fn beta(rng: &mut fastrand::Rng, alpha: f64) -> f64 {
    let (a, b) = (gamma(rng, alpha), gamma(rng, alpha));
    a / (a + b)
}

/// Augments one 48x48 u8 face into `out` (`side` x `side`, scaled to [-1, 1]), and returns
/// the crop offset and mirroring it drew. With `train` false it only takes the centre crop.
pub fn augment_face(img: &[u8], out: &mut [f32], side: usize, cfg: &AugmentConfig, rng: &mut fastrand::Rng, train: bool) -> View {
    let full = SIDE as f64;
    let margin = (SIDE - side) as f64;
    // Where the output window sits in the source, and the affine map around its centre.
    let (mut ox, mut oy) = (margin / 2.0, margin / 2.0);
    let (mut angle, mut zoom, mut flip) = (0.0f64, 1.0f64, false);
    let mut view = View::default();
    if train {
        if margin > 0.0 {
            ox = rng.usize(0..=SIDE - side) as f64;
            oy = rng.usize(0..=SIDE - side) as f64;
        }
        let p = cfg.crop_padding as i64;
        if p > 0 {
            (view.dx, view.dy) = (rng.i64(-p..=p), rng.i64(-p..=p));
            ox += view.dx as f64;
            oy += view.dy as f64;
        }
        if cfg.shift > 0.0 {
            ox += uniform(rng, -cfg.shift, cfg.shift) * full;
            oy += uniform(rng, -cfg.shift, cfg.shift) * full;
        }
        if cfg.rotate_degrees > 0.0 {
            angle = uniform(rng, -cfg.rotate_degrees, cfg.rotate_degrees).to_radians();
        }
        if cfg.scale > 0.0 {
            zoom = uniform(rng, 1.0 - cfg.scale, 1.0 + cfg.scale);
        }
        flip = cfg.hflip && rng.bool();
        view.mirrored = flip;
    }
    place(img, out, side, ox, oy, angle, zoom, flip);
    if train && (cfg.brightness > 0.0 || cfg.contrast > 0.0) {
        let b = if cfg.brightness > 0.0 { uniform(rng, 1.0 - cfg.brightness, 1.0 + cfg.brightness) } else { 1.0 };
        let c = if cfg.contrast > 0.0 { uniform(rng, 1.0 - cfg.contrast, 1.0 + cfg.contrast) } else { 1.0 };
        let mean = out.iter().map(|&v| v as f64).sum::<f64>() / out.len() as f64;
        for v in out.iter_mut() {
            *v = ((((*v as f64 - mean) * c + mean) * b).clamp(0.0, 255.0)) as f32;
        }
    }
    to_unit(out);
    if train && cfg.erasing > 0.0 && rng.f64() < cfg.erasing {
        let area = (side * side) as f64 * uniform(rng, 0.02, 0.33);
        let ratio = uniform(rng, 0.3f64.ln(), 3.3f64.ln()).exp();
        let h = ((area * ratio).sqrt().round() as usize).clamp(1, side);
        let w = ((area / ratio).sqrt().round() as usize).clamp(1, side);
        let (y0, x0) = (rng.usize(0..=side - h), rng.usize(0..=side - w));
        for y in y0..y0 + h {
            out[y * side + x0..y * side + x0 + w].fill(0.0);
        }
    }
    view
}

/// Draws the `side` x `side` window at (`ox`, `oy`) of the 48x48 face into `out` (0-255),
/// rotated by `angle` and scaled by `zoom` about its centre, mirrored if `flip`; zero outside
/// the face, as the crops' padding.
#[allow(clippy::too_many_arguments)]
fn place(img: &[u8], out: &mut [f32], side: usize, ox: f64, oy: f64, angle: f64, zoom: f64, flip: bool) {
    let (sin, cos) = angle.sin_cos();
    let centre = (side as f64 - 1.0) / 2.0;
    let simple = angle == 0.0 && zoom == 1.0 && ox.fract() == 0.0 && oy.fract() == 0.0;
    for y in 0..side {
        for x in 0..side {
            let xo = if flip { side - 1 - x } else { x };
            let v = if simple {
                let (sx, sy) = (xo as i64 + ox as i64, y as i64 + oy as i64);
                if (0..SIDE as i64).contains(&sx) && (0..SIDE as i64).contains(&sy) {
                    img[sy as usize * SIDE + sx as usize] as f64
                } else {
                    0.0
                }
            } else {
                // Inverse map: rotate and scale about the window's centre, then offset.
                let (dx, dy) = (xo as f64 - centre, y as f64 - centre);
                let sx = (cos * dx + sin * dy) / zoom + centre + ox;
                let sy = (-sin * dx + cos * dy) / zoom + centre + oy;
                bilinear(img, sx, sy)
            };
            out[y * side + x] = v as f32;
        }
    }
}

/// 0-255 to the notebook's [-1, 1].
fn to_unit(out: &mut [f32]) {
    for v in out.iter_mut() {
        *v = (*v / 255.0 - 0.5) / 0.5;
    }
}

/// Bilinear sample with zero outside the image.
fn bilinear(img: &[u8], x: f64, y: f64) -> f64 {
    let (x0, y0) = (x.floor(), y.floor());
    let (fx, fy) = (x - x0, y - y0);
    let at = |xi: f64, yi: f64| -> f64 {
        if xi < 0.0 || yi < 0.0 || xi >= SIDE as f64 || yi >= SIDE as f64 {
            0.0
        } else {
            img[yi as usize * SIDE + xi as usize] as f64
        }
    };
    at(x0, y0) * (1.0 - fx) * (1.0 - fy) + at(x0 + 1.0, y0) * fx * (1.0 - fy) + at(x0, y0 + 1.0) * (1.0 - fx) * fy + at(x0 + 1.0, y0 + 1.0) * fx * fy
}

/// Builds one batch from the faces at `indices`: augmentation per face, then mixup or cutmix.
pub fn make_batch(faces: &Faces, indices: &[i64], side: usize, cfg: &AugmentConfig, seed: u64, train: bool) -> Batch {
    let mut rng = fastrand::Rng::with_seed(seed);
    let n = indices.len();
    let px = side * side;
    let mut images = vec![0f32; n * px];
    let mut labels = Vec::with_capacity(n);
    let mut views = Vec::with_capacity(n);
    for (k, &i) in indices.iter().enumerate() {
        views.push(augment_face(faces.image(i as usize), &mut images[k * px..(k + 1) * px], side, cfg, &mut rng, train));
        labels.push(faces.labels[i as usize] as i64);
    }
    let mut targets = vec![0f32; n * NUM_CLASSES];
    for (k, &l) in labels.iter().enumerate() {
        targets[k * NUM_CLASSES + l as usize] = 1.0;
    }
    let mixing = train && n > 1 && (cfg.mixup_alpha > 0.0 || cfg.cutmix_alpha > 0.0);
    if mixing {
        // One mixing per batch, as in the papers: each face paired with a shuffled partner.
        let use_cutmix = cfg.cutmix_alpha > 0.0 && (cfg.mixup_alpha <= 0.0 || rng.bool());
        let lam = beta(&mut rng, if use_cutmix { cfg.cutmix_alpha } else { cfg.mixup_alpha });
        let mut partner: Vec<usize> = (0..n).collect();
        rng.shuffle(&mut partner);
        let source = images.clone();
        let source_targets = targets.clone();
        let lam = if use_cutmix {
            let cut = (1.0 - lam).sqrt();
            let (h, w) = ((side as f64 * cut) as usize, (side as f64 * cut) as usize);
            let (cy, cx) = (rng.usize(0..side), rng.usize(0..side));
            let (y0, y1) = (cy.saturating_sub(h / 2), (cy + h / 2).min(side));
            let (x0, x1) = (cx.saturating_sub(w / 2), (cx + w / 2).min(side));
            for (k, &j) in partner.iter().enumerate() {
                for y in y0..y1 {
                    let (dst, src) = (k * px + y * side, j * px + y * side);
                    images[dst + x0..dst + x1].copy_from_slice(&source[src + x0..src + x1]);
                }
            }
            1.0 - ((y1 - y0) * (x1 - x0)) as f64 / px as f64
        } else {
            for (k, &j) in partner.iter().enumerate() {
                for p in 0..px {
                    images[k * px + p] = (lam * source[k * px + p] as f64 + (1.0 - lam) * source[j * px + p] as f64) as f32;
                }
            }
            lam
        } as f32;
        for (k, &j) in partner.iter().enumerate() {
            for c in 0..NUM_CLASSES {
                targets[k * NUM_CLASSES + c] = lam * source_targets[k * NUM_CLASSES + c] + (1.0 - lam) * source_targets[j * NUM_CLASSES + c];
            }
        }
    }
    Batch { images, labels, targets, side, indices: indices.to_vec(), views }
}

/// Batches of one epoch, produced on a worker thread a few batches ahead of training.
pub fn epoch_batches(
    faces: Arc<Faces>,
    order: Vec<i64>,
    batch_size: usize,
    side: usize,
    cfg: AugmentConfig,
    seed: u64,
    epoch: usize,
) -> Receiver<Batch> {
    let (tx, rx) = sync_channel(3);
    std::thread::spawn(move || {
        for (b, chunk) in order.chunks(batch_size).enumerate() {
            let batch = make_batch(&faces, chunk, side, &cfg, batch_seed(seed, epoch, b), true);
            if tx.send(batch).is_err() {
                return; // training stopped early
            }
        }
    });
    rx
}

/// `fer data augment-preview`: each row one Training face, first as stored, then as
/// `per_face` augmented versions, as the network sees them.
pub fn preview(faces: &Faces, cfg: &AugmentConfig, side: usize, rows: usize, per_face: usize, seed: u64, out: &std::path::Path) -> anyhow::Result<()> {
    use crate::plot::{face_grid, Tile};
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut tiles = Vec::new();
    for r in 0..rows.min(faces.len()) {
        let i = rng.usize(..faces.len());
        let label = crate::data::CLASSES[faces.labels[i] as usize];
        tiles.push(Tile { pixels: faces.image(i).to_vec(), caption: vec![format!("{label} (original)")], color: plotters::style::BLACK });
        // A batch of copies of the same face, so mixup / cutmix partners are visible too.
        let partner = rng.usize(..faces.len());
        let idx: Vec<i64> = (0..per_face).map(|k| if k % 2 == 1 && per_face > 2 { partner as i64 } else { i as i64 }).collect();
        let batch = make_batch(faces, &idx, side, cfg, batch_seed(seed, r, 0), true);
        for k in 0..per_face {
            let px: Vec<u8> = batch.images[k * side * side..(k + 1) * side * side]
                .iter()
                .map(|&v| ((v * 0.5 + 0.5) * 255.0).round().clamp(0.0, 255.0) as u8)
                .collect();
            let t = &batch.targets[k * NUM_CLASSES..(k + 1) * NUM_CLASSES];
            let top = (0..NUM_CLASSES).max_by(|&a, &b| t[a].total_cmp(&t[b])).unwrap();
            let caption = if t[top] < 1.0 {
                vec![format!("{} {:.2}", crate::data::CLASSES[top], t[top])]
            } else {
                vec![crate::data::CLASSES[top].to_string()]
            };
            tiles.push(Tile { pixels: px, caption, color: plotters::style::RGBColor(40, 40, 160) });
        }
    }
    face_grid(out, "Augmented Training faces: original, then what the network sees", &tiles, per_face + 1)
}
