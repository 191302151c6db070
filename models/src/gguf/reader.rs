//! The GGUF container (versions 2 and 3): header, typed metadata, tensor infos and the
//! aligned data section, read from a memory map with every length and offset bounds-checked.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::quant::GgmlType;
use crate::error::{Error, Result};

/// `GGUF` read as a little-endian u32.
const MAGIC: u32 = 0x4655_4747;
/// Used when `general.alignment` is absent.
const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml tensors have at most this many dimensions (`GGML_MAX_DIMS`).
const MAX_DIMS: u32 = 4;

/// One metadata value.
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
    /// The value as an integer, whatever its integer width (bools and floats are not integers).
    pub fn as_i64(&self) -> Option<i64> {
        Some(match *self {
            Value::U8(v) => v.into(),
            Value::I8(v) => v.into(),
            Value::U16(v) => v.into(),
            Value::I16(v) => v.into(),
            Value::U32(v) => v.into(),
            Value::I32(v) => v.into(),
            Value::U64(v) => i64::try_from(v).ok()?,
            Value::I64(v) => v,
            _ => return None,
        })
    }

    /// The value as a float (integers convert too).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(v) => Some(v),
            _ => None,
        }
    }

    fn type_name(&self) -> &'static str {
        match self {
            Value::U8(_) => "u8",
            Value::I8(_) => "i8",
            Value::U16(_) => "u16",
            Value::I16(_) => "i16",
            Value::U32(_) => "u32",
            Value::I32(_) => "i32",
            Value::U64(_) => "u64",
            Value::I64(_) => "i64",
            Value::F32(_) => "f32",
            Value::F64(_) => "f64",
            Value::Bool(_) => "bool",
            Value::String(_) => "string",
            Value::Array(_) => "array",
        }
    }
}

/// Where one tensor's bytes are and how to read them.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` is the innermost (contiguous) dimension.
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// From the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    /// The shape in row-major (PyTorch) order.
    pub fn shape(&self) -> Vec<i64> {
        self.dims.iter().rev().map(|&d| d as i64).collect()
    }

    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// An opened GGUF file: metadata and tensor infos parsed, tensor bytes left in the map.
pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    data_start: usize,
    mmap: memmap2::Mmap,
}

/// A bounds-checked little-endian cursor; errors say what was being read and where.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn err(&self, msg: String) -> Error {
        Error::Gguf {
            path: self.path.to_path_buf(),
            msg,
        }
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else {
            return Err(self.err(format!(
                "truncated: {what} needs {n} bytes at offset {} but the file has {}",
                self.pos,
                self.bytes.len()
            )));
        };
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        Ok(self.take(N, what)?.try_into().expect("took N bytes"))
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A count that must fit in what is left of the file at `min_size` bytes per item.
    fn count(&mut self, min_size: usize, what: &str) -> Result<usize> {
        let n = self.u64(what)?;
        let left = (self.bytes.len() - self.pos) as u64;
        if n.saturating_mul(min_size as u64) > left {
            return Err(self.err(format!(
                "truncated or corrupt: {what} is {n}, but only {left} bytes follow at offset {}",
                self.pos
            )));
        }
        Ok(n as usize)
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.count(1, what)?;
        let start = self.pos;
        let bytes = self.take(n, what)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| self.err(format!("{what} at offset {start} is not valid UTF-8")))
    }

    fn value(&mut self, ty: u32, key: &str) -> Result<Value> {
        Ok(match ty {
            0 => Value::U8(self.array::<1>(key)?[0]),
            1 => Value::I8(self.array::<1>(key)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array(key)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(key)?)),
            4 => Value::U32(self.u32(key)?),
            5 => Value::I32(i32::from_le_bytes(self.array(key)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(key)?)),
            7 => match self.array::<1>(key)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(self.err(format!("`{key}`: bool byte is {b}, not 0 or 1"))),
            },
            8 => Value::String(self.string(key)?),
            9 => {
                let elem = self.u32(key)?;
                if elem == 9 {
                    // Nested arrays are legal but no model key uses them; bound the recursion.
                    return Err(self.err(format!("`{key}`: nested arrays are not supported")));
                }
                let n = self.count(value_min_size(elem), key)?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(elem, key)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64(key)?),
            11 => Value::I64(i64::from_le_bytes(self.array(key)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(key)?)),
            other => {
                return Err(self.err(format!(
                    "`{key}`: unknown metadata value type {other} at offset {}",
                    self.pos - 4
                )));
            }
        })
    }
}

