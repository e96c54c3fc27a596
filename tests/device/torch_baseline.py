#!/usr/bin/env python3
"""PyTorch baseline of qarac-bench's classifier workload: the same RoBERTa-base sizes, batch
shapes and step (forward, cross-entropy, backward, gradient clipping, AdamW) as a PyTorch user
would write it: transformers' RobertaForSequenceClassification, bf16 autocast, fused AdamW,
padded batches with an attention mask. Random weights and tokens; dropout off as in qarac-bench.
Prints the figures in qarac-bench's format, with the same FLOP count (real tokens)."""
import argparse
import time

import torch
from transformers import RobertaConfig, RobertaForSequenceClassification


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--ragged", action="store_true", help="lengths uniform in [S/3, S]")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    a = p.parse_args()

    torch.manual_seed(1)
    d, layers, ffn, vocab = 768, 12, 3072, 50265
    cfg = RobertaConfig(vocab_size=vocab, hidden_size=d, num_hidden_layers=layers, num_attention_heads=12,
                        intermediate_size=ffn, max_position_embeddings=a.seq + 2, num_labels=2,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = RobertaForSequenceClassification(cfg).cuda()
    if a.compile:
        model = torch.compile(model)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-5, fused=True)

    def batch():
        lo = max(1, a.seq // 3) if a.ragged else a.seq
        lengths = torch.randint(lo, a.seq + 1, (a.batch,))
        ids = torch.randint(3, vocab, (a.batch, a.seq))
        mask = (torch.arange(a.seq)[None, :] < lengths[:, None]).long()
        ids = torch.where(mask.bool(), ids, torch.ones_like(ids))
        labels = torch.randint(0, 2, (a.batch,))
        return ids.cuda(), mask.cuda(), labels.cuda(), lengths

    def step(ids, mask, labels):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    seconds, flops, real = 0.0, 0.0, 0
    for it in range(a.warmup + a.iters):
        ids, mask, labels, lengths = batch()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        step(ids, mask, labels)
        torch.cuda.synchronize()
        if it >= a.warmup:
            seconds += time.perf_counter() - t0
            n = int(lengths.sum())
            real += n
            attention = float(sum(4 * int(l) ** 2 * d for l in lengths))
            flops += 3 * layers * (2 * n * d * (4 * d + 2 * ffn) + attention)
    padded = a.batch * a.seq * a.iters
    print(f"torch classifier cuda bf16-autocast{' compiled' if a.compile else ''}: d={d} layers={layers} "
          f"S={a.seq} B={a.batch}{' ragged' if a.ragged else ''}, torch {torch.__version__}")
    print(f"  {1e3 * seconds / a.iters:.2f} ms/step, {real / seconds:.0f} tokens/s real, "
          f"{padded / seconds:.0f} tokens/s padded-equivalent, {a.batch * a.iters / seconds:.1f} samples/s, "
          f"{flops / seconds / 1e12:.2f} TFLOP/s")


if __name__ == "__main__":
    main()
