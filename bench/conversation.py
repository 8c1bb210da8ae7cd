"""Turn 4 as good as turn 1: the demo assistant answering held-out questions in the middle of a conversation.

The demo recipe (`gptmini demo`: base with midtraining, SFT on the embedded instruction set) is trained,
or an existing demo run is given with --run. Each of the 53 held-out rewordings is then asked alone
(turn 1), as the 2nd turn and as the 4th turn of a conversation whose earlier turns are other held-out
questions with the model's own answers to them (what `chat`, the web page and the chat API send), greedy.
Exact match per turn; the last line is `ratio: X` = exact match at turn 4 ÷ at turn 1.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from common import machine

from gptmini import Engine, SamplingParams, load
from gptmini.chat import answers_at_turn
from gptmini.data.records import read_examples
from gptmini.demo import HELD_OUT, demo
from gptmini.evaluate import exact_match

TURNS = (1, 2, 4)


def per_turn(run: Path) -> dict[int, float]:
    ckpt = load(run)
    engine = Engine(ckpt.model, ckpt.tokenizer, ckpt.template)
    held_out = read_examples(HELD_OUT).examples
    questions = [e.messages[0]["content"] for e in held_out]
    references = [e.messages[-1]["content"] for e in held_out]
    params = SamplingParams(max_new_tokens=96)
    scores = {}
    for turn in TURNS:
        answers = answers_at_turn(engine, questions, turn, params)
        scores[turn] = sum(map(exact_match, answers, references)) / len(references)
        wrong = next((q, a) for q, a, r in zip(questions, answers, references) if not exact_match(a, r)) \
            if scores[turn] < 1 else None
        print(f"turn {turn}: exact match {scores[turn]:.1%}" + (f"; e.g. {wrong[0]!r} -> {wrong[1][:80]!r}" if wrong else ""))
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="an existing demo folder (runs/demo) instead of training anew")
    parser.add_argument("--conversations", default=None, help="sft's --conversations for the trained run")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        run = args.run
        if run is None:
            run = Path(tmp) / "demo"
            demo(run, show_progress=False, **({"conversations": int(args.conversations)} if args.conversations else {}))
        scores = per_turn(run / "sft" / "last")
    print(f"| turn | exact match |\n|---:|---:|\n" + "".join(f"| {t} | {s:.1%} |\n" for t, s in scores.items()))
    print(f"time: {time.time() - started:.0f} s")
    print(f"ratio: {scores[4] / scores[1] if scores[1] else 0:.3f}")


if __name__ == "__main__":
    main()
