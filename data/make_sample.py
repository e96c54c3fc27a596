#!/usr/bin/env python3
"""Generates data/sample/: small datasets in the real formats of the four QARAC task streams and
a byte-level BPE vocabulary trained on them.

The data is templated so that a tiny model can visibly learn each task: every conclusion,
answer and label follows from its inputs by a rule a few layers can pick up.
  text corpus  (encode_decode)       corpus_train.txt, corpus_heldout.txt    one document per line
  WikiQA       (question_answering)  WikiQA-train.tsv, WikiQA-dev.tsv        Label 1 = the answer
                                     WikiQA-subjects-train.tsv, -dev.tsv     subjects that recur
  Avicenna     (reasoning)           Avicenna_Train.csv, Avicenna_Test.csv   Latin-1, quoted commas
  SNLI 1.0     (consistency)         snli_1.0_train.jsonl, snli_1.0_dev.txt, snli_1.0_test.csv
  tokenizer/   vocab.json, merges.txt, tokenizer.json (RoBERTa special tokens, ids 0..4)

Usage: python3 data/make_sample.py [--out data/sample] [--seed 0] [--vocab-size 1500]
Needs the PyPI package `tokenizers`. The output is a pure function of --seed.
"""

import argparse
import collections
import csv
import io
import json
import os
import random

# ---- Vocabulary of the templates -------------------------------------------------------------
PEOPLE = ["man", "woman", "boy", "girl", "child", "teacher", "doctor", "farmer", "student",
          "musician", "cook", "painter"]
PERSON_HYPERNYM = {p: "person" for p in PEOPLE}
PERSON_HYPERNYM.update({"boy": "child", "girl": "child"})
NAMES = ["Alice", "Bob", "Carla", "David", "Elena", "Farid", "Grace", "Hugo", "Irene", "Jonas",
         "Kira", "Luis", "Mona", "Nils", "Olga", "Pavel", "Rosa", "Sami", "Tara", "Viktor"]
# (verb phrase, object, hypernym of the object)
ACTIVITIES = [("playing", "a guitar", "an instrument"), ("playing", "a violin", "an instrument"),
              ("playing", "the piano", "an instrument"), ("reading", "a book", "something"),
              ("reading", "a newspaper", "something"), ("eating", "an apple", "some food"),
              ("eating", "a sandwich", "some food"), ("riding", "a bicycle", "a vehicle"),
              ("riding", "a horse", "an animal"), ("painting", "a wall", "something"),
              ("cooking", "soup", "some food"), ("carrying", "a box", "something"),
              ("throwing", "a ball", "something"), ("washing", "a car", "a vehicle")]
PLACES = ["in the park", "on the beach", "in the kitchen", "at the market", "in the garden",
          "on a bridge", "in the street", "at the station", "in a field", "by the river"]
# An activity that cannot happen at the same time as any of the above.
CONTRADICTING = ["is sleeping in bed", "is swimming in a lake", "is sitting alone in a dark room",
                 "is driving a truck on the highway", "is lying asleep on the sofa"]
NEUTRAL_EXTRAS = ["for a competition", "with a friend", "after work", "to relax",
                  "for the first time", "while it rains", "before dinner", "for money"]
ADJECTIVES = ["red", "small", "old", "quiet", "bright", "heavy", "green", "happy", "tall", "cold"]
NOUNS = ["fox", "house", "river", "garden", "window", "lamp", "boat", "tree", "road", "bird",
         "table", "mountain", "cat", "dog", "letter", "door"]
VERBS = ["sees", "finds", "paints", "likes", "visits", "draws", "watches", "builds", "cleans",
         "opens"]
# Category terms of the syllogisms; some with Latin-1 letters, some with commas (quoted in CSV).
TERMS = ["cats", "mammals", "animals", "living things", "dogs", "birds", "sparrows", "robins",
         "roses", "flowers", "plants", "oaks", "trees", "doctors", "professionals", "workers",
         "café owners", "shopkeepers", "merchants", "naïve students", "learners", "students",
         "piñata makers", "artisans", "crème brûlée lovers", "dessert lovers", "Zoë's friends",
         "happy people", "squares", "rectangles", "shapes", "metals", "conductors", "materials",
         "doctors, nurses and pharmacists", "health workers", "violins", "string instruments",
         "instruments", "whales", "fish", "sea creatures", "pilots", "travellers",
         "señors of the village", "villagers", "poets", "writers", "authors"]
