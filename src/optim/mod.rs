//! The outer optimizer (AdamW or SGD, PyTorch's update rules), its learning-rate schedule and
//! gradient clipping. Parameters and state are fp32; the state is a list of named tensors so a
//! checkpoint can hold it.

use tch::{Kind, Tensor};

use crate::config::schema::{LrScheduler, OptimSection, OptimizerType};

/// The learning-rate multiplier at a step, as verl's schedules compute it: linear warmup from 0
/// over `warmup` steps, then cosine / linear decay to `min_ratio` at `total`, or constant.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub kind: LrScheduler,
    pub warmup: usize,
    pub total: usize,
    pub min_ratio: f64,
}

impl Schedule {
    pub fn new(optim: &OptimSection, total_steps: usize) -> Self {
        Self {
            kind: optim.lr_scheduler,
            warmup: (total_steps as f64 * optim.warmup_steps_ratio) as usize,
            total: total_steps,
            min_ratio: optim.min_lr_ratio,
        }
    }

    /// The multiplier for update number `step` (0-based).
    pub fn factor(&self, step: usize) -> f64 {
        if step < self.warmup {
            return step as f64 / self.warmup.max(1) as f64;
        }
        let progress = (step - self.warmup) as f64 / (self.total - self.warmup).max(1) as f64;
        let progress = progress.clamp(0.0, 1.0);
        match self.kind {
            LrScheduler::Constant => 1.0,
            LrScheduler::Linear => self.min_ratio + (1.0 - self.min_ratio) * (1.0 - progress),
            LrScheduler::Cosine => {
                self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
            }
        }
    }
}

/// Scales `grads` in place so their global L2 norm is at most `max_norm` (as
/// torch.nn.utils.clip_grad_norm_), and returns the norm before clipping. `max_norm <= 0` only
/// measures.
pub fn clip_grad_norm(grads: &[Tensor], max_norm: f64) -> f64 {
    let norm = squared_norm(grads).sqrt().double_value(&[]);
    clip_to(grads, norm, max_norm);
    norm
}

/// Σ‖g‖² over `grads`, an fp32 scalar, fp64 for fp64 gradients (numerical checks); sharded callers
/// sum it over ranks before the root.
pub fn squared_norm(grads: &[Tensor]) -> Tensor {
    let kind = if grads.iter().any(|g| g.kind() == Kind::Double) { Kind::Double } else { Kind::Float };
    let squares: Vec<Tensor> = grads.iter().map(|g| g.to_kind(kind).square().sum(kind)).collect();
    Tensor::stack(&squares, 0).sum(kind)
}

/// Scales `grads` by max_norm / (norm + 1e-6) when that is below 1 (torch's rule).
pub fn clip_to(grads: &[Tensor], norm: f64, max_norm: f64) {
    if max_norm > 0.0 && norm.is_finite() {
        let coef = max_norm / (norm + 1e-6);
        if coef < 1.0 {
            for g in grads {
                let _ = g.shallow_clone().g_mul_scalar_(coef);
            }
        }
    }
}

pub struct Optimizer {
    kind: OptimizerType,
    lr: f64,
    betas: [f64; 2],
    eps: f64,
    weight_decay: f64,
    /// Updates taken so far (Adam's bias correction uses it).
    pub steps: u64,
    /// Adam's first and second moments, one pair per parameter (empty for SGD).
    exp_avg: Vec<Tensor>,
    exp_avg_sq: Vec<Tensor>,
}

impl Optimizer {
    pub fn new(optim: &OptimSection, lr: f64, params: &[Tensor]) -> Self {
        let zeros = || params.iter().map(Tensor::zeros_like).collect::<Vec<_>>();
        let adam = optim.optimizer_type == OptimizerType::AdamW;
        Self {
            kind: optim.optimizer_type,
            lr,
            betas: optim.betas,
            eps: optim.eps,
            weight_decay: optim.weight_decay,
            steps: 0,
            exp_avg: if adam { zeros() } else { Vec::new() },
            exp_avg_sq: if adam { zeros() } else { Vec::new() },
        }
    }

    pub fn base_lr(&self) -> f64 {
        self.lr
    }

    /// One update of `params` (leaf tensors) from `grads` at `lr_factor` × the base rate.
    pub fn step(&mut self, params: &[Tensor], grads: &[Tensor], lr_factor: f64) {
        let _guard = tch::no_grad_guard();
        let lr = self.lr * lr_factor;
        self.steps += 1;
        match self.kind {
            OptimizerType::Sgd => {
                for (p, g) in params.iter().zip(grads) {
                    if self.weight_decay != 0.0 {
                        let _ = p.shallow_clone().g_mul_scalar_(1.0 - lr * self.weight_decay);
                    }
                    let _ = p.shallow_clone().g_sub_(&(g * lr));
                }
            }
            OptimizerType::AdamW => {
                let [beta1, beta2] = self.betas;
                let bias1 = 1.0 - beta1.powi(self.steps as i32);
                let bias2_sqrt = (1.0 - beta2.powi(self.steps as i32)).sqrt();
                for (i, (p, g)) in params.iter().zip(grads).enumerate() {
                    let mut p = p.shallow_clone();
                    // Decoupled weight decay, then PyTorch's update order.
                    let _ = p.g_mul_scalar_(1.0 - lr * self.weight_decay);
                    let _ = self.exp_avg[i].lerp_(g, 1.0 - beta1);
                    let _ = self.exp_avg_sq[i].g_mul_scalar_(beta2).g_add_(&(g.square() * (1.0 - beta2)));
                    let denom = (self.exp_avg_sq[i].sqrt() / bias2_sqrt) + self.eps;
                    let _ = p.addcdiv_(&(&self.exp_avg[i] * (-lr / bias1)), &denom);
                }
            }
        }
    }

