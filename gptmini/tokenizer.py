"""Character-level and byte-level BPE tokenizers, both backed by Hugging Face `tokenizers`, and the
SentencePiece-style BPE of pretrained Llama bases (TeenyTinyLlama, Tucano), carried as their tokenizer.json says.

Both save to one `tokenizer.json` (the standard `tokenizers` format, so it also loads in
`transformers`) and share the same special tokens. Special-token strings that appear in user text
are encoded as plain text: only the code that builds training examples can emit end-of-text.

Out-of-vocabulary characters (char tokenizer only; byte-level BPE has none) map to `<|unk|>`,
never silently disappear; `count_unknown` reports how many a text has. `fold` turns the ones with a
plain form in the vocabulary into it (á→a, “→") before they get that far, and says what it did.

A SentencePiece-style tokenizer (kind "spm": BPE with byte fallback, a "▁" word-start marker put in front of
a text by a Metaspace pre-tokenizer or a Prepend normalizer) encodes a text exactly as the model's own
tokenizer does. Two things differ from our byte-level BPE: a sequence starts with the model's BOS (`<s>`)
where its config adds one (`encode(text, start=True)`), and a piece that continues a sequence (a response
after its prompt) gets no "▁" in front (`encode_next`), so that the template's pieces read as the one text
the model would see, not as a space before every piece.
"""
from __future__ import annotations

import json
import unicodedata
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer

from .errors import GptminiError

EOT, PAD, UNK = "<|endoftext|>", "<|pad|>", "<|unk|>"
SPECIAL_TOKENS = [EOT, PAD, UNK]
# Stand-ins that Unicode's compatibility decomposition does not give (it leaves curly quotes and dashes alone).
PLAIN = {**dict.fromkeys("‘’‚‛′", "'"), **dict.fromkeys("“”„‟″«»", '"'), **dict.fromkeys("‐‑‒–—―−", "-"), "\t": " "}


def plain_forms(char: str) -> list[str]:
    """Stand-ins for a character, best first: its canonical decomposition (exact, if the vocabulary has the
    accent as a combining mark), PLAIN's, then without accents or compatibility forms (á→a, ﬁ→fi, …→...), in
    its own case, then in lower and upper case."""
    bare = "".join(c for c in unicodedata.normalize("NFKD", char) if not unicodedata.combining(c))
    return [unicodedata.normalize("NFD", char), PLAIN.get(char, ""), bare, bare.lower(), bare.upper()]


@dataclass
class Folding:
    """What `Tokenizer.fold` changed: (character, stand-in) -> occurrences; unreadable character -> occurrences."""

    folded: Counter = field(default_factory=Counter)
    unreadable: Counter = field(default_factory=Counter)

    def __bool__(self) -> bool:
        return bool(self.folded or self.unreadable)

    def __add__(self, other: "Folding") -> "Folding":
        return Folding(self.folded + other.folded, self.unreadable + other.unreadable)

    def note(self) -> str:
        """"3 characters folded to the vocabulary: ã→a, ç→c; 1 unreadable: '€'" (each character named once)."""
        parts = []
        if self.folded:
            pairs = ", ".join(f"{shown(c)}→{shown(plain)}" for c, plain in self.folded)
            parts.append(f"{characters(self.folded.total())} folded to the vocabulary: {pairs}")
        if self.unreadable:
            n, names = self.unreadable.total(), ", ".join(repr(c) for c in self.unreadable)
            parts.append(f"{n} unreadable: {names}" if self.folded
                         else f"{characters(n)} unreadable by the vocabulary (read as <|unk|>): {names}")
        return "; ".join(parts)

    def to_dict(self) -> dict:
        """For an API response: the note, and each character with its stand-in (none: unreadable) and count."""
        return {"note": self.note(),
                "folded": [{"from": c, "to": plain, "count": n} for (c, plain), n in self.folded.items()],
                "unreadable": [{"character": c, "count": n} for c, n in self.unreadable.items()]}


