//! The GGUF container (versions 2 and 3, little-endian): header, metadata, tensor directory.
//!
//! The file is memory-mapped; the header is parsed once with every read bounds-checked, and tensor
//! data is only sliced out of the map when a tensor is dequantized, so opening a multi-GB file is
//! cheap and a truncated one is reported before any output is written.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::dequant::{dequantize, GgmlType};
use super::GgufError;

const MAGIC: &[u8; 4] = b"GGUF";
/// ggml's default when `general.alignment` is absent.
const DEFAULT_ALIGNMENT: u64 = 32;
/// GGML_MAX_DIMS: a tensor with more dimensions is a corrupt directory entry.
const MAX_DIMS: u32 = 4;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
}

impl Value {
    /// The value as an integer, whatever integer width the writer chose.
    pub fn as_i64(&self) -> Option<i64> {
        Some(match *self {
            Self::U8(v) => v.into(),
            Self::I8(v) => v.into(),
            Self::U16(v) => v.into(),
            Self::I16(v) => v.into(),
            Self::U32(v) => v.into(),
            Self::I32(v) => v.into(),
            Self::U64(v) => i64::try_from(v).ok()?,
            Self::I64(v) => v,
            _ => return None,
        })
    }

    /// The value as f64. An f32 is widened through its shortest decimal form, so that an eps
    /// stored as f32(1e-5) comes back as 1e-5 (what the HF config said), not 9.999999747e-6.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::F32(v) => Some(v.to_string().parse().unwrap_or(v.into())),
            Self::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    fn type_name(&self) -> &'static str {
        match self {
            Self::U8(_) => "uint8",
            Self::I8(_) => "int8",
            Self::U16(_) => "uint16",
            Self::I16(_) => "int16",
            Self::U32(_) => "uint32",
            Self::I32(_) => "int32",
            Self::U64(_) => "uint64",
            Self::I64(_) => "int64",
            Self::F32(_) => "float32",
            Self::F64(_) => "float64",
            Self::Bool(_) => "bool",
            Self::String(_) => "string",
            Self::Array(_) => "array",
        }
    }
}

/// One entry of the tensor directory.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` is the contiguous (innermost) dimension.
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Absolute offset of the data in the file.
    offset: u64,
    bytes: u64,
}

impl TensorInfo {
    /// The shape as PyTorch / safetensors write it (outermost first).
    pub fn shape(&self) -> Vec<i64> {
        self.dims.iter().rev().map(|&d| d as i64).collect()
    }

    pub fn numel(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// An open GGUF file.
pub struct GgufFile {
    path: PathBuf,
    mmap: Mmap,
    pub version: u32,
    metadata: BTreeMap<String, Value>,
    tensors: Vec<TensorInfo>,
}

/// Bounds-checked little-endian reads over the header; `None` means the file ended.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: u64) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(usize::try_from(n).ok()?)?;
        let out = self.bytes.get(self.pos..end)?;
        self.pos = end;
        Some(out)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N as u64).map(|b| b.try_into().expect("took N bytes"))
    }

    fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Option<u64> {
        self.array().map(u64::from_le_bytes)
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }
}

/// Why a header read failed, before the key or tensor it belongs to is attached.
enum ReadFail {
    Truncated,
    Invalid(String),
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self, GgufError> {
        let io = |source| GgufError::Io { path: path.to_path_buf(), source };
        let file = File::open(path).map_err(io)?;
        // SAFETY: a read-only map that lives as long as `self`; a file rewritten under a running
        // import is outside what any reader can guard against.
        let mmap = unsafe { Mmap::map(&file) }.map_err(io)?;
        Self::parse(path.to_path_buf(), mmap)
    }

