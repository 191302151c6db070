//! Reading input/target pairs (and optionally an image) from JSONL, Parquet and CSV files,
//! with field names or `{field}` templates. Every row carries its file and line so errors
//! can point at it.

mod csv;
mod parquet;

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, ImageProblem, Result};
use crate::images::source::ImageSource;

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
    /// Field holding each example's image (see [`crate::images::source`] for the accepted
    /// values); `None`: the examples have no images.
    pub image_field: Option<String>,
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
            image_field: None,
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
    /// Where the image is (`None`: no image field, or a null value); its size was checked
    /// against the record limit, its bytes are read and decoded later.
    pub image: Option<ImageSource>,
}

/// A row's image cell as read: its source, or what is wrong with the value.
type ImageCell = std::result::Result<Option<ImageSource>, ImageProblem>;

/// Receives each row of a file: line (or row) number, the text cells, the image cell.
type Emit<'a> = dyn FnMut(usize, Vec<Option<String>>, ImageCell) -> Result<()> + 'a;

/// What the format readers take from each row.
struct Wanted<'a> {
    /// Text fields, in the order of the values handed to [`Emit`].
    names: &'a [String],
    /// The image field, if examples have images.
    image: Option<&'a str>,
    /// Folder that relative image paths start from (the input file's).
    base: &'a Path,
    max_record_bytes: usize,
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
    let row = Row {
        file: &file,
        file_name: &file_name,
        needed: &needed,
        fields,
        max_record_bytes,
    };
    let mut emit = |line: usize, values: Vec<Option<String>>, image: ImageCell| -> Result<()> {
        sink(row.build(line, values, image)?)
    };
    let wanted = Wanted {
        names: &needed,
        image: fields.image_field.as_deref(),
        base: path.parent().unwrap_or(Path::new("")),
        max_record_bytes,
    };
    match extension(path).as_deref() {
        Some("jsonl" | "json" | "ndjson") => read_jsonl(path, &wanted, &mut emit),
        Some("parquet" | "pq") => parquet::read_parquet(path, &wanted, &mut emit),
        Some("csv") => csv::read_csv(path, &wanted, &mut emit),
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

/// What turns one file's cells into records.
struct Row<'a> {
    file: &'a Arc<Path>,
    file_name: &'a str,
    needed: &'a [String],
    fields: &'a FieldMap,
    max_record_bytes: usize,
}

impl Row<'_> {
    fn build(
        &self,
        line: usize,
        values: Vec<Option<String>>,
        image: ImageCell,
    ) -> Result<RawRecord> {
        let mut record = build_record(
            self.file,
            self.file_name,
            line,
            self.needed,
            values,
            self.fields,
        )?;
        let checked = image.and_then(|source| match source {
            Some(s) => s.check_size(self.max_record_bytes).map(|()| Some(s)),
            None => Ok(None),
        });
        record.image = checked.map_err(|problem| Error::ImageField {
            path: self.file.to_path_buf(),
            line,
            id: record.id.clone(),
            field: self.fields.image_field.clone().unwrap_or_default(),
            problem: Box::new(problem),
        })?;
        Ok(record)
    }
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
        image: None,
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

fn read_jsonl(path: &Path, wanted: &Wanted<'_>, emit: &mut Emit<'_>) -> Result<()> {
    let max_record_bytes = wanted.max_record_bytes;
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
        let (values, image) = parse_json_line(path, line_no, line, wanted)?;
        if buf.capacity() > LINE_BUFFER_KEEP {
            buf = Vec::new();
        }
        emit(line_no, values, image)?;
    }
    Ok(())
}

/// The wanted text fields of one JSON object line, and its image cell.
fn parse_json_line(
    path: &Path,
    line_no: usize,
    line: &str,
    wanted: &Wanted<'_>,
) -> Result<(Vec<Option<String>>, ImageCell)> {
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
    let image = match wanted.image {
        Some(name) => map
            .remove(name)
            .map_or(Ok(None), |v| ImageSource::from_json(v, wanted.base)),
        None => Ok(None),
    };
    let mut values = Vec::with_capacity(wanted.names.len());
    for name in wanted.names {
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
    Ok((values, image))
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
