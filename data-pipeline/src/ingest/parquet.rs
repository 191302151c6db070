//! Parquet input: columns named like the fields; strings, integers, floats and booleans as
//! text, and the image column as bytes or a path.

use std::fs::File;
use std::path::Path;

use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef};
use arrow_schema::DataType;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::{Emit, Wanted};
use crate::error::{Error, Result};
use crate::images::source::ImageSource;

/// Rows per Parquet record batch while ingesting.
const PARQUET_BATCH_ROWS: usize = 4096;

pub(super) fn read_parquet(path: &Path, wanted: &Wanted<'_>, emit: &mut Emit<'_>) -> Result<()> {
    let max_record_bytes = wanted.max_record_bytes;
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
        let columns: Vec<Option<&ArrayRef>> = wanted
            .names
            .iter()
            .map(|n| batch.column_by_name(n))
            .collect();
        let image_column = wanted.image.and_then(|name| batch.column_by_name(name));
        for r in 0..batch.num_rows() {
            row += 1;
            let mut values = Vec::with_capacity(wanted.names.len());
            for (name, column) in wanted.names.iter().zip(&columns) {
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
            let image =
                image_column.map_or(Ok(None), |c| ImageSource::from_arrow(c, r, wanted.base));
            emit(row, values, image)?;
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
