"""An independent check of what qarac-train computes: the QARAC model and its four losses
(docs/design.md §2-§3) written again here in PyTorch float64 from the design alone, not from the
C++ code nor from the exported modeling_qarac.py, and compared with step 1 of qarac-train.

The inputs are tiny: four examples per task (a few lines of data/sample), a task batch of 4, so
that step 1's global batch of every task is its whole stream and the losses, means over the
batch, do not depend on the order the loader draws. The base is a 2-layer RoBERTa (d 64, 2 heads,
V 1500) made here with random weights, biases and LayerNorm gains (none of them at their usual
zero/one values), so that every term of the model counts; the new heads start at
model.init_std 0.1. qarac-train runs one step with dropout 0, a learning rate of 1e-30 and no
clipping. Compared with the reference on the same weights and examples:
- each task's loss and the global gradient norm that metrics.jsonl reports for step 1;
- the gradient of every parameter tensor: after one AdamW step from zero moments the
  checkpoint's first moment is m = (1 - beta1)·g (no clipping, optimizer.clip 0).
The weights are the run's own: the checkpoint's master weights (f64 in an f64 run); one update
of at most lr = 1e-30 per element leaves every non-zero weight as it was (below half an ulp of
any weight above 1e-14) and moves the zero-initialised biases by at most 1e-30, far below what
the comparison resolves. The exports are checked to hold the same weights (rounded to float32
in an f64 run, whose heads are drawn in f64).
The token ids are read from the task streams with h5py (not tokenised again).

Configurations: f64 (reference numerics), f32 (qarac-train's default compute), and in f64
model.share_encoder_base and model.tie_lm_head.

QARAC_REF_PERTURB=<name> changes one definition of the reference (mse_sum, no_eos, token_mean,
gelu_tanh, unmasked_head, positions0, ln_eps), which must then fail the comparison: it shows
that the test can fail.

Environment: QARAC_BIN, the folder of the programs (default build/src/cli);
QARAC_LD_LIBRARY_PATH, the programs' LD_LIBRARY_PATH.
Run by tests/python/run.sh, or: python3 -m pytest tests/python/test_qarac_step.py
"""
# needs: torch transformers numpy h5py safetensors
import json
import math
import os

import numpy as np
import pytest
from programs import BIN, SAMPLE, run

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
h5py = pytest.importorskip("h5py")
safetensors_numpy = pytest.importorskip("safetensors.numpy")
F = torch.nn.functional

PERTURB = os.environ.get("QARAC_REF_PERTURB", "")
F64 = torch.float64
B = 4  # examples per task stream, and each task's global batch
D, LAYERS, HEADS, FFN, VOCAB, POSITIONS = 64, 2, 2, 256, 1500, 130
TASKS = ("encode_decode", "question_answering", "reasoning", "consistency")
FIELDS = {"encode_decode": ("text",), "question_answering": ("question", "answer"),
          "reasoning": ("premise0", "premise1", "conclusion"), "consistency": ("statement0", "statement1")}
BETA1 = 0.9

# Tolerances (relative; for the per-tensor gradients, |g_ref - g| over the global norm |g|).
# The reference is float64 on the run's own weights, so what differs is qarac-train's rounding
# (and the reference's, 1e-16). Rounding errors grow through 2 + 2 layers, softmax, LayerNorm,
# the cosines and the reductions; on these inputs the largest differences measured are 3.4e-6 in
# an f32 run (consistency; about 55 units of float32's roundoff u = 6e-8) and 1.6e-14 in an f64
# run (the gradient norm; about 140 units of float64's u = 1.1e-16): an amplification of
# ~1e2 units of roundoff in either precision. The tolerances allow ~1e4 units: 1e-12 in f64,
# 1e-4 in f32 (60x and 30x the measured differences), not more. Each perturbation of the
# reference (QARAC_REF_PERTURB) moves some figure by 2.9e-4 (ln_eps: consistency) to 63
# (mse_sum: question_answering): the f64 comparison resolves them by 8 orders of magnitude, the
# f32 one by a factor of 3 or more. (Measured with a scratch reference on another random base,
# a decoder base without its causal mask, pooling without <s>/</s>, a softmax in the pooling,
# transposed pooling matrices, or v added to every decoder row instead of a slot 0 moved some
# figure by 1e-2 or more.)
TOLERANCE = {"f64": 1e-12, "f32": 1e-4}
CONFIGS = {
    "f64": ("f64", []),
    "f32": ("f32", []),
    "f64-share_encoder_base": ("f64", ["--model.share_encoder_base", "true"]),
    "f64-tie_lm_head": ("f64", ["--model.tie_lm_head", "true"]),
}


