#!/usr/bin/env python3
"""Regenerates the Hugging Face reference dump tests/golden/data/tiny_dev (see its README.md).

A randomly initialised RoBERTa (B=3, S=12, d=32, 2 layers, 4 heads, ffn 64, V=101) is built by
transformers itself, its biases and LayerNorm weights are perturbed so that none is trivial, and
the encoder is run in float64 on CPU, bidirectionally and causally (is_decoder=True). The dump
holds the float32 weights, the inputs, both last hidden states, a random cotangent R, the loss
sum(last_hidden_state * R * attention_mask) and the gradient of that loss for every encoder
parameter. The C++ parity tests (qarac-parity) compare against it; nothing here is needed to
build or run the C++ programs.

Run with CPython 3.11, torch 2.11.0 (CPU), transformers 5.17.0 and safetensors 0.8.0 (pinned in
tests/golden/requirements.txt); with those versions the output is bit-identical to the committed
dump. The random draws come from torch's global generator in one fixed order:

  1. torch.manual_seed(1), then RobertaForMaskedLM(config) (transformers' own initialisation);
  2. for every parameter in named_parameters() order: a bias gets += 0.1 * randn, a weight whose
     name holds "LayerNorm.weight" gets += 0.1 * randn (the MLM head's `layer_norm.weight` does not
     match and stays 1);
  3. input_ids = randint(3, V, (B, S)), then BOS/EOS/PAD are written in place (no draw);
  4. the causal encoder RobertaModel(config with is_decoder=True, add_pooling_layer=False) is
     built, which consumes draws for its own initialisation before the weights are copied in;
  5. R = randn(B, S, d, float64).

The gradients of the LayerNorm parameters are reductions over rows whose partition depends on
torch's intra-op thread count, so the script fixes it (--threads, default 16: the count the dump
was made with). Other thread counts change those ten tensors in the last bit or two (about 5e-15).

Usage:
  python tests/golden/make_golden.py --out tests/golden/data/tiny_dev
  python tests/golden/make_golden.py --check tests/golden/data/tiny_dev   # regenerate and compare
"""

import argparse
import copy
import json
import os
import sys

import torch
import transformers
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import RobertaConfig, RobertaForMaskedLM, RobertaModel

SEED = 1
BATCH, SEQ = 3, 12
HIDDEN, LAYERS, HEADS, FFN, VOCAB = 32, 2, 4, 64, 101
# Real tokens per row (BOS ... EOS), the rest padding: one full row, two padded ones.
LENGTHS = (12, 9, 5)
BOS, PAD, EOS = 0, 1, 2
FIRST_ORDINARY_ID = 3  # ids below are BOS, PAD, EOS
PERTURBATION = 0.1


def make_config(is_decoder=False):
    config = RobertaConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=FFN,
        hidden_act="gelu",
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        max_position_embeddings=SEQ + 2,  # positions run from PAD + 1 to PAD + SEQ
        type_vocab_size=1,
        layer_norm_eps=1e-5,
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=EOS,
        is_decoder=is_decoder,
    )
    # The plain softmax(QK^T / sqrt(dh) + mask) V path; SDPA differs in the last bits.
    config._attn_implementation = "eager"
    return config


def perturb(model):
    """Moves every bias and every encoder LayerNorm weight off its initial 0 / 1."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias") or "LayerNorm.weight" in name:
                param.add_(PERTURBATION * torch.randn_like(param))


def make_inputs():
    """Random ids with BOS first, EOS last and PAD after it; the mask marks real tokens."""
    input_ids = torch.randint(FIRST_ORDINARY_ID, VOCAB, (BATCH, SEQ))
    attention_mask = torch.zeros(BATCH, SEQ, dtype=torch.int64)
    for row, length in enumerate(LENGTHS):
        input_ids[row, 0] = BOS
        input_ids[row, length - 1] = EOS
        input_ids[row, length:] = PAD
        attention_mask[row, :length] = 1
    return input_ids, attention_mask


def roberta_position_ids(attention_mask):
    """RoBERTa's positions: PAD + 1, PAD + 2, ... at real tokens, PAD at padding."""
    return torch.cumsum(attention_mask, dim=1) * attention_mask + PAD


def config_json(model):
    """The full config (every field, not only those off their defaults) as one-space-indented JSON."""
    return json.dumps(model.config.to_dict(), indent=1)


