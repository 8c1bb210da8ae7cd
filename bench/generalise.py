"""The FAQ-assistant story on real data: trained on ONE wording per question, does the assistant answer
questions worded differently?

Default: Aira's 142 original questions (AI ethics, long answers) are the whole training set, as a
user's own FAQ would be, and a fixed sample of 400 of Aira's 1,065 dev rewordings (never trained on)
is asked. The recipe is the README's "Seu próprio FAQ" one, through the Python API with its
defaults: pretrain the demo's base on the embedded corpus with the FAQ (and its question variants)
mixed into half of its windows (midtraining), then SFT 12 epochs (question variants in the forms
people type and conversations made each epoch: sft's defaults). Every rewording is answered (greedy,
sliding past the window when long) and scored:
- retrieval accuracy: the generated answer is closer, by chrF, to its own reference than to any of
  the other answers of the training set;
- exact match (normalised) with its reference.
Beside them: chance and a TF-IDF question-matching lookup over the same training questions
(scikit-learn), which looks the answer up instead of writing it.

`--train FILE --test FILE`: the recipe on FILE alone (instruction/response records in any format sft
reads), scoring the other. `--with-rewordings`: the earlier mode, three quarters of the dev rewordings
trained too and the other quarter (255, by id hash) scored; `--test FILE` alone trains the originals and
the whole dev split and scores FILE. `--augment none` (or a count) is passed to pretrain and sft.
`bench/data/padaria_faq.csv` (a 25-question bakery FAQ written for this bench, one wording per
question, saved by Excel: `Pergunta;Resposta`, BOM, CRLF, two multi-line answers) and
`bench/data/padaria_clientes.jsonl` (50 questions as its customers type them, two per answer) are a
user's own pair for `--train`/`--test`.
`--turns 1,3`: each question also asked as the 3rd turn of a conversation (the questions before it in
the test file, with the model's own answers), as `chat` and the web page send it.
Prints the recipe, the figures and the machine; the last line is `accuracy: X`.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
import time
from functools import cache
from pathlib import Path

from common import machine
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.metrics.pairwise import linear_kernel

from gptmini import Engine, SamplingParams, load
from gptmini.chat import answers_at_turn
from gptmini.data.corpus import DEFAULT_CORPUS
from gptmini.demo import DEMO_MODEL
from gptmini.data.records import read_examples
from gptmini.evaluate import chrf, exact_match
from gptmini.pretrain import pretrain
from gptmini.sft import sft

SFT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sft"
ORIGINALS, DEV = SFT_DATA / "aira_pt.jsonl", SFT_DATA / "aira_pt_paraphrases_dev.jsonl"
RECIPE = {"pretrain_steps": 300, "mix_ratio": 0.5, "vocab_size": 2048, "sft_epochs": 12, "sft_lr": 1e-3,
          "batch_size": 16, "max_new_tokens": 320, "seed": 0, "augment": "auto", "sample": 400}


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def read_any(path: Path) -> list[dict]:
    """A user's records as {"pergunta", "resposta"}, from any file sft reads."""
    return [{"pergunta": e.messages[-2]["content"], "resposta": e.messages[-1]["content"]}
            for e in read_examples(path).examples]


def sample(records: list[dict], n: int) -> list[dict]:
    """A fixed sample: the n records with the smallest hash of their question."""
    return sorted(records, key=lambda r: hashlib.sha256(r["pergunta"].encode()).digest())[:n]


