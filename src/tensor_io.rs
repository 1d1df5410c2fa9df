//! Safetensors in and out of libtorch: memory-mapped reads, atomic writes. No pickle anywhere.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use memmap2::{Mmap, UncheckedAdvice};
use safetensors::tensor::{Dtype, Metadata, SafeTensors, TensorInfo, TensorView, View};
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

/// Name, dtype and shape of a tensor that [`write_safetensors_streamed`] will be given.
pub struct TensorSpec {
    pub name: String,
    pub kind: Kind,
    pub shape: Vec<i64>,
}

/// Writes a safetensors file whose tensors are produced one at a time, atomically like
/// [`write_safetensors`]: the header is laid out from `specs`, then `produce(i)` is called for each
/// spec in order and its bytes appended, so peak memory is one tensor rather than the whole model
/// (a converted 8B model would otherwise be held twice over). A produced tensor whose dtype or
/// shape differs from its spec is an error.
pub fn write_safetensors_streamed(
    path: &Path,
    specs: &[TensorSpec],
    metadata: Option<HashMap<String, String>>,
    mut produce: impl FnMut(usize) -> Result<Tensor>,
) -> Result<()> {
    let mut infos = Vec::with_capacity(specs.len());
    let mut offset = 0usize;
    for spec in specs {
        let dtype = dtype_of(spec.kind)
            .with_context(|| format!("tensor `{}`: dtype {:?} cannot be saved", spec.name, spec.kind))?;
        let shape: Vec<usize> = spec.shape.iter().map(|&d| d as usize).collect();
        let bytes = shape.iter().product::<usize>() * spec.kind.elt_size_in_bytes();
        infos.push((spec.name.clone(), TensorInfo { dtype, shape, data_offsets: (offset, offset + bytes) }));
        offset += bytes;
    }
    let header =
        Metadata::new(metadata, infos).with_context(|| format!("cannot lay out the tensors of {}", path.display()))?;
    // As the safetensors crate writes it: JSON padded with spaces to a multiple of 8 bytes.
    let mut header = serde_json::to_string(&header)?.into_bytes();
    header.resize(header.len().next_multiple_of(8), b' ');

    // write_atomically's closure speaks io::Error; the producer's own error is kept aside whole.
    let mut failure = None;
    let written = write_atomically(path, |file| {
        use std::io::Write;
        let mut out = std::io::BufWriter::with_capacity(1 << 22, file);
        out.write_all(&(header.len() as u64).to_le_bytes())?;
        out.write_all(&header)?;
        for (i, spec) in specs.iter().enumerate() {
            let host = produce(i).and_then(|t| {
                anyhow::ensure!(
                    t.kind() == spec.kind && t.size() == spec.shape,
                    "tensor `{}` is {:?} {:?}, declared {:?} {:?}",
                    spec.name,
                    t.kind(),
                    t.size(),
                    spec.kind,
                    spec.shape
                );
                to_host(&spec.name, &t)
            });
            match host {
                Ok(host) => out.write_all(&host.bytes)?,
                Err(e) => {
                    failure = Some(e);
                    return Err(std::io::Error::other("tensor production failed"));
                }
            }
        }
        out.flush()
    });
    match failure {
        Some(e) => Err(e.context(format!("cannot write {}", path.display()))),
        None => written,
    }
}
