//! Stochastic weight averaging (Izmailov et al., 2018): the mean of the weights a run passes
//! through late in training often sits in a flatter, better-generalising spot than any one
//! of them. Batch norm's running statistics belong to the weights that made them, so the
//! mean's are recomputed over Training before it is scored.

use std::collections::HashMap;
use tch::nn::{self, ModuleT};
use tch::{Device, Tensor};

use crate::config::Config;
use crate::data::Faces;
use crate::nn::score::{centre_view, input_batches};
use crate::nn::model::Trained;

/// The running mean of a model's variables over the epochs it has seen.
#[derive(Debug, Default)]
pub struct WeightAverage {
    pub epochs: usize,
    mean: HashMap<String, Tensor>,
}

/// The checkpoint's names for the mean: `average.` + the variable's name.
const PREFIX: &str = "average.";

impl WeightAverage {
    /// Folds the variables' current values into the mean.
    pub fn add(&mut self, vs: &nn::VarStore) {
        self.epochs += 1;
        let k = self.epochs as f64;
        tch::no_grad(|| {
            for (name, var) in vs.variables() {
                match self.mean.get_mut(&name) {
                    Some(mean) => *mean += (var - &*mean) / k,
                    None => {
                        self.mean.insert(name, var.detach().copy());
                    }
                }
            }
        });
    }

    /// The mean as checkpoint tensors.
    pub fn tensors(&self) -> Vec<(String, Tensor)> {
        self.mean.iter().map(|(k, v)| (format!("{PREFIX}{k}"), v.shallow_clone())).collect()
    }

    /// The mean of `epochs` epochs, read back from a checkpoint's tensors.
    pub fn from_checkpoint(tensors: &HashMap<String, Tensor>, epochs: usize) -> anyhow::Result<WeightAverage> {
        let mean: HashMap<String, Tensor> = tensors
            .iter()
            .filter_map(|(k, v)| k.strip_prefix(PREFIX).map(|name| (name.to_string(), v.shallow_clone())))
            .collect();
        anyhow::ensure!(epochs == 0 || !mean.is_empty(), "the checkpoint holds no weight average, but the run averaged {epochs} epochs");
        Ok(WeightAverage { epochs, mean })
    }

    /// A model of `config` holding the mean, its batch-norm statistics recomputed over
    /// `train_faces`.
    pub fn model(&self, config: &Config, device: Device, train_faces: &Faces) -> anyhow::Result<Trained> {
        let mut model = Trained::new(config, device)?;
        crate::nn::model::copy_named(&model.vs, &self.mean, "")?;
        recompute_batch_norm(&mut model, train_faces);
        Ok(model)
    }
}

