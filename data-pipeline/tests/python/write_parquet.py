"""Writes a small Parquet file the way Hugging Face datasets export them (snappy,
string columns, an int column, a null) for tests/pyarrow.rs to ingest."""

import sys

import pyarrow as pa
import pyarrow.parquet as pq

ROWS = 40


def main():
    out = sys.argv[1]
    table = pa.table(
        {
            "uid": pa.array([f"pq-{i}" for i in range(ROWS)], pa.string()),
            "question": pa.array([f"what is item {i}?" for i in range(ROWS)], pa.large_string()),
            "context": [f"Inventory:\nitem {i}: red box in the attic" for i in range(ROWS)],
            "answer": pa.array(list(range(ROWS)), pa.int64()),
            "note": [None if i % 2 else "x" for i in range(ROWS)],
        }
    )
    pq.write_table(table, out, compression="snappy", row_group_size=16)
    print(f"wrote {ROWS} rows to {out}")


if __name__ == "__main__":
    main()
