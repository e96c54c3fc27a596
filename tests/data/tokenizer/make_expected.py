#!/usr/bin/env python3
"""Builds the reference data for the C++ tokenizer's parity test (tests/unit/test_tokenizer.cpp).

Trains a small byte-level BPE with the Hugging Face `tokenizers` library (PyPI; a test-time tool
only, never a dependency of the C++ program), configured exactly like RoBERTa's tokenizer: no
normalizer, ByteLevel pre-tokenizer without prefix space, ByteLevel decoder, RobertaProcessing
(<s> ... </s>), and RoBERTa's special tokens <s> <pad> </s> <unk> <mask> (ids 0 to 4, <mask>
with lstrip as in roberta-base). It writes, into this folder:

  vocab.json, merges.txt   the model, as RobertaTokenizer reads it
  tokenizer.json           the same tokenizer as one file
  texts.jsonl              one JSON object per text: the text and what Hugging Face makes of it
  unk/tokenizer.json       a tiny BPE whose vocabulary lacks most bytes, with an <unk> token
  unk/vocab.json, unk/merges.txt   the same model, as vocab.json + merges.txt
  unk/texts.jsonl          expected ids: ids and ids_no_special by unk/tokenizer.json (bytes
                           missing from the vocabulary become <unk>), ids_files by vocab.json +
                           merges.txt as RobertaTokenizerFast loads them (no unknown token: the
                           missing bytes are dropped)
  meta.json                the library version and the counts

Fields of texts.jsonl:
  text              the input
  ids               encode(text) with special tokens (<s> ... </s>)
  ids_no_special    encode(text, add_special_tokens=False)
  ids_prefix_space  encode(text) by the same vocab/merges with ByteLevel(add_prefix_space=True)
  decoded           decode(ids_no_special, skip_special_tokens=False)
  decoded_skip      decode(ids, skip_special_tokens=True)
  pieces            the text as the ByteLevel pre-tokenizer alone cuts it (no added tokens)

Run from anywhere: `python3 tests/data/tokenizer/make_expected.py` (pip install tokenizers).
The outputs are committed; rerun only to change the text set or the tokenizer.
"""

import json
import os
import random

import tokenizers
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

HERE = os.path.dirname(os.path.abspath(__file__))

SPECIALS = [
    AddedToken("<s>", special=True, normalized=False),
    AddedToken("<pad>", special=True, normalized=False),
    AddedToken("</s>", special=True, normalized=False),
    AddedToken("<unk>", special=True, normalized=False),
    # roberta-base's <mask> swallows the whitespace before it ("a <mask>" -> "a", "<mask>").
    AddedToken("<mask>", special=True, normalized=False, lstrip=True),
]

# Training text: enough English to learn real merges (the, ing, ' the', contractions, numbers)
# plus every script the test texts use, so that their merges are exercised too.
CORPUS = """
The quick brown fox jumps over the lazy dog. The dog doesn't care; it's sleeping.
I'm sure you're right, but we've seen this before and they'll say it's what they'd do.
She said: "It isn't that simple." He replied that he'd already tried it twice.
Natural language processing lets computers read, understand and generate text.
Transformers encode a sentence into vectors; the decoder turns vectors back into words.
Questions and answers, premises and conclusions: the model learns all four tasks at once.
In 2023, the training run processed 1,234,567 tokens per second on 8 GPUs.
Prices rose 3.5% to $1,299.99 while the index fell 12.75 points to 4,501.
Call 555-0199 or write to info@example.com before 10:30 on 2024-06-01.
The café served crème brûlée and a naïve résumé was pinned to the wall in Zürich.
São Paulo, Ångström, Łódź, Dvořák, İstanbul and Reykjavík are names with accents.
Straße, façade, jalapeño, coöperate, piñata and déjà vu appear in English text too.
東京は日本の首都です。今日はいい天気ですね。
你好，世界！我们今天学习自然语言处理。
한국어 문장도 토큰화해야 합니다.
Привет, мир! Как дела? Всё хорошо.
Γειά σου Κόσμε, η γλώσσα είναι ωραία.
مرحبا بالعالم، كيف حالك اليوم؟
שלום עולם, מה שלומך היום?
नमस्ते दुनिया, आप कैसे हैं?
Emoji are everywhere 😀 😂 👍 🎉 ❤️ 🚀 and people love them 🙂.
def tokenize(text): return [t for t in text.split() if t]
for (int i = 0; i < n; ++i) { sum += x[i] * y[i]; }
https://huggingface.co/roberta-base/resolve/main/vocab.json?download=true
The mitochondria is the powerhouse of the cell; photosynthesis happens in chloroplasts.
Every premise is true, therefore the conclusion follows; no counterexample exists.
A man is playing a guitar on stage. A woman is reading a book in the park.
Two dogs are running through a field while children watch from the fence.
Who wrote the novel? It was written in 1851 by an American author.
When was the bridge built? Construction finished in 1937 after four years.
""".strip().splitlines()

