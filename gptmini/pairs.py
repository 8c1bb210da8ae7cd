"""`gptmini pairs`: preference pairs made from an assistant's own mistakes, for `gptmini dpo`.

For each instruction record the model answers greedily, as eval does; where its answer differs from
the reference, the pair is chosen = the reference, rejected = the model's answer. With `similar`,
each record also gets a pair whose rejected answer is the reference answer of the most similar
other instruction (one with a different answer: rewordings of the same question share theirs): a
small model's typical mistake is answering the neighbouring question, and these pairs teach it to
tell the two apart. Similarity is the cosine of TF-IDF-weighted character trigram counts, which
sees "inteligência artificial" in "Defina IA (inteligência artificial)" without any tokenizer.
"""
from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import torch

from . import checkpoint
from .data.records import Example, read_examples
from .engine import SamplingParams
from .errors import GptminiError
from .evaluate import evaluate_model, instruction_of, normalize

NGRAM = 3


def trigram_vectors(texts: list[str]) -> torch.Tensor:
    """(N, features) sparse rows: TF-IDF weighted character trigrams of each normalised text, unit length."""
    counts = [Counter(t[i:i + NGRAM] for i in range(len(t) - NGRAM + 1)) for t in (f" {normalize(x)} " for x in texts)]
    df = Counter(gram for c in counts for gram in c)
    column = {gram: i for i, gram in enumerate(df)}
    idf = {gram: math.log((1 + len(texts)) / (1 + n)) + 1 for gram, n in df.items()}  # scikit-learn's smoothing
    rows, cols, values = [], [], []
    for row, c in enumerate(counts):
        weights = {gram: n * idf[gram] for gram, n in c.items()}
        norm = math.sqrt(sum(v * v for v in weights.values())) or 1.0
        for gram, value in weights.items():
            rows.append(row)
            cols.append(column[gram])
            values.append(value / norm)
    return torch.sparse_coo_tensor([rows, cols], values, (len(texts), max(1, len(column))),
                                   check_invariants=True).coalesce()


def most_similar(texts: list[str], groups: list[str], block: int = 256) -> list[int | None]:
    """For each text, the index of the most similar text of another group (None if there is none)."""
    vectors = trigram_vectors(texts)
    group_ids = torch.tensor([{g: i for i, g in enumerate(dict.fromkeys(groups))}[g] for g in groups])
    found = []
    for start in range(0, len(texts), block):  # (block, N) similarities at a time: memory stays small
        rows = vectors.index_select(0, torch.arange(start, min(start + block, len(texts)))).to_dense()
        sims = torch.sparse.mm(vectors, rows.t()).t()
        sims[group_ids[start:start + len(rows), None] == group_ids[None, :]] = -1.0
        best = sims.argmax(dim=1)
        found += [int(j) if sims[i, j] >= 0 else None for i, j in enumerate(best.tolist())]
    return found


def pair_record(example: Example, chosen: str, rejected: str) -> dict:
    """One pair in TRL's standard format (a one-turn instruction) or its conversational one."""
    prompt = example.messages[:-1]
    if len(prompt) == 1 and "input" not in prompt[0]:
        return {"prompt": prompt[0]["content"], "chosen": chosen, "rejected": rejected}
    messages = [{"role": m["role"], "content": m["content"] + (f"\n\n{m['input']}" if m.get("input") else "")}
                for m in prompt]
    return {"prompt": messages, "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}]}


def make_pairs(model: str | Path, data: str | Path, out: str | Path, similar: bool = False,
               fields: str | dict | None = None, encoding: str | None = None, batch_size: int = 32,
               max_new_tokens: int = 128, device: str = "cpu", show_progress: bool = True) -> dict:
    """Writes preference pairs (JSONL) for the records of `data`; returns counts of what was written."""
    records = read_examples(data, fields, encoding=encoding)
    print(f"data: {records.report()}")
    ckpt = checkpoint.load(model, device=device)
    if ckpt.template is None:
        raise GptminiError(f"{model}: has no template (a base model?); pairs need the assistant that SFT made")
    examples = records.examples
    report = evaluate_model(ckpt, ckpt.template, examples, SamplingParams(max_new_tokens=max_new_tokens),
                            batch_size, name=str(model), show_progress=show_progress)
    references = [e.messages[-1]["content"] for e in examples]
    rows = [pair_record(e, ref, answer) for e, ref, answer in zip(examples, references, report.answers)
            if answer.strip() != ref.strip()]
    own = len(rows)
    if similar:
        neighbours = most_similar([instruction_of(e) for e in examples], [r.strip() for r in references])
        own_answers = [answer.strip() for answer in report.answers]  # a wrong answer may be the neighbour's: once
        rows += [pair_record(e, ref, references[j]) for e, ref, j, answer in zip(examples, references, neighbours,
                                                                                 own_answers)
                 if j is not None and references[j].strip() != answer]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    tmp.replace(out)
    summary = {"records": len(examples), "answered_right": len(examples) - own, "pairs": len(rows),
               "from_own_answers": own, "from_similar_instructions": len(rows) - own, "out": str(out)}
    print(f"pairs: {len(rows)} written to {out}: {own} where the model's answer differs from the reference "
          f"({len(examples) - own} of {len(examples)} answered exactly right)"
          + (f", {len(rows) - own} with the most similar other instruction's answer as rejected" if similar else ""))
    return summary
