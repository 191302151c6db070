//! Data shards: Arrow IPC files with one row per example (`id`, `task`, `input_ids`,
//! `target_ids`, optional `text_input`/`text_target`, optional `image`), written in one go
//! and read back zero-copy from a memory map.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::{BinaryBuilder, ListBuilder, UInt32Builder};
use arrow_array::cast::AsArray;
use arrow_array::types::UInt32Type;
use arrow_array::{Array, ArrayRef, BinaryArray, RecordBatch, StringArray};
use arrow_buffer::{Buffer, OffsetBuffer, ScalarBuffer};
use arrow_ipc::reader::{FileDecoder, read_footer_length};
use arrow_ipc::writer::FileWriter;
use arrow_schema::{DataType, Field, Schema, SchemaRef};

use crate::error::{Error, Result};
use crate::images::IMAGE_COLUMN;

/// Rows per Arrow record batch inside a shard file.
pub const RECORD_BATCH_ROWS: usize = 8192;
/// Image bytes after which a record batch ends early (the `binary` column's offsets are
/// 32-bit, so a batch must stay under 2 GiB).
pub const RECORD_BATCH_IMAGE_BYTES: usize = 1 << 30;

/// The optional columns of a shard.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Columns {
    /// `text_input` and `text_target` (utf8).
    pub text: bool,
    /// `image` (binary, nullable): encoded PNG/JPEG bytes, see [`crate::images`].
    pub image: bool,
}

/// The shard schema; text columns are present only when the dataset keeps text, the image
/// column only when its examples have images.
pub fn schema(columns: Columns) -> Schema {
    let ids = DataType::List(Arc::new(Field::new("item", DataType::UInt32, true)));
    let mut fields = vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("task", DataType::Utf8, false),
        Field::new("input_ids", ids.clone(), false),
        Field::new("target_ids", ids, false),
    ];
    if columns.text {
        fields.push(Field::new("text_input", DataType::Utf8, false));
        fields.push(Field::new("text_target", DataType::Utf8, false));
    }
    if columns.image {
        fields.push(Field::new(IMAGE_COLUMN, DataType::Binary, true));
    }
    Schema::new(fields)
}

/// One tokenized example, ready to be written.
#[derive(Debug, Clone)]
pub struct Example {
    pub id: String,
    pub task: String,
    pub input_ids: Vec<u32>,
    pub target_ids: Vec<u32>,
    pub text: Option<(String, String)>,
    /// Encoded PNG/JPEG bytes, stored as given (written only with [`Columns::image`]).
    pub image: Option<Vec<u8>>,
}

/// Writes `rows` as one shard file at `path`.
pub fn write_shard(path: &Path, rows: &[Example], columns: Columns) -> Result<()> {
    let schema = Arc::new(schema(columns));
    let file = File::create(path).map_err(Error::io(path))?;
    let mut writer =
        FileWriter::try_new(BufWriter::new(file), &schema).map_err(Error::arrow(path))?;
    for chunk in record_batch_rows(rows, RECORD_BATCH_ROWS, RECORD_BATCH_IMAGE_BYTES) {
        let batch = to_record_batch(&schema, chunk, columns).map_err(Error::arrow(path))?;
        writer.write(&batch).map_err(Error::arrow(path))?;
    }
    writer.finish().map_err(Error::arrow(path))?;
    let file = writer
        .into_inner()
        .map_err(Error::arrow(path))?
        .into_inner()
        .map_err(|e| Error::io(path)(e.into_error()))?;
    file.sync_all().map_err(Error::io(path))
}