def generate(threads):
    torch.set_num_threads(threads)
    torch.manual_seed(SEED)
    model = RobertaForMaskedLM(make_config())
    model.eval()
    perturb(model)
    model.config.architectures = [type(model).__name__]

    # Stored weights: float32, Hugging Face names, the tied decoder weight left out (as
    # save_pretrained does; readers take it from the word embeddings).
    tied = {"lm_head.decoder.weight", "lm_head.decoder.bias"}
    weights = {name: t.detach().clone().contiguous() for name, t in model.state_dict().items() if name not in tied}

    input_ids, attention_mask = make_inputs()
    position_ids = roberta_position_ids(attention_mask)
    token_type_ids = torch.zeros_like(input_ids)

    causal = RobertaModel(make_config(is_decoder=True), add_pooling_layer=False)
    R = torch.randn(BATCH, SEQ, HIDDEN, dtype=torch.float64)

    # The same float32 weights, widened exactly; the causal encoder gets a copy of them.
    encoder = model.roberta.double()
    causal = causal.double().eval()
    causal.load_state_dict(encoder.state_dict())

    inputs = dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                  token_type_ids=token_type_ids)
    hidden = encoder(**inputs).last_hidden_state
    loss = (hidden * R * attention_mask[..., None]).sum()
    encoder.zero_grad(set_to_none=True)
    loss.backward()
    with torch.no_grad():
        hidden_causal = causal(**inputs).last_hidden_state

    expected = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "last_hidden_state": hidden.detach().contiguous(),
        "last_hidden_state_causal": hidden_causal.contiguous(),
        "R": R,
        "loss": loss.detach().reshape(1),
    }
    for name, param in encoder.named_parameters():
        expected["grad." + name] = param.grad.detach().clone().contiguous()
    return config_json(model), weights, expected


def write(out_dir, config_text, weights, expected):
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "config.json"), "w", encoding="utf-8") as f:
        f.write(config_text)
    save_file(weights, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    save_file(expected, os.path.join(out_dir, "expected.safetensors"))


def load(path):
    with safe_open(path, framework="pt") as f:
        return {name: f.get_tensor(name) for name in f.keys()}


def max_difference(a, b):
    if a.dtype != b.dtype or a.shape != b.shape:
        return None
    if a.dtype.is_floating_point:
        return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0
    return (a - b).abs().max().item() if a.numel() else 0


def check(reference_dir, config_text, weights, expected, tolerance):
    """Prints, per tensor, whether the regenerated value is bit-identical to the reference."""
    failures = 0
    with open(os.path.join(reference_dir, "config.json"), encoding="utf-8") as f:
        ref_config = f.read()
    same_json = json.loads(ref_config) == json.loads(config_text)
    print(f"config.json: {'same bytes' if ref_config == config_text else 'same content' if same_json else 'DIFFERENT'}")
    failures += 0 if same_json else 1
    for file_name, ours in (("model.safetensors", weights), ("expected.safetensors", expected)):
        ref = load(os.path.join(reference_dir, file_name))
        print(f"{file_name}: {len(ours)} tensors generated, {len(ref)} in {reference_dir}")
        for name in sorted(set(ref) | set(ours)):
            if name not in ref or name not in ours:
                print(f"  {name:60s} MISSING {'in reference' if name not in ref else 'here'}")
                failures += 1
                continue
            diff = max_difference(ours[name], ref[name])
            if diff is None:
                print(f"  {name:60s} MISMATCH {ours[name].dtype}{list(ours[name].shape)} vs "
                      f"{ref[name].dtype}{list(ref[name].shape)}")
                failures += 1
                continue
            identical = torch.equal(ours[name], ref[name])
            verdict = "bit-identical" if identical else f"max |diff| {diff:.3g}"
            print(f"  {name:60s} {str(ref[name].dtype)[6:]:8s} {verdict}")
            if not identical and diff > tolerance:
                failures += 1
    print(f"check: {failures} mismatch(es) above tolerance {tolerance:g}")
    return failures


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="write config.json, model.safetensors, expected.safetensors here")
    parser.add_argument("--check", metavar="DIR", help="compare the regenerated dump with the one in DIR")
    parser.add_argument("--tolerance", type=float, default=0.0,
                        help="largest absolute difference --check accepts (default 0: bit-identical)")
    parser.add_argument("--threads", type=int, default=16,
                        help="torch intra-op threads; fixes the LayerNorm gradients' reduction order (default 16)")
    args = parser.parse_args()
    if not args.out and not args.check:
        parser.error("give --out DIR, --check DIR, or both")

    print(f"torch {torch.__version__}, transformers {transformers.__version__}, threads {args.threads}")
    config_text, weights, expected = generate(args.threads)
    if args.out:
        write(args.out, config_text, weights, expected)
        print(f"wrote {args.out}")
    if args.check:
        return 1 if check(args.check, config_text, weights, expected, args.tolerance) else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
