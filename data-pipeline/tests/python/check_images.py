"""Reads the image column of every data shard named in an expectations JSON (written by
tests/pyarrow.rs) with pyarrow and Pillow: the column is a nullable Arrow binary column,
each value has the expected sha256, and Pillow decodes PNGs to the same RGB pixels as edkd."""

import hashlib
import io
import json
import sys

import pyarrow as pa
import pyarrow.ipc as ipc
from PIL import Image


def read(path):
    with pa.memory_map(path) as source:
        return ipc.open_file(source).read_all()


def main():
    spec = json.load(open(sys.argv[1]))
    manifest = json.load(open(f"{spec['dir']}/manifest.json"))
    images = manifest["images"]
    assert images["column"] == "image", images
    assert images["placeholder"] == "<image>", images
    assert images["image_token_id"] == spec["image_token_id"], images
    expected = spec["rows"]
    seen, decoded, nulls = 0, 0, 0
    for split, info in manifest["splits"].items():
        for shard in info["shards"]:
            table = read(f"{spec['dir']}/{shard['file']}")
            field = table.schema.field("image")
            assert field.type == pa.binary(), field
            assert field.nullable, field
            for row in table.select(["id", "image"]).to_pylist():
                want = expected[row["id"]]
                seen += 1
                if want is None:
                    assert row["image"] is None, row["id"]
                    nulls += 1
                    continue
                got = row["image"]
                assert hashlib.sha256(got).hexdigest() == want["sha256"], row["id"]
                with Image.open(io.BytesIO(got)) as img:
                    assert img.format == want["format"], (row["id"], img.format)
                    rgb = img.convert("RGB")
                assert rgb.size == (want["width"], want["height"]), (row["id"], rgb.size)
                if want["format"] == "PNG":
                    pixels = hashlib.sha256(rgb.tobytes()).hexdigest()
                    assert pixels == want["pixels_sha256"], f"{row['id']}: Pillow's pixels differ"
                    decoded += 1
    assert seen == len(expected), (seen, len(expected))
    print(f"ok: {seen} rows, {decoded} PNGs decoded alike, {nulls} without image")


if __name__ == "__main__":
    main()