# Curated texts: each line of the list of hard cases, and then some.
CURATED = [
    "",
    "Hello world",
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    # Contractions (the pattern only knows lower-case 's 't 're 've 'm 'll 'd).
    "I'm here, you're there, he's gone, we've won, they'll come, she'd know, it's fine.",
    "don't can't won't isn't aren't wasn't shouldn't",
    "I'M HERE, YOU'RE THERE, HE'S GONE, WE'VE WON, THEY'LL COME, SHE'D KNOW",
    "DON'T CAN'T WON'T",
    "It'S MiXeD: You'Re We'Ve They'Ll I'M He'D",
    "'s 't 're 've 'm 'll 'd",
    "'S 'T 'RE 'VE 'M 'LL 'D",
    "the dogs' bones and James' car",
    "rock'n'roll o'clock 'tis y'all",
    "''s '''t",
    "He said 'hello' and 'goodbye'.",
    "it’s a curly apostrophe’s problem",
    "x's 1's ?'s !'ll",
    # Digits and numbers.
    "0",
    "123",
    "3.14159",
    "1,000,000",
    "12345678901234567890123456789012345678901234567890",
    "2024-06-01T12:30:45Z",
    "+1 (555) 010-9999",
    "v1.2.3-rc4",
    "0x1F 0b1010 1e-9 6.02e23",
    "1st 2nd 3rd 4th",
    "½ ¼ ¾ ² ³ ① ⑩",
    "٠١٢٣٤٥٦٧٨٩ and ०१२३",
    "Ⅻ Ⅳ ⅻ",
    "abc123def456",
    "$1,299.99 €100 £50 ¥1000 ₹500",
    "3.5% 100°C -40°F",
    # Accents and combining marks.
    "café naïve résumé",
    "crème brûlée à la française",
    "Ångström Zürich São Paulo Łódź",
    "cafe\u0301 nai\u0308ve",
    "n\u0303 a\u030a e\u0300\u0301\u0302",
    "\u0301\u0302 leading marks",
    "Tiếng Việt có dấu",
    "İstanbul ıi ǅ ǈ ǋ",
    "Straße STRASSE ß ẞ",
    "ﬁ ﬂ ligatures",
    # CJK and other scripts.
    "你好，世界",
    "日本語のテキストです。",
    "東京は日本の首都です",
    "한국어 문장",
    "GPU使用率は90%です",
    "ＡＢＣ１２３ fullwidth",
    "中文English混合123",
    "Привет, мир!",
    "Γειά σου Κόσμε",
    "नमस्ते दुनिया",
    "สวัสดีชาวโลก",
    "ქართული ენა",
    # Emoji, including ZWJ sequences, skin tones, flags, keycaps, variation selectors.
    "😀",
    "😀😂🤣",
    "👍🏽 👍🏿",
    "👨‍👩‍👧‍👦",
    "👩‍💻 coding",
    "🏳️‍🌈 🏴‍☠️",
    "🇫🇷🇯🇵🇺🇸",
    "1️⃣ #️⃣",
    "I ❤️ NY",
    "❤ ❤️ ♥",
    "emoji😀inside😀words",
    # Letters and digits new in Unicode 15.1 and 16.0, whose classes tokenizers 0.23 has (ICU 72,
    # Unicode 15.0, made them punctuation that took the apostrophe: "Ᲊ'" "s"); U+16EA0, new in
    # 17.0, is not a letter yet.
    "\u1c89's \ua7cb't \U0002ebf0's \U000105c0'll \U00011bc0'd \U0001e5d0're \U00013460've",
    "\U00010d40's \U0001ccf0'm 1\U00010d40 a\u1c89b \u1c89\u1c8a!",
    "\U00016ea0's",
    # Right-to-left scripts.
    "مرحبا بالعالم",
    "كَتَبَ الطَّالِبُ",
    "שלום עולם",
    "עִבְרִית",
    "mixed עברית and العربية text",
    "\u200fRTL mark\u200e LTR mark",
    # Whitespace: runs, tabs, newlines, leading and trailing, Unicode spaces.
    " ",
    "  ",
    "   ",
    "\t",
    "\n",
    "\n\n",
    "\r\n",
    "a b",
    "a  b",
    "a   b",
    "a    b",
    "a\tb",
    "a\t\tb",
    "a \tb",
    "a\t b",
    "a\nb",
    "a\n\nb",
    "a \nb",
    "a\n b",
    "a \n b",
    "a\r\nb",
    " leading space",
    "  two leading spaces",
    "\tleading tab",
    "\nleading newline",
    "trailing space ",
    "trailing spaces   ",
    "trailing newline\n",
    "trailing tab\t",
    "line one\n  indented line\n\tTabbed line\n",
    "x \u00a0y",
    "nbsp\u00a0between",
    "ideographic\u3000space",
    "em\u2003space and thin\u2009space",
    "line\u2028separator\u2029paragraph",
    "vertical\u000btab\u000cform feed",
    "next\u0085line",
    "x\u000b\u000by x\u0085\u0085y",
    "file\x1c\x1dseparators\x1e\x1f are not whitespace",
    "zero\u200b\u200bwidth mongolian\u180e\u180evowel bom\ufeff\ufeff",
    "figure\u2007\u2007space  \u2007x",
    "  \n  \t  mixed  \t\n  ",
    "word " * 12,
    # Special tokens inside text (whole-token match, <mask> strips the whitespace on its left).
    "a <mask> b",
    "a<mask>b",
    "a  <mask>  b",
    "a\t<mask>",
    "<mask>",
    " <mask>",
    "<mask><mask>",
    "<mask> <mask>",
    "The capital of France is <mask>.",
    "<s>",
    "</s>",
    "<pad>",
    "<unk>",
    "<s>hello</s>",
    "<s> hello </s>",
    "<s></s><s>",
    "<<s>>",
    "<s",
    "s>",
    "</ s>",
    "<mask >",
    "<MASK>",
    "<pad><pad><pad>",
    "text with <unk> inside",
    # Punctuation, code, URLs.
    "...",
    "?!?!",
    "--flag=value",
    "(parenthesis) [brackets] {braces}",
    "C++ & Python || Rust && Go",
    "email@example.com",
    "https://example.com/path?q=1&r=2#frag",
    "#hashtag @user",
    "def f(x): return x**2",
    "snake_case camelCase PascalCase kebab-case",
    "“smart quotes” ‘single’ «guillemets»",
    "— em dash – en dash",
    "∑ ∫ √2 ≤ ≥ ≠ ∞",
    "™ ® ©",
    "a_b_c __init__",
    # Control characters and long runs.
    "\x00",
    "a\x1bb\x7f",
    "bell\x07",
    "a" * 300,
    "!" * 50,
    "😀" * 20,
    "9" * 100,
    "Supercalifragilisticexpialidocious antidisestablishmentarianism",
    "Natural language processing lets computers read, understand and generate text. "
    "Transformers encode a sentence into vectors; the decoder turns vectors back into words.",
    "A man is playing a guitar on stage.\tA woman is reading a book.\n\nTwo dogs are running.",
]

