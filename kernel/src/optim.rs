//! Stochastic gradient descent with momentum and weight decay, and the
//! learning-rate schedule over a run.

use ndarray::{ArrayViewD, ArrayViewMutD, Zip};
use serde::{Deserialize, Serialize};

use crate::error::{KernelError, Result};

/// SGD hyper-parameters, PyTorch's convention:
///
/// ```text
/// g ← ∇ / count + weight_decay · w
/// v ← momentum · v + g
/// w ← w − lr · v
/// ```
///
/// where `∇` is the gradient *summed* over `count` examples (the layers'
/// convention), so the update equals that of one large batch whatever way
/// the sum was split among workers.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sgd {
    pub lr: f32,
    pub momentum: f32,
    pub weight_decay: f32,
}

/// The defaults of every entry point (`lml train`, a job spec, `lml
/// train-head`), chosen for *standardised* features
/// ([`crate::standardize`]: every feature has variance `1/D`, so an
/// example's squared norm is about 1 whatever the feature length `D` and the
/// features' own scales):
///
/// * `lr` 3 with momentum 0.9: on standardised features the loss's
///   curvature is at most about ½ (the covariance's trace is 1), so heavy-ball
///   SGD is stable far beyond it (`lr·½ < 2(1 + 0.9)` up to `lr` ≈ 7), and it
///   is large enough that 10 epochs reach a well-regularised logistic
///   regression (measured on generated fc7-like features, 8–4096 dimensions:
///   `lr` 1–10 all came within a point of scikit-learn's best).
/// * `weight_decay` 5e-4: L2 on the head (on standardised features this is
///   scikit-learn's `C = 1 / (weight_decay · N · D)`, e.g. `C ≈ 0.01` for
///   CIFAR-10's 50,000 fc7 vectors); it keeps the weights of features that
///   barely vary from growing without bound.
impl Default for Sgd {
    fn default() -> Self {
        Sgd { lr: 3.0, momentum: 0.9, weight_decay: 5e-4 }
    }
}

impl Sgd {
    /// These settings with the learning rate of `step` (0-based) of a run of
    /// `total` steps under `schedule`.
    pub fn at_step(&self, schedule: LrSchedule, step: u64, total: u64) -> Sgd {
        Sgd { lr: (f64::from(self.lr) * schedule.factor(step, total)) as f32, ..*self }
    }

    /// Checks that the hyper-parameters are finite and in range.
    ///
    /// # Errors
    /// [`KernelError::Invalid`] naming the bad field.
    pub fn validate(&self) -> Result<()> {
        let check = |name: &str, v: f32, ok: bool| {
            if v.is_finite() && ok {
                Ok(())
            } else {
                Err(KernelError::invalid(format!("sgd.{name}"), format!("{v} is out of range")))
            }
        };
        check("lr", self.lr, self.lr > 0.0)?;
        check("momentum", self.momentum, (0.0..1.0).contains(&self.momentum))?;
        check("weight_decay", self.weight_decay, self.weight_decay >= 0.0)
    }

    /// One update of `param` in place from the summed gradient over `count` examples.
    ///
    /// # Errors
    /// [`KernelError::Shape`] if `param`, `grad` and `velocity` differ in
    /// shape; [`KernelError::Invalid`] if `count` is zero.
    pub fn step(
        &self,
        param: ArrayViewMutD<'_, f32>,
        grad_sum: ArrayViewD<'_, f32>,
        velocity: ArrayViewMutD<'_, f32>,
        count: usize,
    ) -> Result<()> {
        if count == 0 {
            return Err(KernelError::invalid("sgd count", "a step needs at least one example"));
        }
        for (what, shape) in [("gradient", grad_sum.shape()), ("velocity", velocity.shape())] {
            if shape != param.shape() {
                return Err(KernelError::shape(format!("sgd {what}"), format!("{:?}", param.shape()), shape));
            }
        }
        let scale = 1.0 / count as f32;
        let (lr, mu, wd) = (self.lr, self.momentum, self.weight_decay);
        Zip::from(param).and(grad_sum).and(velocity).for_each(|w, &g, v| {
            let g = g * scale + wd * *w;
            *v = mu * *v + g;
            *w -= lr * *v;
        });
        Ok(())
    }
}

/// How the learning rate changes over a run of `T` steps (SGD steps of one
/// process, or rounds of a distributed job: one round is one step).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LrSchedule {
    /// `lr` at every step.
    Constant,
    /// Cosine decay: step `t` uses `lr · ½(1 + cos(π t / T))`, from `lr` at
    /// the first step down towards 0 at the last. The default: large steps
    /// while far from the optimum, small ones at the end, so the last
    /// parameters do not rattle around the optimum at the full rate.
    #[default]
    Cosine,
}

impl LrSchedule {
    /// The multiplier of the base learning rate at `step` of `total` (`1` when `total` is 0).
    pub fn factor(self, step: u64, total: u64) -> f64 {
        match self {
            LrSchedule::Constant => 1.0,
            LrSchedule::Cosine if total == 0 => 1.0,
            LrSchedule::Cosine => {
                let t = step.min(total) as f64 / total as f64;
                0.5 * (1.0 + (std::f64::consts::PI * t).cos())
            }
        }
    }
}

impl std::fmt::Display for LrSchedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LrSchedule::Constant => "constant",
            LrSchedule::Cosine => "cosine",
        })
    }
}

impl std::str::FromStr for LrSchedule {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "constant" => Ok(LrSchedule::Constant),
            "cosine" => Ok(LrSchedule::Cosine),
            _ => Err(format!("{s:?}: expected constant or cosine")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_decays_from_lr_towards_zero() {
        let s = LrSchedule::Cosine;
        assert_eq!(s.factor(0, 10), 1.0);
        assert!((s.factor(5, 10) - 0.5).abs() < 1e-12);
        assert!(s.factor(9, 10) > 0.0 && s.factor(9, 10) < 0.03);
        assert!((1..10).all(|t| s.factor(t, 10) < s.factor(t - 1, 10)));
        assert_eq!(s.factor(3, 0), 1.0);
        assert_eq!(LrSchedule::Constant.factor(9, 10), 1.0);
        let sgd = Sgd::default().at_step(s, 5, 10);
        assert_eq!(sgd.lr, Sgd::default().lr * 0.5);
        assert_eq!("cosine".parse::<LrSchedule>().unwrap(), s);
        assert!("linear".parse::<LrSchedule>().is_err());
    }
}
