#!/usr/bin/env python3
"""PyTorch's kernels for what tests/bench/bench_kernels times, on the same shapes, in bf16: the
attention backward (scaled_dot_product_attention, whichever kernel PyTorch picks: flash on an
H100) of 64 sequences of 128 tokens, 12 heads of 64, without and with dropout 0.1, the
LayerNorm backward of 8192 rows of 768, and the embedding backward of 8192 rows of 768 into 50265
ids drawn as bench_kernels draws them (even, Zipf, Zipf with 15% <mask>; PyTorch's table gradient
is a new bf16 tensor, QARAC-MT's an f32 one it adds to). Each line gives milliseconds per
backward pass, timed with CUDA events over --iters passes after --warmup, with bench_kernels'
FLOP and byte counts."""
import argparse

import torch
import torch.nn.functional as F


def time_ms(fn, warmup, iters):
    for _ in range(warmup):
        fn()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    stop.record()
    torch.cuda.synchronize()
    return start.elapsed_time(stop) / iters


def attention(batch, seq, heads, head_dim, dropout, warmup, iters):
    shape = (batch, heads, seq, head_dim)
    q, k, v = (torch.empty(shape, device="cuda", dtype=torch.bfloat16).uniform_(-2.6, 2.6).requires_grad_()
               for _ in range(3))
    out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
    dout = torch.randn_like(out)
    ms = time_ms(lambda: torch.autograd.grad(out, (q, k, v), dout, retain_graph=True), warmup, iters)
    flops = 2.5 * 4.0 * seq * seq * head_dim * heads * batch  # bench_kernels' count
    print(f"torch attention backward S={seq} B={batch}{' dropout ' + str(dropout) if dropout else ''}: "
          f"{ms:.4f} ms ({flops / ms * 1e-9:.1f} TFLOP/s)")


def layernorm(rows, cols, warmup, iters):
    x = (torch.rand(rows, cols, device="cuda", dtype=torch.bfloat16) * 2 + 2).requires_grad_()
    weight = (torch.rand(cols, device="cuda", dtype=torch.bfloat16) + 0.5).requires_grad_()
    bias = torch.zeros(cols, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    y = F.layer_norm(x, (cols,), weight, bias, 1e-5)
    dy = torch.randn_like(y)
    ms = time_ms(lambda: torch.autograd.grad(y, (x, weight, bias), dy, retain_graph=True), warmup, iters)
    moved = rows * cols * 2 * 3  # dy and x read, dx written: bench_kernels' plain count
    print(f"torch layernorm backward T={rows} d={cols}: {ms:.4f} ms ({moved / ms * 1e-6:.0f} GB/s)")


def embedding(name, ids, vocab, dim, warmup, iters):
    weight = torch.zeros(vocab, dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    out = F.embedding(ids, weight)
    dout = torch.rand_like(out) * 2 - 1
    ms = time_ms(lambda: torch.autograd.grad(out, (weight,), dout, retain_graph=True), warmup, iters)
    distinct = ids.unique().numel()
    moved = ids.numel() * dim * 2 + distinct * dim * 4 * 2  # bench_kernels' count
    print(f"torch embedding backward T={ids.numel()} {name}: {ms:.4f} ms ({moved / ms * 1e-6:.0f} GB/s)")


def embedding_ids(rows, vocab):
    """bench_kernels' three draws of token ids: even, Zipf (weight 1/(k+1) for id k), and Zipf
    with 15% of the rows <mask>, the last id."""
    even = torch.randint(0, vocab, (rows,), device="cuda")
    zipf = torch.multinomial(1.0 / torch.arange(1, vocab + 1, device="cuda", dtype=torch.float64), rows,
                             replacement=True)
    masked = torch.where(torch.rand(rows, device="cuda") < 0.15, vocab - 1, zipf)
    return {"even ids": even, "Zipf ids": zipf, "Zipf, 15% <mask>": masked}


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--iters", type=int, default=20)
    a = p.parse_args()
    if a.warmup < 0 or a.iters < 1:
        p.error("--warmup must be at least 0 and --iters at least 1")
    torch.manual_seed(1)
    attention(64, 128, 12, 64, 0.0, a.warmup, a.iters)
    attention(64, 128, 12, 64, 0.1, a.warmup, a.iters)
    layernorm(8192, 768, a.warmup, a.iters)
    for name, ids in embedding_ids(8192, 50265).items():
        embedding(name, ids, 50265, 768, a.warmup, a.iters)


if __name__ == "__main__":
    main()
