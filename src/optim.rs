//! Adam, AdamW and SGD written over `tch` tensors, with state that can be saved and restored,
//! so a resumed run continues exactly where it stopped. Updates follow PyTorch's formulas.

use std::collections::HashMap;
use tch::{nn, Tensor};

use crate::config::{OptimizerKind, TrainConfig};

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
