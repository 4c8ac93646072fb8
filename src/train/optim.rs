//! Adam, AdamW and SGD written over `tch` tensors, with state that can be saved and restored,
//! so a resumed run continues exactly where it stopped. Updates follow PyTorch's formulas.

use std::collections::HashMap;
use tch::{nn, Tensor};

use crate::config::{OptimizerKind, Schedule, TrainConfig};

pub struct Optimizer {
    kind: OptimizerKind,
    pub lr: f64,
    weight_decay: f64,
    momentum: f64,
    nesterov: bool,
    betas: (f64, f64),
    eps: f64,
    /// Steps taken so far (Adam's bias correction needs it).
    pub steps: i64,
    /// (name, parameter, state tensors): Adam keeps m and v, SGD a momentum buffer.
    params: Vec<(String, Tensor, Vec<Tensor>)>,
}

impl Optimizer {
    pub fn new(vs: &nn::VarStore, cfg: &TrainConfig) -> Optimizer {
        let mut vars: Vec<(String, Tensor)> =
            vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let slots = match cfg.optimizer {
            OptimizerKind::Adam | OptimizerKind::Adamw => 2,
            OptimizerKind::Sgd => usize::from(cfg.momentum != 0.0),
        };
        let params = vars
            .into_iter()
            .map(|(name, p)| {
                let state = (0..slots).map(|_| p.zeros_like().detach()).collect();
                (name, p, state)
            })
            .collect();
        Optimizer {
            kind: cfg.optimizer,
            lr: cfg.lr,
            weight_decay: cfg.weight_decay,
            momentum: cfg.momentum,
            nesterov: cfg.nesterov,
            betas: (0.9, 0.999),
            eps: 1e-8,
            steps: 0,
            params,
        }
    }

    pub fn zero_grad(&mut self) {
        for (_, p, _) in &self.params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.detach_().zero_();
            }
        }
    }

    pub fn step(&mut self) {
        self.steps += 1;
        let t = self.steps as i32;
        let (lr, wd, (b1, b2), eps) = (self.lr, self.weight_decay, self.betas, self.eps);
        tch::no_grad(|| {
            for (_, p, state) in &mut self.params {
                let mut p = p.shallow_clone();
                let mut g = p.grad();
                if !g.defined() {
                    continue;
                }
                match self.kind {
                    OptimizerKind::Adam | OptimizerKind::Adamw => {
                        if wd != 0.0 {
                            if self.kind == OptimizerKind::Adamw {
                                let _ = p.g_mul_scalar_(1.0 - lr * wd);
                            } else {
                                g = &g + &p * wd;
                            }
                        }
                        let _ = state[0].lerp_(&g, 1.0 - b1);
                        let _ = state[1].g_mul_scalar_(b2).g_add_(&(&g * &g * (1.0 - b2)));
                        let bias1 = 1.0 - b1.powi(t);
                        let bias2 = 1.0 - b2.powi(t);
                        let denom = (state[1].sqrt() / bias2.sqrt()).g_add_scalar_(eps);
                        let _ = p.g_sub_(&(&state[0] / denom * (lr / bias1)));
                    }
                    OptimizerKind::Sgd => {
                        if wd != 0.0 {
                            g = &g + &p * wd;
                        }
                        if let Some(buf) = state.first_mut() {
                            if t == 1 {
                                buf.copy_(&g);
                            } else {
                                let _ = buf.g_mul_scalar_(self.momentum).g_add_(&g);
                            }
                            g = if self.nesterov { &g + &*buf * self.momentum } else { buf.shallow_clone() };
                        }
                        let _ = p.g_sub_(&(g * lr));
                    }
                }
            }
        });
    }

    /// Scales the gradients so their total L2 norm is at most `max_norm`.
    pub fn clip_grad_norm(&mut self, max_norm: f64) {
        tch::no_grad(|| {
            let grads: Vec<Tensor> = self.params.iter().map(|(_, p, _)| p.grad()).filter(|g| g.defined()).collect();
            let total: f64 = grads.iter().map(|g| g.pow_tensor_scalar(2).sum(tch::Kind::Double).double_value(&[])).sum::<f64>().sqrt();
            if total > max_norm {
                for mut g in grads {
                    let _ = g.g_mul_scalar_(max_norm / (total + 1e-6));
                }
            }
        });
    }

    /// State tensors by name, for a checkpoint.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (name, _, state) in &self.params {
            for (i, s) in state.iter().enumerate() {
                out.push((format!("optim.{i}.{name}"), s.shallow_clone()));
            }
        }
        out
    }

    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>, steps: i64) -> anyhow::Result<()> {
        for (name, _, state) in &mut self.params {
            for (i, s) in state.iter_mut().enumerate() {
                let key = format!("optim.{i}.{name}");
                let saved = tensors.get(&key).ok_or_else(|| anyhow::anyhow!("checkpoint lacks {key}"))?;
                tch::no_grad(|| s.copy_(saved));
            }
        }
        self.steps = steps;
        Ok(())
    }
}

