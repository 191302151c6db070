"""Plots `edkd bench efficiency`'s CSV like the paper's Figure 1a: first-token latency vs
input length (log x) for the encoder-decoder student and its decoder-only twin, and a
second panel with decode throughput.

Usage: plot_efficiency.py --csv efficiency.csv --out efficiency.png [--title TEXT]
"""

import argparse
import csv

import matplotlib

matplotlib.use("Agg")  # no display needed
import matplotlib.pyplot as plt  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--csv", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--title", default="")
    args = ap.parse_args()

    with open(args.csv, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise SystemExit(f"{args.csv}: no rows")
    x = [int(r["input_length"]) for r in rows]
    col = lambda name: [float(r[name]) for r in rows]  # noqa: E731
    new_tokens = rows[0]["new_tokens"]

    fig, (lat, thr) = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax in (lat, thr):
        ax.set_xscale("log", base=2)
        ax.set_xticks(x, [str(v) for v in x])
        ax.set_xlabel("input length (tokens)")
        ax.grid(True, which="both", alpha=0.3)
    lat.plot(x, col("twin_first_token_ms"), "o-", color="tab:red", label="decoder-only twin")
    lat.plot(x, col("student_first_token_ms"), "s-", color="tab:blue", label="encoder-decoder student")
    lat.set_ylabel("first-token latency (ms)")
    lat.set_title("first-token latency")
    lat.legend()
    thr.plot(x, col("twin_decode_tok_s"), "o-", color="tab:red", label="decoder-only twin")
    thr.plot(x, col("student_decode_tok_s"), "s-", color="tab:blue", label="encoder-decoder student")
    thr.set_ylabel("decode throughput (tokens/s)")
    thr.set_title(f"decode throughput ({new_tokens} new tokens, batch 1)")
    thr.legend()
    if args.title:
        fig.suptitle(args.title)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)


if __name__ == "__main__":
    main()
