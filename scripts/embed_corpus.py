"""Builds gptmini/assets/corpus/machado_de_assis.txt.xz, the public-domain part of the embedded corpus.

A selection of Machado de Assis's prose (novels and short stories, public domain) from the team's
copy of the corpus in ../shared/data/corpus/, with the hard line wraps undone so that a paragraph
is one line (a base model then learns sentences, not a line break every 80 columns). Run it from
the project root: `python scripts/embed_corpus.py`. The package never needs ../shared at run time.
"""
from __future__ import annotations

import lzma
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT.parent / "shared" / "data" / "corpus" / "machado_de_assis.txt.xz"
TARGET = ROOT / "gptmini" / "assets" / "corpus" / "machado_de_assis.txt.xz"
WORKS = ["Dom Casmurro", "Memórias Póstumas de Brás Cubas", "Quincas Borba", "Esaú e Jacó", "Memorial de Aires",
         "Papéis Avulsos", "Várias Histórias"]
WRAP = 60  # a line at least this long was wrapped: its paragraph goes on in the next line


def works(text: str) -> dict[str, str]:
    """Title -> text; the corpus separates works by two blank lines and starts each with its title."""
    found = {}
    for work in re.split(r"\n\n\n+", text):
        title, _, body = work.strip().partition("\n")
        found.setdefault(title.strip(), body)
    return found


def unwrap(body: str) -> str:
    paragraphs, current = [], []
    for line in body.splitlines():
        line = line.strip()
        if not line:
            paragraphs.append(" ".join(current))
            current = []
            continue
        current.append(line)
        if len(line) < WRAP:
            paragraphs.append(" ".join(current))
            current = []
    paragraphs.append(" ".join(current))
    return "\n".join(p for p in paragraphs if p)


def main() -> None:
    available = works(lzma.decompress(SOURCE.read_bytes()).decode("utf-8"))
    missing = [w for w in WORKS if w not in available]
    if missing:
        raise SystemExit(f"not in {SOURCE}: {missing}")
    text = "\n\n".join(f"{title}\n\n{unwrap(available[title])}" for title in WORKS) + "\n"
    TARGET.write_bytes(lzma.compress(text.encode("utf-8"), preset=9 | lzma.PRESET_EXTREME))
    print(f"{TARGET}: {len(text):,} characters, {TARGET.stat().st_size:,} bytes compressed")


if __name__ == "__main__":
    main()
