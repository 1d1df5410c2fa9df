//! Safetensors in and out of libtorch: memory-mapped reads, atomic writes. No pickle anywhere.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use memmap2::{Mmap, UncheckedAdvice};
use safetensors::tensor::{Dtype, SafeTensors, TensorView, View};
use tch::{Kind, Tensor};

use crate::fsutil::write_atomically;

pub fn kind_of(dtype: Dtype) -> Option<Kind> {
    Some(match dtype {
        Dtype::BOOL => Kind::Bool,
        Dtype::U8 => Kind::Uint8,
        Dtype::I8 => Kind::Int8,
        Dtype::I16 => Kind::Int16,
        Dtype::I32 => Kind::Int,
        Dtype::I64 => Kind::Int64,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F16 => Kind::Half,
        Dtype::F32 => Kind::Float,
        Dtype::F64 => Kind::Double,
        _ => return None,
    })
}

fn dtype_of(kind: Kind) -> Option<Dtype> {
    Some(match kind {
        Kind::Bool => Dtype::BOOL,
        Kind::Uint8 => Dtype::U8,
        Kind::Int8 => Dtype::I8,
        Kind::Int16 => Dtype::I16,
        Kind::Int => Dtype::I32,
        Kind::Int64 => Dtype::I64,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Half => Dtype::F16,
        Kind::Float => Dtype::F32,
        Kind::Double => Dtype::F64,
        _ => return None,
    })
}

/// A safetensors file mapped into memory; tensors are copied out one at a time, so loading never
/// holds a second full copy of the file in RAM.
pub struct MappedSafetensors {
    path: PathBuf,
    mmap: Mmap,
}

impl MappedSafetensors {
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let file = File::open(path)?;
        // SAFETY: the map is read-only and lives as long as `self`; a checkpoint file rewritten
        // under a running process is outside what any loader can guard against.
        let mmap = unsafe { Mmap::map(&file)? };
        Ok(Self { path: path.to_path_buf(), mmap })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Parses the header and checks that every tensor lies inside the file.
    pub fn parse(&self) -> Result<SafeTensors<'_>, safetensors::SafeTensorError> {
        SafeTensors::deserialize(&self.mmap)
    }

    /// Drops the resident pages behind `bytes` (a tensor's data in this map) once it has been
    /// copied out, so that loading a checkpoint does not hold the file's pages and the weights at
    /// the same time. The pages are re-read from the file if touched again.
    pub fn release(&self, bytes: &[u8]) {
        let base = self.mmap.as_ptr() as usize;
        let Some(offset) = (bytes.as_ptr() as usize).checked_sub(base) else { return };
        if offset + bytes.len() > self.mmap.len() {
            return;
        }
        // SAFETY: a read-only shared file mapping: MADV_DONTNEED discards this process's copy of
        // the pages and later reads fault them back in from the file with the same contents.
        let _ = unsafe { self.mmap.unchecked_advise_range(UncheckedAdvice::DontNeed, offset, bytes.len()) };
    }
}

/// Copies a view into a new CPU tensor of the view's own dtype; `None` for dtypes libtorch lacks.
pub fn tensor_from_view(view: &TensorView<'_>) -> Option<Tensor> {
    let kind = kind_of(view.dtype())?;
    let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
    Some(Tensor::from_data_size(view.data(), &shape, kind))
}

/// Reads every tensor of a file (small files: fixtures, logits, checkpoints shards).
pub fn read_safetensors(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let mapped = MappedSafetensors::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let st = mapped.parse().with_context(|| format!("{} is not a valid safetensors file", path.display()))?;
    let mut out = Vec::new();
    for (name, view) in st.tensors() {
        let t = tensor_from_view(&view)
            .with_context(|| format!("{}: tensor `{name}` has unsupported dtype {:?}", path.display(), view.dtype()))?;
        out.push((name, t));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

struct HostTensor {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl View for &HostTensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        (&self.bytes[..]).into()
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

fn to_host(name: &str, t: &Tensor) -> Result<HostTensor> {
    let t = t.detach().to_device(tch::Device::Cpu).contiguous();
    let kind = t.kind();
    let dtype = dtype_of(kind).with_context(|| format!("tensor `{name}`: dtype {kind:?} cannot be saved"))?;
    let numel = t.numel();
    let mut bytes = vec![0u8; numel * kind.elt_size_in_bytes()];
    t.f_copy_data_u8(&mut bytes, numel)?;
    Ok(HostTensor { dtype, shape: t.size().iter().map(|&d| d as usize).collect(), bytes })
}

/// Writes named tensors to `path` atomically (temp file, fsync, rename): a reader sees the old file
/// or the whole new one, never half of it.
pub fn write_safetensors(
    path: &Path,
    tensors: &[(&str, &Tensor)],
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let host: Vec<(String, HostTensor)> =
        tensors.iter().map(|(n, t)| Ok((n.to_string(), to_host(n, t)?))).collect::<Result<_>>()?;
    let views: Vec<(&str, &HostTensor)> = host.iter().map(|(n, h)| (n.as_str(), h)).collect();
    let bytes = safetensors::tensor::serialize(views, metadata)
        .with_context(|| format!("cannot serialise tensors for {}", path.display()))?;
    write_atomically(path, |file| {
        use std::io::Write;
        file.write_all(&bytes)
    })
}
