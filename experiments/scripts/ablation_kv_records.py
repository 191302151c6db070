"""Cuts the key-value examples of an `edkd experiment ablations` raw JSONL file down to
records of N lines (the asked line plus N-1 others, shuffled), for the probes in
experiments/reports/ablations.md.

    python3 ablation_kv_records.py IN.jsonl OUT.jsonl N
"""

import json
import random
import sys


def main(src: str, dst: str, lines: int) -> None:
    rng = random.Random(0)
    kept = 0
    with open(src) as f, open(dst, "w") as out:
        for line in f:
            e = json.loads(line)
            if e["task"] != "kv":
                continue
            head, rest = e["input"].split("\n", 1)
            body, question = rest.rsplit("\n", 1)
            key = question.split("value of ")[1].rstrip("?")
            records = body.split("\n")
            asked = [r for r in records if r.startswith(key + " =")]
            others = [r for r in records if not r.startswith(key + " =")]
            chosen = asked + rng.sample(others, lines - 1)
            rng.shuffle(chosen)
            e["input"] = "\n".join([head] + chosen + [question])
            out.write(json.dumps(e) + "\n")
            kept += 1
    print(f"{dst}: {kept} examples")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
