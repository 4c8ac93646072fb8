//! The training loss over soft targets (one-hot labels, smoothed labels, or mixup / cutmix
//! blends): cross-entropy, with optional label smoothing, focal modulation and class weights.

use tch::{Device, Kind, Tensor};

use crate::config::TrainConfig;
use crate::data::NUM_CLASSES;

pub struct Loss {
    smoothing: f64,
    focal_gamma: f64,
    /// Per-class weights, normalised so a Training face weighs 1 on average.
    weights: Option<Tensor>,
}

impl Loss {
    /// `train_counts`: faces per class in Training (for class weighting).
    pub fn new(cfg: &TrainConfig, train_counts: &[usize; NUM_CLASSES], device: Device) -> Loss {
        let weights = cfg.class_weighted.then(|| {
            let n: usize = train_counts.iter().sum();
            let w: Vec<f32> = train_counts.iter().map(|&c| n as f32 / (NUM_CLASSES as f32 * c.max(1) as f32)).collect();
            Tensor::from_slice(&w).to_device(device)
        });
        Loss { smoothing: cfg.label_smoothing, focal_gamma: cfg.focal_gamma, weights }
    }

    /// Mean loss over the batch; `targets` are `[N, 7]` probabilities.
    pub fn soft(&self, logits: &Tensor, targets: &Tensor) -> Tensor {
        let t = if self.smoothing > 0.0 {
            targets * (1.0 - self.smoothing) + self.smoothing / NUM_CLASSES as f64
        } else {
            targets.shallow_clone()
        };
        let log_p = logits.log_softmax(-1, Kind::Float);
        let mut per_class = -(t * &log_p);
        if self.focal_gamma > 0.0 {
            // Focal loss: down-weight classes the model already gets right, (1 - p)^gamma.
            per_class = per_class * (log_p.exp().neg() + 1.0).pow_tensor_scalar(self.focal_gamma);
        }
        if let Some(w) = &self.weights {
            per_class = per_class * w;
        }
        per_class.sum_dim_intlist(-1, false, Kind::Float).mean(Kind::Float)
    }

    /// Knowledge distillation (Hinton et al. 2015): KL(teacher || student) between the
    /// outputs softened by `temperature`, scaled by its square so its gradients keep their
    /// size as the temperature changes.
    pub fn distill(student: &Tensor, teacher: &Tensor, temperature: f64) -> Tensor {
        let log_s = (student / temperature).log_softmax(-1, Kind::Float);
        let log_t = (teacher / temperature).log_softmax(-1, Kind::Float);
        let kl = (log_t.exp() * (&log_t - log_s)).sum_dim_intlist(-1, false, Kind::Float);
        kl.mean(Kind::Float) * (temperature * temperature)
    }

    /// Mean loss against integer labels.
    pub fn hard(&self, logits: &Tensor, labels: &Tensor) -> Tensor {
        self.soft(logits, &one_hot(labels))
    }
}

pub fn one_hot(labels: &Tensor) -> Tensor {
    labels.one_hot(NUM_CLASSES as i64).to_kind(Kind::Float)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> TrainConfig {
        TrainConfig::default()
    }

    fn logits() -> (Tensor, Tensor) {
        let l = Tensor::from_slice(&[2.0f32, 0.5, -1.0, 0.0, 0.3, 1.0, -0.5, 0.1, 0.2, 0.3, 3.0, -2.0, 0.0, 0.0]).reshape([2, 7]);
        (l, Tensor::from_slice(&[0i64, 3]))
    }

    /// Log-softmax of the logits, row-major.
    fn log_probs(l: &Tensor) -> Vec<f32> {
        Vec::try_from(l.log_softmax(-1, Kind::Float).flatten(0, -1)).unwrap()
    }

    fn value(t: Tensor) -> f64 {
        t.double_value(&[])
    }

    #[test]
    fn plain_loss_is_pytorchs_cross_entropy() {
        let (l, y) = logits();
        let loss = Loss::new(&cfg(), &[1; 7], Device::Cpu);
        assert!((value(loss.hard(&l, &y)) - value(l.cross_entropy_for_logits(&y))).abs() < 1e-6);
    }

    #[test]
    fn label_smoothing_matches_the_formula() {
        let (l, y) = logits();
        let c = TrainConfig { label_smoothing: 0.1, ..cfg() };
        let got = value(Loss::new(&c, &[1; 7], Device::Cpu).hard(&l, &y));
        let log_p = log_probs(&l);
        let mut expect = 0.0;
        for (i, &label) in [0usize, 3].iter().enumerate() {
            let row = &log_p[i * 7..i * 7 + 7];
            expect += -(0.9 * row[label] as f64) - 0.1 / 7.0 * row.iter().map(|&v| v as f64).sum::<f64>();
        }
        assert!((got - expect / 2.0).abs() < 1e-5, "{got} vs {}", expect / 2.0);
    }

    #[test]
    fn focal_loss_down_weights_confident_faces() {
        let (l, y) = logits();
        let c = TrainConfig { focal_gamma: 2.0, ..cfg() };
        let got = value(Loss::new(&c, &[1; 7], Device::Cpu).hard(&l, &y));
        let p: Vec<f32> = Vec::try_from(l.softmax(-1, Kind::Float).flatten(0, -1)).unwrap();
        let expect: f64 = [(0usize, 0usize), (1, 3)]
            .iter()
            .map(|&(i, c)| {
                let pt = p[i * 7 + c] as f64;
                -(1.0 - pt).powi(2) * pt.ln()
            })
            .sum::<f64>()
            / 2.0;
        assert!((got - expect).abs() < 1e-5, "{got} vs {expect}");
        assert!(got < value(l.cross_entropy_for_logits(&y)));
    }

    #[test]
    fn distillation_is_zero_on_agreement_and_matches_pytorchs_kl_div() {
        let (l, _) = logits();
        assert!(value(Loss::distill(&l, &l, 4.0)).abs() < 1e-6);
        let t = l.flip([0]);
        let got = value(Loss::distill(&l, &t, 2.0));
        let log_s = (&l / 2.0).log_softmax(-1, Kind::Float);
        let log_t = (&t / 2.0).log_softmax(-1, Kind::Float);
        // PyTorch's kl_div(input = log q, target = log p, log_target) sums p (log p - log q).
        let expect = value(log_s.kl_div(&log_t, tch::Reduction::Sum, true)) / 2.0 * 4.0;
        assert!(got > 0.0 && (got - expect).abs() < 1e-5, "{got} vs {expect}");
    }

    #[test]
    fn class_weights_favour_rare_classes() {
        let (l, y) = logits();
        let counts = [100, 100, 100, 10, 100, 100, 100];
        let c = TrainConfig { class_weighted: true, ..cfg() };
        let got = value(Loss::new(&c, &counts, Device::Cpu).hard(&l, &y));
        let per = log_probs(&l);
        let (w0, w3) = (610.0 / 700.0, 610.0 / 70.0);
        let expect = -(w0 * per[0] as f64 + w3 * per[7 + 3] as f64) / 2.0;
        assert!((got - expect).abs() < 1e-4, "{got} vs {expect}");
    }
}
