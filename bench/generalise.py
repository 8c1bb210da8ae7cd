"""The FAQ-assistant story on real data: does the assistant answer questions worded differently from
the ones it was trained on?

Recipe (the commands a user would run, through the Python API): pretrain the demo's base model on
the embedded corpus with the FAQ's training records mixed into half of its windows (midtraining),
then SFT on those records: Aira's 142 Q&A about AI ethics (long answers: the longest exceed the
256-token context and train in pinned windows) plus the three quarters of Aira's 1,065 reworded
questions whose id hash is not 0 mod 4. The other quarter (255 rewordings) is held out and never
trained on. Every held-out rewording is answered
by the model (greedy, the answer sliding past the window when long) and scored:
- retrieval accuracy: the generated answer is closer, by chrF, to its own reference than to any of
  the other 141 answers;
- exact match (normalised) with its reference.
Beside them: chance (1/142) and a TF-IDF question-matching retriever (scikit-learn), which looks
the answer up instead of writing it: what the model must learn to do itself.

`--test FILE` scores another file of rewordings (same fields), training on the originals and the
whole dev split. Prints the recipe, the figures and the machine; the last line is `accuracy: X`.
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
from gptmini.data.corpus import DEFAULT_CORPUS
from gptmini.demo import DEMO_MODEL
from gptmini.evaluate import chrf, exact_match
from gptmini.pretrain import pretrain
from gptmini.sft import sft

SFT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sft"
ORIGINALS, DEV = SFT_DATA / "aira_pt.jsonl", SFT_DATA / "aira_pt_paraphrases_dev.jsonl"
RECIPE = {"pretrain_steps": 300, "mix_ratio": 0.5, "vocab_size": 2048, "sft_epochs": 12, "sft_lr": 1e-3,
          "batch_size": 16, "max_new_tokens": 320, "seed": 0}


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


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
                    mix_data=train_file, mix_ratio=RECIPE["mix_ratio"])
    print(f"base: validation loss {base['best_val_loss']:.3f} (unigram {base['unigram_val_loss']:.3f}), "
          f"{base['tokens_per_s']:.0f} tokens/s")
    tuned = sft(work / "sft", train_file, base=str(work / "base" / "best"), val_fraction=0.0,
                epochs=RECIPE["sft_epochs"], overwrite=True, train={**common, "lr": RECIPE["sft_lr"]})
    print(f"sft: {tuned['steps']} steps, {tuned['tokens_per_s']:.0f} tokens/s")
    return work / "sft" / "last"


def answer_all(run: Path, questions: list[str]) -> list[str]:
    ckpt = load(run)
    engine = Engine(ckpt.model, ckpt.tokenizer, ckpt.template)
    params, answers = SamplingParams(max_new_tokens=RECIPE["max_new_tokens"]), []
    for i in range(0, len(questions), 64):
        prompts = [engine.encode_prompt([{"role": "user", "content": q}]) for q in questions[i:i + 64]]
        answers += [c.text for c in engine.generate(prompts, params)]
    return answers


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--test", type=Path, help="rewordings to score instead of the held-out half of the dev split")
    args = parser.parse_args()
    originals, dev = read(ORIGINALS), read(DEV)
    train, test = originals + [r for r in dev if not held_out(r)], [r for r in dev if held_out(r)]
    if args.test:
        train, test = originals + dev, read(args.test)
    print(f"machine: {machine()}")
    print(f"recipe: {json.dumps(RECIPE)}")
    print(f"data: {len(originals)} answers; training on {len(train)} questions, scoring {len(test)} rewordings "
          f"({args.test or 'held-out quarter of ' + DEV.name})")
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        run = train_assistant(Path(tmp), write_jsonl(Path(tmp) / "train.jsonl", train))
        trained = time.time()
        predictions = answer_all(run, [r["pergunta"] for r in test])
    answered = time.time()
    references, candidates = [r["resposta"] for r in test], [r["resposta"] for r in originals]
    accuracy = retrieval_accuracy(predictions, references, candidates)
    exact = sum(exact_match(p, r) for p, r in zip(predictions, references)) / len(test)
    print(f"time: training {trained - started:.0f} s, answering {answered - trained:.0f} s")
    print(f"| scorer | retrieval accuracy | exact match |\n|---|---:|---:|\n"
          f"| chance | {1 / len(candidates):.1%} | |\n"
          f"| TF-IDF lookup, 142 original questions | {tfidf_accuracy(originals, test):.1%} | |\n"
          f"| TF-IDF lookup, all {len(train)} training questions | {tfidf_accuracy(train, test):.1%} | |\n"
          f"| gptmini assistant (generated answers) | {accuracy:.1%} | {exact:.1%} |")
    for record, prediction in list(zip(test, predictions))[:3]:
        print(f"\nQ: {record['pergunta']}\nA: {prediction[:300]}{'...' if len(prediction) > 300 else ''}")
    print(f"accuracy: {accuracy:.3f}")


if __name__ == "__main__":
    main()