def tiny_inputs(raw):
    """B records of each raw format, cut from data/sample in their own formats."""
    raw.mkdir()
    text = [l for l in (SAMPLE / "corpus_train.txt").read_text().splitlines() if l.strip()][:B]
    (raw / "text.txt").write_text("\n".join(text) + "\n")
    wikiqa = (SAMPLE / "WikiQA-train.tsv").read_text().splitlines()
    answers = [l for l in wikiqa[1:] if l.split("\t")[-1] == "1"][:B]  # one per question
    assert len({a.split("\t")[0] for a in answers}) == B
    (raw / "wikiqa.tsv").write_text("\n".join([wikiqa[0], *answers]) + "\n")
    avicenna = (SAMPLE / "Avicenna_Train.csv").read_bytes().decode("latin-1").splitlines()
    rows = [l for l in avicenna[1:] if ",yes," in l and l.isascii() and '"' not in l][:B]
    (raw / "avicenna.csv").write_text("\n".join([avicenna[0], *rows]) + "\n")
    snli = [json.loads(l) for l in (SAMPLE / "snli_1.0_train.jsonl").read_text().splitlines()]
    labelled = lambda g: [r for r in snli if r["gold_label"] == g]
    picked = [*labelled("entailment")[:2], labelled("neutral")[0], labelled("contradiction")[0]]
    (raw / "snli.jsonl").write_text("".join(json.dumps(r) + "\n" for r in picked))
    return ["--text", raw / "text.txt", "--wikiqa", raw / "wikiqa.tsv",
            "--avicenna", raw / "avicenna.csv", "--snli", raw / "snli.jsonl"]


def random_base(out):
    """A Hugging Face RoBERTa directory with random weights: matrices N(0, 0.15^2) (attention
    far from uniform), biases N(0, 0.1^2), LayerNorm gains 1 + N(0, 0.2^2)."""
    out.mkdir()
    rng = np.random.default_rng(7)
    shapes = {"roberta.embeddings.word_embeddings.weight": (VOCAB, D),
              "roberta.embeddings.position_embeddings.weight": (POSITIONS, D),
              "roberta.embeddings.token_type_embeddings.weight": (1, D),
              "roberta.embeddings.LayerNorm.weight": (D,), "roberta.embeddings.LayerNorm.bias": (D,)}
    for i in range(LAYERS):
        p = f"roberta.encoder.layer.{i}."
        for name, (o, n) in {"attention.self.query": (D, D), "attention.self.key": (D, D),
                             "attention.self.value": (D, D), "attention.output.dense": (D, D),
                             "intermediate.dense": (FFN, D), "output.dense": (D, FFN)}.items():
            shapes[p + name + ".weight"], shapes[p + name + ".bias"] = (o, n), (o,)
        for name in ("attention.output.LayerNorm", "output.LayerNorm"):
            shapes[p + name + ".weight"], shapes[p + name + ".bias"] = (D,), (D,)
    tensors = {}
    for name, shape in shapes.items():
        if len(shape) == 2:
            t = 0.15 * rng.standard_normal(shape)
        elif "LayerNorm.weight" in name:
            t = 1 + 0.2 * rng.standard_normal(shape)
        else:
            t = 0.1 * rng.standard_normal(shape)
        tensors[name] = t.astype(np.float32)
    safetensors_numpy.save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = {"architectures": ["RobertaModel"], "model_type": "roberta", "vocab_size": VOCAB,
              "hidden_size": D, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
              "intermediate_size": FFN, "hidden_act": "gelu", "hidden_dropout_prob": 0.0,
              "attention_probs_dropout_prob": 0.0, "max_position_embeddings": POSITIONS,
              "type_vocab_size": 1, "layer_norm_eps": 1e-5, "pad_token_id": 1, "bos_token_id": 0,
              "eos_token_id": 2, "position_embedding_type": "absolute"}
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return config


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("qarac_step")
    run(BIN / "qarac-prep", "--tokenizer", SAMPLE / "tokenizer", "--out", root / "data",
        "--max-length", "128", *tiny_inputs(root / "raw"))
    config = random_base(root / "base")
    return {"root": root, "config": config, "streams": read_streams(root / "data")}