/// Sets every batch norm's running mean and variance to their averages over `faces`, seen as
/// the model sees them at evaluation (centre crop, evaluation blur; in f32), in
/// `eval_batch_size` batches: what PyTorch's `update_bn` does.
pub fn recompute_batch_norm(model: &mut Trained, faces: &Faces) {
    let stats: Vec<Tensor> = model
        .vs
        .variables()
        .into_iter()
        .filter(|(name, _)| name.ends_with("running_mean") || name.ends_with("running_var"))
        .map(|(_, t)| t)
        .collect();
    if stats.is_empty() || faces.is_empty() {
        return;
    }
    let bf16 = std::mem::replace(&mut model.net.bf16_training, false);
    let t = &model.config.train;
    // A training-mode pass moves each statistic by `momentum` towards its batch's value: from
    // zero, it lands on exactly momentum x the batch's statistic.
    let momentum = nn::BatchNormConfig::default().momentum;
    let mut sums: Vec<Tensor> = stats.iter().map(|s| s.zeros_like()).collect();
    tch::no_grad(|| {
        for xb in input_batches(faces, t.eval_batch_size, model.vs.device(), t.eval_blur) {
            for s in &stats {
                let _ = s.shallow_clone().zero_();
            }
            let _ = model.net.forward_t(&centre_view(&xb, t.input_size), true);
            for (sum, s) in sums.iter_mut().zip(&stats) {
                *sum += s * xb.size()[0] as f64;
            }
        }
        for (sum, s) in sums.iter().zip(&stats) {
            s.shallow_clone().copy_(&(sum / (momentum * faces.len() as f64)));
        }
    });
    model.net.bf16_training = bf16;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{normalize, SIDE};
    use tch::Kind;

    fn config(eval_batch_size: usize) -> Config {
        let text = format!(
            "name = \"bn\"\n[model]\nlayers = [{{ type = \"conv\", out = 4, stride = 2, bias = false }}, {{ type = \"batch_norm\" }}, {{ type = \"flatten\" }}, {{ type = \"linear\", out = 7 }}]\n[train]\neval_batch_size = {eval_batch_size}\n"
        );
        Config::parse(&text).unwrap()
    }

    fn faces(n: usize) -> Faces {
        let mut rng = fastrand::Rng::with_seed(3);
        let pixels = (0..n * SIDE * SIDE).map(|_| rng.u8(..)).collect();
        Faces { pixels, labels: vec![0; n], twin_in_training: vec![] }
    }

    #[test]
    fn the_mean_of_three_states_is_their_arithmetic_mean() {
        let model = Trained::new(&config(10), Device::Cpu).unwrap();
        let (name, mut weight) = model.vs.variables().into_iter().find(|(n, _)| n.ends_with("weight")).unwrap();
        let mut average = WeightAverage::default();
        let states: Vec<Tensor> = (0..3).map(|_| weight.randn_like()).collect();
        for s in &states {
            tch::no_grad(|| weight.copy_(s));
            average.add(&model.vs);
        }
        let expect = (&states[0] + &states[1] + &states[2]) / 3.0;
        assert!(average.mean[&name].allclose(&expect, 1e-6, 1e-6, false));
        // Back from a checkpoint, it goes on from where it was.
        let saved: HashMap<String, Tensor> = average.tensors().into_iter().collect();
        let mut back = WeightAverage::from_checkpoint(&saved, 3).unwrap();
        tch::no_grad(|| weight.copy_(&(expect.shallow_clone() * 0.0 + 4.0)));
        back.add(&model.vs);
        assert!(back.mean[&name].allclose(&((&expect * 3.0 + 4.0) / 4.0), 1e-6, 1e-6, false));
        assert!(WeightAverage::from_checkpoint(&HashMap::new(), 2).is_err(), "a run that averaged needs its mean back");
    }

    #[test]
    fn batch_norm_statistics_are_the_averages_over_the_faces() {
        // Batches of 4, 4 and 2 faces: the mean comes out exact, the variance as the
        // size-weighted mean of the batches' unbiased variances.
        let mut model = Trained::new(&config(4), Device::Cpu).unwrap();
        let faces = faces(10);
        recompute_batch_norm(&mut model, &faces);
        let vars = model.vs.variables();
        let (mean, var) = (&vars["1.running_mean"], &vars["1.running_var"]);
        let conv = |x: &Tensor| x.conv2d(&vars["0.weight"], None::<Tensor>, [2, 2], [1, 1], [1, 1], 1);
        let (x, _) = faces.tensors();
        let out = conv(&normalize(&x));
        let expect_mean = out.mean_dim([0, 2, 3].as_slice(), false, Kind::Float);
        assert!(mean.allclose(&expect_mean, 1e-4, 1e-5, false), "{mean} vs {expect_mean}");
        let batch_var = |s: i64, l: i64| out.narrow(0, s, l).var_dim([0, 2, 3].as_slice(), true, false) * l as f64;
        let expect_var = (batch_var(0, 4) + batch_var(4, 4) + batch_var(8, 2)) / 10.0;
        assert!(var.allclose(&expect_var, 1e-4, 1e-5, false), "{var} vs {expect_var}");
        // The untouched default (mean 0, variance 1) would fail both.
        assert!(mean.abs().max().double_value(&[]) > 1e-3);
    }
}
