"""The exports as a Hugging Face user loads them (issue 14), after a short fine-tuning:
AutoTokenizer encodes like the training tokenizer, AutoModel(trust_remote_code=True) gives
qarac-embed's vectors and qarac-generate's tokens, and qarac-embed --rank gives the evaluator's
selection accuracy.

Environment: QARAC_BIN, the folder of the programs (default build/src/cli); QARAC_TEST_DEVICE,
the --device of qarac-embed and qarac-generate (default cpu; training runs on the CPU);
QARAC_LD_LIBRARY_PATH, the programs' LD_LIBRARY_PATH.
Run by ctest (python_hf_export) through tests/python/run.sh, or: python3 -m pytest tests/python
"""
# needs: torch transformers tokenizers numpy
import json
import os
import shutil

import numpy as np
import pytest
from programs import BIN, REPO, SAMPLE, run

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

DEVICE = os.environ.get("QARAC_TEST_DEVICE", "cpu")
ENCODERS = ("question_encoder", "answer_encoder")
STEPS = "20"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Task streams of the sample data, a tiny base pre-trained (mlm) and fine-tuned briefly."""
    root = tmp_path_factory.mktemp("qarac")
    tok = SAMPLE / "tokenizer"
    for split, files in {
        "train": ["corpus_train.txt", "WikiQA-train.tsv", "Avicenna_Train.csv", "snli_1.0_train.jsonl"],
        "heldout": ["corpus_heldout.txt", "WikiQA-dev.tsv", "Avicenna_Test.csv", "snli_1.0_dev.txt"],
    }.items():
        options = ["--text", "--wikiqa", "--avicenna", "--snli"]
        sources = [x for o, f in zip(options, files) for x in (o, SAMPLE / f)]
        run(BIN / "qarac-prep", "--tokenizer", tok, "--out", root / split, "--max-length", "128", *sources)
    common = ["--data.dir", root / "train", "--eval.dir", root / "heldout", "--train.steps", STEPS,
              "--optimizer.warmup", "5", "--checkpoint.every", "0", "--eval.every", "0"]
    run(BIN / "qarac-train", "--config", REPO / "launch/configs/quickstart-pretrain.ini",
        "--output", root / "pretrain", "--model.max_positions", "130", "--model.tokenizer", tok, *common)
    base = root / "pretrain" / "export" / "base"
    run(BIN / "qarac-train", "--config", REPO / "launch/configs/quickstart.ini", "--output",
        root / "finetune", "--model.base", base, "--eval.tokenizer", tok, *common)
    texts = [line for line in (SAMPLE / "corpus_heldout.txt").read_text().splitlines() if line][:16]
    (root / "texts.txt").write_text("\n".join(texts) + "\n")
    exports = {m: root / "finetune" / "export" / m for m in (*ENCODERS, "decoder")}
    exports["base"] = base
    return {"root": root, "exports": exports, "texts": texts}


def hf_tokenizer(path):
    return transformers.AutoTokenizer.from_pretrained(str(path))


@pytest.mark.parametrize("model", ["base", *ENCODERS, "decoder"])
def test_files_and_tokenizer(runs, model):
    export = runs["exports"][model]
    for f in ("config.json", "model.safetensors", "tokenizer.json", "vocab.json", "merges.txt",
              "special_tokens_map.json", "tokenizer_config.json", "README.md"):
        assert (export / f).is_file(), f"{export} lacks {f}"
    card = (export / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\n") and "\ntags:\n- qarac\n" in card
    training = tokenizers.Tokenizer.from_file(str(SAMPLE / "tokenizer" / "tokenizer.json"))
    exported = hf_tokenizer(export)
    assert len(exported) == training.get_vocab_size(with_added_tokens=True)
    for text in runs["texts"] + ["<mask> and <s> specials", "  spaces,\ttabs and ünïcode"]:
        assert exported(text)["input_ids"] == training.encode(text).ids, text


def relative_error(x, y):
    return float(np.abs(x - y).max() / np.abs(y).max())


@pytest.mark.parametrize("model", ENCODERS)
def test_encoder_vectors(runs, model):
    export, out = runs["exports"][model], runs["root"] / f"{model}.npy"
    run(BIN / "qarac-embed", "--model", export, "--input", runs["root"] / "texts.txt", "--output", out,
        "--device", DEVICE)
    ours = np.load(out)
    hf = transformers.AutoModel.from_pretrained(str(export), trust_remote_code=True).eval()
    assert type(hf).__name__ == "QaracEncoderModel"
    batch = hf_tokenizer(export)(runs["texts"], padding=True, return_tensors="pt")
    with torch.no_grad():
        theirs = hf(**batch).pooler_output.numpy()
    assert ours.shape == theirs.shape
    print(f"{model}: qarac-embed vs AutoModel, relative error {relative_error(ours, theirs):.2e}")
    assert relative_error(ours, theirs) <= 1e-5
    # The base alone still loads as a plain RobertaModel, every base tensor used.
    base, info = transformers.RobertaModel.from_pretrained(str(export), add_pooling_layer=False,
                                                          output_loading_info=True)
    assert not info["missing_keys"]


def scrambled_decoder(runs):
    """A copy of the decoder export with noise on its head layers and LM head: after a short
    fine-tuning the decoder says one token whatever the vector, which would compare little."""
    from safetensors.torch import load_file, save_file
    out = runs["root"] / "decoder-scrambled"
    shutil.copytree(runs["exports"]["decoder"], out, dirs_exist_ok=True)
    tensors = load_file(str(out / "model.safetensors"))
    gen = torch.Generator().manual_seed(5)
    for name, t in tensors.items():
        if name.startswith(("decoder_layers.", "lm_head.")):
            t += 0.3 * torch.randn(t.shape, generator=gen)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def test_decoder_generation(runs):
    vectors = runs["root"] / "vectors.npy"
    (runs["root"] / "five.txt").write_text("\n".join(runs["texts"][:5]) + "\n")
    run(BIN / "qarac-embed", "--model", runs["exports"]["answer_encoder"], "--input",
        runs["root"] / "five.txt", "--output", vectors, "--device", DEVICE)
    v = torch.from_numpy(np.load(vectors))
    scrambled = scrambled_decoder(runs)
    for export in (runs["exports"]["decoder"], scrambled):
        out = run(BIN / "qarac-generate", "--decoder", export, "--vectors", vectors,
                  "--max-tokens", "16", "--device", DEVICE)
        ours = [json.loads(line)["tokens"] for line in out.splitlines()]
        decoder = transformers.AutoModel.from_pretrained(str(export), trust_remote_code=True).eval()
        assert type(decoder).__name__ == "QaracDecoderModel"
        theirs = decoder.generate_from_vectors(v, max_new_tokens=16)
        print(f"{export.name}: qarac-generate {ours}; modeling_qarac {theirs}")
        assert len(ours) == 5 and ours == theirs

    # From text: the answer encoder, then the decoder, in both.
    out = run(BIN / "qarac-generate", "--decoder", scrambled, "--encoder",
              runs["exports"]["answer_encoder"], "--input", runs["root"] / "five.txt", "--max-tokens", "16",
              "--device", DEVICE)
    tok = hf_tokenizer(runs["exports"]["decoder"])
    ours = [tok.decode(json.loads(line)["tokens"], skip_special_tokens=True) for line in out.splitlines()]
    encoder = transformers.AutoModel.from_pretrained(str(runs["exports"]["answer_encoder"]),
                                                     trust_remote_code=True).eval()
    decoder = transformers.AutoModel.from_pretrained(str(scrambled), trust_remote_code=True).eval()
    assert decoder.generate_from_text(runs["texts"][:5], encoder, tok, max_new_tokens=16) == ours


@pytest.mark.parametrize("source", ["heldout/question_answering.h5", "WikiQA-dev.tsv"])
def test_rank_is_the_evaluators(runs, source):
    path = SAMPLE / source if source.endswith(".tsv") else runs["root"] / source
    out = run(BIN / "qarac-embed", "--rank", path,
              "--question-encoder", runs["exports"]["question_encoder"],
              "--answer-encoder", runs["exports"]["answer_encoder"], "--device", DEVICE)
    ours = dict(line.split() for line in out.splitlines())
    evals = [json.loads(l) for l in (runs["root"] / "finetune" / "metrics.jsonl").read_text().splitlines()]
    final = [e for e in evals if e.get("eval")][-1]
    print(f"qarac-embed --rank {source}: {ours}; evaluator: qa.selection_accuracy "
          f"{final['qa.selection_accuracy']}, qa.selection_mrr {final['qa.selection_mrr']}")
    assert float(ours["qa.selection_accuracy"]) == pytest.approx(final["qa.selection_accuracy"], abs=1e-6)
    assert float(ours["qa.selection_mrr"]) == pytest.approx(final["qa.selection_mrr"], abs=1e-6)
