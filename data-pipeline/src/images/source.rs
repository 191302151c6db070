//! Where `edkd data prepare --image-field NAME` finds an example's image.
//!
//! The field's value, by input format (a null or missing value means "no image"):
//!
//! | input   | value                                  | image                               |
//! |---------|----------------------------------------|-------------------------------------|
//! | JSONL   | `"pics/a.png"` (a string)              | the file, relative to the JSONL's folder unless absolute |
//! | JSONL   | `{"path": "pics/a.png"}`               | the same                            |
//! | JSONL   | `{"bytes": "iVBORw0..."}`              | the base64 (standard alphabet, padded) bytes; `bytes` wins over `path` |
//! | Parquet | `binary` / `large_binary` / `binary_view` | the cell's bytes                 |
//! | Parquet | `string`                               | a path, as in JSONL                 |
//! | Parquet | `struct<bytes: binary, path: string>`  | `bytes` if not null, else `path` (Hugging Face `datasets`' `Image` feature) |
//! | CSV     | any text                               | a path, as in JSONL                 |
//!
//! The bytes must be PNG or JPEG (sniffed from the bytes, never the file name); they are
//! decoded once to check them and then stored unchanged.

use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef, StructArray};
use arrow_schema::DataType;
use base64::Engine;

use super::{ImageFormat, decode};
use crate::error::ImageProblem;

/// What a JSONL image field may hold.
const JSON_EXPECTED: &str = "a path string, {\"path\": ...} or {\"bytes\": base64}";
/// What a Parquet image column may be.
const ARROW_EXPECTED: &str = "a binary, string or struct<bytes, path> column";

/// An example's image as its input names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    /// A file, already resolved against the input file's folder.
    Path(PathBuf),
    /// Bytes held in the input itself.
    Bytes(Vec<u8>),
}

/// Bytes that decode as a PNG or JPEG within the size limit, and what they hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedImage {
    pub bytes: Vec<u8>,
    pub format: ImageFormat,
    pub width: u32,
    pub height: u32,
}

impl ImageSource {
    /// A path as written in an input (`base`: the input file's folder).
    pub fn path(text: &str, base: &Path) -> Self {
        Self::Path(base.join(text))
    }

    /// The image of a JSONL field value; `None` for null.
    pub fn from_json(
        value: serde_json::Value,
        base: &Path,
    ) -> std::result::Result<Option<Self>, ImageProblem> {
        use serde_json::Value;
        let wrong = |found: &str| ImageProblem::Value {
            expected: JSON_EXPECTED,
            found: found.to_owned(),
        };
        match value {
            Value::Null => Ok(None),
            Value::String(s) => Ok(Some(Self::path(&s, base))),
            Value::Object(map) => match (map.get("bytes"), map.get("path")) {
                (Some(Value::String(b)), _) => base64::engine::general_purpose::STANDARD
                    .decode(b)
                    .map(|bytes| Some(Self::Bytes(bytes)))
                    .map_err(|e| ImageProblem::Base64 {
                        message: e.to_string(),
                    }),
                (None | Some(Value::Null), Some(Value::String(p))) => Ok(Some(Self::path(p, base))),
                (None | Some(Value::Null), None | Some(Value::Null)) => Ok(None),
                _ => Err(wrong("an object whose `bytes`/`path` are not strings")),
            },
            Value::Bool(_) => Err(wrong("a boolean")),
            Value::Number(_) => Err(wrong("a number")),
            Value::Array(_) => Err(wrong("an array")),
        }
    }

