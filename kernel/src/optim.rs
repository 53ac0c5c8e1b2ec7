//! Stochastic gradient descent with momentum and weight decay.

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

impl Default for Sgd {
    fn default() -> Self {
        Sgd { lr: 0.01, momentum: 0.9, weight_decay: 0.0 }
    }
}

impl Sgd {
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
