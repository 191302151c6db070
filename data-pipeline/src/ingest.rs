//! Reading input/target pairs from JSONL, Parquet and CSV files, with field names or
//! `{field}` templates. Every row carries its file and line so errors can point at it.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef};
use arrow_schema::DataType;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::error::{Error, Result};

/// Rows per Parquet record batch while ingesting.
const PARQUET_BATCH_ROWS: usize = 4096;
/// Default cap on one record's bytes (a JSONL or CSV line, or a Parquet row's used cells):
/// far above any real example, far below what would exhaust a machine's memory.
pub const DEFAULT_MAX_RECORD_BYTES: usize = 64 << 20;
/// A line buffer that grew past this is freed after its line, not kept for the next one.
const LINE_BUFFER_KEEP: usize = 1 << 20;
/// The UTF-8 byte order mark, skipped at the start of a JSONL or CSV file.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// How a text (input or target) is built from a row: one field, or a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TextSpec {
    Field(String),
    /// Literal text with `{field}` placeholders; `{{` and `}}` are literal braces.
    Template(Vec<TemplatePart>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplatePart {
    Literal(String),
    Field(String),
}

impl TextSpec {
    /// Parses a template string such as `"Question: {question}\nContext: {context}"`.
    pub fn template(text: &str) -> Result<Self> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    literal.push('}');
                }
                '{' => {
                    let name: String = chars.by_ref().take_while(|&c| c != '}').collect();
                    if name.is_empty() {
                        return Err(Error::Config {
                            message: format!(
                                "template `{text}` has an empty or unclosed placeholder"
                            ),
                        });
                    }
                    if !literal.is_empty() {
                        parts.push(TemplatePart::Literal(std::mem::take(&mut literal)));
                    }
                    parts.push(TemplatePart::Field(name));
                }
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            parts.push(TemplatePart::Literal(literal));
        }
        Ok(TextSpec::Template(parts))
    }

    /// Field names this spec reads.
    pub fn fields(&self) -> Vec<&str> {
        match self {
            TextSpec::Field(f) => vec![f.as_str()],
            TextSpec::Template(parts) => parts
                .iter()
                .filter_map(|p| match p {
                    TemplatePart::Field(f) => Some(f.as_str()),
                    TemplatePart::Literal(_) => None,
                })
                .collect(),
        }
    }
}

/// Which fields make an example.
#[derive(Debug, Clone)]
pub struct FieldMap {
    pub input: TextSpec,
    pub target: TextSpec,
    /// Field holding a unique example id; rows without it get `<file name>:<line>`.
    pub id_field: String,
    /// Field holding the task name; rows without it get `default_task`.
    pub task_field: String,
    pub default_task: String,
}

impl Default for FieldMap {
    /// The field names `edkd data synth` writes and `edkd data prepare` expects by default:
    /// `input`, `target`, `id`, `task` (missing task: `default`).
    fn default() -> Self {
        Self {
            input: TextSpec::Field("input".into()),
            target: TextSpec::Field("target".into()),
            id_field: "id".into(),
            task_field: "task".into(),
            default_task: "default".into(),
        }
    }
}

impl FieldMap {
    /// All field names, deduplicated, in a fixed order: id, task, then the text fields.
    fn needed(&self) -> Vec<String> {
        let mut names = vec![self.id_field.clone(), self.task_field.clone()];
        for f in self.input.fields().into_iter().chain(self.target.fields()) {
            if !names.iter().any(|n| n == f) {
                names.push(f.to_owned());
            }
        }
        names
    }
}

/// One example before tokenization.
#[derive(Debug, Clone)]
pub struct RawRecord {
    pub file: Arc<Path>,
    /// 1-based line (JSONL, CSV) or row (Parquet) number.
    pub line: usize,
    pub id: String,
    pub task: String,
    pub input: String,
    pub target: String,
}

