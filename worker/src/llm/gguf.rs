//! GGUF v2/v3 files: the header, the metadata key-value pairs and the tensor directory, with
//! tensors dequantized to `f32` on request.
//!
//! The layout follows ggml's `gguf.c`: little-endian; strings are a `u64` length plus UTF-8
//! bytes; tensor dimensions list the fastest-varying first (`ne[0]` is the row length), so a
//! weight matrix with `ne = [in, out]` is the row-major `[out, in]` matrix Hugging Face stores.
//! The whole file is memory-mapped by reading it once; tensors are decoded lazily by name.

use super::quant::{self, GgmlType};
use anyhow::{Context, Result, bail, ensure};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;

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
    /// The value as an unsigned integer, whatever integer type the writer chose.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::I8(v) => Some(v.into()),
            Value::I16(v) => Some(v.into()),
            Value::I32(v) => Some(v.into()),
            Value::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

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

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(values) => Some(values),
            _ => None,
        }
    }
}

/// Where a tensor lives in the file and how it is encoded.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// Dimensions as GGUF lists them: fastest-varying first.
    pub dims: Vec<u64>,
    pub ggml_type: u32,
    /// Offset from the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    pub fn elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// The row-major shape (slowest-varying first), as PyTorch and Burn write it.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

/// A parsed GGUF file held in memory.
pub struct GgufFile {
    path: PathBuf,
    bytes: Vec<u8>,
    pub version: u32,
    pub metadata: HashMap<String, Value>,
    /// Tensors in file order.
    pub tensors: Vec<TensorInfo>,
    by_name: HashMap<String, usize>,
    data_start: usize,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len());
        let Some(end) = end else {
            bail!(
                "truncated: wanted {n} bytes at offset {} of {}",
                self.at,
                self.bytes.len()
            )
        };
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        Ok(self.take(N)?.try_into().expect("take returns N bytes"))
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn string(&mut self) -> Result<String> {
        let len = self.u64()?;
        let len = usize::try_from(len).context("string length overflows")?;
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).context("string is not UTF-8")
    }

    fn value(&mut self, value_type: u32, depth: usize) -> Result<Value> {
        Ok(match value_type {
            0 => Value::U8(self.array::<1>()?[0]),
            1 => Value::I8(self.array::<1>()?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array()?)),
            3 => Value::I16(i16::from_le_bytes(self.array()?)),
            4 => Value::U32(self.u32()?),
            5 => Value::I32(i32::from_le_bytes(self.array()?)),
            6 => Value::F32(f32::from_le_bytes(self.array()?)),
            7 => Value::Bool(self.array::<1>()?[0] != 0),
            8 => Value::String(self.string()?),
            9 => {
                ensure!(depth < 4, "arrays nested too deeply");
                let element_type = self.u32()?;
                let count = self.u64()?;
                // Each element takes at least one byte: a count beyond the file is corrupt.
                ensure!(
                    count <= (self.bytes.len() - self.at) as u64,
                    "array of {count} elements is longer than the file"
                );
                let mut values = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    values.push(self.value(element_type, depth + 1)?);
                }
                Value::Array(values)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(i64::from_le_bytes(self.array()?)),
            12 => Value::F64(f64::from_le_bytes(self.array()?)),
            other => bail!("unknown metadata value type {other}"),
        })
    }
}

