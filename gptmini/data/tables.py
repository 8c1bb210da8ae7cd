"""Records from columnar sources: a .parquet file, a folder of .parquet shards (what the Hugging Face Hub
serves for every dataset), or `hf:OWNER/NAME[:SPLIT]` loaded (and cached) by `datasets`.

Each row is a record like a JSON object, so records.py finds its shape and maps its fields the same way;
a problem names the file and row ("train-00000.parquet:row 12"). Numbers in a row become their text, as
JSON numbers do. pyarrow and datasets are optional: a missing one is one line saying what to install.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import GptminiError
from .records import _JsonNumber

PARQUET_HINT = "reading parquet needs pyarrow: pip install 'gptmini[parquet]' (or pip install pyarrow)"
HUB_HINT = "hf:OWNER/NAME needs the datasets package: pip install 'gptmini[hub]' (or pip install datasets)"


def _plain(value: object) -> object:
    """A row's value as records.py reads JSON: numbers (not booleans) as their text, containers walked."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return _JsonNumber(value)
    return value


def _numbered(rows, where: str) -> list[tuple[str, object]]:
    return [(f"{where}:row {n}", _plain(row)) for n, row in enumerate(rows, 1)]


def _shards(path: Path) -> list[Path]:
    if path.is_dir():
        shards = sorted(p for p in path.rglob("*.parquet") if p.is_file())
        if not shards:
            raise GptminiError(f"{path}: a folder, but it holds no .parquet shards (a dataset folder from the Hub "
                               "has them under data/); give a file or a folder of .parquet files")
        return shards
    if not path.is_file():
        raise GptminiError(f"{path}: no such file")
    return [path]


def parquet_records(path: Path) -> list[tuple[str, object]]:
    """("shard:row N", record) for every row of a parquet file or of each shard in a folder, in name order."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise GptminiError(f"{path}: {PARQUET_HINT}") from None
    records = []
    for shard in _shards(path):
        try:
            rows = pq.read_table(shard).to_pylist()
        except Exception as exc:  # pyarrow's ArrowInvalid/OSError, with a message worth passing on
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise GptminiError(f"{shard}: not a readable parquet file ({first}); was it downloaded completely?") from None
        records += _numbered(rows, str(shard))
    return records


def _hub_error(spec: str, name: str, exc: Exception) -> GptminiError:
    """One line for each way load_dataset fails: offline without a cached copy, unknown name, unknown split."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    kind = type(exc).__name__
    if "offline" in text.lower() or kind in ("ConnectionError", "LocalEntryNotFoundError", "OfflineModeIsEnabled"):
        return GptminiError(f"{spec}: not in the local datasets cache and the Hub cannot be reached ({text}); it needs "
                            f"the network once (then it is cached), or a local copy: download {name}'s parquet files "
                            "and pass --data FOLDER")
    if kind in ("DatasetNotFoundError", "FileNotFoundError", "RepositoryNotFoundError"):
        return GptminiError(f"{spec}: no such dataset on the Hub ({text}); check OWNER/NAME, or log in "
                            "(huggingface-cli login) if it is gated")
    return GptminiError(f"{spec}: cannot load ({kind}: {text})")


def hub_records(spec: str) -> list[tuple[str, object]]:
    """("hf:OWNER/NAME:SPLIT:row N", record) for every row of a Hub dataset's split (default train)."""
    name, _, split = spec.removeprefix("hf:").partition(":")
    split = split or "train"
    if not name:
        raise GptminiError(f"{spec}: expected hf:OWNER/NAME[:SPLIT], e.g. hf:nicholasKluge/instruct-aira-dataset-v2:portuguese")
    try:
        import datasets
    except ImportError:
        raise GptminiError(f"{spec}: {HUB_HINT}") from None
    try:
        rows = datasets.load_dataset(name, split=split)
    except Exception as exc:  # datasets/huggingface_hub raise many types; each becomes one line
        raise _hub_error(spec, name, exc) from None
    return _numbered(rows, f"hf:{name}:{split}")
