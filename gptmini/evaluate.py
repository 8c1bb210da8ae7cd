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

from . import checkpoint, progress
from .data import records
from .data.batches import ExampleBatches, fit_to_context
from .data.records import Example, Records
from .data.templates import Template
from .engine import Engine, SamplingParams
from .errors import GptminiError
from .judge import CACHE_FILE, JUDGE_PROMPT, Judge, distribution, judge_metrics
from .model import IGNORE_INDEX


def normalize(text: str) -> str:
    """NFC, lower case, punctuation/symbols -> space, spaces collapsed; accents stay."""
    text = unicodedata.normalize("NFC", text).lower()
    kept = "".join(" " if unicodedata.category(ch)[0] in "PS" else ch for ch in text)
    return " ".join(kept.split())


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the answers are equal after `normalize` (case and punctuation ignored, accents not)."""
    return float(normalize(prediction) == normalize(reference))


def _word_f1(prediction: str, reference: str, overlap) -> float:
    """F1 of `overlap(pred_words, ref_words)` matched words over normalised word tokens; two empty
    answers agree fully, one empty answer not at all."""
    pred, ref = normalize(prediction).split(), normalize(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    matched = overlap(pred, ref)
    if matched == 0:
        return 0.0
    precision, recall = matched / len(pred), matched / len(ref)
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD-style F1: words in common, each counted as often as both sides have it."""
    return _word_f1(prediction, reference, lambda p, r: sum((Counter(p) & Counter(r)).values()))


