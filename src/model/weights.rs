//! Named parameter tensors in a fixed order: what a checkpoint holds and what the decoder reads.

use std::collections::HashMap;

use tch::{Device, Kind, Tensor};

use super::ModelError;

/// An ordered map from Hugging Face parameter names to tensors.
///
/// The decoder holds shallow clones of these tensors, so a model built from `Weights` sees in-place
/// updates to them; building a decoder over another `Weights` (e.g. adapted parameters) is free.
#[derive(Debug, Default)]
pub struct Weights {
    names: Vec<String>,
    tensors: HashMap<String, Tensor>,
}

impl Weights {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, name: impl Into<String>, tensor: Tensor) {
        let name = name.into();
        if self.tensors.insert(name.clone(), tensor).is_none() {
            self.names.push(name);
        }
    }

    /// A shallow clone (same storage) of the named tensor.
    pub fn get(&self, name: &str) -> Result<Tensor, ModelError> {
        self.tensors.get(name).map(Tensor::shallow_clone).ok_or_else(|| ModelError::MissingWeight(name.to_string()))
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.names.iter().map(|n| (n.as_str(), &self.tensors[n]))
    }

    pub fn numel(&self) -> i64 {
        self.iter().map(|(_, t)| t.numel() as i64).sum()
    }

    /// Marks every tensor as a leaf that accumulates gradients.
    pub fn requires_grad(self) -> Self {
        self.map(|t| t.detach().set_requires_grad(true))
    }

    pub fn to(self, device: Device, kind: Kind) -> Self {
        self.map(|t| t.to_device(device).to_kind(kind))
    }

    fn map(mut self, f: impl Fn(&Tensor) -> Tensor) -> Self {
        for t in self.tensors.values_mut() {
            *t = f(t);
        }
        self
    }
}