    fn parse(path: PathBuf, mmap: Mmap) -> Result<Self, GgufError> {
        let mut c = Cursor { bytes: &mmap, pos: 0 };
        let truncated = |what: String| GgufError::Truncated { path: path.clone(), what };
        match c.array::<4>() {
            Some(magic) if &magic == MAGIC => {}
            found => return Err(GgufError::BadMagic { path: path.clone(), found: found.map(|m| m.to_vec()) }),
        }
        let version = c.u32().ok_or_else(|| truncated("the version".into()))?;
        if version != 2 && version != 3 {
            return Err(GgufError::UnsupportedVersion { path: path.clone(), version });
        }
        let tensor_count = c.u64().ok_or_else(|| truncated("the tensor count".into()))?;
        let kv_count = c.u64().ok_or_else(|| truncated("the metadata count".into()))?;

        let mut metadata = BTreeMap::new();
        for i in 0..kv_count {
            let key = read_string(&mut c).map_err(|_| truncated(format!("metadata key #{i}")))?;
            let value = c.u32().ok_or(ReadFail::Truncated).and_then(|ty| read_value(&mut c, ty, 0)).map_err(
                |fail| match fail {
                    ReadFail::Truncated => truncated(format!("metadata value `{key}`")),
                    ReadFail::Invalid(reason) => GgufError::Invalid { path: path.clone(), key: key.clone(), reason },
                },
            )?;
            metadata.insert(key, value);
        }

        let mut infos = Vec::new();
        for i in 0..tensor_count {
            let name = read_string(&mut c).map_err(|_| truncated(format!("tensor directory entry #{i}")))?;
            let entry = |what: &str| truncated(format!("tensor directory entry `{name}` ({what})"));
            let n_dims = c.u32().ok_or_else(|| entry("dimension count"))?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                let reason = format!("has {n_dims} dimensions (1 to {MAX_DIMS} expected)");
                return Err(GgufError::BadTensor { path: path.clone(), tensor: name, reason });
            }
            let dims = (0..n_dims).map(|_| c.u64()).collect::<Option<Vec<u64>>>().ok_or_else(|| entry("dimensions"))?;
            let type_id = c.u32().ok_or_else(|| entry("type"))?;
            let offset = c.u64().ok_or_else(|| entry("offset"))?;
            infos.push((name, dims, type_id, offset));
        }

        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_i64() {
                Some(a) if a > 0 && (a & (a - 1)) == 0 => a as u64,
                _ => {
                    let reason = format!("must be a power of two, got {v:?}");
                    return Err(GgufError::Invalid { path, key: "general.alignment".into(), reason });
                }
            },
        };
        let data_start = (c.pos as u64).div_ceil(alignment) * alignment;
        let file_len = mmap.len() as u64;

        let mut tensors = Vec::with_capacity(infos.len());
        for (name, dims, type_id, offset) in infos {
            let ggml_type = GgmlType::from_id(type_id).map_err(|found| GgufError::UnsupportedTensorType {
                path: path.clone(),
                tensor: name.clone(),
                found,
            })?;
            let bad = |reason: String| GgufError::BadTensor { path: path.clone(), tensor: name.clone(), reason };
            let numel = dims.iter().try_fold(1u64, |n, &d| n.checked_mul(d)).ok_or_else(|| bad("too large".into()))?;
            if dims[0] % ggml_type.block_size() as u64 != 0 {
                return Err(bad(format!(
                    "its rows of {} elements are not whole {} blocks of {}",
                    dims[0],
                    ggml_type.name(),
                    ggml_type.block_size()
                )));
            }
            let bytes = ggml_type.bytes_for(numel).expect("rows are whole blocks");
            let start = data_start.checked_add(offset).ok_or_else(|| bad("offset overflows".into()))?;
            if start.checked_add(bytes).is_none_or(|end| end > file_len) {
                return Err(truncated(format!(
                    "data of tensor `{name}` ({bytes} bytes at offset {start}, file has {file_len})"
                )));
            }
            tensors.push(TensorInfo { name, dims, ggml_type, offset: start, bytes });
        }
        Ok(Self { path, mmap, version, metadata, tensors })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    pub fn metadata(&self) -> &BTreeMap<String, Value> {
        &self.metadata
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    fn invalid(&self, key: &str, reason: String) -> GgufError {
        GgufError::Invalid { path: self.path.clone(), key: key.to_string(), reason }
    }

    fn missing(&self, key: &str) -> GgufError {
        GgufError::MissingKey { path: self.path.clone(), key: key.to_string() }
    }

    fn wrong_type(&self, key: &str, want: &str, got: &Value) -> GgufError {
        self.invalid(key, format!("expected {want}, found {}", got.type_name()))
    }

    /// An integer value; `None` when absent, an error when of another type or negative.
    pub fn opt_usize(&self, key: &str) -> Result<Option<usize>, GgufError> {
        let Some(v) = self.get(key) else { return Ok(None) };
        match v.as_i64() {
            Some(i) => usize::try_from(i).map(Some).map_err(|_| self.invalid(key, format!("negative ({i})"))),
            None => Err(self.wrong_type(key, "an integer", v)),
        }
    }

    pub fn usize(&self, key: &str) -> Result<usize, GgufError> {
        self.opt_usize(key)?.ok_or_else(|| self.missing(key))
    }

    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>, GgufError> {
        let Some(v) = self.get(key) else { return Ok(None) };
        v.as_f64().map(Some).ok_or_else(|| self.wrong_type(key, "a number", v))
    }

    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>, GgufError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(self.wrong_type(key, "a bool", v)),
        }
    }

    pub fn opt_str(&self, key: &str) -> Result<Option<&str>, GgufError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_str().map(Some).ok_or_else(|| self.wrong_type(key, "a string", v)),
        }
    }

    pub fn str(&self, key: &str) -> Result<&str, GgufError> {
        self.opt_str(key)?.ok_or_else(|| self.missing(key))
    }

    /// An array of strings; `None` when absent.
    pub fn opt_str_array(&self, key: &str) -> Result<Option<Vec<&str>>, GgufError> {
        let Some(v) = self.get(key) else { return Ok(None) };
        let Value::Array(items) = v else { return Err(self.wrong_type(key, "an array of strings", v)) };
        items
            .iter()
            .map(|i| i.as_str().ok_or_else(|| self.wrong_type(key, "an array of strings", i)))
            .collect::<Result<_, _>>()
            .map(Some)
    }

    /// An array of integers; `None` when absent.
    pub fn opt_int_array(&self, key: &str) -> Result<Option<Vec<i64>>, GgufError> {
        let Some(v) = self.get(key) else { return Ok(None) };
        let Value::Array(items) = v else { return Err(self.wrong_type(key, "an array of integers", v)) };
        items
            .iter()
            .map(|i| i.as_i64().ok_or_else(|| self.wrong_type(key, "an array of integers", i)))
            .collect::<Result<_, _>>()
            .map(Some)
    }

    /// The raw (still quantized) bytes of a tensor.
    pub fn tensor_bytes(&self, info: &TensorInfo) -> &[u8] {
        &self.mmap[info.offset as usize..(info.offset + info.bytes) as usize]
    }

    /// The tensor's values as f32, in ggml order (row-major over the reversed dims).
    pub fn dequantize(&self, info: &TensorInfo) -> Vec<f32> {
        let mut out = vec![0f32; info.numel() as usize];
        dequantize(info.ggml_type, self.tensor_bytes(info), &mut out);
        out
    }
}

