#!/usr/bin/env python3
"""PyTorch baseline of qarac-bench's qarac workload: the QARAC step (docs/design.md §2-§3) as a
PyTorch user would write it. Three RoBERTa-base models from transformers (question encoder, answer
encoder, a causal decoder base), the global attention pooling head, the decoder's two head
layers over [v; H] with a causal mask (torch.nn.TransformerEncoderLayer: post-LN, GELU, SDPA),
an untied LM head; the four objectives on B examples each, padded batches with attention masks,
bf16 autocast, backward, gradient clipping, fused AdamW. Random weights and tokens, dropout off,
field lengths as qarac-bench's. Prints qarac-bench's format; a sample is one example of every
task (B per step). --paired runs the answer encoder once on both fields of reasoning and
consistency (one padded batch of 2B), as qarac-bench does without padding: the baseline with
that optimisation too."""
import argparse
import copy
import time

import torch
import torch.nn.functional as F
from torch import nn
from transformers import RobertaConfig, RobertaModel

D, LAYERS, HEADS, FFN, VOCAB = 768, 12, 12, 3072, 50265
LENGTHS = dict(text=64, question=32, answer=64, premise=32, conclusion=32, statement=48)


class Encoder(nn.Module):
    """RoBERTa + pooling head: g = Wg Σ X, l_t = Wl X_t, a_t = cos(l_t, g), v = Σ a_t X_t."""

    def __init__(self, cfg):
        super().__init__()
        self.base = RobertaModel(cfg, add_pooling_layer=False)
        self.wg = nn.Linear(D, D, bias=False)
        self.wl = nn.Linear(D, D, bias=False)

    def forward(self, ids, mask):
        x = self.base(input_ids=ids, attention_mask=mask).last_hidden_state * mask[..., None]
        g = self.wg(x.sum(1))
        a = F.cosine_similarity(self.wl(x), g[:, None, :], dim=-1, eps=1e-12)
        return (a[..., None] * x).sum(1)


class Decoder(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        dcfg = copy.deepcopy(cfg)
        dcfg.is_decoder = True
        self.base = RobertaModel(dcfg, add_pooling_layer=False)
        self.heads = nn.ModuleList(
            nn.TransformerEncoderLayer(D, HEADS, FFN, dropout=0.0, activation="gelu", batch_first=True,
                                       layer_norm_eps=1e-5) for _ in range(2))
        self.dense, self.norm, self.out = nn.Linear(D, D), nn.LayerNorm(D, eps=1e-5), nn.Linear(D, VOCAB)

    def forward(self, v, ids, mask):
        h = self.base(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        e = torch.cat([v[:, None, :], h.to(v.dtype)], 1)  # every position sees slot 0
        n = e.shape[1]
        causal = torch.triu(torch.ones((n, n), dtype=torch.bool, device=e.device), 1)  # True: masked
        pad = torch.cat([torch.ones_like(mask[:, :1]), mask], 1) == 0
        e = self.heads[0](e, src_mask=causal, src_key_padding_mask=pad)[:, 1:]
        e = self.heads[1](e, src_mask=causal[1:, 1:], src_key_padding_mask=mask == 0)
        return self.out(self.norm(F.gelu(self.dense(e))))


def batch(n, longest, ragged, device):
    lo = max(3, longest // 3) if ragged else longest
    lengths = torch.randint(lo, longest + 1, (n,))
    ids = torch.randint(3, VOCAB, (n, longest))
    mask = (torch.arange(longest)[None, :] < lengths[:, None]).long()
    ids = torch.where(mask.bool(), ids, torch.ones_like(ids))
    ids[:, 0] = 0
    ids[torch.arange(n), lengths - 1] = 2
    return ids.to(device), mask.to(device), int(lengths.sum())


def decode_loss(decoder, v, ids, mask):
    """CE(D(v, <s> y), y </s>) over the real target tokens, per sample then over the batch."""
    y_in, y_mask, target = ids[:, :-1], mask[:, :-1], ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
    logits = decoder(v, y_in, y_mask)
    per_token = F.cross_entropy(logits.float().transpose(1, 2), target, ignore_index=-100, reduction="none")
    return (per_token.sum(1) / (target != -100).sum(1)).mean()


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--ragged", action="store_true")
    p.add_argument("--paired", action="store_true", help="one answer-encoder pass over both fields of rs and cs")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=10)
    a = p.parse_args()
    torch.manual_seed(1)
    dev = "cuda"
    cfg = RobertaConfig(vocab_size=VOCAB, hidden_size=D, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                        intermediate_size=FFN, max_position_embeddings=LENGTHS["text"] + 2,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    qe, ae, dec = Encoder(cfg).to(dev), Encoder(cfg).to(dev), Decoder(cfg).to(dev)
    params = [*qe.parameters(), *ae.parameters(), *dec.parameters()]
    opt = torch.optim.AdamW(params, lr=2e-5, fused=True)
    B, L = a.batch, LENGTHS

    seconds, real = 0.0, 0
    for it in range(a.warmup + a.iters):
        x = batch(B, L["text"], a.ragged, dev)
        q, ans = batch(B, L["question"], a.ragged, dev), batch(B, L["answer"], a.ragged, dev)
        p0, p1, c = (batch(B, L[k], a.ragged, dev) for k in ("premise", "premise", "conclusion"))
        s0, s1 = batch(B, L["statement"], a.ragged, dev), batch(B, L["statement"], a.ragged, dev)
        y = (torch.randint(0, 3, (B,), device=dev) - 1).float()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            ed = decode_loss(dec, ae(*x[:2]), *x[:2])
            qa = F.mse_loss(qe(*q[:2]).float(), ae(*ans[:2]).float())
            if a.paired:
                v0, v1 = ae(torch.cat((p0[0], p1[0])), torch.cat((p0[1], p1[1]))).chunk(2)
                u0, u1 = ae(torch.cat((s0[0], s1[0])), torch.cat((s0[1], s1[1]))).chunk(2)
            else:
                v0, v1 = ae(*p0[:2]), ae(*p1[:2])
                u0, u1 = ae(*s0[:2]), ae(*s1[:2])
            rs = decode_loss(dec, v0 + v1, *c[:2])
            cs = F.mse_loss(F.cosine_similarity(u0.float(), u1.float(), dim=-1), y)
            loss = ed + qa + rs + cs
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        if it >= a.warmup:
            seconds += time.perf_counter() - t0
            real += sum(t[2] for t in (x, q, ans, p0, p1, c, s0, s1))
    padded = B * (L["text"] + L["question"] + L["answer"] + 2 * L["premise"] + L["conclusion"] + 2 * L["statement"])
    print(f"torch qarac cuda bf16-autocast: d={D} layers={LAYERS} B={B} per task{' ragged' if a.ragged else ''}"
          f"{' paired' if a.paired else ''}, "
          f"torch {torch.__version__}")
    print(f"  {1e3 * seconds / a.iters:.2f} ms/step, {real / seconds:.0f} tokens/s real, "
          f"{padded * a.iters / seconds:.0f} tokens/s padded-equivalent, {B * a.iters / seconds:.1f} samples/s")


if __name__ == "__main__":
    main()
