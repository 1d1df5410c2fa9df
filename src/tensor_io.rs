//! Safetensors in and out of libtorch: memory-mapped reads, atomic writes. No pickle anywhere.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use memmap2::{Mmap, UncheckedAdvice};
use safetensors::tensor::{Dtype, Metadata, SafeTensors, TensorInfo, TensorView};
use sha2::{Digest, Sha256};
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

/// Bytes of a tensor copied to the host per write: what a save holds beyond the state itself.
pub const CHUNK_BYTES: usize = 16 << 20;

/// The buffer between the writer and the file.
pub const WRITE_BUFFER_BYTES: usize = 4 << 20;

/// Writes `t`'s data (any device) as raw little-endian bytes, [`CHUNK_BYTES`] at a time through
/// `buffer`: a tensor is never copied to the host whole.
fn write_tensor_data(out: &mut impl std::io::Write, t: &Tensor, buffer: &mut Vec<u8>) -> Result<()> {
    let flat = t.detach().contiguous().reshape([-1]);
    let element = t.kind().elt_size_in_bytes();
    let per_chunk = (CHUNK_BYTES / element).max(1) as i64;
    let numel = flat.numel() as i64;
    let mut at = 0;
    while at < numel {
        let n = per_chunk.min(numel - at);
        let bytes = n as usize * element;
        buffer.resize(bytes.max(buffer.len()), 0);
        flat.narrow(0, at, n).f_copy_data_u8(&mut buffer[..bytes], n as usize)?;
        out.write_all(&buffer[..bytes])?;
        at += n;
    }
    Ok(())
}

/// A writer that hashes what passes through it, so a file's sha256 costs no second read.
struct Hashing<W> {
    inner: W,
    hasher: Sha256,
}

impl<W: std::io::Write> std::io::Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Lower-case hex of `bytes` (how sha256 digests are written).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes named tensors (any device) to `path` atomically (temp file, fsync, rename): a reader sees
/// the old file or the whole new one, never half of it. Streamed as [`write_safetensors_streamed`],
/// in the order the safetensors crate lays tensors out (dtype, then name). Returns the file's sha256.
pub fn write_safetensors(
    path: &Path,
    tensors: &[(&str, &Tensor)],
    metadata: Option<HashMap<String, String>>,
) -> Result<String> {
    let mut ordered: Vec<&(&str, &Tensor)> = tensors.iter().collect();
    let dtype = |t: &Tensor| dtype_of(t.kind()).unwrap_or(Dtype::U8);
    ordered.sort_by(|(ln, lt), (rn, rt)| dtype(rt).cmp(&dtype(lt)).then(ln.cmp(rn)));
    let specs: Vec<TensorSpec> = ordered
        .iter()
        .map(|(name, t)| TensorSpec { name: name.to_string(), kind: t.kind(), shape: t.size() })
        .collect();
    write_safetensors_streamed(path, &specs, metadata, |i| Ok(ordered[i].1.shallow_clone()))
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
/// shape differs from its spec is an error. Each tensor is copied to the host [`CHUNK_BYTES`] at a
/// time and hashed as it is written; returns the file's sha256.
pub fn write_safetensors_streamed(
    path: &Path,
    specs: &[TensorSpec],
    metadata: Option<HashMap<String, String>>,
    mut produce: impl FnMut(usize) -> Result<Tensor>,
) -> Result<String> {
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
    let mut digest = String::new();
    let written = write_atomically(path, |file| {
        use std::io::Write;
        let mut out =
            Hashing { inner: std::io::BufWriter::with_capacity(WRITE_BUFFER_BYTES, file), hasher: Sha256::new() };
        out.write_all(&(header.len() as u64).to_le_bytes())?;
        out.write_all(&header)?;
        let mut buffer = Vec::new();
        for (i, spec) in specs.iter().enumerate() {
            let data = produce(i).and_then(|t| {
                anyhow::ensure!(
                    t.kind() == spec.kind && t.size() == spec.shape,
                    "tensor `{}` is {:?} {:?}, declared {:?} {:?}",
                    spec.name,
                    t.kind(),
                    t.size(),
                    spec.kind,
                    spec.shape
                );
                write_tensor_data(&mut out, &t, &mut buffer).with_context(|| format!("tensor `{}`", spec.name))
            });
            if let Err(e) = data {
                failure = Some(e);
                return Err(std::io::Error::other("tensor production failed"));
            }
        }
        out.flush()?;
        digest = hex(&out.hasher.finalize());
        Ok(())
    });
    match failure {
        Some(e) => Err(e.context(format!("cannot write {}", path.display()))),
        None => written.map(|()| digest),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the safetensors crate itself writes, as the reference for the streamed writer.
    struct Reference(Dtype, Vec<usize>, Vec<u8>);

    impl safetensors::View for &Reference {
        fn dtype(&self) -> Dtype {
            self.0
        }
        fn shape(&self) -> &[usize] {
            &self.1
        }
        fn data(&self) -> std::borrow::Cow<'_, [u8]> {
            (&self.2[..]).into()
        }
        fn data_len(&self) -> usize {
            self.2.len()
        }
    }

    #[test]
    fn the_streamed_writer_writes_the_safetensors_crates_bytes_and_their_sha256() {
        // Mixed dtypes (the crate orders by dtype, then name), a non-contiguous view, a tensor
        // larger than one chunk, an empty one.
        let big = (CHUNK_BYTES / 4 + 3) as i64;
        let tensors = [
            ("b", Tensor::randn([3, 5], (Kind::Float, tch::Device::Cpu)).transpose(0, 1)),
            ("a", Tensor::arange(7, (Kind::Int64, tch::Device::Cpu))),
            ("c", Tensor::randn([big], (Kind::Float, tch::Device::Cpu))),
            ("d", Tensor::randn([4], (Kind::BFloat16, tch::Device::Cpu))),
            ("e", Tensor::zeros([0, 2], (Kind::Float, tch::Device::Cpu))),
        ];
        let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (*n, t)).collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.safetensors");
        let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
        let sha = write_safetensors(&path, &refs, Some(metadata.clone())).unwrap();

        let reference: Vec<(&str, Reference)> = tensors
            .iter()
            .map(|(n, t)| {
                let t = t.contiguous();
                let mut bytes = vec![0u8; t.numel() * t.kind().elt_size_in_bytes()];
                t.copy_data_u8(&mut bytes, t.numel());
                let shape = t.size().iter().map(|&d| d as usize).collect();
                (*n, Reference(dtype_of(t.kind()).unwrap(), shape, bytes))
            })
            .collect();
        let views: Vec<(&str, &Reference)> = reference.iter().map(|(n, r)| (*n, r)).collect();
        let expected = safetensors::tensor::serialize(views, Some(metadata)).unwrap();
        let written = std::fs::read(&path).unwrap();
        assert!(written == expected, "the streamed file differs from safetensors::serialize's");
        assert_eq!(sha, hex(&Sha256::digest(&expected)));
    }
}