impl Schedule {
    /// The learning rate at `progress` epochs (fractional within an epoch) of `total` (also
    /// fractional: a run to a time budget estimates it as it goes); `plateau_lr` is the plateau
    /// schedule's current rate.
    pub fn lr(&self, base: f64, progress: f64, total: f64, plateau_lr: f64) -> f64 {
        let total = total.max(1e-9);
        let cos_between = |hi: f64, lo: f64, t: f64| lo + (hi - lo) * 0.5 * (1.0 + (std::f64::consts::PI * t.clamp(0.0, 1.0)).cos());
        match *self {
            Schedule::Constant => base,
            Schedule::Step { every, gamma } => base * gamma.powi((progress.floor() as usize / every.max(1)) as i32),
            Schedule::Cosine { warmup_epochs, min_lr } => {
                if progress < warmup_epochs {
                    base * (progress + 1e-9) / warmup_epochs
                } else {
                    cos_between(base, min_lr, (progress - warmup_epochs) / (total - warmup_epochs).max(1e-9))
                }
            }
            Schedule::OneCycle { pct_start, div_factor, final_div_factor } => {
                let (start, end) = (base / div_factor, base / div_factor / final_div_factor);
                let t = progress / total;
                if t < pct_start {
                    cos_between(base, start, 1.0 - t / pct_start)
                } else {
                    cos_between(base, end, (t - pct_start) / (1.0 - pct_start))
                }
            }
            Schedule::Linear { warmup, start_factor } => {
                let t = (progress / total).clamp(0.0, 1.0);
                if t < warmup {
                    base * (start_factor + (1.0 - start_factor) * t / warmup)
                } else {
                    base * (1.0 - t) / (1.0 - warmup).max(1e-9)
                }
            }
            Schedule::Plateau { .. } => plateau_lr,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_follow_their_shapes() {
        let s = Schedule::Step { every: 3, gamma: 0.1 };
        assert_eq!(s.lr(1.0, 2.9, 10.0, 0.0), 1.0);
        assert!((s.lr(1.0, 3.0, 10.0, 0.0) - 0.1).abs() < 1e-12);
        let c = Schedule::Cosine { warmup_epochs: 2.0, min_lr: 0.0 };
        assert!((c.lr(1.0, 1.0, 10.0, 0.0) - 0.5).abs() < 1e-6);
        assert!((c.lr(1.0, 2.0, 10.0, 0.0) - 1.0).abs() < 1e-6);
        assert!((c.lr(1.0, 6.0, 10.0, 0.0) - 0.5).abs() < 1e-6);
        assert!(c.lr(1.0, 10.0, 10.0, 0.0).abs() < 1e-9);
        let o = Schedule::OneCycle { pct_start: 0.3, div_factor: 25.0, final_div_factor: 1e4 };
        assert!((o.lr(1.0, 0.0, 10.0, 0.0) - 0.04).abs() < 1e-9);
        assert!((o.lr(1.0, 3.0, 10.0, 0.0) - 1.0).abs() < 1e-9);
        assert!(o.lr(1.0, 10.0, 10.0, 0.0) < 1e-5);
        let l = Schedule::Linear { warmup: 0.2, start_factor: 0.1 };
        assert!((l.lr(1.0, 0.0, 10.0, 0.0) - 0.1).abs() < 1e-9);
        assert!((l.lr(1.0, 1.0, 10.0, 0.0) - 0.55).abs() < 1e-9);
        assert!((l.lr(1.0, 2.0, 10.0, 0.0) - 1.0).abs() < 1e-9);
        assert!((l.lr(1.0, 6.0, 10.0, 0.0) - 0.5).abs() < 1e-9);
        assert!(l.lr(1.0, 10.0, 10.0, 0.0).abs() < 1e-12);
        // Fractional totals, as a run to a time budget estimates them, keep the shape.
        assert!((l.lr(1.0, 3.7, 7.4, 0.0) - l.lr(1.0, 5.0, 10.0, 0.0)).abs() < 1e-9);
        assert_eq!(Schedule::Plateau { patience: 2, factor: 0.5, min_lr: 0.0 }.lr(1.0, 4.0, 10.0, 0.25), 0.25);
    }
}

#[cfg(test)]
mod against_libtorch {
    use super::*;
    use tch::nn::OptimizerConfig;
    use tch::{Device, Kind};

    /// Our optimizers and libtorch's own, from the same start on the same loss, agree.
    fn compare(cfg: &TrainConfig, theirs: impl OptimizerConfig) {
        tch::manual_seed(1);
        let x = Tensor::randn([16, 5], (Kind::Float, Device::Cpu));
        let y = Tensor::randint(3, [16], (Kind::Int64, Device::Cpu));
        let make = || {
            let vs = nn::VarStore::new(Device::Cpu);
            let lin = nn::linear(vs.root() / "l", 5, 3, Default::default());
            (vs, lin)
        };
        let (vs_a, lin_a) = make();
        let (mut vs_b, lin_b) = make();
        vs_b.copy(&vs_a).unwrap();
        let start = lin_a.ws.copy();
        let mut ours = Optimizer::new(&vs_a, cfg);
        let mut lib = theirs.build(&vs_b, cfg.lr).unwrap();
        for _ in 0..5 {
            ours.zero_grad();
            x.apply(&lin_a).cross_entropy_for_logits(&y).backward();
            ours.step();
            lib.zero_grad();
            x.apply(&lin_b).cross_entropy_for_logits(&y).backward();
            lib.step();
        }
        let diff = (&lin_a.ws - &lin_b.ws).abs().max().double_value(&[]);
        assert!(diff < 1e-6, "{:?}: max difference {diff}", cfg.optimizer);
        // Both agree because both stepped: five steps at lr 0.05 move the weights.
        let moved = (&lin_a.ws - &start).abs().max().double_value(&[]);
        assert!(moved > 0.01, "{:?}: the weights moved by only {moved}", cfg.optimizer);
    }

    #[test]
    fn adam_adamw_and_sgd_match_libtorch() {
        let base = TrainConfig { lr: 0.05, ..TrainConfig::default() };
        compare(&base, nn::Adam::default());
        let adamw = TrainConfig { optimizer: OptimizerKind::Adamw, weight_decay: 0.1, ..base.clone() };
        compare(&adamw, nn::AdamW { wd: 0.1, ..Default::default() });
        let sgd = TrainConfig { optimizer: OptimizerKind::Sgd, momentum: 0.9, weight_decay: 0.01, nesterov: true, ..base.clone() };
        compare(&sgd, nn::Sgd { momentum: 0.9, dampening: 0.0, wd: 0.01, nesterov: true });
    }
}
