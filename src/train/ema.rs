//! An exponential moving average of the weights (Polyak averaging, the speedruns' EMA): a
//! second copy of the network that trails the trained one, updated after every optimizer
//! step. Short runs end with noisy weights; their recent average is usually the better model.
//! Batch norm's running statistics are averaged with the rest, as the speedruns do.

use std::collections::HashMap;
use tch::{Device, Tensor};

use crate::config::Config;
use crate::nn::model::{copy_named, Trained};

/// The checkpoint's names for the average: `ema.` + the variable's name.
const PREFIX: &str = "ema.";

pub struct Ema {
    /// The averaged network, ready to evaluate or save.
    pub model: Trained,
    decay: f64,
    /// (average, trained variable) pairs, matched by name once: the optimizer updates the
    /// trained variables in place, so these handles stay valid for the whole run.
    pairs: Vec<(Tensor, Tensor)>,
}

impl Ema {
    /// An average that starts at the weights of `from` (the fresh network of `config`).
    pub fn new(config: &Config, device: Device, from: &Trained) -> anyhow::Result<Ema> {
        let model = Trained::new(config, device)?;
        let start: HashMap<String, Tensor> = from.vs.variables();
        copy_named(&model.vs, &start, "")?;
        let pairs = model.vs.variables().into_iter().filter_map(|(name, average)| start.get(&name).map(|v| (average, v.shallow_clone()))).collect();
        Ok(Ema { model, decay: config.train.ema_decay, pairs })
    }

    /// The decay after `steps` optimizer steps: short at first (the average of about the steps
    /// so far), so the random start fades quickly, then the configured decay.
    pub fn decay_at(&self, steps: i64) -> f64 {
        let steps = steps.max(0) as f64;
        self.decay.min((1.0 + steps) / (10.0 + steps))
    }

    /// Moves the average towards the trained weights after optimizer step number `steps`.
    pub fn update(&mut self, steps: i64) {
        let d = self.decay_at(steps);
        tch::no_grad(|| {
            for (average, value) in &mut self.pairs {
                if average.is_floating_point() {
                    let _ = average.lerp_(value, 1.0 - d);
                } else {
                    average.copy_(value);
                }
            }
        });
    }

    /// The average as checkpoint tensors.
    pub fn tensors(&self) -> Vec<(String, Tensor)> {
        self.model.vs.variables().into_iter().map(|(k, v)| (format!("{PREFIX}{k}"), v)).collect()
    }

    /// Takes the average back from a checkpoint's tensors.
    pub fn load(&mut self, tensors: &HashMap<String, Tensor>) -> anyhow::Result<()> {
        copy_named(&self.model.vs, tensors, PREFIX)
            .map_err(|e| anyhow::anyhow!("the checkpoint holds no weight EMA, but the run keeps one: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> (Config, Trained) {
        let config = Config::parse(
            "name = \"ema\"\n[model]\nlayers = [{ type = \"flatten\" }, { type = \"linear\", out = 7 }]\n[train]\nema_decay = 0.9\n",
        )
        .unwrap();
        let model = Trained::new(&config, Device::Cpu).unwrap();
        (config, model)
    }

    #[test]
    fn the_average_trails_the_weights_by_the_decay() {
        let (config, model) = model();
        let mut ema = Ema::new(&config, Device::Cpu, &model).unwrap();
        let (name, mut weight) = model.vs.variables().into_iter().find(|(n, _)| n.ends_with("weight")).unwrap();
        let start = weight.copy();
        // Early steps use a shorter memory: (1 + n) / (10 + n), then the configured 0.9.
        assert!((ema.decay_at(0) - 0.1).abs() < 1e-12);
        assert_eq!(ema.decay_at(1000), 0.9);
        tch::no_grad(|| weight.copy_(&(&start + 1.0)));
        ema.update(1000);
        let averaged = &ema.model.vs.variables()[&name];
        assert!(averaged.allclose(&(&start + 0.1), 1e-5, 1e-6, false), "0.9 x old + 0.1 x new");
        // Back from a checkpoint, the same numbers.
        let saved: HashMap<String, Tensor> = ema.tensors().into_iter().collect();
        let mut back = Ema::new(&config, Device::Cpu, &model).unwrap();
        back.load(&saved).unwrap();
        assert!(back.model.vs.variables()[&name].allclose(averaged, 0.0, 0.0, false));
        assert!(back.load(&HashMap::new()).is_err(), "a run that keeps an EMA needs it back");
    }
}