/// The smallest encoding of a value of type `ty` (for sanity-checking array counts).
fn value_min_size(ty: u32) -> usize {
    match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 | 10..=12 => 8,
        _ => 1,
    }
}

impl GgufFile {
    /// Opens and parses `path`; the tensor data stays mapped, not read.
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(Error::io(path))?;
        // SAFETY: the map is read-only; a file rewritten underneath a running load is outside
        // what we can defend against (as for safetensors).
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(Error::io(path))?;
        let (version, metadata, tensors, data_start) = parse(&mmap, path)?;
        Ok(Self {
            path: path.to_path_buf(),
            version,
            metadata,
            tensors,
            data_start,
            mmap,
        })
    }

    fn err(&self, msg: String) -> Error {
        Error::Gguf {
            path: self.path.clone(),
            msg,
        }
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    fn typed<'a, T>(
        &'a self,
        key: &str,
        want: &str,
        f: impl FnOnce(&'a Value) -> Option<T>,
    ) -> Result<Option<T>> {
        match self.metadata.get(key) {
            None => Ok(None),
            Some(v) => f(v).map(Some).ok_or_else(|| {
                self.err(format!(
                    "metadata `{key}` is a {}, expected {want}",
                    v.type_name()
                ))
            }),
        }
    }

    pub fn get_i64(&self, key: &str) -> Result<Option<i64>> {
        self.typed(key, "an integer", Value::as_i64)
    }

    pub fn get_f64(&self, key: &str) -> Result<Option<f64>> {
        self.typed(key, "a number", Value::as_f64)
    }

    pub fn get_str(&self, key: &str) -> Result<Option<&str>> {
        self.typed(key, "a string", Value::as_str)
    }

    pub fn get_bool(&self, key: &str) -> Result<Option<bool>> {
        self.typed(key, "a bool", Value::as_bool)
    }

    pub fn get_array(&self, key: &str) -> Result<Option<&[Value]>> {
        self.typed(key, "an array", Value::as_array)
    }

    /// A required integer key.
    pub fn require_i64(&self, key: &str) -> Result<i64> {
        self.get_i64(key)?
            .ok_or_else(|| self.err(format!("missing metadata `{key}`")))
    }

    /// An array of strings, each element checked.
    pub fn get_strings(&self, key: &str) -> Result<Option<Vec<&str>>> {
        self.get_array_of(key, "a string", |v| v.as_str())
    }

    /// An array of numbers as f64 (integer or float elements).
    pub fn get_numbers(&self, key: &str) -> Result<Option<Vec<f64>>> {
        self.get_array_of(key, "a number", |v| v.as_f64())
    }

    /// An array whose every element `convert` accepts; the first one it refuses is named.
    fn get_array_of<'a, T>(
        &'a self,
        key: &str,
        what: &str,
        convert: impl Fn(&'a Value) -> Option<T>,
    ) -> Result<Option<Vec<T>>> {
        let Some(items) = self.get_array(key)? else {
            return Ok(None);
        };
        items
            .iter()
            .enumerate()
            .map(|(i, v)| convert(v).ok_or_else(|| self.err(format!("`{key}`[{i}] is not {what}"))))
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    /// How many tensors of each type, most common first: `210 Q4_1, 61 F32, 1 Q8_0`.
    pub fn type_summary(&self) -> String {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for t in &self.tensors {
            *counts.entry(t.ggml_type.name()).or_default() += 1;
        }
        let mut counts: Vec<(String, usize)> = counts.into_iter().collect();
        counts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        counts
            .iter()
            .map(|(name, n)| format!("{n} {name}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The raw bytes of a tensor (bounds were checked when the file was opened).
    pub fn tensor_bytes(&self, t: &TensorInfo) -> Result<&[u8]> {
        let len = t.ggml_type.byte_size(t.n_elements()).ok_or_else(|| {
            self.err(format!(
                "tensor `{}`: {} elements do not fill whole {} blocks",
                t.name,
                t.n_elements(),
                t.ggml_type
            ))
        })?;
        let start = self.data_start + t.offset as usize;
        Ok(&self.mmap[start..start + len as usize])
    }
}

type Parsed = (u32, BTreeMap<String, Value>, Vec<TensorInfo>, usize);

fn parse(bytes: &[u8], path: &Path) -> Result<Parsed> {
    let mut c = Cursor {
        bytes,
        pos: 0,
        path,
    };
    let magic = c.u32("the magic number")?;
    if magic != MAGIC {
        return Err(c.err(format!(
            "not a GGUF file: starts with {:?}, expected \"GGUF\"",
            String::from_utf8_lossy(&magic.to_le_bytes())
        )));
    }
    let version = c.u32("the version")?;
    match version {
        2 | 3 => {}
        1 => return Err(c.err("GGUF version 1 is not supported (2 and 3 are)".into())),
        v if v.swap_bytes() <= 3 => {
            return Err(c.err("big-endian GGUF files are not supported".into()));
        }
        v => return Err(c.err(format!("unknown GGUF version {v} (2 and 3 are supported)"))),
    }
    // A tensor info takes at least 8 (name) + 4 + 4 + 8 bytes; a key/value pair 8 + 4 + 1.
    let n_tensors = c.count(24, "the tensor count")?;
    let n_kv = c.count(13, "the metadata count")?;
    let mut metadata = BTreeMap::new();
    for _ in 0..n_kv {
        let key = c.string("a metadata key")?;
        let ty = c.u32(&key)?;
        let value = c.value(ty, &key)?;
        if metadata.insert(key.clone(), value).is_some() {
            return Err(c.err(format!("metadata key `{key}` appears twice")));
        }
    }
    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(v) => match v.as_i64() {
            Some(a) if a > 0 && (a as u64).is_power_of_two() => a as u64,
            _ => {
                return Err(c.err(format!(
                    "`general.alignment` is {v:?}; it must be a positive power of two"
                )));
            }
        },
    };
    let mut tensors = Vec::with_capacity(n_tensors);
    for _ in 0..n_tensors {
        let name = c.string("a tensor name")?;
        let n_dims = c.u32(&name)?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(c.err(format!(
                "tensor `{name}` has {n_dims} dimensions (1 to {MAX_DIMS} allowed)"
            )));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(c.u64(&name)?);
        }
        let ggml_type = GgmlType(c.u32(&name)?);
        let offset = c.u64(&name)?;
        if offset % alignment != 0 {
            return Err(c.err(format!(
                "tensor `{name}`: data offset {offset} is not a multiple of the alignment {alignment}"
            )));
        }
        tensors.push(TensorInfo {
            name,
            dims,
            ggml_type,
            offset,
        });
    }
    let data_start = (c.pos as u64).div_ceil(alignment) * alignment;
    let file_len = bytes.len() as u64;
    for t in &tensors {
        let n = t
            .dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| c.err(format!("tensor `{}`: dimensions overflow", t.name)))?;
        // Unknown types are reported when the tensor is read; their size is unknown here.
        let Some(len) = t.ggml_type.byte_size(n) else {
            if t.ggml_type.layout().is_some() {
                return Err(c.err(format!(
                    "tensor `{}`: {n} elements do not fill whole {} blocks",
                    t.name, t.ggml_type
                )));
            }
            continue;
        };
        let end = data_start
            .checked_add(t.offset)
            .and_then(|s| s.checked_add(len));
        match end {
            Some(end) if end <= file_len => {}
            _ => {
                return Err(c.err(format!(
                    "truncated: tensor `{}` needs bytes {}..{} but the file has {file_len}",
                    t.name,
                    data_start + t.offset,
                    data_start.saturating_add(t.offset).saturating_add(len)
                )));
            }
        }
    }
    Ok((version, metadata, tensors, data_start as usize))
}