def read_streams(folder):
    """Every field of every example as a tensor of token ids (<s> ... </s>), and the labels."""
    streams = {}
    for task in TASKS:
        with h5py.File(folder / f"{task}.h5", "r") as f:
            examples = {}
            for field in FIELDS[task]:
                tokens = f[f"fields/{field}/tokens"][:].astype(np.int64)
                offsets = f[f"fields/{field}/offsets"][:]
                examples[field] = [torch.from_numpy(tokens[a:b]) for a, b in zip(offsets[:-1], offsets[1:])]
                assert len(examples[field]) == B
            if task == "consistency":
                examples["labels"] = torch.from_numpy(f["labels"][:].astype(np.float64))
        streams[task] = examples
    return streams


class Reference:
    """The QARAC models of docs/design.md §2 over P, a dict of float64 tensors named
    '<model>.<Hugging Face name>' (models question_encoder, answer_encoder, decoder, and
    shared_encoder for the base the encoders share with model.share_encoder_base). One sequence
    at a time: no padding, so no key-padding mask is needed."""

    def __init__(self, P, config):
        self.P, self.heads, self.eps = P, config["num_attention_heads"], config["layer_norm_eps"]
        self.layers = config["num_hidden_layers"]
        if PERTURB == "ln_eps":
            self.eps = 1e-12

    def linear(self, x, name):
        return x @ self.P[name + ".weight"].T + self.P[name + ".bias"]

    def layer_norm(self, x, name):
        return F.layer_norm(x, x.shape[-1:], self.P[name + ".weight"], self.P[name + ".bias"], self.eps)

    @staticmethod
    def gelu(x):  # erf GELU (hidden_act "gelu", design §5)
        return F.gelu(x, approximate="tanh" if PERTURB == "gelu_tanh" else "none")

    def layer(self, x, name, causal):
        """A RoBERTa layer, post-LN: LN(x + attention(x)), then LN(a + FFN(a))."""
        T, d = x.shape
        dh = d // self.heads
        q, k, v = (self.linear(x, f"{name}.attention.self.{m}").view(T, self.heads, dh).transpose(0, 1)
                   for m in ("query", "key", "value"))
        scores = q @ k.transpose(1, 2) / math.sqrt(dh)
        if causal:
            scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
        context = (scores.softmax(-1) @ v).transpose(0, 1).reshape(T, d)
        a = self.layer_norm(x + self.linear(context, f"{name}.attention.output.dense"),
                            f"{name}.attention.output.LayerNorm")
        f = self.linear(self.gelu(self.linear(a, f"{name}.intermediate.dense")), f"{name}.output.dense")
        return self.layer_norm(a + f, f"{name}.output.LayerNorm")

    def base(self, model, ids, causal):
        """RoBERTa over one sequence: token t at position id t + 2, token type 0."""
        e = f"{model}.roberta.embeddings"
        positions = torch.arange(len(ids)) + (0 if PERTURB == "positions0" else 2)
        x = (self.P[e + ".word_embeddings.weight"][ids] + self.P[e + ".position_embeddings.weight"][positions]
             + self.P[e + ".token_type_embeddings.weight"][0])
        x = self.layer_norm(x, e + ".LayerNorm")
        for i in range(self.layers):
            x = self.layer(x, f"{model}.roberta.encoder.layer.{i}", causal)
        return x

    def encode(self, model, ids):
        """QE or AE: bidirectional base over <s> x </s>, then the global attention pooling:
        g = Wg·Σ_t X_t, l_t = Wl·X_t, a_t = cos(l_t, g) (eps 1e-12, no softmax), v = Σ_t a_t·X_t."""
        shared = "shared_encoder.roberta.embeddings.word_embeddings.weight" in self.P
        X = self.base("shared_encoder" if shared else model, ids, causal=False)
        g = self.P[f"{model}.pooling.global_projection.weight"] @ X.sum(0)
        l = X @ self.P[f"{model}.pooling.local_projection.weight"].T
        a = (l @ g) / torch.clamp(l.norm(dim=1) * g.norm(), min=1e-12)
        return (a[:, None] * X).sum(0)

    def decoder_logits(self, v, y_in):
        """D(v, y): causal base over y_in = <s> y, giving H; [v; H]; a layer whose row i sees rows
        0..i, which is H's causal mask plus slot 0 for every row; slot 0 dropped; a second causal
        layer; the LM head (dense, GELU, LayerNorm, output matrix and bias)."""
        H = self.base("decoder", y_in, causal=True)
        Z = self.layer(torch.cat([v[None], H]), "decoder.decoder_layers.0", PERTURB != "unmasked_head")[1:]
        Z = self.layer(Z, "decoder.decoder_layers.1", PERTURB != "unmasked_head")
        z = self.layer_norm(self.gelu(self.linear(Z, "decoder.lm_head.dense")), "decoder.lm_head.layer_norm")
        W = self.P.get("decoder.lm_head.decoder.weight",  # absent: tied (model.tie_lm_head)
                       self.P["decoder.roberta.embeddings.word_embeddings.weight"])
        return z @ W.T + self.P["decoder.lm_head.bias"]

    def decoder_loss(self, vectors, fields):
        """Mean over the batch of each sample's mean cross-entropy over its targets y </s>."""
        per_token = []
        for v, field in zip(vectors, fields):  # field = <s> y </s>
            y_in, target = field[:-1], field[1:]
            logits = self.decoder_logits(v, y_in)
            if PERTURB == "no_eos":
                logits, target = logits[:-1], target[:-1]
            per_token.append(F.cross_entropy(logits, target, reduction="none"))
        if PERTURB == "token_mean":  # Hugging Face's causal LM reduction, not QARAC's
            return torch.cat(per_token).mean()
        return torch.stack([t.mean() for t in per_token]).mean()

    def losses(self, streams):
        ae = lambda ids: self.encode("answer_encoder", ids)
        ed, qa, rs, cs = (streams[t] for t in TASKS)
        squared = [(self.encode("question_encoder", q) - ae(a)) ** 2
                   for q, a in zip(qa["question"], qa["answer"])]
        cosines = torch.stack([F.cosine_similarity(ae(s0), ae(s1), dim=0, eps=1e-12)
                               for s0, s1 in zip(cs["statement0"], cs["statement1"])])
        return {
            "encode_decode": self.decoder_loss([ae(x) for x in ed["text"]], ed["text"]),
            "question_answering": torch.stack([s.sum() if PERTURB == "mse_sum" else s.mean()
                                               for s in squared]).mean(),
            "reasoning": self.decoder_loss([ae(p0) + ae(p1) for p0, p1 in zip(rs["premise0"],
                                                                              rs["premise1"])], rs["conclusion"]),
            "consistency": ((cosines - cs["labels"]) ** 2).mean(),
        }