# Pieces for the random texts: every character class of the pattern, the letters of the
# contractions, every kind of whitespace run, and pieces of special tokens.
FUZZ_PIECES = [
    "a", "b", "s", "t", "re", "ve", "m", "ll", "d", "S", "T", "RE", "x", "the", "Hello",
    "'", "’", "1", "9", "42", "½", "٣", "Ⅻ",
    " ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", "\u00a0", "\u3000", "\u2028", "\u000b", "\u0085",
    "é", "e\u0301", "\u0301", "ß", "Ω", "я", "你", "好", "の", "한",
    "😀", "👍🏽", "👨‍👩‍👧", "🇫🇷", "\u200d", "\ufe0f",
    "א", "ب", "ि",
    "!", "?", ".", ",", "-", "_", "#", "$", "%", "(", ")", "\"", "<", ">", "/",
    "<mask>", "<s>", "</s>", "<pad>", "<unk>", "<mask", "s>",
]
FUZZ_COUNT = 320
FUZZ_SEED = 20240601


def fuzz_texts():
    rng = random.Random(FUZZ_SEED)
    return ["".join(rng.choice(FUZZ_PIECES) for _ in range(rng.randint(1, 14)))
            for _ in range(FUZZ_COUNT)]


def configure(tok, add_prefix_space=False):
    """RoBERTa's pipeline around a BPE model (what RobertaTokenizerFast builds)."""
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.RobertaProcessing(
        ("</s>", tok.token_to_id("</s>")), ("<s>", tok.token_to_id("<s>")),
        trim_offsets=True, add_prefix_space=add_prefix_space)
    return tok


