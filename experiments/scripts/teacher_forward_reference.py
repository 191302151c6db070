"""Reference side of `edkd bench teacher`: builds (once) a random ~110M-parameter Llama
checkpoint and times its transformers forward pass.

Prints one JSON line: {"params": N, "tokens_per_s": X, "seconds": [...]}.
"""

import argparse
import json
import os
import time

import torch
import transformers


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="folder; created if missing")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    ap.add_argument("--create-only", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    if not os.path.exists(os.path.join(args.model, "model.safetensors")):
        torch.manual_seed(0)
        cfg = transformers.LlamaConfig(
            vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
            num_attention_heads=12, num_key_value_heads=4, max_position_embeddings=2048,
            tie_word_embeddings=True, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        )
        transformers.LlamaForCausalLM(cfg).save_pretrained(args.model)
    if args.create_only:
        return
    model = transformers.AutoModelForCausalLM.from_pretrained(
        args.model, dtype={"f32": torch.float32, "bf16": torch.bfloat16}[args.dtype], attn_implementation="sdpa"
    ).eval()
    params = sum(p.numel() for p in model.parameters())
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, model.config.vocab_size, (args.batch, args.seq), generator=g)
    times = []
    with torch.inference_mode():
        model(input_ids=ids, use_cache=False)  # warm-up
        for _ in range(args.iters):
            t0 = time.perf_counter()
            model(input_ids=ids, use_cache=False)
            times.append(time.perf_counter() - t0)
    best = min(times)
    print(json.dumps({"params": params, "tokens_per_s": args.batch * args.seq / best, "seconds": times}))


if __name__ == "__main__":
    main()