def shown(text: str) -> str:
    """Characters as a note names them: as they are, or quoted and escaped where they would not show (an accent
    alone, a tab, a space, nothing)."""
    visible = text and all(c.isprintable() and not c.isspace() and not unicodedata.combining(c) for c in text)
    return text if visible else ascii(text)


def characters(n: int) -> str:
    return f"{n} character{'s' if n != 1 else ''}"


class Tokenizer:
    """Text <-> token ids. `kind` is "char" or "bpe".

    `specials` names the end-of-text, padding and unknown tokens when they are not gptmini's own
    (a tokenizer imported from Hugging Face): padding falls back to end-of-text, unknown may be
    absent (byte-level vocabularies need none).
    """

    def __init__(self, backend: HFTokenizer, kind: str, specials: dict[str, str | None] | None = None) -> None:
        self.backend, self.kind = backend, kind
        self.specials = {"eot": EOT, "pad": PAD, "unk": UNK, "bos": None, **(specials or {})}
        backend.encode_special_tokens = True  # "<|endoftext|>" typed by a user stays text
        ids = {role: backend.token_to_id(tok) if tok else None for role, tok in self.specials.items()}
        if ids["eot"] is None:
            raise GptminiError(f"tokenizer lacks its end-of-text token {self.specials['eot']!r}")
        if self.specials["bos"] and ids["bos"] is None:
            raise GptminiError(f"tokenizer lacks its begin-of-sequence token {self.specials['bos']!r}")
        self.eot_id, self.unk_id, self.bos_id = ids["eot"], ids["unk"], ids["bos"]
        self.pad_id = ids["pad"] if ids["pad"] is not None else self.eot_id
        self.next_backend = _without_prefix(backend) if kind == "spm" else backend

    # -- building -------------------------------------------------------------------------
    @classmethod
    def train_char(cls, texts: Iterable[str]) -> "Tokenizer":
        """One token per distinct character of `texts` (sorted), after the special tokens."""
        chars: set[str] = set()
        for text in texts:
            chars.update(text)
        vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + sorted(chars - set(SPECIAL_TOKENS)))}
        backend = HFTokenizer(models.WordLevel(vocab, unk_token=UNK))
        backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
        backend.decoder = decoders.Fuse()
        backend.add_special_tokens(SPECIAL_TOKENS)
        return cls(backend, "char")

    @classmethod
    def train_bpe(cls, texts: Iterable[str], vocab_size: int, show_progress: bool = False) -> "Tokenizer":
        """Byte-level BPE (GPT-2 style): every UTF-8 text round-trips exactly."""
        minimum = len(SPECIAL_TOKENS) + 256
        if vocab_size < minimum:
            raise GptminiError(f"--vocab-size {vocab_size} is too small: byte-level BPE needs at least "
                               f"{minimum} (256 bytes + {len(SPECIAL_TOKENS)} special tokens)")
        backend = HFTokenizer(models.BPE())
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=show_progress,
        )
        backend.train_from_iterator(texts, trainer=trainer)
        return cls(backend, "bpe")

    # -- using ----------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size()

    def encode(self, text: str, start: bool = False) -> list[int]:
        """The text's ids; start=True: it opens a sequence, so the model's BOS comes first if it has one."""
        ids = self.backend.encode(text, add_special_tokens=False).ids
        return [self.bos_id, *ids] if start and self.bos_id is not None else ids

    def encode_next(self, text: str) -> list[int]:
        """The ids of a text that continues a sequence: as encode, less a SentencePiece word-start marker."""
        return self.next_backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.backend.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=True)

    def count_unknown(self, text: str) -> int:
        return self.encode(text).count(self.unk_id) if self.unk_id is not None else 0

    def fold(self, text: str) -> tuple[str, Folding]:
        """`text` with each character a char vocabulary lacks replaced by its first plain form that the
        vocabulary has (plain_forms); those with none stay, to be read as <|unk|>. BPE reads every text as
        it is, so it comes back unchanged."""
        folding = Folding()
        if self.kind != "char":
            return text, folding
        vocab = self.vocab()
        out = []
        for char in text:
            if char not in vocab:
                plain = next((f for f in plain_forms(char) if f and f != char and all(c in vocab for c in f)), None)
                if plain is None and unicodedata.combining(char):
                    plain = ""  # an accent typed apart from its letter (NFD text): the letter stays
                if plain is None:
                    folding.unreadable[char] += 1
                else:
                    folding.folded[char, plain] += 1
                    char = plain
            out.append(char)
        return "".join(out), folding

    def id_to_token(self, token_id: int) -> str | None:
        return self.backend.id_to_token(token_id)

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def vocab(self) -> dict[str, int]:
        return self.backend.get_vocab()

    def stream_decoder(self) -> "StreamDecoder":
        return StreamDecoder(self)

    # -- files ----------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        self.backend.save(str(path))

    @classmethod
    def load(cls, path: str | Path, specials: dict[str, str | None] | None = None) -> "Tokenizer":
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise GptminiError(f"{path}: tokenizer file not found") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise GptminiError(f"{path}: cannot read tokenizer ({exc})") from None
        try:
            backend = HFTokenizer.from_str(text)
            kind = _kind(json.loads(text))
        except KeyError:
            raise GptminiError(f"{path}: only character-level (WordLevel) and BPE tokenizers (byte-level or "
                               "SentencePiece-style) are supported") from None
        except Exception as exc:  # `tokenizers` raises a bare Exception on malformed files
            raise GptminiError(f"{path}: not a valid tokenizer.json ({exc})") from None
        return cls(backend, kind, specials)


