"""Corpus preparation speed: the 11 MB Machado de Assis corpus -> BPE (vocab 8192) -> token memmaps.

Reference: the same work done the common way (nanoGPT's prepare.py style): read the whole text,
train the same `tokenizers` BPE on it in one piece, encode it in one call, write the array with
numpy. Interleaved rounds, medians. Ends with `ratio: X` (reference time / ours).
"""
from __future__ import annotations

import lzma
import shutil
import tempfile
from pathlib import Path

import numpy as np
from common import machine, median, round_robin, timed

from gptmini import Tokenizer
from gptmini.data.corpus import build_tokenizer, corpus_files, prepare

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "corpus" / "machado_de_assis.txt.xz"
ROUNDS = 3


def ours(work: Path) -> dict:
    shutil.rmtree(work, ignore_errors=True)
    files = corpus_files([CORPUS])
    tokenizer = build_tokenizer(files, "bpe", 8192)
    return prepare(files, tokenizer, work, show_progress=False).meta


def reference(work: Path) -> int:
    work.mkdir(parents=True, exist_ok=True)
    text = lzma.open(CORPUS, "rt", encoding="utf-8").read()
    tokenizer = Tokenizer.train_bpe([text], 8192)
    ids = np.array(tokenizer.backend.encode(text).ids, dtype=np.uint16)
    n = int(len(ids) * 0.95)
    ids[:n].tofile(work / "train.bin")
    ids[n:].tofile(work / "val.bin")
    return len(ids)


def main() -> None:
    if not CORPUS.is_file():
        raise SystemExit(f"{CORPUS} not found: this benchmark reads ../shared/data/corpus/")
    tmp = Path(tempfile.mkdtemp())
    meta = ours(tmp / "ours")
    times = round_robin({"gptmini": lambda: timed(lambda: ours(tmp / "ours")),
                         "reference": lambda: timed(lambda: reference(tmp / "ref"))}, ROUNDS)
    tokens = meta["train_tokens"] + meta["val_tokens"]
    chars = 11_000_000
    print(f"machine: {machine()}")
    print(f"corpus: {CORPUS.name} (~{chars / 1e6:.0f} M characters) -> {tokens / 1e6:.2f} M tokens, BPE vocab 8192; "
          f"median of {ROUNDS} interleaved rounds (train the tokenizer + tokenize + write)")
    for name, t in times.items():
        print(f"{name:>10}: {median(t):6.2f} s  ({tokens / median(t) / 1e6:.2f} M tokens/s; runs {', '.join(f'{x:.2f}' for x in t)})")
    print(f"target: <= 10 s -> {'met' if median(times['gptmini']) <= 10 else 'NOT met'}")
    print(f"ratio: {median(times['reference']) / median(times['gptmini']):.2f}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
