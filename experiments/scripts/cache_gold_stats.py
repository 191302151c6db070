"""Mean gold log-prob per target token in a teacher-logit cache, and how often the
teacher's top-1 token at the first target position is a given token (default: "\\n").

    python cache_gold_stats.py CACHE_DIR [--tokenizer tokenizer.json] [--limit N] [--same-as CACHE]

Reads the cache shards with pyarrow (the format edkd's cache writer documents).
"""

import argparse
import glob
import json
import os

import pyarrow as pa


def read(cache):
    rows = []
    for path in sorted(glob.glob(os.path.join(cache, "cache-*.arrow"))):
        t = pa.ipc.open_file(path).read_all().to_pydict()
        rows += zip(t["id"], t["gold_logprob"], t["topk_ids"], t["topk_logprobs"])
    rows.sort(key=lambda r: r[0])
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("cache")
    ap.add_argument("--tokenizer", help="tokenizer.json, to name the top-1 tokens")
    ap.add_argument("--token", default="\n", help="the first-position top-1 token counted")
    ap.add_argument("--limit", type=int, default=0, help="only the first N examples (by id order)")
    ap.add_argument("--same-as", help="another cache: only the examples it holds (compare two views)")
    a = ap.parse_args()
    rows = read(a.cache)
    if a.same_as:
        keep = {r[0] for r in read(a.same_as)}
        rows = [r for r in rows if r[0] in keep]
    if a.limit:
        rows = rows[: a.limit]
    token_id = None
    if a.tokenizer:
        from tokenizers import Tokenizer

        ids = Tokenizer.from_file(a.tokenizer).encode(a.token, add_special_tokens=False).ids
        token_id = ids[0] if len(ids) == 1 else None
    gold = [g for _, golds, _, _ in rows for g in golds]
    k = len(rows[0][3]) // max(1, len(rows[0][1]))
    first_top1 = [ids[0] for _, _, ids, _ in rows if ids]
    out = {
        "examples": len(rows),
        "target_tokens": len(gold),
        "mean_gold_logprob": sum(gold) / len(gold),
        "top_k": k,
    }
    if token_id is not None:
        out["first_position_top1_is_token"] = sum(1 for t in first_top1 if t == token_id)
        out["token"] = a.token
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
