"""PyTorch reference for `edkd bench train`: the encoder-decoder student's training step
(forward, CE + forward-KL distillation loss, backward, gradient clipping, AdamW) on the same
weights, batch and hyperparameters as edkd's, timed per step.

edkd writes the student folder (config.json + model.safetensors with edkd's key names) and
batch.safetensors; the module tree below mirrors those key names, so the weights load with
`strict=True`. The model re-implements models/src/student/model.rs (the clean-room model in
models/tests/fixtures/make_mu_reference.py, with edkd's names and config fields):
pre-norm RMSNorm, q/k/v/o projections (GQA, cyclic or grouped), rotate-half RoPE on
(optionally centred) encoder positions and on decoder positions, cross-attention without
RoPE, plain GELU-tanh or SwiGLU MLP, final norms, logits tied to the embedding.

The loss is the trainer's (trainer/src/loss.rs) written the usual PyTorch way:
    (1 - alpha) * CE(z, y) + alpha * T^2 * mean_rows KL(softmax(a/T) || softmax(z/T))
over the positions where the decoder mask is true, with full-vocabulary teacher logits `a`.
AdamW: torch.optim.AdamW with PyTorch's default implementation for CPU tensors, no weight
decay on norms and biases (trainer/src/optim.rs `decays`).

Protocol (edkd drives it so that its steps and PyTorch's alternate and share the machine's
load): after loading, prints {"torch": version, "threads": n}; then for every `step` line on
stdin runs one training step and prints {"step_s": seconds, "loss": value}; exits on `quit`
or end of input.
"""

import argparse
import json
import math
import sys
import time

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn


class RmsNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        var = x.pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(var + self.eps))


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rope_tables(positions, head_dim, theta):
    """positions [b, t] int64 -> cos, sin [b, 1, t, head_dim]."""
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    freqs = positions.float().unsqueeze(-1) * inv.view(1, 1, -1)
    emb = torch.cat((freqs, freqs), dim=-1).unsqueeze(1)
    return emb.cos(), emb.sin()


def apply_rope(x, rope):
    cos, sin = rope
    return x * cos + rotate_half(x) * sin