def checkpoint_state(run_dir):
    """The master weights and AdamW first moments of step 1's checkpoint, by model."""
    (step,) = sorted((run_dir / "checkpoints").iterdir())
    weights, moments = {}, {}
    for path in sorted(step.glob("*.h5")):
        with h5py.File(path, "r") as f:
            for name, data in f["parameters"].items():
                weights[name] = data[...]
            for name, data in f["optimizer/m"].items():
                moments[name] = data[...]
    assert weights and set(weights) == set(moments)
    return weights, moments


def check_exports(run_dir, weights):
    """The exports hold the checkpoint's weights (float32 as the export stores them)."""
    for model in ("question_encoder", "answer_encoder", "decoder"):
        exported = safetensors_numpy.load_file(str(run_dir / "export" / model / "model.safetensors"))
        for name, tensor in exported.items():
            # The decoder's LM head is exported as qarac_lm_head (a plain RobertaForCausalLM then finds none of it).
            source = f"{model}.{name.replace('qarac_lm_head.', 'lm_head.', 1)}"
            if source not in weights:  # a shared encoder base, or a tied LM head
                source = (f"shared_encoder.{name}" if model != "decoder"
                          else "decoder.roberta.embeddings.word_embeddings.weight")
            np.testing.assert_array_equal(tensor, weights[source].astype(np.float32),
                                          err_msg=f"{model}: {name}")