SYLLABLES = ["ka", "lo", "mi", "ra", "te", "su", "vo", "na", "di", "pe", "zu", "ba", "ri", "ton",
             "mar", "sel", "dor", "vin", "len", "gar"]


def article(word):
    return ("an " if word[0] in "aeiou" else "a ") + word


def fictional(rng, parts):
    return "".join(rng.choice(SYLLABLES) for _ in range(parts)).capitalize()


# ---- Text corpus -----------------------------------------------------------------------------
def corpus_sentence(rng):
    form = rng.randrange(4)
    if form == 0:
        return (f"{rng.choice(NAMES)} {rng.choice(VERBS)} the {rng.choice(ADJECTIVES)} "
                f"{rng.choice(NOUNS)} {rng.choice(PLACES)}.")
    if form == 1:
        verb, obj, _ = rng.choice(ACTIVITIES)
        return f"A {rng.choice(PEOPLE)} is {verb} {obj} {rng.choice(PLACES)}."
    if form == 2:
        return (f"The {rng.choice(NOUNS)} near the {rng.choice(NOUNS)} is "
                f"{rng.choice(ADJECTIVES)}.")
    return f"{rng.choice(NAMES)} and {rng.choice(NAMES)} walk {rng.choice(PLACES)} together."


def write_corpus(path, rng, n):
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(n):
            f.write(" ".join(corpus_sentence(rng) for _ in range(rng.randint(1, 3))) + "\n")


# ---- SNLI --------------------------------------------------------------------------------------
SNLI_LABELS = ["entailment", "neutral", "contradiction"]


def snli_pair(rng):
    person = rng.choice(PEOPLE)
    verb, obj, hyper = rng.choice(ACTIVITIES)
    place = rng.choice(PLACES)
    premise = f"A {person} is {verb} {obj} {place}."
    label = rng.choice(SNLI_LABELS)
    if label == "entailment":
        hypothesis = rng.choice([f"A {PERSON_HYPERNYM[person]} is {verb} {obj}.",
                                 f"A {person} is {verb} {hyper}.",
                                 f"Someone is {verb} {obj} {place}."])
    elif label == "neutral":
        hypothesis = f"A {person} is {verb} {obj} {rng.choice(NEUTRAL_EXTRAS)}."
    else:
        hypothesis = f"A {person} {rng.choice(CONTRADICTING)}."
    return premise, hypothesis, label


def flat_parse(sentence):
    return "( " + sentence.replace(".", " .") + " )"


def snli_rows(rng, n):
    """(gold_label, sentence1, sentence2, captionID, pairID, annotator labels) with about 3%
    of pairs lacking a gold label ('-': the annotators disagreed), as in SNLI."""
    rows = []
    for i in range(n):
        s1, s2, label = snli_pair(rng)
        if rng.random() < 0.03:
            annotators = [label, rng.choice(SNLI_LABELS), rng.choice(SNLI_LABELS)]
            label = "-"
        else:
            annotators = [label] * rng.choice([1, 5])
        caption = f"{1000 + i // 3}#{i % 5}"
        rows.append((label, s1, s2, caption, f"{caption}r{i % 3 + 1}{label[0]}", annotators))
    return rows


SNLI_COLUMNS = ["gold_label", "sentence1_binary_parse", "sentence2_binary_parse",
                "sentence1_parse", "sentence2_parse", "sentence1", "sentence2", "captionID",
                "pairID", "label1", "label2", "label3", "label4", "label5"]


def snli_table_row(row):
    label, s1, s2, caption, pair, annotators = row
    labels = (annotators + [""] * 5)[:5]
    return [label, flat_parse(s1), flat_parse(s2), flat_parse(s1), flat_parse(s2), s1, s2,
            caption, pair] + labels


def write_snli_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for label, s1, s2, caption, pair, annotators in rows:
            f.write(json.dumps({"annotator_labels": annotators, "captionID": caption,
                                "gold_label": label, "pairID": pair, "sentence1": s1,
                                "sentence2": s2}) + "\n")