def _kind(spec: dict) -> str:
    """"char", "bpe" (byte-level, ours) or "spm" (BPE with byte fallback and a "▁" marker: Llama's)."""
    model = spec["model"]
    if model["type"] == "WordLevel":
        return "char"
    if model["type"] != "BPE":
        raise KeyError(model["type"])
    return "spm" if model.get("byte_fallback") or _walk(spec, ("Metaspace", "Prepend")) else "bpe"


def _walk(node: object, types: tuple[str, ...]) -> list[dict]:
    """Every component (normalizer, pre-tokenizer, ...) in a tokenizer.json whose type is one of `types`."""
    if isinstance(node, list):
        return [found for item in node for found in _walk(item, types)]
    if not isinstance(node, dict):
        return []
    here = [node] if node.get("type") in types else []
    return here + [found for key, value in node.items() if key != "model" for found in _walk(value, types)]


def adds_prefix(spec: dict) -> bool:
    """Whether a tokenizer.json puts SentencePiece's "▁" in front of a text (llama.cpp's add_space_prefix)."""
    return bool(_walk(spec, ("Prepend",))) or any(
        m.get("prepend_scheme", "always" if m.get("add_prefix_space", True) else "never") != "never"
        for m in _walk(spec, ("Metaspace",)))


def _without_prefix(backend: HFTokenizer) -> HFTokenizer:
    """The same tokenizer minus the "▁" it puts in front of a text: Metaspace never prepends, Prepend goes."""
    spec = json.loads(backend.to_str())
    for metaspace in _walk(spec, ("Metaspace",)):
        metaspace["prepend_scheme"], metaspace["add_prefix_space"] = "never", False
    for sequence in _walk(spec, ("Sequence",)):
        for key in ("normalizers", "pretokenizers"):
            if key in sequence:
                sequence[key] = [n for n in sequence[key] if n.get("type") != "Prepend"]
    if (spec.get("normalizer") or {}).get("type") == "Prepend":
        spec["normalizer"] = None
    other = HFTokenizer.from_str(json.dumps(spec))
    other.encode_special_tokens = True
    return other


class StreamDecoder:
    """Turns a growing list of ids into text deltas, holding back incomplete UTF-8 sequences."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer, self.ids, self.text = tokenizer, [], ""

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):  # a multi-byte character is still arriving
            return ""
        delta, self.text = text[len(self.text):], text
        return delta


