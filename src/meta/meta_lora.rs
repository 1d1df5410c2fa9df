//! META-LoRA, the original trainer's two-stage variant over a shared LoRA adapter φ:
//!
//! stage 1, for each task i, from φ:
//!     φ_i ← K AdamW steps (fresh state, gradients clipped to optim.clip_grad) on support batches
//! stage 2:
//!     g_i = ∇_{φ_i} L_query(φ_i);  g = mean_i g_i   (applied to φ by the outer optimizer)
//!
//! That is the first-order meta-gradient ([`super::fomaml::first_order_meta_gradient`]) under META-LoRA's
//! inner rule ([`InnerRule::of`]) with θ = φ. φ is restored after every task: the Python original
//! left the last task's adapter in place of the shared one (DESIGN.md trap 5).

use tch::Tensor;

use super::core::{InnerRule, Learner};
use super::TaskOutcome;
use crate::config::schema::{MetaSection, OptimSection};
use crate::data::tasks::TaskData;
use crate::distributed::CommError;

pub fn meta_gradient(
    learner: &Learner,
    tasks: &mut [&mut TaskData],
    meta: &MetaSection,
    optim: &OptimSection,
    meta_grad: &[Tensor],
) -> Result<Vec<TaskOutcome>, CommError> {
    super::fomaml::first_order_meta_gradient(learner, tasks, meta, &InnerRule::of(meta, optim), meta_grad)
}
