"""Writes a Parquet file of image examples for tests/pyarrow.rs to ingest, from a JSON list
of {id, input, target, image} (image: a file path or null). The image is stored three ways:
`image_bytes` (binary), `image_path` (string, relative to the Parquet's folder) and
`image_struct` (struct<bytes: binary, path: string> as Hugging Face `datasets` writes its
Image feature: every other row keeps only the path)."""

import json
import os
import sys

import pyarrow as pa
import pyarrow.parquet as pq


def main():
    rows = json.load(open(sys.argv[1]))
    out = sys.argv[2]
    folder = os.path.dirname(out)
    data = [open(r["image"], "rb").read() if r["image"] else None for r in rows]
    rel = [os.path.relpath(r["image"], folder) if r["image"] else None for r in rows]
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    hf = [
        None if d is None else {"bytes": d if i % 2 == 0 else None, "path": p}
        for i, (d, p) in enumerate(zip(data, rel))
    ]
    table = pa.table(
        {
            "id": [r["id"] for r in rows],
            "input": [r["input"] for r in rows],
            "target": [r["target"] for r in rows],
            "image_bytes": pa.array(data, pa.binary()),
            "image_path": pa.array(rel, pa.string()),
            "image_struct": pa.array(hf, struct),
        }
    )
    pq.write_table(table, out, row_group_size=7)
    print(f"wrote {len(rows)} rows to {out}")


if __name__ == "__main__":
    main()