/// Reads one input file and calls `sink` with each record in file order. A record over
/// `max_record_bytes` is an error naming its line, found before it is held in memory
/// (JSONL, CSV) or as soon as its row is decoded (Parquet).
pub fn read_file(
    path: &Path,
    fields: &FieldMap,
    max_record_bytes: usize,
    sink: &mut dyn FnMut(RawRecord) -> Result<()>,
) -> Result<()> {
    let needed = fields.needed();
    let file: Arc<Path> = Arc::from(path);
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut emit = |line: usize, values: Vec<Option<String>>| -> Result<()> {
        let record = build_record(&file, &file_name, line, &needed, values, fields)?;
        sink(record)
    };
    match extension(path).as_deref() {
        Some("jsonl" | "json" | "ndjson") => read_jsonl(path, &needed, max_record_bytes, &mut emit),
        Some("parquet" | "pq") => read_parquet(path, &needed, max_record_bytes, &mut emit),
        Some("csv") => read_csv(path, &needed, max_record_bytes, &mut emit),
        _ => Err(Error::UnknownFormat {
            path: path.to_owned(),
        }),
    }
}

fn extension(path: &Path) -> Option<String> {
    path.extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
}

/// Expands files and glob patterns (each pattern's matches sorted) in the order given.
pub fn expand_inputs(patterns: &[String]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for pattern in patterns {
        let path = Path::new(pattern);
        if path.exists() {
            files.push(path.to_owned());
            continue;
        }
        let mut matched: Vec<PathBuf> = glob::glob(pattern)
            .map_err(|e| Error::Config {
                message: format!("bad glob `{pattern}`: {e}"),
            })?
            .filter_map(|p| p.ok())
            .filter(|p| p.is_file())
            .collect();
        if matched.is_empty() {
            return Err(Error::NoInput {
                pattern: pattern.clone(),
            });
        }
        matched.sort();
        files.extend(matched);
    }
    Ok(files)
}

fn build_record(
    file: &Arc<Path>,
    file_name: &str,
    line: usize,
    needed: &[String],
    mut values: Vec<Option<String>>,
    fields: &FieldMap,
) -> Result<RawRecord> {
    let index = |name: &str| needed.iter().position(|n| n == name);
    let missing = |field: &str| Error::MissingField {
        path: file.to_path_buf(),
        line,
        field: field.to_owned(),
    };
    // Fields read more than once are copied; the others (the long texts, usually) are moved.
    let uses = |name: &str| {
        [&fields.input, &fields.target]
            .iter()
            .map(|spec| spec.fields().iter().filter(|&&f| f == name).count())
            .sum::<usize>()
            + usize::from(fields.id_field == name)
            + usize::from(fields.task_field == name)
    };
    let id = index(&fields.id_field)
        .and_then(|i| values[i].clone())
        .unwrap_or_else(|| format!("{file_name}:{line}"));
    let task = index(&fields.task_field)
        .and_then(|i| values[i].clone())
        .unwrap_or_else(|| fields.default_task.clone());
    let mut render = |spec: &TextSpec| -> Result<String> {
        match spec {
            TextSpec::Field(f) => {
                let slot = index(f).map(|i| &mut values[i]);
                let slot = slot.ok_or_else(|| missing(f))?;
                let value = if uses(f) == 1 {
                    slot.take()
                } else {
                    slot.clone()
                };
                value.ok_or_else(|| missing(f))
            }
            TextSpec::Template(parts) => {
                let mut out = String::new();
                for part in parts {
                    match part {
                        TemplatePart::Literal(s) => out.push_str(s),
                        TemplatePart::Field(f) => {
                            let value = index(f).and_then(|i| values[i].as_deref());
                            out.push_str(value.ok_or_else(|| missing(f))?);
                        }
                    }
                }
                Ok(out)
            }
        }
    };
    let input = render(&fields.input)?;
    let target = render(&fields.target)?;
    Ok(RawRecord {
        file: file.clone(),
        line,
        id,
        task,
        input,
        target,
    })
}

/// Opens `path` for reading with a UTF-8 byte order mark at its start skipped.
fn open_text(path: &Path) -> Result<BufReader<File>> {
    let mut reader = BufReader::new(File::open(path).map_err(Error::io(path))?);
    let head = reader.fill_buf().map_err(Error::io(path))?;
    if head.starts_with(BOM) {
        reader.consume(BOM.len());
    }
    Ok(reader)
}