    /// The image of row `row` of a Parquet column; `None` for null.
    pub fn from_arrow(
        array: &ArrayRef,
        row: usize,
        base: &Path,
    ) -> std::result::Result<Option<Self>, ImageProblem> {
        if array.is_null(row) {
            return Ok(None);
        }
        let bytes = |b: &[u8]| Ok(Some(Self::Bytes(b.to_vec())));
        match array.data_type() {
            DataType::Binary => bytes(array.as_binary::<i32>().value(row)),
            DataType::LargeBinary => bytes(array.as_binary::<i64>().value(row)),
            DataType::BinaryView => bytes(array.as_binary_view().value(row)),
            DataType::Utf8 => Ok(Some(Self::path(array.as_string::<i32>().value(row), base))),
            DataType::LargeUtf8 => Ok(Some(Self::path(array.as_string::<i64>().value(row), base))),
            DataType::Utf8View => Ok(Some(Self::path(array.as_string_view().value(row), base))),
            DataType::Struct(_) => Self::from_struct(array.as_struct(), row, base),
            other => Err(ImageProblem::Value {
                expected: ARROW_EXPECTED,
                found: format!("a {other} column"),
            }),
        }
    }

    /// `struct<bytes, path>`: the bytes when not null, else the path.
    fn from_struct(
        array: &StructArray,
        row: usize,
        base: &Path,
    ) -> std::result::Result<Option<Self>, ImageProblem> {
        for name in ["bytes", "path"] {
            if let Some(child) = array.column_by_name(name)
                && !child.is_null(row)
            {
                return Self::from_arrow(child, row, base);
            }
        }
        if array.column_by_name("bytes").is_none() && array.column_by_name("path").is_none() {
            return Err(ImageProblem::Value {
                expected: ARROW_EXPECTED,
                found: format!("a {} column", array.data_type()),
            });
        }
        Ok(None)
    }

    /// Bytes the image takes (a file's size, read from its metadata).
    pub fn size(&self) -> std::result::Result<u64, ImageProblem> {
        match self {
            Self::Bytes(b) => Ok(b.len() as u64),
            Self::Path(p) => {
                std::fs::metadata(p)
                    .map(|m| m.len())
                    .map_err(|source| ImageProblem::File {
                        path: p.clone(),
                        source,
                    })
            }
        }
    }

    /// Errors unless the image is at most `limit` bytes.
    pub fn check_size(&self, limit: usize) -> std::result::Result<(), ImageProblem> {
        let bytes = self.size()?;
        if bytes > limit as u64 {
            return Err(ImageProblem::TooManyBytes { bytes, limit });
        }
        Ok(())
    }

    /// Reads the bytes and checks that they decode (see [`super::decode`]).
    pub fn load_checked(self) -> std::result::Result<CheckedImage, ImageProblem> {
        let bytes = match self {
            Self::Bytes(b) => b,
            Self::Path(p) => {
                std::fs::read(&p).map_err(|source| ImageProblem::File { path: p, source })?
            }
        };
        let (format, image) = decode(&bytes)?;
        Ok(CheckedImage {
            bytes,
            format,
            width: image.width(),
            height: image.height(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_values_follow_the_documented_convention() {
        let base = Path::new("/data/in");
        let at = |v| ImageSource::from_json(v, base).unwrap();
        assert_eq!(
            at(json!("pics/a.png")),
            Some(ImageSource::Path("/data/in/pics/a.png".into()))
        );
        assert_eq!(
            at(json!("/abs/b.png")),
            Some(ImageSource::Path("/abs/b.png".into()))
        );
        assert_eq!(
            at(json!({"path": "c.jpg"})),
            Some(ImageSource::Path("/data/in/c.jpg".into()))
        );
        assert_eq!(
            at(json!({"bytes": "AAEC/w==", "path": "ignored.png"})),
            Some(ImageSource::Bytes(vec![0, 1, 2, 255]))
        );
        assert_eq!(at(json!(null)), None);
        assert_eq!(at(json!({"bytes": null, "path": null})), None);
        let err = |v| ImageSource::from_json(v, base).unwrap_err().to_string();
        assert!(err(json!(3)).contains("found a number"));
        assert!(err(json!({"bytes": "not base64!"})).contains("not valid base64"));
    }
}
