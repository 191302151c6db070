"""Reference side of `edkd bench generation`: greedy generation with transformers'
`generate` on the decoder-only twin that edkd saved as a Llama folder.

Prints one JSON line: {"tokens_per_s": X, "seconds": [...], "tokens": [new token ids]}.
"""

import argparse
import json
import time

import torch
import transformers

WARMUP_TOKENS = 8  # same untimed warm-up as the edkd side


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="HF Llama folder written by edkd")
    ap.add_argument("--prompt", required=True, help="JSON list of prompt token ids")
    ap.add_argument("--max-new-tokens", type=int, required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    model = transformers.AutoModelForCausalLM.from_pretrained(
        args.model, dtype=torch.float32, attn_implementation="sdpa"
    ).eval()
    # Exactly max_new_tokens tokens, as edkd's greedy config (no EOS stop).
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = model.config.pad_token_id
    with open(args.prompt) as f:
        ids = torch.tensor([json.load(f)], dtype=torch.long)
    mask = torch.ones_like(ids)

    def run(n):
        return model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=n, do_sample=False, use_cache=True
        )

    times = []
    with torch.inference_mode():
        run(WARMUP_TOKENS)
        run(args.max_new_tokens)  # warm-up at full length, as edkd's best_of
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            out = run(args.max_new_tokens)
            times.append(time.perf_counter() - t0)
    new = out[0, ids.shape[1]:].tolist()
    if len(new) != args.max_new_tokens:
        raise SystemExit(f"generated {len(new)} tokens, wanted {args.max_new_tokens}")
    print(json.dumps({"tokens_per_s": args.max_new_tokens / min(times), "seconds": times, "tokens": new}))


if __name__ == "__main__":
    main()
