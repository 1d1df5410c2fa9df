//! Meta-learning algorithms over a shared inner/outer-loop core. For now: the SFT loss they share.

pub mod loss;
