"""Text files -> tokenizer -> token memmaps (train.bin / val.bin), streamed so any size works.

The corpus is read in blocks of whole paragraphs (about 4 KB, less for a small corpus); every `1/val_fraction`-th block goes
to validation, so the validation split samples the whole corpus, not just its end. Files are
separated by an end-of-text token. The result is cached in `<out>/data/` and reused when the
same files (by path, size and modification time) and tokenizer come again.
"""
from __future__ import annotations

import codecs
import gzip
import hashlib
import itertools
import json
import lzma
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .. import progress
from ..errors import GptminiError
from ..tokenizer import Tokenizer

SUFFIXES = (".txt", ".txt.gz", ".txt.xz")
BLOCK_CHARS = 4096
ASSETS = Path(__file__).resolve().parent.parent / "assets"
DEFAULT_CORPUS = ASSETS / "corpus"


def corpus_files(paths: list[str | Path]) -> list[Path]:
    """The text files named by `paths` (folders are searched recursively), sorted within folders."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(SUFFIXES))
            if not found:
                raise GptminiError(f"{path}: folder holds no {'/'.join(SUFFIXES)} files")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise GptminiError(f"{path}: no such file or folder")
    return files


def _open_text_stream(raw):
    name = raw.name
    if name.endswith(".gz"):
        return gzip.open(raw, "rb")
    if name.endswith(".xz"):
        return lzma.open(raw, "rb")
    return raw


def read_text(path: Path, progress: tqdm | None = None, chunk_bytes: int = 1 << 20) -> Iterator[str]:
    """Decoded UTF-8 pieces of one file; a bad byte is reported with its offset.

    `progress` advances by on-disk (possibly compressed) bytes, so its total is known upfront.
    """
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = read_so_far = 0
    try:
        with open(path, "rb") as raw, _open_text_stream(raw) as f:
            while chunk := f.read(chunk_bytes):
                try:
                    text = decoder.decode(chunk)
                except UnicodeDecodeError as exc:
                    raise GptminiError(f"{path}: not UTF-8 text: invalid byte at offset {offset + exc.start}; "
                                       "convert it first (e.g. iconv -f latin1 -t utf-8)") from None
                offset += len(chunk)
                if progress is not None:
                    progress.update(raw.tell() - read_so_far)
                    read_so_far = raw.tell()
                yield text
            decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise GptminiError(f"{path}: not UTF-8 text: truncated character at offset {offset}") from None
    except (OSError, EOFError, lzma.LZMAError) as exc:
        raise GptminiError(f"{path}: cannot read ({exc})") from None


def _block_end(text: str, size: int) -> int:
    """Where the next block ends: a paragraph break, else a line break, else a hard cut."""
    if len(text) < size:
        return -1
    for sep, limit in (("\n\n", 4 * size), ("\n", 16 * size)):
        cut = text.find(sep, size, limit)
        if cut >= 0:
            return cut + len(sep)
    return 16 * size if len(text) >= 16 * size else -1


def block_size(files: list[Path]) -> int:
    """About 4 KB, smaller for small corpora so that even they get a validation split."""
    return max(256, min(BLOCK_CHARS, sum(f.stat().st_size for f in files) // 200))


def iter_blocks(files: list[Path], progress: tqdm | None = None) -> Iterator[tuple[int, str]]:
    """(file index, text) blocks of whole paragraphs, about `block_size(files)` characters each."""
    size = block_size(files)
    for i, path in enumerate(files):
        pending = ""
        for piece in read_text(path, progress):
            pending += piece
            while (end := _block_end(pending, size)) > 0:
                yield i, pending[:end]
                pending = pending[end:]
        if pending:
            yield i, pending


def build_tokenizer(files: list[Path], kind: str, vocab_size: int | None) -> Tokenizer:
    texts = (text for _, text in iter_blocks(files))
    if kind == "char":
        return Tokenizer.train_char(texts)
    if kind == "bpe":
        return Tokenizer.train_bpe(texts, vocab_size or 8192)
    raise GptminiError(f"unknown tokenizer kind {kind!r}: use char or bpe")


def fingerprint(files: list[Path], tokenizer: Tokenizer, val_fraction: float) -> str:
    h = hashlib.sha256(tokenizer.backend.to_str().encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}|".encode())
    h.update(str(val_fraction).encode())
    return h.hexdigest()[:16]


@dataclass
class PreparedCorpus:
    train: np.memmap
    val: np.memmap
    meta: dict


def token_dtype(vocab_size: int):
    return np.uint16 if vocab_size <= 1 << 16 else np.uint32


def prepare(files: list[Path], tokenizer: Tokenizer, out_dir: Path, val_fraction: float = 0.05,
            show_progress: bool = True) -> PreparedCorpus:
    """Tokenizes `files` once into out_dir/{train,val}.bin; reuses them when nothing changed."""
    out_dir = Path(out_dir)
    key = fingerprint(files, tokenizer, val_fraction)
    meta_file = out_dir / "meta.json"
    if meta_file.is_file() and json.loads(meta_file.read_text()).get("fingerprint") == key:
        return load_prepared(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dtype = token_dtype(tokenizer.vocab_size)
    every = max(2, round(1 / val_fraction)) if val_fraction > 0 else 0
    counts = {"train": 0, "val": 0}
    bar = progress.bar(show_progress, total=sum(f.stat().st_size for f in files), unit="B", unit_scale=True,
                       desc="tokenizing")
    try:
        unknown = _write_splits(files, tokenizer, out_dir, dtype, every, counts, bar)
        if counts["train"] == 0:
            raise GptminiError(f"corpus is empty: {', '.join(map(str, files))} hold no text")
    except BaseException:
        for split in ("train", "val"):  # leave nothing half-written behind
            (out_dir / f"{split}.bin.tmp").unlink(missing_ok=True)
        raise
    for split in ("train", "val"):
        (out_dir / f"{split}.bin.tmp").replace(out_dir / f"{split}.bin")
    meta = {"fingerprint": key, "dtype": np.dtype(dtype).name, "train_tokens": counts["train"],
            "val_tokens": counts["val"], "unknown_tokens": unknown, "files": [str(f) for f in files]}
    meta_file.write_text(json.dumps(meta, indent=2))
    return load_prepared(out_dir)


def _write_splits(files, tokenizer, out_dir, dtype, every, counts, bar) -> int:
    """Streams the blocks into train.bin.tmp / val.bin.tmp; returns the count of <|unk|> tokens."""
    unknown = previous_file = n = 0
    with open(out_dir / "train.bin.tmp", "wb") as train, open(out_dir / "val.bin.tmp", "wb") as val, bar:
        blocks = iter_blocks(files, bar)
        while batch := list(itertools.islice(blocks, 256)):
            for (file_index, _), ids in zip(batch, tokenizer.encode_batch([text for _, text in batch])):
                if file_index != previous_file:  # documents never run into each other
                    ids = [tokenizer.eot_id] + ids
                    previous_file = file_index
                split = "val" if every and n % every == every - 1 else "train"
                (val if split == "val" else train).write(np.asarray(ids, dtype=dtype).tobytes())
                counts[split] += len(ids)
                if tokenizer.unk_id is not None:
                    unknown += ids.count(tokenizer.unk_id)
                n += 1
    return unknown


def load_prepared(out_dir: Path) -> PreparedCorpus:
    meta = json.loads((out_dir / "meta.json").read_text())
    dtype = np.dtype(meta["dtype"])
    train = np.memmap(out_dir / "train.bin", dtype=dtype, mode="r")
    val = np.memmap(out_dir / "val.bin", dtype=dtype, mode="r") if meta["val_tokens"] else train[:0]
    return PreparedCorpus(train, val, meta)