def write_snli_txt(path, rows):
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write("\t".join(SNLI_COLUMNS) + "\r\n")  # the original export has CRLF lines
        for row in rows:
            f.write("\t".join(snli_table_row(row)) + "\r\n")


def write_snli_csv(path, rows):
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(SNLI_COLUMNS)
        for row in rows:
            w.writerow(snli_table_row(row))


# ---- Avicenna ---------------------------------------------------------------------------------
def syllogism(rng):
    a, b, c = rng.sample(TERMS, 3)
    form = rng.randrange(4)
    if form == 0:
        return f"All {a} are {b}.", f"All {b} are {c}.", "yes", f"All {a} are {c}."
    if form == 1:
        return f"All {a} are {b}.", f"No {b} are {c}.", "yes", f"No {a} are {c}."
    if form == 2:
        return f"Some {a} are {b}.", f"All {b} are {c}.", "yes", f"Some {a} are {c}."
    # No valid conclusion: the middle term is undistributed, or the premises share no term.
    d = rng.choice([t for t in TERMS if t not in (a, b, c)])
    p2 = rng.choice([f"All {c} are {b}.", f"Some {c} are {d}."])
    return f"All {a} are {b}.", p2, "no", "No conclusion."


def write_avicenna(path, rng, n):
    with open(path, "w", encoding="latin-1", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Premise 1", "Premise 2", "Syllogistic relation", "Conclusion"])
        for _ in range(n):
            w.writerow(syllogism(rng))


# ---- WikiQA ----------------------------------------------------------------------------------
# What WikiQA's article holds beside the answer: sentences about the same subject with another
# relation, the question's distractors (Label 0). One function per kind of subject.
def country_distractors(rng, country):
    return [f"{country} is known for its {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}s.",
            f"{country} has a long coast and many rivers.",
            f"The people of {country} speak {fictional(rng, 2)}ish."]


def book_distractors(rng, book):
    return [f"{book} was first printed in {article(rng.choice(ADJECTIVES))} cover.",
            f"{book} tells the story of {article(rng.choice(PEOPLE))} and {article(rng.choice(NOUNS))}.",
            f"Many readers consider {book} a classic."]


def river_distractors(rng, river):
    return [f"The {river} river is home to many {rng.choice(NOUNS)}s.",
            f"Boats on the {river} carry {rng.choice(ADJECTIVES)} goods.",
            f"The {river} river is frozen in winter."]


def wikiqa_rows(rng, qid, title, question, answer, distractors):
    """The rows of one question: the answer (Label 1) and one to three of the distractors
    (Label 0), in random order, as WikiQA pairs a question with the sentences of one article."""
    candidates = [(answer, 1)] + [(d, 0) for d in rng.sample(distractors, rng.randint(1, 3))]
    rng.shuffle(candidates)
    doc = f"D{qid}"
    return [(f"Q{qid}", question, doc, title, f"{doc}-{i}", s, str(label))
            for i, (s, label) in enumerate(candidates)]


def wikiqa_question(rng, qid):
    """One question on a fresh fictional subject, never seen in another question."""
    kind = rng.randrange(3)
    if kind == 0:
        country, city = fictional(rng, 3), fictional(rng, 2)
        return wikiqa_rows(rng, qid, country, f"what is the capital of {country}",
                           f"The capital of {country} is {city}.", country_distractors(rng, country))
    if kind == 1:
        book, author = fictional(rng, 3), rng.choice(NAMES) + " " + fictional(rng, 2)
        return wikiqa_rows(rng, qid, book, f"who wrote {book}",
                           f"{book} is a novel written by {author}.", book_distractors(rng, book))
    river, sea = fictional(rng, 2), fictional(rng, 3)
    return wikiqa_rows(rng, qid, river + " River", f"where does the {river} river end",
                       f"The {river} river flows into the {sea} Sea.", river_distractors(rng, river))


def write_wikiqa(path, questions):
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write("QuestionID\tQuestion\tDocumentID\tDocumentTitle\tSentenceID\tSentence\tLabel\n")
        for rows in questions:
            for row in rows:
                f.write("\t".join(row) + "\n")


# ---- WikiQA on recurring subjects --------------------------------------------------------------
# A fixed pool of subjects, each with one fact (a country's capital, a book's author, a river's
# sea) asked in several phrasings and answered in several sentences. Every subject recurs in
# training, and each held-out question is on a subject of the pool, asked in a phrasing its
# training questions never used: retrieving its answer among all held-out answers is learnable,
# where a fresh subject (WikiQA-dev.tsv) names an entity the model never saw.
# {s}: the subject, {f}: its fact.
SUBJECT_KINDS = {
    "country": {
        "questions": ["what is the capital of {s}", "which city is the capital of {s}",
                      "what city is {s}'s capital", "name the capital city of {s}",
                      "where is the seat of government of {s}"],
        "answers": ["The capital of {s} is {f}.", "{f} is the capital of {s}.",
                    "The capital city of {s} is {f}.", "{s} is governed from its capital, {f}."],
        "distractors": country_distractors,
    },
    "book": {
        "questions": ["who wrote {s}", "who is the author of {s}", "which writer wrote the novel {s}",
                      "name the author of {s}", "{s} was written by whom"],
        "answers": ["{s} is a novel written by {f}.", "{f} wrote {s}.", "The author of {s} is {f}.",
                    "{s} was written by {f}."],
        "distractors": book_distractors,
    },
    "river": {
        "questions": ["where does the {s} river end", "into which sea does the {s} river flow",
                      "what sea does the {s} river flow into", "where is the mouth of the {s} river",
                      "the {s} river ends in which sea"],
        "answers": ["The {s} river flows into the {f} Sea.", "The {s} river ends in the {f} Sea.",
                    "The mouth of the {s} river is on the {f} Sea.", "The {f} Sea is where the {s} river ends."],
        "distractors": river_distractors,
    },
}


# held_out: the index of the phrasing kept for the subject's held-out question.
Subject = collections.namedtuple("Subject", "kind name fact title held_out")


def subject_pool(rng, per_kind):
    """per_kind Subjects of each kind, every name and fact distinct."""
    used = set()

    def fresh(make):
        while True:
            name = make()
            if name not in used:
                used.add(name)
                return name

    pool = []
    for kind, spec in SUBJECT_KINDS.items():
        for _ in range(per_kind):
            if kind == "country":
                subject, fact = fresh(lambda: fictional(rng, 3)), fresh(lambda: fictional(rng, 2))
                title = subject
            elif kind == "book":
                subject = fresh(lambda: fictional(rng, 3))
                fact = fresh(lambda: rng.choice(NAMES) + " " + fictional(rng, 2))
                title = subject
            else:
                subject, fact = fresh(lambda: fictional(rng, 2)), fresh(lambda: fictional(rng, 3))
                title = subject + " River"
            pool.append(Subject(kind, subject, fact, title, rng.randrange(len(spec["questions"]))))
    return pool


def subject_question(rng, qid, subject, phrasing):
    spec = SUBJECT_KINDS[subject.kind]
    question = spec["questions"][phrasing].format(s=subject.name)
    answer = rng.choice(spec["answers"]).format(s=subject.name, f=subject.fact)
    return wikiqa_rows(rng, qid, subject.title, question, answer, spec["distractors"](rng, subject.name))


def subject_questions_train(rng, pool, times, first_id):
    """Each subject `times` times, in the phrasings other than its held-out one (each used once
    before any is used again), in random order."""
    asked = []
    for subject in pool:
        others = [p for p in range(len(SUBJECT_KINDS[subject.kind]["questions"])) if p != subject.held_out]
        phrasings = []
        while len(phrasings) < times:
            phrasings += rng.sample(others, len(others))
        asked += [(subject, p) for p in phrasings[:times]]
    rng.shuffle(asked)
    return [subject_question(rng, first_id + i, s, p) for i, (s, p) in enumerate(asked)]


def subject_questions_heldout(rng, pool, n, first_id):
    """One question on each of n distinct subjects, in the subject's held-out phrasing."""
    return [subject_question(rng, first_id + i, s, s.held_out) for i, s in enumerate(rng.sample(pool, n))]


# ---- Tokenizer ---------------------------------------------------------------------------------
def train_tokenizer(files, out_dir, vocab_size):
    from tokenizers import AddedToken, ByteLevelBPETokenizer, processors

    tok = ByteLevelBPETokenizer()  # RoBERTa's: no prefix space, GPT-2 regex, byte-level decoder
    # Special tokens first, so that they get ids 0..4 in this order; <mask> strips the space
    # before it, as RoBERTa's does.
    specials = ["<s>", "<pad>", "</s>", "<unk>", AddedToken("<mask>", lstrip=True)]
    tok.train(files=files, vocab_size=vocab_size, min_frequency=2, special_tokens=specials,
              show_progress=False)
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    os.makedirs(out_dir, exist_ok=True)
    tok.save_model(out_dir)
    tok.save(os.path.join(out_dir, "tokenizer.json"))
    for i, t in enumerate(["<s>", "<pad>", "</s>", "<unk>", "<mask>"]):
        assert tok.token_to_id(t) == i, (t, tok.token_to_id(t))
    return tok.get_vocab_size()


def text_of_files(out):
    """Plain text of every dataset, for the tokenizer's training."""
    texts = []
    for name in ["corpus_train.txt"]:
        with open(os.path.join(out, name), encoding="utf-8") as f:
            texts.append(f.read())
    with open(os.path.join(out, "snli_1.0_train.jsonl"), encoding="utf-8") as f:
        for line in f:
            o = json.loads(line)
            texts.append(o["sentence1"] + "\n" + o["sentence2"])
    with open(os.path.join(out, "Avicenna_Train.csv"), encoding="latin-1", newline="") as f:
        for row in csv.DictReader(f):
            texts.append("\n".join([row["Premise 1"], row["Premise 2"], row["Conclusion"]]))
    with open(os.path.join(out, "WikiQA-train.tsv"), encoding="utf-8") as f:
        next(f)
        for line in f:
            cols = line.rstrip("\n").split("\t")
            texts.append(cols[1] + "\n" + cols[5])
    return "\n".join(texts) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "sample"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vocab-size", type=int, default=1500)
    args = ap.parse_args()
    out = args.out
    os.makedirs(out, exist_ok=True)
    # One generator per file, so that resizing one file does not change the others.
    rng = lambda name: random.Random(f"{args.seed}:{name}")

    write_corpus(os.path.join(out, "corpus_train.txt"), rng("corpus_train"), 3000)
    write_corpus(os.path.join(out, "corpus_heldout.txt"), rng("corpus_heldout"), 300)
    write_snli_jsonl(os.path.join(out, "snli_1.0_train.jsonl"), snli_rows(rng("snli_train"), 3000))
    write_snli_txt(os.path.join(out, "snli_1.0_dev.txt"), snli_rows(rng("snli_dev"), 300))
    write_snli_csv(os.path.join(out, "snli_1.0_test.csv"), snli_rows(rng("snli_test"), 300))
    write_avicenna(os.path.join(out, "Avicenna_Train.csv"), rng("avicenna_train"), 2000)
    write_avicenna(os.path.join(out, "Avicenna_Test.csv"), rng("avicenna_test"), 200)
    for name, stream, n, first_id in [("WikiQA-train.tsv", "wikiqa_train", 800, 1),
                                      ("WikiQA-dev.tsv", "wikiqa_dev", 100, 10001)]:
        questions_rng = rng(stream)
        write_wikiqa(os.path.join(out, name),
                     [wikiqa_question(questions_rng, first_id + q) for q in range(n)])
    # Not in the tokenizer's training text (text_of_files), so that the vocabulary stays the one
    # the other files made.
    pool = subject_pool(rng("wikiqa_subjects"), 50)
    write_wikiqa(os.path.join(out, "WikiQA-subjects-train.tsv"),
                 subject_questions_train(rng("wikiqa_subjects_train"), pool, 6, 20001))
    write_wikiqa(os.path.join(out, "WikiQA-subjects-dev.tsv"),
                 subject_questions_heldout(rng("wikiqa_subjects_dev"), pool, 100, 30001))

    # The BPE trainer reads files: give it one UTF-8 file with the text of every dataset.
    training_text = os.path.join(out, ".tokenizer_training.txt")
    with io.open(training_text, "w", encoding="utf-8") as f:
        f.write(text_of_files(out))
    try:
        size = train_tokenizer([training_text], os.path.join(out, "tokenizer"), args.vocab_size)
    finally:
        os.remove(training_text)
    print(f"wrote {out} (vocabulary {size})")


if __name__ == "__main__":
    main()