class Attention(nn.Module):
    def __init__(self, c):
        super().__init__()
        d = c["d_model"]
        self.n_heads, self.n_kv = c["num_heads"], c["num_kv_heads"]
        self.head_dim = c["attn_dim"] // c["num_heads"]
        self.cyclic = c["gqa_mapping"] == "cyclic"
        bias = c["attn_bias"]
        self.q_proj = nn.Linear(d, self.n_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(d, self.n_kv * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(d, self.n_kv * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, d, bias=bias)

    def heads(self, x, n):
        b, t, _ = x.shape
        return x.view(b, t, n, self.head_dim).transpose(1, 2)

    def expand(self, t):
        rep = self.n_heads // self.n_kv
        if rep == 1:
            return t
        return t.repeat(1, rep, 1, 1) if self.cyclic else t.repeat_interleave(rep, dim=1)

    def attend(self, q, k, v, mask, causal):
        b, _, t, _ = q.shape
        out = F.scaled_dot_product_attention(
            q, self.expand(k), self.expand(v), attn_mask=mask, is_causal=causal
        )
        return self.o_proj(out.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim))

    def forward_self(self, x, rope, mask, causal):
        q = self.heads(self.q_proj(x), self.n_heads)
        k = self.heads(self.k_proj(x), self.n_kv)
        v = self.heads(self.v_proj(x), self.n_kv)
        if rope is not None:
            q, k = apply_rope(q, rope), apply_rope(k, rope)
        return self.attend(q, k, v, mask, causal)

    def forward_cross(self, x, memory, mask):
        q = self.heads(self.q_proj(x), self.n_heads)
        k = self.heads(self.k_proj(memory), self.n_kv)
        v = self.heads(self.v_proj(memory), self.n_kv)
        return self.attend(q, k, v, mask, False)


class PlainMlp(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.fc1 = nn.Linear(c["d_model"], c["ffn_dim"], bias=c["ffn_bias"])
        self.fc2 = nn.Linear(c["ffn_dim"], c["d_model"], bias=c["ffn_bias"])

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class GatedMlp(nn.Module):
    def __init__(self, c):
        super().__init__()
        d, ff, bias = c["d_model"], c["ffn_dim"], c["ffn_bias"]
        self.gate_proj = nn.Linear(d, ff, bias=bias)
        self.up_proj = nn.Linear(d, ff, bias=bias)
        self.down_proj = nn.Linear(ff, d, bias=bias)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def mlp(c):
    return GatedMlp(c) if c["ffn_kind"] == "swiglu" else PlainMlp(c)


class EncoderLayer(nn.Module):
    def __init__(self, c):
        super().__init__()
        eps = c["rms_norm_eps"]
        self.self_attn_norm = RmsNorm(c["d_model"], eps)
        self.self_attn = Attention(c)
        self.mlp_norm = RmsNorm(c["d_model"], eps)
        self.mlp = mlp(c)

    def forward(self, x, rope, mask):
        x = x + self.self_attn.forward_self(self.self_attn_norm(x), rope, mask, False)
        return x + self.mlp(self.mlp_norm(x))


class DecoderLayer(nn.Module):
    def __init__(self, c):
        super().__init__()
        eps = c["rms_norm_eps"]
        self.self_attn_norm = RmsNorm(c["d_model"], eps)
        self.self_attn = Attention(c)
        self.cross_attn_norm = RmsNorm(c["d_model"], eps)
        self.cross_attn = Attention(c)
        self.mlp_norm = RmsNorm(c["d_model"], eps)
        self.mlp = mlp(c)

    def forward(self, x, memory, rope, cross_mask):
        x = x + self.self_attn.forward_self(self.self_attn_norm(x), rope, None, True)
        x = x + self.cross_attn.forward_cross(self.cross_attn_norm(x), memory, cross_mask)
        return x + self.mlp(self.mlp_norm(x))


class Stack(nn.Module):
    def __init__(self, layer, n, c):
        super().__init__()
        self.layers = nn.ModuleList(layer(c) for _ in range(n))
        self.norm = RmsNorm(c["d_model"], c["rms_norm_eps"])


class Student(nn.Module):
    def __init__(self, c):
        super().__init__()
        assert c["tie_word_embeddings"], "the bench student ties its embeddings"
        assert c["dropout"] == 0.0, "the bench student has no dropout"
        self.c = c
        self.head_dim = c["attn_dim"] // c["num_heads"]
        self.embed_tokens = nn.Embedding(c["vocab_size"], c["d_model"])
        self.encoder = Stack(EncoderLayer, c["encoder_layers"], c)
        self.decoder = Stack(DecoderLayer, c["decoder_layers"], c)

    def forward(self, encoder_ids, encoder_valid, decoder_ids):
        c = self.c
        b, s = encoder_ids.shape
        dense = bool(encoder_valid.all())
        mask = None if dense else encoder_valid[:, None, None, :]
        positions = torch.arange(s).unsqueeze(0).expand(b, s)
        if c["centered_encoder_positions"]:
            length = encoder_valid.sum(-1, keepdim=True)
            positions = positions - torch.div(length - 1, 2, rounding_mode="floor")
        rope = rope_tables(positions, self.head_dim, c["rope_theta"]) if c["rope_encoder"] else None
        x = self.embed_tokens(encoder_ids)
        for layer in self.encoder.layers:
            x = layer(x, rope, mask)
        memory = self.encoder.norm(x)

        t = decoder_ids.shape[1]
        positions = torch.arange(t).unsqueeze(0).expand(b, t)
        rope = rope_tables(positions, self.head_dim, c["rope_theta"]) if c["rope_decoder"] else None
        y = self.embed_tokens(decoder_ids)
        for layer in self.decoder.layers:
            y = layer(y, memory, rope, mask)
        return self.decoder.norm(y) @ self.embed_tokens.weight.t()


def decays(name):
    return not (name.endswith(".bias") or "norm" in name)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="student folder written by edkd")
    ap.add_argument("--batch", required=True, help="batch.safetensors written by edkd")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--beta1", type=float, default=0.9)
    ap.add_argument("--beta2", type=float, default=0.95)
    ap.add_argument("--eps", type=float, default=1e-8)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--temperature", type=float, default=2.0)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    with open(f"{args.model}/config.json") as f:
        cfg = json.load(f)
    model = Student(cfg)
    model.load_state_dict(load_file(f"{args.model}/model.safetensors"), strict=True)
    model.train()
    batch = load_file(args.batch)
    enc_ids, enc_valid = batch["encoder_ids"], batch["encoder_mask"].bool()
    dec_ids, labels = batch["decoder_input_ids"], batch["labels"]
    dec_mask = batch["decoder_mask"].bool()
    teacher = batch["teacher_logits"]  # [n, V_t], the masked positions in row-major order
    v_t = teacher.shape[-1]

    named = list(model.named_parameters())
    groups = [
        {"params": [p for n, p in named if decays(n)], "weight_decay": args.weight_decay},
        {"params": [p for n, p in named if not decays(n)], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=args.lr, betas=(args.beta1, args.beta2), eps=args.eps)
    params = [p for _, p in named]
    t_sq = args.temperature**2

    def step():
        t0 = time.perf_counter()
        logits = model(enc_ids, enc_valid, dec_ids)  # [b, t, V_s]
        z = logits[dec_mask]  # [n, V_s]
        y = labels[dec_mask]
        ce = F.cross_entropy(z, y)
        log_q = F.log_softmax(z[:, :v_t] / args.temperature, dim=-1)
        log_p = F.log_softmax(teacher / args.temperature, dim=-1)
        kd = F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(-1).mean() * t_sq
        loss = (1.0 - args.alpha) * ce + args.alpha * kd
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, args.clip)
        opt.step()
        opt.zero_grad()
        value = loss.item()
        return time.perf_counter() - t0, value

    reply({"torch": torch.__version__, "threads": torch.get_num_threads()})
    for line in sys.stdin:
        command = line.strip()
        if command == "quit":
            break
        if command != "step":
            raise SystemExit(f"unknown command {command!r}")
        seconds, value = step()
        assert math.isfinite(value), f"loss {value}"
        reply({"step_s": seconds, "loss": value})


def reply(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()

if __name__ == "__main__":
    main()