/// `rows` cut into record batches of at most `max_rows` rows and (unless one image alone
/// is larger) `max_image_bytes` image bytes.
fn record_batch_rows(rows: &[Example], max_rows: usize, max_image_bytes: usize) -> Vec<&[Example]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, row) in rows.iter().enumerate() {
        let size = row.image.as_ref().map_or(0, Vec::len);
        if i > start && (i - start == max_rows || bytes + size > max_image_bytes) {
            out.push(&rows[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < rows.len() {
        out.push(&rows[start..]);
    }
    out
}

fn to_record_batch(
    schema: &SchemaRef,
    rows: &[Example],
    columns_wanted: Columns,
) -> std::result::Result<RecordBatch, arrow_schema::ArrowError> {
    let tokens = |f: fn(&Example) -> &[u32]| -> ArrayRef {
        let total: usize = rows.iter().map(|r| f(r).len()).sum();
        let mut b = ListBuilder::with_capacity(UInt32Builder::with_capacity(total), rows.len());
        for r in rows {
            b.values().append_slice(f(r));
            b.append(true);
        }
        Arc::new(b.finish())
    };
    let strings = |f: fn(&Example) -> &str| -> ArrayRef {
        Arc::new(rows.iter().map(|r| Some(f(r))).collect::<StringArray>())
    };
    let mut columns = vec![
        strings(|r| &r.id),
        strings(|r| &r.task),
        tokens(|r| &r.input_ids),
        tokens(|r| &r.target_ids),
    ];
    if columns_wanted.text {
        columns.push(strings(|r| r.text.as_ref().map_or("", |t| &t.0)));
        columns.push(strings(|r| r.text.as_ref().map_or("", |t| &t.1)));
    }
    if columns_wanted.image {
        let bytes: usize = rows
            .iter()
            .filter_map(|r| r.image.as_ref())
            .map(Vec::len)
            .sum();
        let mut b = BinaryBuilder::with_capacity(rows.len(), bytes);
        for r in rows {
            b.append_option(r.image.as_deref());
        }
        columns.push(Arc::new(b.finish()));
    }
    RecordBatch::try_new(schema.clone(), columns)
}

/// An IPC file mapped into memory and decoded without copying.
pub struct MappedIpc {
    pub path: PathBuf,
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
}

impl MappedIpc {
    pub fn open(path: &Path) -> Result<Self> {
        let bad = |message: String| Error::Arrow {
            path: path.to_owned(),
            message,
        };
        let file = File::open(path).map_err(Error::io(path))?;
        // SAFETY: shards are written once (temp + rename) and never modified in place.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(Error::io(path))?;
        if map.len() < 10 {
            return Err(bad("file too short for an Arrow IPC file".into()));
        }
        let buffer = Buffer::from(bytes::Bytes::from_owner(map));
        let trailer_start = buffer.len() - 10;
        let trailer: [u8; 10] = buffer[trailer_start..].try_into().expect("10 bytes");
        let footer_len = read_footer_length(trailer).map_err(|e| bad(e.to_string()))?;
        if footer_len > trailer_start {
            return Err(bad("footer length past the start of the file".into()));
        }
        let footer = arrow_ipc::root_as_footer(&buffer[trailer_start - footer_len..trailer_start])
            .map_err(|e| bad(format!("bad footer: {e}")))?;
        let fb_schema = footer
            .schema()
            .ok_or_else(|| bad("footer has no schema".into()))?;
        let schema = Arc::new(
            arrow_ipc::convert::try_fb_to_schema(fb_schema).map_err(|e| bad(e.to_string()))?,
        );
        let decoder = FileDecoder::new(schema.clone(), footer.version());
        let mut batches = Vec::new();
        for block in footer.recordBatches().into_iter().flatten() {
            let len = block.bodyLength() as usize + block.metaDataLength() as usize;
            let start = block.offset() as usize;
            if start + len > buffer.len() {
                return Err(bad("record batch past the end of the file".into()));
            }
            let data = buffer.slice_with_length(start, len);
            if let Some(batch) = decoder
                .read_record_batch(block, &data)
                .map_err(|e| bad(e.to_string()))?
            {
                batches.push(batch);
            }
        }
        Ok(Self {
            path: path.to_owned(),
            schema,
            batches,
        })
    }

    pub fn num_rows(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }
}

/// A `list<uint32>` column as raw offsets and values (both borrowed from the map).
#[derive(Clone)]
pub struct TokenColumn {
    offsets: OffsetBuffer<i32>,
    values: ScalarBuffer<u32>,
}

impl TokenColumn {
    fn new(path: &Path, batch: &RecordBatch, name: &str) -> Result<Self> {
        let column = batch.column_by_name(name).ok_or_else(|| Error::Schema {
            path: path.to_owned(),
            message: format!("missing column `{name}`"),
        })?;
        let list = column.as_list_opt::<i32>().ok_or_else(|| Error::Schema {
            path: path.to_owned(),
            message: format!(
                "column `{name}` is {}, expected list<uint32>",
                column.data_type()
            ),
        })?;
        let values = list
            .values()
            .as_primitive_opt::<UInt32Type>()
            .ok_or_else(|| Error::Schema {
                path: path.to_owned(),
                message: format!("column `{name}` items are not uint32"),
            })?;
        Ok(Self {
            offsets: list.offsets().clone(),
            values: values.values().clone(),
        })
    }

    #[inline]
    pub fn len_of(&self, row: usize) -> usize {
        let o = self.offsets.as_ref();
        (o[row + 1] - o[row]) as usize
    }

    #[inline]
    pub fn row(&self, row: usize) -> &[u32] {
        let o = self.offsets.as_ref();
        &self.values[o[row] as usize..o[row + 1] as usize]
    }
}

/// One record batch of a data shard.
struct ShardBatch {
    ids: StringArray,
    tasks: StringArray,
    input: TokenColumn,
    target: TokenColumn,
    images: Option<BinaryArray>,
}

/// A data shard, memory-mapped: row access without copying or loading the file.
pub struct Shard {
    pub path: PathBuf,
    batches: Vec<ShardBatch>,
    /// Row index where each batch starts, plus the total at the end.
    starts: Vec<usize>,
    has_images: bool,
}

impl Shard {
    pub fn open(path: &Path) -> Result<Self> {
        let ipc = MappedIpc::open(path)?;
        let strings = |batch: &RecordBatch, name: &str| -> Result<StringArray> {
            batch
                .column_by_name(name)
                .and_then(|c| c.as_string_opt::<i32>().cloned())
                .ok_or_else(|| Error::Schema {
                    path: path.to_owned(),
                    message: format!("missing utf8 column `{name}`"),
                })
        };
        let has_images = ipc.schema.column_with_name(IMAGE_COLUMN).is_some();
        let images = |batch: &RecordBatch| -> Result<Option<BinaryArray>> {
            let Some(column) = batch.column_by_name(IMAGE_COLUMN) else {
                return Ok(None);
            };
            let array = column.as_binary_opt::<i32>().ok_or_else(|| Error::Schema {
                path: path.to_owned(),
                message: format!(
                    "column `{IMAGE_COLUMN}` is {}, expected binary",
                    column.data_type()
                ),
            })?;
            Ok(Some(array.clone()))
        };
        let mut batches = Vec::with_capacity(ipc.batches.len());
        let mut starts = vec![0];
        for batch in &ipc.batches {
            batches.push(ShardBatch {
                ids: strings(batch, "id")?,
                tasks: strings(batch, "task")?,
                input: TokenColumn::new(path, batch, "input_ids")?,
                target: TokenColumn::new(path, batch, "target_ids")?,
                images: images(batch)?,
            });
            starts.push(starts.last().copied().unwrap_or(0) + batch.num_rows());
        }
        Ok(Self {
            path: path.to_owned(),
            batches,
            starts,
            has_images,
        })
    }

    pub fn num_rows(&self) -> usize {
        *self.starts.last().unwrap_or(&0)
    }

    #[inline]
    fn locate(&self, row: usize) -> (&ShardBatch, usize) {
        if self.batches.len() == 1 {
            return (&self.batches[0], row);
        }
        let b = self.starts.partition_point(|&s| s <= row) - 1;
        (&self.batches[b], row - self.starts[b])
    }

    pub fn id(&self, row: usize) -> &str {
        let (b, r) = self.locate(row);
        b.ids.value(r)
    }

    pub fn task(&self, row: usize) -> &str {
        let (b, r) = self.locate(row);
        b.tasks.value(r)
    }

    #[inline]
    pub fn input_ids(&self, row: usize) -> &[u32] {
        let (b, r) = self.locate(row);
        b.input.row(r)
    }

    #[inline]
    pub fn target_ids(&self, row: usize) -> &[u32] {
        let (b, r) = self.locate(row);
        b.target.row(r)
    }

    /// Whether the shard has the `image` column.
    pub fn has_images(&self) -> bool {
        self.has_images
    }

    /// Row `row`'s encoded image bytes, borrowed from the map; `None` without an image
    /// column or when the row has no image.
    pub fn image(&self, row: usize) -> Option<&[u8]> {
        let (b, r) = self.locate(row);
        let images = b.images.as_ref()?;
        images.is_valid(r).then(|| images.value(r))
    }

    /// (input length, target length) without touching the token values.
    #[inline]
    pub fn lengths(&self, row: usize) -> (usize, usize) {
        let (b, r) = self.locate(row);
        (b.input.len_of(r), b.target.len_of(r))
    }
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard")
            .field("path", &self.path)
            .field("rows", &self.num_rows())
            .finish()
    }
}

/// Reads a whole `StringArray` column's values as Strings (used for small columns).
pub fn string_column(batch: &RecordBatch, name: &str) -> Option<Vec<String>> {
    let c = batch.column_by_name(name)?.as_string_opt::<i32>()?;
    Some((0..c.len()).map(|i| c.value(i).to_owned()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(image_bytes: Option<usize>) -> Example {
        Example {
            id: String::new(),
            task: String::new(),
            input_ids: vec![],
            target_ids: vec![],
            text: None,
            image: image_bytes.map(|n| vec![0; n]),
        }
    }

    #[test]
    fn record_batches_end_at_the_row_or_image_byte_limit() {
        let lens = |rows: &[Example], max_rows, max_bytes| -> Vec<usize> {
            record_batch_rows(rows, max_rows, max_bytes)
                .iter()
                .map(|c| c.len())
                .collect()
        };
        let text_only: Vec<Example> = (0..7).map(|_| example(None)).collect();
        assert_eq!(lens(&text_only, 3, 10), vec![3, 3, 1]);
        assert_eq!(lens(&[], 3, 10), Vec::<usize>::new());
        // 4 + 4 fit in 10 bytes, a third image does not; a 25-byte image stands alone.
        let sizes = [Some(4), Some(4), Some(4), None, Some(25), Some(1)];
        let rows: Vec<Example> = sizes.into_iter().map(example).collect();
        assert_eq!(lens(&rows, 100, 10), vec![2, 2, 1, 1]);
        assert_eq!(lens(&rows, 2, 10), vec![2, 2, 1, 1]);
    }
}
