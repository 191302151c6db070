"""Python `tokenizers` batch encoding of a JSONL file's input and target fields (the work
`edkd data prepare` does). Reading the file is not timed. Prints one JSON line."""

import json
import sys
import time

from tokenizers import Tokenizer


def main():
    tokenizer_path, jsonl = sys.argv[1], sys.argv[2]
    tok = Tokenizer.from_file(tokenizer_path)
    texts = []
    for line in open(jsonl):
        row = json.loads(line)
        texts.append(row["input"])
        texts.append(row["target"])
    start = time.perf_counter()
    encodings = tok.encode_batch_fast(texts, add_special_tokens=False)
    seconds = time.perf_counter() - start
    tokens = sum(len(e.ids) for e in encodings)
    print(json.dumps({"tokens": tokens, "seconds": seconds}))


if __name__ == "__main__":
    main()
