"""The exports as a Hugging Face user loads them (issue 14), after a short fine-tuning:
AutoTokenizer encodes like the training tokenizer, AutoModel(trust_remote_code=True) gives
qarac-embed's vectors and qarac-generate's tokens (a "<pad>" written in a text included),
sentence-transformers gives the same vectors, the classes that would compute something else
refuse the QARAC exports, the model card's snippets run as written, and qarac-embed --rank gives
the evaluator's selection accuracy.

Environment: QARAC_BIN, the folder of the programs (default build/src/cli); QARAC_TEST_DEVICE,
the --device of qarac-embed and qarac-generate (default cpu; training runs on the CPU);
QARAC_LD_LIBRARY_PATH, the programs' LD_LIBRARY_PATH.
Run by ctest (python_hf_export) through tests/python/run.sh, or: python3 -m pytest tests/python
"""
# needs: torch transformers tokenizers numpy
import json
import os
import re
import shutil
import subprocess
import sys

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


def embed(runs, model, texts, name):
    """qarac-embed's vectors of `texts` by the `model` export."""
    inputs, out = runs["root"] / f"{name}.txt", runs["root"] / f"{name}.npy"
    inputs.write_text("\n".join(texts) + "\n")
    run(BIN / "qarac-embed", "--model", runs["exports"][model], "--input", inputs, "--output", out,
        "--device", DEVICE)
    return np.load(out)


@pytest.mark.parametrize("model", ENCODERS)
def test_pad_token_in_text(runs, model):
    """A "<pad>" written in a text is the pad id, a real token to qarac-embed: the shipped modeling
    code numbers positions from the attention mask, as qarac-embed does, where transformers'
    RobertaModel would give that token the padding position."""
    export = runs["exports"][model]
    texts = ["a <pad> b c", "<pad> first", "a b c"]
    ours = embed(runs, model, texts, f"pad-{model}")
    tok = hf_tokenizer(export)
    batch = tok(texts, padding=True, return_tensors="pt")
    assert (batch["input_ids"][0] == tok.pad_token_id).sum() == 1 and batch["attention_mask"][0].all()
    hf = transformers.AutoModel.from_pretrained(str(export), trust_remote_code=True).eval()
    with torch.no_grad():
        theirs = hf(**batch).pooler_output.numpy()
    assert relative_error(ours, theirs) <= 1e-5


def test_decoder_pad_token_in_target(runs):
    """The decoder numbers "<s> y" from the attention mask too: y holding the pad id gives the
    logits of y holding another id with the same embedding."""
    decoder = transformers.AutoModel.from_pretrained(str(runs["exports"]["decoder"]),
                                                     trust_remote_code=True).eval()
    pad = decoder.config.pad_token_id
    words = decoder.roberta.embeddings.word_embeddings.weight
    stand_in = words.shape[0] - 1
    with torch.no_grad():
        words[stand_in] = words[pad]
        vector = torch.randn(1, decoder.config.hidden_size, generator=torch.Generator().manual_seed(3))
        ids = torch.tensor([[decoder.config.bos_token_id, 5, pad, 7, 9]])
        mask = torch.ones_like(ids)
        with_pad = decoder(vector, ids, mask).logits
        ids[0, 2] = stand_in
        without = decoder(vector, ids, mask).logits
    # The stand-in's own logit differs where the LM head is tied to the embeddings.
    assert torch.allclose(with_pad[..., :stand_in], without[..., :stand_in], atol=1e-5, rtol=0)


def test_sentence_transformers(runs):
    """sentence-transformers (6: modality_config) gives the QARAC vector, texts past the positions
    cut as qarac-embed cuts them, and refuses the export without trust_remote_code."""
    st = pytest.importorskip("sentence_transformers")
    if int(st.__version__.split(".")[0]) < 6:
        pytest.skip(f"sentence-transformers {st.__version__} does not read modality_config")
    export = runs["exports"]["question_encoder"]
    with pytest.raises(ValueError, match="trust_remote_code"):
        st.SentenceTransformer(str(export), device="cpu")
    model = st.SentenceTransformer(str(export), device="cpu", trust_remote_code=True)
    texts = runs["texts"] + ["many words " * 200]
    ours = embed(runs, "question_encoder", texts, "sentence-transformers")
    assert relative_error(ours, model.encode(texts)) <= 1e-5