fn read_string(c: &mut Cursor<'_>) -> Result<String, ReadFail> {
    let len = c.u64().ok_or(ReadFail::Truncated)?;
    let bytes = c.take(len).ok_or(ReadFail::Truncated)?;
    String::from_utf8(bytes.to_vec()).map_err(|_| ReadFail::Invalid("a string is not valid UTF-8".into()))
}

fn read_value(c: &mut Cursor<'_>, ty: u32, depth: u32) -> Result<Value, ReadFail> {
    let t = ReadFail::Truncated;
    Ok(match ty {
        0 => Value::U8(c.array::<1>().ok_or(t)?[0]),
        1 => Value::I8(c.array::<1>().ok_or(t)?[0] as i8),
        2 => Value::U16(u16::from_le_bytes(c.array().ok_or(t)?)),
        3 => Value::I16(i16::from_le_bytes(c.array().ok_or(t)?)),
        4 => Value::U32(u32::from_le_bytes(c.array().ok_or(t)?)),
        5 => Value::I32(i32::from_le_bytes(c.array().ok_or(t)?)),
        6 => Value::F32(f32::from_le_bytes(c.array().ok_or(t)?)),
        7 => match c.array::<1>().ok_or(t)?[0] {
            0 => Value::Bool(false),
            1 => Value::Bool(true),
            b => return Err(ReadFail::Invalid(format!("bool byte is {b}"))),
        },
        8 => Value::String(read_string(c)?),
        9 => {
            if depth > 0 {
                return Err(ReadFail::Invalid("nested arrays are not supported".into()));
            }
            let item_type = c.u32().ok_or(ReadFail::Truncated)?;
            let count = c.u64().ok_or(ReadFail::Truncated)?;
            // Every item takes at least one byte, so a count beyond the rest of the file is a
            // truncated (or corrupt) array, not a reason to reserve that much memory.
            let mut items = Vec::with_capacity((count as usize).min(c.remaining()));
            for _ in 0..count {
                items.push(read_value(c, item_type, depth + 1)?);
            }
            Value::Array(items)
        }
        10 => Value::U64(c.u64().ok_or(t)?),
        11 => Value::I64(i64::from_le_bytes(c.array().ok_or(t)?)),
        12 => Value::F64(f64::from_le_bytes(c.array().ok_or(t)?)),
        other => return Err(ReadFail::Invalid(format!("unknown value type {other}"))),
    })
}
