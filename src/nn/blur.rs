//! The evaluation blur: a separable Gaussian over the whole face, run once per face before any
//! test-time view is cut from it. Here, below `eval`, `flops` and `onnx`, so all three use one
//! definition of the kernel and of its cost.

use tch::Tensor;
#[cfg(test)]
use tch::{Device, Kind};

/// The 1-D Gaussian kernel of `sigma`, radius 3 sigma, summing to one.
pub fn gaussian_kernel(sigma: f64) -> Vec<f32> {
    let r = (3.0 * sigma).ceil() as i64;
    let g: Vec<f64> = (-r..=r).map(|d| (-((d * d) as f64) / (2.0 * sigma * sigma)).exp()).collect();
    let total: f64 = g.iter().sum();
    g.iter().map(|v| (v / total) as f32).collect()
}

/// A separable Gaussian blur of `[N, 1, H, W]` images, edges replicated (shape kept): the
/// padded image, a row pass, then a column pass.
pub fn blur(x: &Tensor, sigma: f64) -> Tensor {
    if sigma <= 0.0 {
        return x.shallow_clone();
    }
    let g = Tensor::from_slice(&gaussian_kernel(sigma)).to_device(x.device());
    let k = g.size()[0];
    let r = k / 2;
    let padded = x.pad([r, r, r, r], "replicate", None::<f64>);
    let rows = padded.conv2d(&g.reshape([1, 1, 1, k]), None::<Tensor>, [1, 1], [0, 0], [1, 1], 1);
    rows.conv2d(&g.reshape([1, 1, k, 1]), None::<Tensor>, [1, 1], [0, 0], [1, 1], 1)
}

/// fvcore's count for [`blur`] of one `side` x `side` face: each convolution costs its output
/// elements times its taps, and the row pass runs over the padded height (`side + 2r` rows).
pub fn fvcore_flops(sigma: f64, side: i64) -> i64 {
    if sigma <= 0.0 {
        return 0;
    }
    let k = gaussian_kernel(sigma).len() as i64;
    let padded = side + 2 * (k / 2);
    padded * side * k + side * side * k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blur_keeps_shape_and_constants_and_smooths_edges() {
        let k = gaussian_kernel(1.5);
        assert_eq!(k.len(), 11);
        assert!((k.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        let cpu = (Kind::Float, Device::Cpu);
        let flat = Tensor::full([2, 1, 48, 48], 0.3, cpu);
        let b = blur(&flat, 2.0);
        assert_eq!(b.size(), [2, 1, 48, 48]);
        assert!((b - 0.3).abs().max().double_value(&[]) < 1e-5);
        let edge = Tensor::cat(&[Tensor::zeros([1, 1, 48, 24], cpu), Tensor::ones([1, 1, 48, 24], cpu)], 3);
        let e = blur(&edge, 2.0);
        let (left, right) = (e.double_value(&[0, 0, 10, 23]), e.double_value(&[0, 0, 10, 24]));
        assert!(left > 0.05 && left < 0.5 && right > 0.5 && right < 0.95, "{left} {right}");
    }

    #[test]
    fn flops_are_the_output_elements_of_both_passes_times_the_taps() {
        // fvcore counts a convolution as output elements x taps: the row pass's output is
        // taller than the face (it runs on the padded image), which the old count missed.
        let x = Tensor::rand([1, 1, 48, 48], (Kind::Float, Device::Cpu));
        let g = Tensor::from_slice(&gaussian_kernel(1.0));
        let k = g.size()[0];
        let r = k / 2;
        let rows = x.pad([r, r, r, r], "replicate", None::<f64>).conv2d(&g.reshape([1, 1, 1, k]), None::<Tensor>, [1, 1], [0, 0], [1, 1], 1);
        assert_eq!(rows.size(), [1, 1, 54, 48]);
        assert_eq!(fvcore_flops(1.0, 48), (rows.numel() as i64 + 48 * 48) * k);
        assert_eq!(fvcore_flops(1.0, 48) - 2 * 48 * 48 * 7, 2_016);
        assert_eq!(fvcore_flops(0.0, 48), 0);
    }
}