def _lcs(a: list[str], b: list[str]) -> int:
    row = [0] * (len(b) + 1)
    for x in a:
        previous_diagonal = 0
        for j, y in enumerate(b, 1):
            previous_diagonal, row[j] = row[j], previous_diagonal + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1: the longest common subsequence of normalised word tokens."""
    return _word_f1(prediction, reference, _lcs)


def chrf(prediction: str, reference: str, max_n: int = 6, beta: float = 2.0) -> float:
    """chrF (Popović 2015) as sacrebleu computes it: character n-grams 1..6 without spaces,
    precision and recall averaged over n, then F-beta (beta 2), on a 0..100 scale. Case and
    accents count; NFC first so that a decomposed "não" equals a composed one. Two empty strings
    score 100 (sacrebleu says 0), like exact match and F1 do."""
    pred, ref = ("".join(unicodedata.normalize("NFC", t).split()) for t in (prediction, reference))
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


def read_eval_data(path: str | Path, fields: dict | str | None = None, encoding: str | None = None) -> Records:
    """Like `read_examples`, but a record without an answer is kept as a prompt only, so that eval
    counts it as unscorable instead of rejecting the whole file. Any other problem still fails."""
    return records.read_examples(path, fields, require_answer=False, encoding=encoding)


def instruction_of(example: Example) -> str:
    """The last user turn (with its input, if any): what the answer responds to."""
    user = next((m for m in reversed(example.messages) if m["role"] == "user"), example.messages[0])
    return user["content"] + (f"\n\n{user['input']}" if user.get("input") else "")


def plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


@dataclass
class ModelReport:
    name: str
    metrics: dict = field(default_factory=dict)
    answers: list[str] = field(default_factory=list)
    judged: list[tuple[int | None, str]] = field(default_factory=list)  # (score or None: unparsed, reply) per answer


def masked_loss(ckpt, template: Template, examples: list[Example], batch_size: int = 32, model=None) -> float:
    """Mean loss on response tokens (+ end-of-text) of the examples, as in training: an example
    longer than the context is cut the way training cuts it. NaN when no response token fits.
    `model`: another model to score with (the checkpoint's quantized copy); default the checkpoint's."""
    model = model or ckpt.model
    ctx = model.config.context_size
    device = model.embed.weight.device
    sequences = []
    for example in examples:
        ids, labels = template.encode(ckpt.tokenizer, example.messages)
        sequences += fit_to_context(ids, labels, ctx + 1)[0]
    if not sequences:
        return math.nan
    total = count = 0.0
    with torch.inference_mode():
        for idx, targets in ExampleBatches(sequences, batch_size, 0, ckpt.tokenizer.pad_id).eval_batches():
            idx, targets = idx.to(device), targets.to(device)
            _, loss = model(idx, targets, loss_reduction="sum")
            total += loss.item()
            count += int((targets != IGNORE_INDEX).sum())
    return total / max(count, 1)


def evaluate_model(ckpt, template: Template, examples: list[Example], params: SamplingParams,
                   batch_size: int = 32, name: str | None = None, show_progress: bool = True,
                   quantize: str | None = None, compile: bool = False) -> ModelReport:
    """Answers every example's prompt (all messages but the final answer) and scores the answers."""
    engine = Engine(ckpt.model, ckpt.tokenizer, template, quantize, compile)
    prompts = [engine.encode_prompt(e.messages[:-1]) for e in examples]
    completions = []
    name = name or str(ckpt.path)
    for i in progress.bar(show_progress, iterable=range(0, len(prompts), batch_size), leave=False,
                          desc=f"answering ({Path(name).name})", unit="batch"):
        completions += engine.generate(prompts[i:i + batch_size], params)
    references = [e.messages[-1]["content"] for e in examples]
    answers = [c.text for c in completions]
    loss = masked_loss(ckpt, template, examples, batch_size, engine.model)
    scores = (("exact_match", exact_match), ("token_f1", token_f1), ("rouge_l", rouge_l), ("chrf", chrf))
    metrics = {key: sum(fn(a, r) for a, r in zip(answers, references)) / len(examples) for key, fn in scores}
    metrics.update(loss=loss, perplexity=math.exp(min(loss, 50)),  # min: no overflow for a random model
                   stop_rate=sum(c.finish_reason == "stop" for c in completions) / len(examples),
                   mean_answer_tokens=sum(len(c.token_ids) for c in completions) / len(examples))
    return ModelReport(name, metrics, answers)


def scorable(examples: list[Example]) -> tuple[list[Example], list[str]]:
    """Examples ending with an assistant answer (the reference) to a user turn, and where the others are."""
    keep, unscored = [], []
    for e in examples:
        if e.messages[-1]["role"] == "assistant" and any(m["role"] == "user" for m in e.messages[:-1]):
            keep.append(e)
        else:
            unscored.append(e.where)
    return keep, unscored


def unique_names(models: list[str | Path]) -> list[str]:
    """Column names for the report; the same checkpoint given twice gets "#2" so no column is lost."""
    names = []
    for m in models:
        name, k = str(m), 2
        while name in names:
            name, k = f"{m}#{k}", k + 1
        names.append(name)
    return names


def run_eval(models: list[str | Path], examples: list[Example], out: Path, params: SamplingParams,
             template: Template | None = None, batch_size: int = 32, skipped: list[str] = (),
             device: str = "cpu", show_progress: bool = True, quantize: str | None = None,
             compare_unquantized: bool = False, judge: Judge | None = None,
             compile: bool = False) -> list[ModelReport]:
    """Evaluates every checkpoint on the examples and writes the report into `out`.

    `template` is for checkpoints without one (base models); by default they borrow the first
    template found among `models`. `skipped` (records the reader left out) goes into the report.
    `quantize` ("int8") evaluates quantized copies; with `compare_unquantized` the first model in
    float32 comes first, beside them (see quantization_summary). `judge` also scores every answer 0-100
    (see judge.py); the report is written first without it, so a judge that fails midway loses nothing.
    `compile`: decode through a compiled step (Engine(compile=True)).
    """
    examples, unscored = scorable(examples)
    if not examples:
        raise GptminiError("no record has a reference answer to score against (the last message of each "
                           "record is the reference; name the answer column with --fields response=COLUMN)")
    if unscored:
        print(f"note: {plural(len(unscored), 'record')} without a reference answer, not scored (first: {unscored[0]})")
    ckpts = [checkpoint.load(m, device=device) for m in models]  # all first: a bad one fails before any work
    if judge:
        judge.client.check()  # a judge that is down fails now, not after every answer is generated
    template = template or next((c.template for c in ckpts if c.template), None)
    if template is None:
        raise GptminiError("none of the models has a template: pass --template (e.g. comando)")
    names = unique_names(models)
    runs = [(c, f"{name} ({quantize})" if quantize else name, quantize) for c, name in zip(ckpts, names)]
    if quantize and compare_unquantized:
        runs.insert(0, (ckpts[0], f"{names[0]} (fp32)", None))
    reports = [evaluate_model(c, c.template or template, examples, params, batch_size, name, show_progress, mode,
                              compile)
               for c, name, mode in runs]
    data = {"scored": len(examples), "skipped": list(skipped), "no_reference": unscored}
    write_report(out, reports, examples, [Path(m) for m in models], data)
    if judge:
        for r in reports:
            scores, replies = judge.score([instruction_of(e) for e in examples],
                                          [e.messages[-1]["content"] for e in examples], r.answers, r.name, show_progress)
            r.judged = list(zip(scores, replies))
            r.metrics.update(judge_metrics(scores))
            unparsed = [reply for score, reply in r.judged if score is None]
            if unparsed:  # never silently: a judge that answers in sentences needs another model or prompt
                print(f"note: {r.name}: the judge's reply about {len(unparsed)} of {len(scores)} answers is not a number "
                      f"from 0 to 100 (first: {unparsed[0][:80]!r}); counted as unparsed, left out of the mean")
        data["judge"] = {"endpoint": judge.client.url, "model": judge.client.model, "asked": judge.asked,
                         "cache": str(judge.cache), "prompt": JUDGE_PROMPT}
        write_report(out, reports, examples, [Path(m) for m in models], data)
    return reports


def quantization_summary(full: ModelReport, quantized: ModelReport) -> str:
    """One line: the quantized model's held-out loss against float32's, and how many answers are identical."""
    same = sum(a == b for a, b in zip(full.answers, quantized.answers))
    loss, reference = quantized.metrics["loss"], full.metrics["loss"]
    return (f"{quantized.name} vs {full.name}: held-out loss {loss:.4f} vs {reference:.4f} "
            f"({(loss - reference) / reference:+.2%}); greedy answers identical {same}/{len(full.answers)} "
            f"({same / max(len(full.answers), 1):.1%})")


def metrics_table(reports: list[ModelReport]) -> str:
    """The metrics as a markdown table, one row per model (printed, and the top of report.md)."""
    judged = any(r.judged for r in reports)
    header = ("| model | loss | perplexity | exact match | token F1 | ROUGE-L | chrF | stop rate | answer tokens |"
              + (" judge (0-100) |" if judged else ""))
    rows = [header, "|---|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if judged else "")]
    for r in reports:
        m = r.metrics
        judge = f" {judge_mean(m)} ({m['judge_unparsed']} unparsed) |" if judged else ""
        rows.append(f"| {r.name} | {m['loss']:.3f} | {m['perplexity']:.2f} | {m['exact_match']:.1%} | "
                    f"{m['token_f1']:.3f} | {m['rouge_l']:.3f} | {m['chrf']:.1f} | {m['stop_rate']:.1%} | "
                    f"{m['mean_answer_tokens']:.1f} |{judge}")
    return "\n".join(rows)


def judge_mean(metrics: dict) -> str:
    return "n/a" if math.isnan(metrics["judge_mean"]) else f"{metrics['judge_mean']:.1f}"


def judge_section(reports: list[ModelReport], judge: dict) -> list[str]:
    """report.md's lines on the judge: who judged, and each model's scores per band of ten."""
    cached = sum(len(r.judged) for r in reports) - judge["asked"]
    bands = list(distribution([]))
    lines = ["## Judge", "", f"{judge['model']} at {judge['endpoint']} scored each answer 0-100 against the reference "
             f"(the prompt is in report.json); {judge['asked']} asked, {cached} from {CACHE_FILE}. A reply that is "
             "not a number from 0 to 100 is unparsed: left out of the mean, counted.", "",
             "| model | mean | unparsed | " + " | ".join(bands) + " |", "|---|---:|---:|" + "---:|" * len(bands)]
    for r in reports:
        counts = distribution([s for s, _ in r.judged]).values()
        lines.append(f"| {r.name} | {judge_mean(r.metrics)} | {r.metrics['judge_unparsed']} | "
                     + " | ".join(map(str, counts)) + " |")
    return lines + [""]


def write_report(out: Path, reports: list[ModelReport], examples: list[Example], model_dirs: list[Path],
                 data: dict | None = None) -> list[Path]:
    """report.md, report.json, metrics.png and (when the runs logged metrics) loss_curves.png."""
    out.mkdir(parents=True, exist_ok=True)
    data = data or {"scored": len(examples), "skipped": [], "no_reference": []}

    def cell(text: str) -> str:  # one markdown table cell: no "|" or line break may end it early
        return text.replace("|", "\\|").replace("\n", " ") or " "

    counts = (f"{plural(data['scored'], 'example')} scored; {plural(len(data['skipped']), 'record')} skipped "
              f"(empty field); {len(data['no_reference'])} without a reference answer.")
    judged = "judge" in data
    lines = ["# Evaluation", "", counts, "", metrics_table(reports), "",
             *(judge_section(reports, data["judge"]) if judged else []), "## Answers", "",
             "| instruction | reference | " + " | ".join(r.name for r in reports) + " |",
             "|---|---|" + "---|" * len(reports)]
    for i, e in enumerate(examples):
        answers = " | ".join(cell(r.answers[i]) for r in reports)
        lines.append(f"| {cell(instruction_of(e))} | {cell(e.messages[-1]['content'])} | {answers} |")
    (out / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    models = [{"model": r.name, "metrics": {k: None if math.isnan(v) else v for k, v in r.metrics.items()},
               **({"judge_distribution": distribution([s for s, _ in r.judged])} if r.judged else {})}
              for r in reports]  # NaN (loss when nothing fit the context, a judge mean of nothing) is not JSON: null
    report = {"data": data, "models": models,
              "examples": [{"where": e.where, "instruction": instruction_of(e), "reference": e.messages[-1]["content"],
                            "answers": {r.name: r.answers[i] for r in reports},
                            **({"judge": {r.name: dict(zip(("score", "reply"), r.judged[i])) for r in reports}}
                               if judged else {})} for i, e in enumerate(examples)]}
    (out / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    written = [out / "report.md", out / "report.json", out / "metrics.png"]
    plot_metrics(out / "metrics.png", reports)
    if judged:
        plot_judge(out / "judge.png", reports)
        written.append(out / "judge.png")
    else:  # a chart left from an earlier, judged report would describe other answers
        (out / "judge.png").unlink(missing_ok=True)
    if plot_runs(out / "loss_curves.png", model_dirs):
        written.append(out / "loss_curves.png")
    else:  # a chart left from an earlier report would describe other runs
        (out / "loss_curves.png").unlink(missing_ok=True)
    return written


def plot_metrics(png: Path, reports: list[ModelReport]) -> None:
    from .plots import figure

    names = ["exact_match", "token_f1", "rouge_l", "chrf", "stop_rate"] + (["judge_mean"] if reports[0].judged else [])
    fig, ax = figure(8, 4)
    width = 0.8 / len(reports)
    for k, r in enumerate(reports):
        values = [r.metrics[n] / (100 if n in ("chrf", "judge_mean") else 1) for n in names]
        ax.bar([i + k * width for i in range(len(names))], [0 if math.isnan(v) else v for v in values], width,
               label=short_name(r.name))
    ax.set_xticks([i + width * (len(reports) - 1) / 2 for i in range(len(names))],
                  ["exact match", "token F1", "ROUGE-L", "chrF/100", "stop rate", "judge/100"][:len(names)])
    ax.set_ylim(0, 1.05)
    ax.legend()
    ax.set_title("answers vs references")
    fig.tight_layout()
    fig.savefig(png)


def short_name(name: str) -> str:
    return Path(name).parent.name + "/" + Path(name).name


def plot_judge(png: Path, reports: list[ModelReport]) -> None:
    """How the judge's scores spread, per band of ten, side by side for the models; unparsed replies apart."""
    from .plots import figure

    bands = [*distribution([]), "unparsed"]
    fig, ax = figure(8, 4)
    width = 0.8 / len(reports)
    for k, r in enumerate(reports):
        counts = [*distribution([s for s, _ in r.judged]).values(), r.metrics["judge_unparsed"]]
        ax.bar([i + k * width for i in range(len(bands))], counts, width,
               label=f"{short_name(r.name)} (mean {judge_mean(r.metrics)})")
    ax.set_xticks([i + width * (len(reports) - 1) / 2 for i in range(len(bands))], bands)
    ax.set_xlabel("judge's score")
    ax.set_ylabel("answers")
    ax.legend()
    ax.set_title("judge's scores (0-100 against the reference)")
    fig.tight_layout()
    fig.savefig(png)


def plot_runs(png: Path, model_dirs: list[Path]) -> bool:
    """Train/validation loss of each checkpoint's run (metrics.jsonl beside it); False if none has one."""
    from .plots import draw_run, figure, read_metrics

    runs, seen = [], set()
    for d in model_dirs:  # best/ and last/ of one run share its metrics: draw the run once
        metrics_file = d.resolve().parent / "metrics.jsonl"
        try:
            rows = [] if metrics_file in seen else [r for r in read_metrics(metrics_file) if "train_loss" in r]
        except (OSError, ValueError):  # a run killed mid-write; the chart is a bonus, not worth failing for
            rows = []
        if rows:
            seen.add(metrics_file)
            runs.append((d, rows))
    if not runs:
        return False
    fig, ax = figure(8, 4)
    for d, rows in runs:
        draw_run(ax, rows, d.resolve().parent.name)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png)
    return True
