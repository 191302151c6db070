"""pyarrow + numpy reader of edkd data shards, doing the same work as edkd's Reader:
shuffle, window length-bucketing, greedy token-budget packing, and padded encoder /
decoder / label / teacher arrays. Prints one JSON line with tokens and seconds."""

import json
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

IGNORE_INDEX = -100


def load(dirname, split):
    manifest = json.load(open(f"{dirname}/manifest.json"))
    tables = []
    for shard in manifest["splits"][split]["shards"]:
        source = pa.memory_map(f"{dirname}/{shard['file']}")
        tables.append(ipc.open_file(source).read_all())
    table = pa.concat_tables(tables).combine_chunks()
    def col(name):
        arr = table.column(name).chunk(0)
        return np.asarray(arr.offsets), np.asarray(arr.values)
    return manifest, col("input_ids"), col("target_ids")


def plan(in_len, dec_len, order, window, max_tokens):
    batches = []
    for lo in range(0, len(order), window):
        idx = order[lo : lo + window]
        idx = idx[np.argsort(in_len[idx] + dec_len[idx], kind="stable")]
        current, max_in, max_dec = [], 0, 0
        for i, a, d in zip(idx.tolist(), in_len[idx].tolist(), dec_len[idx].tolist()):
            ni, nd = max(max_in, a), max(max_dec, d)
            if current and (len(current) + 1) * (ni + nd) > max_tokens:
                batches.append(current)
                current, max_in, max_dec = [], a, d
            else:
                max_in, max_dec = ni, nd
            current.append(i)
        if current:
            batches.append(current)
    return batches


def collate(rows, inp, tgt, specials):
    (io, iv), (to, tv) = inp, tgt
    pad, bos, eos = specials["pad"], specials["bos"], specials["eos"]
    n = io[rows + 1] - io[rows]
    t = to[rows + 1] - to[rows]
    b, enc_len, dec_len, tea_len = len(rows), n.max(), t.max() + 1, (n + t).max()
    enc = np.full((b, enc_len), pad, np.int64)
    dec = np.full((b, dec_len), pad, np.int64)
    lab = np.full((b, dec_len), IGNORE_INDEX, np.int64)
    tea = np.full((b, tea_len), pad, np.int64)
    for r, i in enumerate(rows):
        x = iv[io[i] : io[i + 1]]
        y = tv[to[i] : to[i + 1]]
        enc[r, : len(x)] = x
        dec[r, 0] = bos
        dec[r, 1 : len(y) + 1] = y
        lab[r, : len(y)] = y
        lab[r, len(y)] = eos
        tea[r, : len(x)] = x
        tea[r, len(x) : len(x) + len(y)] = y
    enc_mask = np.arange(enc_len)[None, :] < n[:, None]
    dec_mask = np.arange(dec_len)[None, :] < (t + 1)[:, None]
    tea_mask = np.arange(tea_len)[None, :] < (n + t)[:, None]
    return enc, enc_mask, dec, lab, dec_mask, tea, tea_mask, int(n.sum() + t.sum())


def main():
    dirname, epochs, max_tokens, window = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    start = time.perf_counter()
    manifest, inp, tgt = load(dirname, "train")
    specials = manifest["tokenizer"]["special_ids"]
    in_len = np.diff(inp[0])
    dec_len = np.diff(tgt[0]) + 1
    tokens = 0
    for epoch in range(epochs):
        rng = np.random.default_rng(epoch)
        order = rng.permutation(len(in_len))
        batches = plan(in_len, dec_len, order, window, max_tokens)
        rng.shuffle(batches)
        for rows in batches:
            tokens += collate(np.asarray(rows), inp, tgt, specials)[-1]
    print(json.dumps({"tokens": tokens, "seconds": time.perf_counter() - start}))


if __name__ == "__main__":
    main()