def test_plain_classes_refuse_qarac_exports(runs):
    """The QARAC exports' model types are their own: AutoModel without trust_remote_code and
    AutoModelForCausalLM fail rather than give a RoBERTa that ignores the heads, RobertaForCausalLM
    named explicitly finds no head weight in the decoder export; the pre-trained
    base stays a plain RobertaForMaskedLM. Weights are float32 (config.json's torch_dtype)."""
    for model in (*ENCODERS, "decoder"):
        export = str(runs["exports"][model])
        with pytest.raises(ValueError, match="trust_remote_code"):
            transformers.AutoModel.from_pretrained(export)
        config = transformers.AutoConfig.from_pretrained(export, trust_remote_code=True)
        assert config.dtype == torch.float32
    for options in ({}, {"trust_remote_code": True}):
        with pytest.raises(ValueError):
            transformers.AutoModelForCausalLM.from_pretrained(str(runs["exports"]["decoder"]), **options)
    # Named explicitly, the plain LM classes load the base but none of the decoder's head, and
    # report every weight of theirs missing: not a RoBERTa LM that skips the head layers quietly.
    for cls in (transformers.RobertaForCausalLM, transformers.RobertaForMaskedLM):
        _, info = cls.from_pretrained(str(runs["exports"]["decoder"]), output_loading_info=True)
        head = {"lm_head.dense.weight", "lm_head.dense.bias", "lm_head.layer_norm.weight", "lm_head.layer_norm.bias",
                "lm_head.bias"}
        assert head <= set(info["missing_keys"]), (cls.__name__, info["missing_keys"])
        assert not any(k.startswith("roberta.") for k in info["missing_keys"]), info["missing_keys"]
    base, info = transformers.AutoModelForMaskedLM.from_pretrained(str(runs["exports"]["base"]),
                                                                   output_loading_info=True)
    assert type(base).__name__ == "RobertaForMaskedLM" and not info["missing_keys"]


@pytest.mark.parametrize("model", [*ENCODERS, "decoder"])
def test_card_snippet_runs(runs, model):
    """The model card's snippet runs as written from the export's folder, on a text longer than
    the model's positions."""
    export = runs["exports"][model]
    snippets = re.findall(r"```python\n(.*?)```", (export / "README.md").read_text(), re.S)
    assert len(snippets) == 1
    code = snippets[0].replace('"a sentence"', repr("a sentence " + "with many words " * 200))
    assert code != snippets[0]
    hidden = json.loads((export / "config.json").read_text())["hidden_size"]
    done = subprocess.run([sys.executable, "-c", code + "\nprint('vectors', tuple(vectors.shape))\n"],
                          cwd=export, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"vectors (1, {hidden})" in done.stdout


def scrambled_decoder(runs):
    """A copy of the decoder export with noise on its head layers and LM head: after a short
    fine-tuning the decoder says one token whatever the vector, which would compare little."""
    from safetensors.torch import load_file, save_file
    out = runs["root"] / "decoder-scrambled"
    shutil.copytree(runs["exports"]["decoder"], out, dirs_exist_ok=True)
    tensors = load_file(str(out / "model.safetensors"))
    gen = torch.Generator().manual_seed(5)
    for name, t in tensors.items():
        if name.startswith(("decoder_layers.", "qarac_lm_head.")):
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


def test_decoder_generation_with_prompts(runs):
    """generate_from_vectors runs the prompts once, left-padded to one length, then a position a
    step over its key/value caches: its tokens are those of the plain definition, forward() over
    each whole sequence alone and the argmax of its last position, step by step; with prompts of
    0 to 3 tokens, and another number of tokens than any sequence's stop."""
    decoder = transformers.AutoModel.from_pretrained(str(scrambled_decoder(runs)), trust_remote_code=True).eval()
    cfg = decoder.config
    gen = torch.Generator().manual_seed(9)
    vectors = torch.randn(6, cfg.hidden_size, generator=gen)
    prompts = [[5 + 3 * i + j for j in range(i % 4)] for i in range(6)]
    steps = 7
    want = []
    with torch.no_grad():
        for i, prompt in enumerate(prompts):
            seq, new = [cfg.bos_token_id] + prompt, []
            for _ in range(steps):
                logits = decoder(vectors[i:i + 1], torch.tensor([seq])).logits
                token = int(logits[0, -1].argmax())
                if token == cfg.eos_token_id:
                    break
                seq.append(token)
                new.append(token)
            want.append(new)
    got = decoder.generate_from_vectors(vectors, max_new_tokens=steps, prompts=prompts)
    print(f"prompts {prompts}: {got}")
    assert len({tuple(t) for t in want}) > 1, "the sequences decode alike: the comparison says little"
    assert got == want


def test_decoder_generation_refuses_what_it_cannot_decode(runs):
    """As qarac-generate: vectors that are not finite (whose scores' argmax would be <s> whatever
    the vector) and more positions than the model has are a ValueError before any step; no
    vector gives no sequence."""
    decoder = transformers.AutoModel.from_pretrained(str(runs["exports"]["decoder"]), trust_remote_code=True).eval()
    cfg = decoder.config
    vectors = torch.zeros(3, cfg.hidden_size)
    vectors[1, 4] = float("nan")
    with pytest.raises(ValueError, match=r"vectors \[1\] are not finite"):
        decoder.generate_from_vectors(vectors, max_new_tokens=4)
    most = cfg.max_position_embeddings - cfg.pad_token_id - 1
    ok = torch.zeros(1, cfg.hidden_size)
    with pytest.raises(ValueError, match="positions; the model has"):
        decoder.generate_from_vectors(ok, max_new_tokens=most, prompts=[[5]])
    assert len(decoder.generate_from_vectors(ok, max_new_tokens=1, prompts=[[5] * (most - 1)])[0]) <= 1
    assert decoder.generate_from_vectors(torch.zeros(0, cfg.hidden_size), max_new_tokens=4) == []


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