fn read_jsonl(
    path: &Path,
    needed: &[String],
    max_record_bytes: usize,
    emit: &mut dyn FnMut(usize, Vec<Option<String>>) -> Result<()>,
) -> Result<()> {
    let mut reader = open_text(path)?;
    let mut buf = Vec::new();
    let mut line_no = 0;
    loop {
        buf.clear();
        // At most one byte past the limit is read, so an overlong line never sits in memory.
        let n = (&mut reader)
            .take(max_record_bytes as u64 + 1)
            .read_until(b'\n', &mut buf)
            .map_err(Error::io(path))?;
        if n == 0 {
            break;
        }
        line_no += 1;
        if buf.last() == Some(&b'\n') {
            buf.pop();
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
        }
        if buf.len() > max_record_bytes {
            return Err(Error::RecordTooLarge {
                path: path.to_owned(),
                line: line_no,
                limit: max_record_bytes,
            });
        }
        let line = std::str::from_utf8(&buf).map_err(|e| Error::InvalidUtf8 {
            path: path.to_owned(),
            line: line_no,
            detail: format!("after byte {} of the line", e.valid_up_to()),
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let values = parse_json_line(path, line_no, line, needed)?;
        if buf.capacity() > LINE_BUFFER_KEEP {
            buf = Vec::new();
        }
        emit(line_no, values)?;
    }
    Ok(())
}

/// The `needed` fields of one JSON object line, as text.
fn parse_json_line(
    path: &Path,
    line_no: usize,
    line: &str,
    needed: &[String],
) -> Result<Vec<Option<String>>> {
    let value: serde_json::Value =
        serde_json::from_str(line).map_err(|e| Error::MalformedJson {
            path: path.to_owned(),
            line: line_no,
            message: e.to_string(),
        })?;
    let serde_json::Value::Object(mut map) = value else {
        return Err(Error::MalformedJson {
            path: path.to_owned(),
            line: line_no,
            message: "expected a JSON object".into(),
        });
    };
    let mut values = Vec::with_capacity(needed.len());
    for name in needed {
        let v = match map.remove(name) {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) => Some(s),
            Some(serde_json::Value::Number(n)) => Some(n.to_string()),
            Some(serde_json::Value::Bool(b)) => Some(b.to_string()),
            Some(_) => {
                return Err(Error::FieldType {
                    path: path.to_owned(),
                    line: line_no,
                    field: name.clone(),
                });
            }
        };
        values.push(v);
    }
    Ok(values)
}

fn read_csv(
    path: &Path,
    needed: &[String],
    max_record_bytes: usize,
    emit: &mut dyn FnMut(usize, Vec<Option<String>>) -> Result<()>,
) -> Result<()> {
    let too_large = |line: usize| Error::RecordTooLarge {
        path: path.to_owned(),
        line,
        limit: max_record_bytes,
    };
    let csv_err = |fallback_line: usize, e: csv::Error| {
        let line = e.position().map_or(fallback_line, |p| p.line() as usize);
        if let csv::ErrorKind::Io(io) = e.kind()
            && let Some(long) = io.get_ref().and_then(|e| e.downcast_ref::<LongLine>())
        {
            return too_large(long.line);
        }
        if let csv::ErrorKind::Utf8 { err, .. } = e.kind() {
            return Error::InvalidUtf8 {
                path: path.to_owned(),
                line,
                detail: format!("field {} after byte {}", err.field() + 1, err.valid_up_to()),
            };
        }
        Error::Csv {
            path: path.to_owned(),
            line,
            message: e.to_string(),
        }
    };
    let source = LineLimit {
        inner: open_text(path)?,
        line: 1,
        since_newline: 0,
        limit: max_record_bytes,
    };
    let mut reader = csv::Reader::from_reader(source);
    let headers = reader.headers().map_err(|e| csv_err(1, e))?.clone();
    let columns: Vec<Option<usize>> = needed
        .iter()
        .map(|n| headers.iter().position(|h| h == n))
        .collect();
    for (i, record) in reader.records().enumerate() {
        let line = record
            .as_ref()
            .ok()
            .and_then(|r| r.position())
            .map_or(i + 2, |p| p.line() as usize);
        let record = record.map_err(|e| csv_err(line, e))?;
        // A record of many short lines is only measured once read.
        if record.as_slice().len() > max_record_bytes {
            return Err(too_large(line));
        }
        let values = columns
            .iter()
            .map(|c| c.and_then(|c| record.get(c)).map(str::to_owned))
            .collect();
        emit(line, values)?;
    }
    Ok(())
}

/// A physical line longer than the record limit (carried inside an `io::Error`).
#[derive(Debug)]
struct LongLine {
    line: usize,
}

impl std::fmt::Display for LongLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {} is over the record size limit", self.line)
    }
}