def train():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    trainer = trainers.BpeTrainer(vocab_size=1500, min_frequency=2, show_progress=False,
                                  special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 3, trainer=trainer)
    # The post-processor needs the ids of <s> and </s>, which exist only after training.
    return configure(tok)


def from_files(add_prefix_space):
    """The tokenizer rebuilt from vocab.json + merges.txt, as transformers does for RoBERTa."""
    tok = Tokenizer(models.BPE.from_file(os.path.join(HERE, "vocab.json"),
                                         os.path.join(HERE, "merges.txt")))
    tok.add_special_tokens(SPECIALS)
    return configure(tok, add_prefix_space)


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def main_tokenizer():
    tok = train()
    assert [tok.token_to_id(t.content) for t in SPECIALS] == [0, 1, 2, 3, 4]
    tok.model.save(HERE)  # vocab.json, merges.txt
    tok.save(os.path.join(HERE, "tokenizer.json"), pretty=True)

    reloaded = Tokenizer.from_file(os.path.join(HERE, "tokenizer.json"))
    files = from_files(add_prefix_space=False)
    files_prefix = from_files(add_prefix_space=True)
    pieces = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)

    texts = CURATED + fuzz_texts()
    rows = []
    for text in texts:
        enc = tok.encode(text).ids
        plain = tok.encode(text, add_special_tokens=False).ids
        # Both ways of loading must agree, or the committed ids could not serve both tests.
        assert reloaded.encode(text).ids == enc, text
        assert files.encode(text).ids == enc, text
        rows.append({
            "text": text,
            "ids": enc,
            "ids_no_special": plain,
            "ids_prefix_space": files_prefix.encode(text).ids,
            "decoded": tok.decode(plain, skip_special_tokens=False),
            "decoded_skip": tok.decode(enc, skip_special_tokens=True),
            "pieces": [text[a:b] for _, (a, b) in pieces.pre_tokenize_str(text)],
        })
    write_jsonl(os.path.join(HERE, "texts.jsonl"), rows)
    return tok, rows


def unk_tokenizer():
    """A BPE that knows only a few bytes: the rest must become <unk> (not fused)."""
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": 4}
    for token in ["a", "b", "c", "Ġ", "ab", "Ġa", "Ġab"]:
        vocab[token] = len(vocab)
    merges = [("a", "b"), ("Ġ", "a"), ("Ġa", "b")]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=False))
    tok.add_special_tokens(SPECIALS)
    configure(tok)
    folder = os.path.join(HERE, "unk")
    os.makedirs(folder, exist_ok=True)
    tok.save(os.path.join(folder, "tokenizer.json"), pretty=True)
    tok.model.save(folder)
    files = Tokenizer(models.BPE.from_file(os.path.join(folder, "vocab.json"),
                                           os.path.join(folder, "merges.txt")))
    files.add_special_tokens(SPECIALS)
    configure(files)
    texts = ["ab", "abc", "xyz", "ab xab", "a\u00e9b", "😀", "ab <mask> zz", "", " ", "cab ab"]
    rows = [{"text": t, "ids": tok.encode(t).ids,
             "ids_no_special": tok.encode(t, add_special_tokens=False).ids,
             "ids_files": files.encode(t).ids} for t in texts]
    write_jsonl(os.path.join(HERE, "unk", "texts.jsonl"), rows)
    return rows


def main():
    tok, rows = main_tokenizer()
    unk_rows = unk_tokenizer()
    meta = {
        "tokenizers_version": tokenizers.__version__,
        "vocab_size": tok.get_vocab_size(),
        "texts": len(rows),
        "curated_texts": len(CURATED),
        "fuzz_texts": FUZZ_COUNT,
        "fuzz_seed": FUZZ_SEED,
        "tokens_with_special": sum(len(r["ids"]) for r in rows),
        "tokens_no_special": sum(len(r["ids_no_special"]) for r in rows),
        "tokens_prefix_space": sum(len(r["ids_prefix_space"]) for r in rows),
        "unk_texts": len(unk_rows),
    }
    with open(os.path.join(HERE, "meta.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    print(json.dumps(meta))


if __name__ == "__main__":
    main()
