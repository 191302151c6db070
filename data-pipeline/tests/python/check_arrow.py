"""Reads every data shard and teacher-cache shard named in an expectations JSON (written
by tests/pyarrow.rs) with pyarrow and checks schemas, metadata, sha256 and values."""

import hashlib
import json
import sys

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

LIST_U32 = pa.list_(pa.uint32())
LIST_F32 = pa.list_(pa.float32())


def read(path):
    with pa.memory_map(path) as source:
        return ipc.open_file(source).read_all()


def check_dataset(spec):
    manifest = json.load(open(spec["manifest"]))
    assert manifest["format"] == "edkd-data-manifest/1", manifest["format"]
    checked = 0
    for split, info in manifest["splits"].items():
        rows = []
        for shard in info["shards"]:
            path = f"{spec['dir']}/{shard['file']}"
            digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
            assert digest == shard["sha256"], f"{path}: sha256 {digest} != manifest"
            table = read(path)
            assert table.num_rows == shard["rows"], path
            schema = table.schema
            assert schema.field("id").type == pa.string(), schema
            assert schema.field("task").type == pa.string(), schema
            assert schema.field("input_ids").type == LIST_U32, schema
            assert schema.field("target_ids").type == LIST_U32, schema
            rows.extend(table.to_pylist())
        assert len(rows) == info["rows"], split
        expected = spec["splits"][split]
        assert len(rows) == len(expected), (split, len(rows), len(expected))
        for got, want in zip(rows, expected):
            for key in ("id", "task", "input_ids", "target_ids"):
                assert got[key] == want[key], (split, want["id"], key, got[key], want[key])
            checked += 1
    return checked


def check_cache(spec):
    import glob

    rows = {}
    for path in sorted(glob.glob(f"{spec['dir']}/cache-*.arrow")):
        table = read(path)
        schema = table.schema
        meta = json.loads(schema.metadata[b"edkd.teacher_cache"])
        assert meta == spec["meta"], (meta, spec["meta"])
        assert schema.field("id").type == pa.string()
        assert schema.field("topk_ids").type == LIST_U32
        for name in ("topk_logprobs", "tail_logmass", "gold_logprob"):
            assert schema.field(name).type == LIST_F32, (name, schema)
        for row in table.to_pylist():
            rows[row["id"]] = row
    assert len(rows) == len(spec["rows"]), (len(rows), len(spec["rows"]))
    k = spec["meta"]["k"]
    for want in spec["rows"]:
        got = rows[want["id"]]
        positions = len(got["tail_logmass"])
        assert len(got["topk_ids"]) == positions * k
        assert got["topk_ids"] == want["topk_ids"], want["id"]
        for name in ("topk_logprobs", "tail_logmass", "gold_logprob"):
            a = np.asarray(got[name], dtype=np.float32)
            b = np.asarray(want[name], dtype=np.float32)
            assert np.array_equal(a, b), (want["id"], name)
    return len(rows)


def main():
    spec = json.load(open(sys.argv[1]))
    examples = check_dataset(spec["dataset"])
    cached = check_cache(spec["cache"])
    print(f"ok: {examples} examples, {cached} cache rows")


if __name__ == "__main__":
    main()