impl std::error::Error for LongLine {}

/// Fails a read once one physical line exceeds `limit` bytes, so the CSV parser never
/// buffers an overlong record.
struct LineLimit<R> {
    inner: R,
    /// 1-based number of the line being read.
    line: usize,
    since_newline: usize,
    limit: usize,
}

impl<R: Read> Read for LineLimit<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        for &b in &buf[..n] {
            if b == b'\n' {
                self.line += 1;
                self.since_newline = 0;
            } else {
                self.since_newline += 1;
                if self.since_newline > self.limit {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        LongLine { line: self.line },
                    ));
                }
            }
        }
        Ok(n)
    }
}

fn read_parquet(
    path: &Path,
    needed: &[String],
    max_record_bytes: usize,
    emit: &mut dyn FnMut(usize, Vec<Option<String>>) -> Result<()>,
) -> Result<()> {
    let bad = |message: String| Error::Parquet {
        path: path.to_owned(),
        message,
    };
    let file = File::open(path).map_err(Error::io(path))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| bad(e.to_string()))?
        .with_batch_size(PARQUET_BATCH_ROWS)
        .build()
        .map_err(|e| bad(e.to_string()))?;
    let mut row = 0usize;
    for batch in reader {
        let batch = batch.map_err(|e| bad(e.to_string()))?;
        let columns: Vec<Option<&ArrayRef>> =
            needed.iter().map(|n| batch.column_by_name(n)).collect();
        for r in 0..batch.num_rows() {
            row += 1;
            let mut values = Vec::with_capacity(needed.len());
            for (name, column) in needed.iter().zip(&columns) {
                let value = match column {
                    Some(c) => cell_to_string(c, r).map_err(|dt| Error::FieldType {
                        path: path.to_owned(),
                        line: row,
                        field: format!("{name} ({dt})"),
                    })?,
                    None => None,
                };
                values.push(value);
            }
            let bytes: usize = values.iter().flatten().map(String::len).sum();
            if bytes > max_record_bytes {
                return Err(Error::RecordTooLarge {
                    path: path.to_owned(),
                    line: row,
                    limit: max_record_bytes,
                });
            }
            emit(row, values)?;
        }
    }
    Ok(())
}

/// A Parquet cell as text; Err carries the unsupported type.
fn cell_to_string(array: &ArrayRef, row: usize) -> std::result::Result<Option<String>, DataType> {
    use arrow_array::types::*;
    if array.is_null(row) {
        return Ok(None);
    }
    let s = match array.data_type() {
        DataType::Utf8 => array.as_string::<i32>().value(row).to_owned(),
        DataType::LargeUtf8 => array.as_string::<i64>().value(row).to_owned(),
        DataType::Utf8View => array.as_string_view().value(row).to_owned(),
        DataType::Int64 => array.as_primitive::<Int64Type>().value(row).to_string(),
        DataType::Int32 => array.as_primitive::<Int32Type>().value(row).to_string(),
        DataType::UInt64 => array.as_primitive::<UInt64Type>().value(row).to_string(),
        DataType::UInt32 => array.as_primitive::<UInt32Type>().value(row).to_string(),
        DataType::Float64 => array.as_primitive::<Float64Type>().value(row).to_string(),
        DataType::Boolean => array.as_boolean().value(row).to_string(),
        other => return Err(other.clone()),
    };
    Ok(Some(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_parses_fields_and_escaped_braces() {
        let spec = TextSpec::template("Q: {question} {{x}}\n{context}").unwrap();
        assert_eq!(spec.fields(), vec!["question", "context"]);
        let TextSpec::Template(parts) = spec else {
            panic!("not a template")
        };
        assert_eq!(parts[0], TemplatePart::Literal("Q: ".into()));
        assert_eq!(parts[2], TemplatePart::Literal(" {x}\n".into()));
    }

    #[test]
    fn unclosed_placeholder_is_an_error() {
        assert!(TextSpec::template("a {} b").is_err());
    }
}