def relative(ours, theirs):
    return abs(ours / theirs - 1)


def test_reference_base_is_transformers_roberta(prepared):
    """The reference's own RoBERTa layer (which the decoder's head layers use too) is
    transformers' RobertaModel, bidirectional and causal (is_decoder), on the random base."""
    tensors = safetensors_numpy.load_file(str(prepared["root"] / "base" / "model.safetensors"))
    P = {f"m.{k}": torch.from_numpy(v.astype(np.float64)) for k, v in tensors.items()}
    ours = Reference(P, prepared["config"])
    ids = prepared["streams"]["encode_decode"]["text"][0]
    for causal in (False, True):
        config = transformers.RobertaConfig(**prepared["config"], is_decoder=causal)
        hf = transformers.RobertaModel(config, add_pooling_layer=False).to(F64).eval()
        hf.load_state_dict({k[len("roberta."):]: torch.from_numpy(t).to(F64) for k, t in tensors.items()},
                           strict=True)
        with torch.no_grad():
            theirs = hf(input_ids=ids[None]).last_hidden_state[0]
            mine = ours.base("m", ids, causal)
        assert float((mine - theirs).abs().max()) <= 1e-12, f"causal={causal}"


@pytest.mark.parametrize("name", list(CONFIGS))
def test_step_one_matches_reference(prepared, name):
    dtype, options = CONFIGS[name]
    out = prepared["root"] / name
    batches = [x for t in ("ed", "qa", "rs", "cs") for x in (f"--task.{t}.batch", B, f"--task.{t}.weight", 1)]
    run(BIN / "qarac-train", "--output", out, "--model.base", prepared["root"] / "base",
        "--data.dir", prepared["root"] / "data", "--train.device", "cpu", "--train.dtype", dtype,
        "--train.steps", 1, "--model.dropout", 0, "--model.init_std", 0.1, "--optimizer.name", "adamw",
        "--optimizer.lr", 1e-30, "--optimizer.warmup", 0, "--optimizer.weight_decay", 0,
        "--optimizer.beta1", BETA1, "--optimizer.clip", 0, "--checkpoint.every", 0, *batches, *options)
    (metrics,) = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert metrics["step"] == 1 and metrics["global_examples"] == 4 * B

    weights, moments = checkpoint_state(out)
    assert all(w.dtype == (np.float64 if dtype == "f64" else np.float32) for w in weights.values())
    check_exports(out, weights)
    config = json.loads((out / "export" / "decoder" / "config.json").read_text())
    P = {k: torch.tensor(w, dtype=F64, requires_grad=True) for k, w in weights.items()}
    losses = Reference(P, config).losses(prepared["streams"])
    sum(losses.values()).backward()  # every task weight is 1
    assert all(p.grad is not None for p in P.values()), "a parameter the reference never uses"
    norm = math.sqrt(sum(float((p.grad ** 2).sum()) for p in P.values()))
    # One AdamW step from zero moments: m = (1 - beta1)·g.
    gradient_error = {k: float((P[k].grad - torch.from_numpy(m.astype(np.float64)) / (1 - BETA1)).norm())
                      / norm for k, m in moments.items()}

    tolerance = TOLERANCE[dtype]
    report = [f"{name}: {t} reference {losses[t].item():.15g} qarac-train {metrics['loss'][t]:.15g} "
              f"relative {relative(losses[t].item(), metrics['loss'][t]):.2e}" for t in TASKS]
    report.append(f"{name}: grad_norm reference {norm:.15g} qarac-train {metrics['grad_norm']:.15g} "
                  f"relative {relative(norm, metrics['grad_norm']):.2e}")
    worst = max(gradient_error, key=gradient_error.get)
    report.append(f"{name}: per-tensor gradients, largest |difference|/|g| "
                  f"{gradient_error[worst]:.2e} ({worst})")
    print("\n".join(report))
    for t in TASKS:
        assert relative(losses[t].item(), metrics["loss"][t]) <= tolerance, "\n".join(report)
    assert relative(norm, metrics["grad_norm"]) <= tolerance, "\n".join(report)
    assert gradient_error[worst] <= tolerance, "\n".join(report)
