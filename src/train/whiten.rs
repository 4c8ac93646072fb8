//! The whitening stem (`train.whiten_stem`, airbench's first layer): the first convolution's
//! filters start as the principal directions of Training's patches, and their negatives, each
//! scaled by the inverse square root of its variance, and are never trained. The network starts
//! from a basis that decorrelates every patch's pixels instead of spending its first epochs
//! learning one; a filter and its negative keep both signs of each direction through the ReLU,
//! so the frozen layer loses nothing of the patch.

use tch::{Kind, Tensor};

use crate::data::{normalize, Faces, SIDE};
use crate::nn::model::{stem, Trained};

/// Faces, spread evenly over Training, whose patches give the covariance: plenty for a 9x9
/// matrix, and independent of the run's seed.
const SAMPLE_FACES: usize = 4096;
/// Added to each variance before its inverse square root, so that the patches' flattest
/// directions (noise, on pixels in [-1, 1]) are not blown up.
const EPS: f64 = 5e-3;

/// `out` filters `[out, 1, k, k]` that whiten the `k`x`k` patches of `faces` as the stem sees
/// them (normalised to [-1, 1], at its stride and padding): the principal directions from the
/// largest variance down, each followed by its negative, scaled by 1 / sqrt(variance + EPS).
/// Past `2 k²` filters there are no more directions: the stem's other filters keep their random
/// start (frozen with the rest, they are fixed random projections of the patch).
pub fn whitening_filters(faces: &Faces, out: i64, kernel: i64, stride: i64, padding: i64) -> Tensor {
    whitening_of(&sample(faces), out, kernel, stride, padding)
}

/// Up to `SAMPLE_FACES` faces spread evenly over `faces`, normalised, `[n, 1, 48, 48]` in f64:
/// only these become a tensor, not the whole split.
fn sample(faces: &Faces) -> Tensor {
    let n = faces.len().min(SAMPLE_FACES);
    let pixels: Vec<u8> = (0..n).flat_map(|i| faces.image(i * faces.len() / n).iter().copied()).collect();
    let side = SIDE as i64;
    normalize(&Tensor::from_slice(&pixels).reshape([n as i64, 1, side, side])).to_kind(Kind::Double)
}

fn whitening_of(x: &Tensor, out: i64, kernel: i64, stride: i64, padding: i64) -> Tensor {
    let dims = kernel * kernel;
    let patches = x.im2col([kernel, kernel], [1, 1], [padding, padding], [stride, stride]).transpose(1, 2).reshape([-1, dims]);
    let centred = &patches - patches.mean_dim(0, true, Kind::Double);
    let covariance = centred.transpose(0, 1).matmul(&centred) / patches.size()[0] as f64;
    // eigh sorts ascending: flipped, the largest variance comes first.
    let (variances, directions) = covariance.linalg_eigh("U");
    let (variances, directions) = (variances.flip([0]), directions.flip([1]));
    let whitening = (directions / (variances + EPS).sqrt().unsqueeze(0)).transpose(0, 1);
    let signed = Tensor::stack(&[whitening.shallow_clone(), -whitening], 1).reshape([2 * dims, dims]);
    signed.narrow(0, 0, out.min(2 * dims)).reshape([-1, 1, kernel, kernel]).to_kind(Kind::Float)
}

/// Writes the whitening into `model`'s stem and freezes the stem's weight (the optimizer takes
/// only what needs a gradient). A bias, where the stem has one (no batch norm), starts at
/// minus the filters' response to the sample's mean patch and is trained.
pub fn whiten_stem(model: &Trained, faces: &Faces) -> anyhow::Result<()> {
    let (out, kernel, stride, padding) = stem(&model.config.layers()?)?;
    let x = sample(faces);
    let filters = whitening_of(&x, out, kernel, stride, padding).to_device(model.vs.device());
    let vars = model.vs.variables();
    let weight = vars.get("0.weight").ok_or_else(|| anyhow::anyhow!("the stem has no weight named 0.weight"))?.shallow_clone();
    let written = filters.size()[0];
    tch::no_grad(|| weight.narrow(0, 0, written).copy_(&filters));
    if let Some(bias) = vars.get("0.bias") {
        let mean = x.mean(Kind::Double).double_value(&[]);
        // The mean patch is flat: each filter answers it with `mean` times its weights' sum.
        let response = weight.sum_dim_intlist([1i64, 2, 3].as_slice(), false, Kind::Float) * mean;
        tch::no_grad(|| bias.shallow_clone().copy_(&-response));
    }
    let _ = weight.set_requires_grad(false);
    Ok(())
}