def held_out(record: dict) -> bool:
    """A quarter of the rewordings, chosen by a hash of the record's id (never of its answer)."""
    return hashlib.sha256(record["id"].encode()).digest()[0] % 4 == 0


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps({"instruction": r["pergunta"], "response": r["resposta"]},
                                       ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def train_assistant(work: Path, train_file: Path) -> Path:
    common = {"seed": RECIPE["seed"], "show_progress": False, "batch_size": RECIPE["batch_size"]}
    base = pretrain(work / "base", [DEFAULT_CORPUS], "bpe", RECIPE["vocab_size"], DEMO_MODEL, overwrite=True,
                    train={**common, "max_steps": RECIPE["pretrain_steps"], "lr": 2e-3, "eval_every": 100},
                    mix_data=train_file, mix_ratio=RECIPE["mix_ratio"], augment=RECIPE["augment"])
    print(f"base: validation loss {base['best_val_loss']:.3f} (unigram {base['unigram_val_loss']:.3f}), "
          f"{base['tokens_per_s']:.0f} tokens/s")
    tuned = sft(work / "sft", train_file, base=str(work / "base" / "best"), val_fraction=0.0,
                epochs=RECIPE["sft_epochs"], overwrite=True, train={**common, "lr": RECIPE["sft_lr"]},
                augment=RECIPE["augment"])
    print(f"sft: {tuned['steps']} steps, {tuned['tokens_per_s']:.0f} tokens/s")
    return work / "sft" / "last"


def answer_all(run: Path, questions: list[str], turns: list[int]) -> dict[int, list[str]]:
    """Each question's answer asked alone (turn 1) and as each later turn in `turns`: the earlier turns
    are the questions before it in the list with the model's own answers (bench/conversation.py's way)."""
    ckpt = load(run)
    engine = Engine(ckpt.model, ckpt.tokenizer, ckpt.template)
    params = SamplingParams(max_new_tokens=RECIPE["max_new_tokens"])
    return {turn: answers_at_turn(engine, questions, turn, params) for turn in turns}


def retrieval_accuracy(predictions: list[str], references: list[str], candidates: list[str]) -> float:
    """Share of predictions whose closest candidate answer (chrF) is their own reference."""
    @cache
    def closest(prediction: str) -> str:
        return max(candidates, key=lambda c: chrf(prediction, c))

    return sum(closest(p) == r for p, r in zip(predictions, references)) / len(predictions)


def tfidf_accuracy(train: list[dict], test: list[dict]) -> float:
    """The lookup reference: the answer of the most similar training question (word TF-IDF)."""
    vectorizer = TfidfVectorizer(strip_accents=None, sublinear_tf=True)
    known = vectorizer.fit_transform([r["pergunta"] for r in train])
    best = linear_kernel(vectorizer.transform([r["pergunta"] for r in test]), known).argmax(axis=1)
    return sum(train[j]["resposta"] == r["resposta"] for j, r in zip(best, test)) / len(test)


def datasets(args: argparse.Namespace) -> tuple[list[dict], list[dict], str]:
    """(training records, scored records, what is scored) for the mode the flags choose."""
    originals, dev = read(ORIGINALS), read(DEV)
    if args.train:
        return read_any(args.train), read_any(args.test), str(args.test)
    if args.with_rewordings and not args.test:
        return originals + [r for r in dev if not held_out(r)], [r for r in dev if held_out(r)], \
            "held-out quarter of " + DEV.name
    if args.test:
        return originals + dev, read_any(args.test), str(args.test)
    scored = dev if args.sample == 0 else sample(dev, args.sample)
    return originals, scored, f"{'all' if args.sample == 0 else f'a fixed sample of {len(scored)} of the'} " \
                              f"{len(dev)} rewordings of {DEV.name}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=Path, help="train the recipe on this file alone (needs --test)")
    parser.add_argument("--test", type=Path, help="score these records (alone: originals + whole dev split trained)")
    parser.add_argument("--with-rewordings", action="store_true",
                        help="train three quarters of the dev rewordings too and score the other quarter")
    parser.add_argument("--sample", type=int, default=RECIPE["sample"], help="dev rewordings scored (0: all)")
    parser.add_argument("--augment", default=RECIPE["augment"], help="question variants per record: auto, N, none")
    parser.add_argument("--turns", default="1", help="score each question at these turns of a conversation, "
                        "e.g. 1,3 (the first one gives the last line)")
    args = parser.parse_args()
    if args.train and not args.test:
        parser.error("--train needs --test (the records to score)")
    RECIPE.update(augment=args.augment if args.augment in ("auto",) else 0 if args.augment == "none" else int(args.augment),
                  sample=args.sample)
    turns = [int(t) for t in args.turns.split(",")]
    train, test, scored = datasets(args)
    answers = list(dict.fromkeys(r["resposta"] for r in train))
    print(f"machine: {machine()}")
    print(f"recipe: {json.dumps(RECIPE)}")
    print(f"data: {len(answers)} answers; training on {len(train)} questions, scoring {len(test)} ({scored})")
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        run = train_assistant(Path(tmp), write_jsonl(Path(tmp) / "train.jsonl", train))
        trained = time.time()
        predictions = answer_all(run, [r["pergunta"] for r in test], turns)
    answered = time.time()
    references = [r["resposta"] for r in test]
    accuracy = {t: retrieval_accuracy(p, references, answers) for t, p in predictions.items()}
    exact = {t: sum(map(exact_match, p, references)) / len(test) for t, p in predictions.items()}
    print(f"time: training {trained - started:.0f} s, answering {answered - trained:.0f} s")
    print(f"| scorer | retrieval accuracy | exact match |\n|---|---:|---:|\n"
          f"| chance | {1 / len(answers):.1%} | |\n"
          f"| TF-IDF lookup over the {len(train)} training questions | {tfidf_accuracy(train, test):.1%} | |\n"
          + "".join(f"| gptmini assistant (generated answers{'' if t == 1 else f', asked as turn {t}'}) "
                    f"| {accuracy[t]:.1%} | {exact[t]:.1%} |\n" for t in turns), end="")
    for record, prediction in list(zip(test, predictions[turns[0]]))[:3]:
        print(f"\nQ: {record['pergunta']}\nA: {prediction[:300]}{'...' if len(prediction) > 300 else ''}")
    print(f"accuracy: {accuracy[turns[0]]:.3f}")


if __name__ == "__main__":
    main()
