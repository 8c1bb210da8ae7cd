"""Scoring answers against references, and `gptmini eval`'s report (markdown, JSON, charts).

Metrics are computed on a normalisation that keeps Portuguese intact: Unicode NFC, lower case,
punctuation and symbols removed by Unicode category (so «», “”, —, … go too), spaces collapsed.
Accents are kept: "nao" is not "não". (The popular `rouge-score` tokenizer keeps only [a-z0-9]
and would turn "atenção" into "aten o": not used here.)
"""
from __future__ import annotations

import json
import math
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from . import checkpoint
from .data.batches import ExampleBatches, fit_to_context
from .data.records import Example
from .data.templates import Template
from .engine import Engine, SamplingParams
from .errors import GptminiError
from .model import IGNORE_INDEX


def normalize(text: str) -> str:
    text = unicodedata.normalize("NFC", text).lower()
    kept = "".join(" " if unicodedata.category(ch)[0] in "PS" else ch for ch in text)
    return " ".join(kept.split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize(prediction) == normalize(reference))


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD-style F1 over normalised word tokens."""
    pred, ref = normalize(prediction).split(), normalize(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def _lcs(a: list[str], b: list[str]) -> int:
    row = [0] * (len(b) + 1)
    for x in a:
        previous_diagonal = 0
        for j, y in enumerate(b, 1):
            previous_diagonal, row[j] = row[j], previous_diagonal + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1: longest common subsequence of normalised word tokens."""
    pred, ref = normalize(prediction).split(), normalize(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    lcs = _lcs(pred, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def chrf(prediction: str, reference: str, max_n: int = 6, beta: float = 2.0) -> float:
    """chrF (Popović 2015) as sacrebleu computes it: character n-grams 1..6 without spaces,
    precision and recall averaged over n, then F-beta (beta 2), on a 0..100 scale. Case and
    accents count."""
    pred, ref = "".join(prediction.split()), "".join(reference.split())
    precisions, recalls = [], []
    for n in range(1, max_n + 1):
        p_grams = Counter(pred[i:i + n] for i in range(len(pred) - n + 1))
        r_grams = Counter(ref[i:i + n] for i in range(len(ref) - n + 1))
        if not p_grams or not r_grams:
            continue
        match = sum((p_grams & r_grams).values())
        precisions.append(match / sum(p_grams.values()))
        recalls.append(match / sum(r_grams.values()))
    if not precisions:
        return float(100 * (pred == ref))
    p, r = sum(precisions) / len(precisions), sum(recalls) / len(recalls)
    return 0.0 if p + r == 0 else 100 * (1 + beta**2) * p * r / (beta**2 * p + r)


@dataclass
class ModelReport:
    name: str
    metrics: dict = field(default_factory=dict)
    answers: list[str] = field(default_factory=list)


def masked_loss(ckpt, template: Template, examples: list[Example], batch_size: int = 32) -> float:
    """Mean loss on response tokens (+ end-of-text) of the examples, as in training."""
    ctx = ckpt.model.config.context_size
    sequences = []
    for example in examples:
        ids, labels = template.encode(ckpt.tokenizer, example.messages)
        sequences += fit_to_context(ids, labels, ctx + 1)[0]
    total = count = 0.0
    with torch.inference_mode():
        for idx, targets in ExampleBatches(sequences, batch_size, 0, ckpt.tokenizer.pad_id).eval_batches():
            _, loss = ckpt.model(idx, targets, loss_reduction="sum")
            total += loss.item()
            count += int((targets != IGNORE_INDEX).sum())
    return total / max(count, 1)


def evaluate_model(ckpt, template: Template, examples: list[Example], params: SamplingParams,
                   batch_size: int = 32) -> ModelReport:
    engine = Engine(ckpt.model, ckpt.tokenizer, template)
    prompts = [engine.encode_prompt(e.messages[:-1]) for e in examples]
    completions = []
    name = Path(str(ckpt.path)).name
    for i in tqdm(range(0, len(prompts), batch_size), desc=f"answering ({name})", unit="batch", leave=False):
        completions += engine.generate(prompts[i:i + batch_size], params)
    references = [e.messages[-1]["content"] for e in examples]
    answers = [c.text for c in completions]
    loss = masked_loss(ckpt, template, examples, batch_size)
    metrics = {name: sum(fn(a, r) for a, r in zip(answers, references)) / len(examples)
               for name, fn in (("exact_match", exact_match), ("token_f1", token_f1), ("rouge_l", rouge_l), ("chrf", chrf))}
    metrics.update(loss=loss, perplexity=math.exp(min(loss, 50)),
                   stop_rate=sum(c.finish_reason == "stop" for c in completions) / len(examples),
                   mean_answer_tokens=sum(len(c.token_ids) for c in completions) / len(examples))
    return ModelReport(str(ckpt.path), metrics, answers)


def scorable(examples: list[Example]) -> tuple[list[Example], list[str]]:
    """Examples ending with an assistant answer (the reference), and where the others are."""
    keep = [e for e in examples if e.messages[-1]["role"] == "assistant" and len(e.messages) > 1]
    return keep, [e.where for e in examples if e not in keep]


def run_eval(models: list[str | Path], examples: list[Example], out: Path, params: SamplingParams,
             template: Template | None = None, batch_size: int = 32) -> list[ModelReport]:
    examples, unscored = scorable(examples)
    if not examples:
        raise GptminiError("no record has a reference answer to score against")
    if unscored:
        print(f"note: {len(unscored)} records have no reference answer and were skipped (first: {unscored[0]})")
    ckpts = [checkpoint.load(m) for m in models]
    template = template or next((c.template for c in ckpts if c.template), None)
    if template is None:
        raise GptminiError("none of the models has a template: pass --template (e.g. comando)")
    reports = [evaluate_model(c, c.template or template, examples, params, batch_size) for c in ckpts]
    write_report(out, reports, examples, [Path(m) for m in models])
    return reports


def metrics_table(reports: list[ModelReport]) -> str:
    header = "| model | loss | perplexity | exact match | token F1 | ROUGE-L | chrF | stop rate | answer tokens |"
    rows = [header, "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in reports:
        m = r.metrics
        rows.append(f"| {r.name} | {m['loss']:.3f} | {m['perplexity']:.2f} | {m['exact_match']:.1%} | "
                    f"{m['token_f1']:.3f} | {m['rouge_l']:.3f} | {m['chrf']:.1f} | {m['stop_rate']:.1%} | "
                    f"{m['mean_answer_tokens']:.1f} |")
    return "\n".join(rows)


def write_report(out: Path, reports: list[ModelReport], examples: list[Example], model_dirs: list[Path]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    cell = lambda text: text.replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["# Evaluation", "", metrics_table(reports), "", "## Answers", "",
             "| instruction | reference | " + " | ".join(r.name for r in reports) + " |",
             "|---|---|" + "---|" * len(reports)]
    for i, e in enumerate(examples):
        answers = " | ".join(cell(r.answers[i]) for r in reports)
        lines.append(f"| {cell(e.messages[-2]['content'])} | {cell(e.messages[-1]['content'])} | {answers} |")
    (out / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    data = {"models": [{"model": r.name, "metrics": r.metrics} for r in reports],
            "examples": [{"where": e.where, "instruction": e.messages[-2]["content"], "reference": e.messages[-1]["content"],
                          "answers": {r.name: r.answers[i] for r in reports}} for i, e in enumerate(examples)]}
    (out / "report.json").write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")
    plot_metrics(out / "metrics.png", reports)
    plot_runs(out / "loss_curves.png", model_dirs)


def plot_metrics(png: Path, reports: list[ModelReport]) -> None:
    from .plots import plt

    names = ["exact_match", "token_f1", "rouge_l", "chrf", "stop_rate"]
    fig, ax = plt.subplots(figsize=(8, 4), dpi=100)
    width = 0.8 / len(reports)
    for k, r in enumerate(reports):
        values = [r.metrics[n] / (100 if n == "chrf" else 1) for n in names]
        ax.bar([i + k * width for i in range(len(names))], values, width, label=Path(r.name).parent.name + "/" + Path(r.name).name)
    ax.set_xticks([i + width * (len(reports) - 1) / 2 for i in range(len(names))], ["exact match", "token F1", "ROUGE-L", "chrF/100", "stop rate"])
    ax.set_ylim(0, 1.05)
    ax.legend()
    ax.set_title("answers vs references")
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)


def plot_runs(png: Path, model_dirs: list[Path]) -> None:
    from .plots import plt, read_metrics

    runs = [(d, read_metrics(d.parent / "metrics.jsonl")) for d in model_dirs]
    runs = [(d, rows) for d, rows in runs if rows]
    if not runs:
        return
    fig, ax = plt.subplots(figsize=(8, 4), dpi=100)
    for d, rows in runs:
        line, = ax.plot([r["step"] for r in rows], [r["train_loss"] for r in rows], label=f"{d.parent.name} train")
        val = [r for r in rows if r.get("val_loss") is not None]
        if val:
            ax.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o--", color=line.get_color(),
                    label=f"{d.parent.name} validation")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