impl GgufFile {
    /// Reads and parses `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(path, bytes)
            .with_context(|| format!("{}: not a readable GGUF file", path.display()))
    }

    fn parse(path: &Path, bytes: Vec<u8>) -> Result<Self> {
        let mut c = Cursor {
            bytes: &bytes,
            at: 0,
        };
        ensure!(c.take(4)? == MAGIC, "missing the GGUF magic");
        let version = c.u32()?;
        ensure!(
            (2..=3).contains(&version),
            "GGUF version {version} is not supported (2 and 3 are)"
        );
        let tensor_count = c.u64()?;
        let metadata_count = c.u64()?;
        let mut metadata = HashMap::new();
        for _ in 0..metadata_count {
            let key = c.string()?;
            let value_type = c.u32()?;
            let value = c
                .value(value_type, 0)
                .with_context(|| format!("metadata key {key}"))?;
            metadata.insert(key, value);
        }
        let mut tensors = Vec::new();
        for _ in 0..tensor_count {
            let name = c.string()?;
            let n_dims = c.u32()?;
            ensure!(n_dims <= 4, "tensor {name}: {n_dims} dimensions");
            let dims = (0..n_dims).map(|_| c.u64()).collect::<Result<Vec<_>>>()?;
            let ggml_type = c.u32()?;
            let offset = c.u64()?;
            tensors.push(TensorInfo {
                name,
                dims,
                ggml_type,
                offset,
            });
        }
        let alignment = metadata
            .get("general.alignment")
            .and_then(Value::as_u64)
            .unwrap_or(DEFAULT_ALIGNMENT)
            .max(1);
        let data_start = (c.at as u64).div_ceil(alignment) * alignment;
        let by_name = tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(Self {
            path: path.to_path_buf(),
            data_start: data_start as usize,
            bytes,
            version,
            metadata,
            tensors,
            by_name,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// A required metadata value, with an error naming the key and the file.
    pub fn require(&self, key: &str) -> Result<&Value> {
        self.get(key)
            .with_context(|| format!("{}: metadata key {key} is missing", self.path.display()))
    }

    pub fn require_u64(&self, key: &str) -> Result<u64> {
        self.require(key)?.as_u64().with_context(|| {
            format!(
                "{}: metadata key {key} is not an unsigned integer",
                self.path.display()
            )
        })
    }

    pub fn require_str(&self, key: &str) -> Result<&str> {
        self.require(key)?.as_str().with_context(|| {
            format!(
                "{}: metadata key {key} is not a string",
                self.path.display()
            )
        })
    }

    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }

    /// The tensor `name` as stored: its encoding, its bytes and its row-major shape.
    pub fn raw(&self, name: &str) -> Result<(GgmlType, &[u8], Vec<usize>)> {
        let info = self
            .tensor_info(name)
            .with_context(|| format!("{}: no tensor {name}", self.path.display()))?;
        let ggml_type = GgmlType::from_id(info.ggml_type)
            .with_context(|| format!("{}: tensor {name}", self.path.display()))?;
        let size = ggml_type.byte_size(info.elements() as usize)?;
        let start = self.data_start + info.offset as usize;
        let data = self.bytes.get(start..start + size).with_context(|| {
            format!(
                "{}: tensor {name}: its {size} bytes at offset {start} run past the end of the \
                 file ({} bytes)",
                self.path.display(),
                self.bytes.len()
            )
        })?;
        Ok((ggml_type, data, info.shape()))
    }

    /// The tensor `name` dequantized to `f32`, with its row-major shape.
    pub fn dequantize(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        let info = self
            .tensor_info(name)
            .with_context(|| format!("{}: no tensor {name}", self.path.display()))?;
        let decode = || -> Result<Vec<f32>> {
            let ggml_type = GgmlType::from_id(info.ggml_type)?;
            let elements = info.elements() as usize;
            let size = ggml_type.byte_size(elements)?;
            let start = self.data_start + info.offset as usize;
            let data = self.bytes.get(start..start + size).with_context(|| {
                format!(
                    "its {size} bytes at offset {start} run past the end of the file ({} bytes)",
                    self.bytes.len()
                )
            })?;
            quant::dequantize(ggml_type, data, elements)
        };
        let values = decode().with_context(|| {
            format!(
                "{}: tensor {name} (type {})",
                self.path.display(),
                quant::type_name(info.ggml_type)
            )
        })?;
        Ok((values, info.shape()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes a GGUF v3 file by hand: the parser must not depend on a writer of our own.
    fn tiny_file(alignment: Option<u32>) -> Vec<u8> {
        fn string(out: &mut Vec<u8>, s: &str) {
            out.extend((s.len() as u64).to_le_bytes());
            out.extend(s.as_bytes());
        }
        let mut out = Vec::new();
        out.extend(MAGIC);
        out.extend(3u32.to_le_bytes());
        out.extend(1u64.to_le_bytes()); // tensors
        out.extend((2u64 + u64::from(alignment.is_some())).to_le_bytes()); // metadata
        string(&mut out, "general.architecture");
        out.extend(8u32.to_le_bytes());
        string(&mut out, "llama");
        string(&mut out, "tokenizer.ggml.tokens");
        out.extend(9u32.to_le_bytes());
        out.extend(8u32.to_le_bytes());
        out.extend(2u64.to_le_bytes());
        string(&mut out, "a");
        string(&mut out, "b");
        if let Some(alignment) = alignment {
            string(&mut out, "general.alignment");
            out.extend(4u32.to_le_bytes());
            out.extend(alignment.to_le_bytes());
        }
        string(&mut out, "w");
        out.extend(2u32.to_le_bytes());
        out.extend(3u64.to_le_bytes()); // ne[0]: row length
        out.extend(2u64.to_le_bytes()); // ne[1]: rows
        out.extend(0u32.to_le_bytes()); // F32
        out.extend(0u64.to_le_bytes());
        let align = alignment.unwrap_or(32) as usize;
        while out.len() % align != 0 {
            out.push(0);
        }
        for v in [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0] {
            out.extend(v.to_le_bytes());
        }
        out
    }

    #[test]
    fn parses_metadata_and_tensors() {
        for alignment in [None, Some(64)] {
            let file = GgufFile::parse(Path::new("t.gguf"), tiny_file(alignment)).unwrap();
            assert_eq!(file.version, 3);
            assert_eq!(file.require_str("general.architecture").unwrap(), "llama");
            let tokens = file
                .get("tokenizer.ggml.tokens")
                .unwrap()
                .as_array()
                .unwrap();
            assert_eq!(tokens.len(), 2);
            let (values, shape) = file.dequantize("w").unwrap();
            assert_eq!(shape, vec![2, 3]);
            assert_eq!(values, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        }
    }

    #[test]
    fn errors_name_the_problem() {
        let file = GgufFile::parse(Path::new("t.gguf"), tiny_file(None)).unwrap();
        let missing = file.dequantize("nope").unwrap_err().to_string();
        assert!(missing.contains("no tensor nope"), "{missing}");
        let key = file
            .require_u64("llama.block_count")
            .unwrap_err()
            .to_string();
        assert!(key.contains("llama.block_count"), "{key}");

        let mut bytes = tiny_file(None);
        bytes.truncate(bytes.len() - 4);
        let file = GgufFile::parse(Path::new("t.gguf"), bytes).unwrap();
        let short = format!("{:#}", file.dequantize("w").unwrap_err());
        assert!(
            short.contains("tensor w") && short.contains("past the end"),
            "{short}"
        );

        let mut bytes = tiny_file(None);
        bytes[0] = b'X';
        let bad = GgufFile::parse(Path::new("t.gguf"), bytes)
            .unwrap_err()
            .to_string();
        assert!(bad.contains("magic"), "{bad}");
    }
}