    /// The state tensors by name (`exp_avg.<i>`, `exp_avg_sq.<i>`), for checkpoints.
    pub fn state(&self) -> Vec<(String, &Tensor)> {
        let avg = self.exp_avg.iter().enumerate().map(|(i, t)| (format!("exp_avg.{i}"), t));
        let sq = self.exp_avg_sq.iter().enumerate().map(|(i, t)| (format!("exp_avg_sq.{i}"), t));
        avg.chain(sq).collect()
    }

    /// Copies saved state (as [`Optimizer::state`] names it) into this optimizer.
    pub fn load_state(&mut self, steps: u64, mut get: impl FnMut(&str) -> Option<Tensor>) -> Result<(), String> {
        let _guard = tch::no_grad_guard();
        for (prefix, tensors) in [("exp_avg", &mut self.exp_avg), ("exp_avg_sq", &mut self.exp_avg_sq)] {
            for (i, t) in tensors.iter_mut().enumerate() {
                let name = format!("{prefix}.{i}");
                let saved = get(&name).ok_or_else(|| format!("optimizer state `{name}` is missing"))?;
                if saved.size() != t.size() {
                    return Err(format!(
                        "optimizer state `{name}` has shape {:?}, expected {:?}",
                        saved.size(),
                        t.size()
                    ));
                }
                t.copy_(&saved);
            }
        }
        self.steps = steps;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn warmup_then_cosine_to_the_floor() {
        let optim = OptimSection { warmup_steps_ratio: 0.1, min_lr_ratio: 0.1, ..Default::default() };
        let s = Schedule::new(&optim, 100);
        assert_eq!(s.factor(0), 0.0);
        assert!((s.factor(5) - 0.5).abs() < 1e-12);
        assert!((s.factor(10) - 1.0).abs() < 1e-12);
        assert!((s.factor(55) - 0.55).abs() < 1e-12, "{}", s.factor(55));
        assert!((s.factor(100) - 0.1).abs() < 1e-12);
        let linear = Schedule { kind: LrScheduler::Linear, ..s };
        assert!((linear.factor(55) - 0.55).abs() < 1e-12);
        let constant = Schedule { kind: LrScheduler::Constant, ..s };
        assert_eq!(constant.factor(99), 1.0);
    }

    #[test]
    fn clipping_scales_to_the_max_norm() {
        let grads = [Tensor::from_slice(&[3.0f32]), Tensor::from_slice(&[4.0f32])];
        let norm = clip_grad_norm(&grads, 1.0);
        assert!((norm - 5.0).abs() < 1e-6);
        let clipped = clip_grad_norm(&grads, 0.0);
        assert!((clipped - 1.0).abs() < 1e-5, "{clipped}");
    }

    /// Three AdamW steps against the closed form of PyTorch's update, written out in f64.
    #[test]
    fn adamw_matches_the_reference_update() {
        let optim = OptimSection { betas: [0.9, 0.95], eps: 1e-8, weight_decay: 0.1, ..Default::default() };
        let p = Tensor::from_slice(&[1.0f64, -2.0]).to_kind(Kind::Double).set_requires_grad(false);
        let params = [p.shallow_clone()];
        let mut opt = Optimizer::new(&optim, 0.01, &params);
        let grads_seq = [[0.5, -1.0], [0.25, 2.0], [-0.75, 0.1]];
        let (mut x, mut m, mut v) = ([1.0f64, -2.0], [0.0f64; 2], [0.0f64; 2]);
        for (t, g) in grads_seq.iter().enumerate() {
            opt.step(&params, &[Tensor::from_slice(g).to_device(Device::Cpu)], 1.0);
            let t = t as i32 + 1;
            for j in 0..2 {
                x[j] *= 1.0 - 0.01 * 0.1;
                m[j] = 0.9 * m[j] + 0.1 * g[j];
                v[j] = 0.95 * v[j] + 0.05 * g[j] * g[j];
                let (mh, vh) = (m[j] / (1.0 - 0.9f64.powi(t)), v[j] / (1.0 - 0.95f64.powi(t)));
                x[j] -= 0.01 * mh / (vh.sqrt() + 1e-8);
            }
        }
        let got: Vec<f64> = Vec::try_from(&p).unwrap();
        for j in 0..2 {
            assert!((got[j] - x[j]).abs() < 1e-12, "{got:?} vs {x:?}");
        }
    }
}
