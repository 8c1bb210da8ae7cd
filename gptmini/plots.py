"""PNG charts: loss curves of a run (train and validation; a DPO run's reward margin beside them) and the
loss mask of formatted examples (which tokens are trained).

Figures are built without pyplot, so that nothing here changes the process's matplotlib backend: a
notebook's own `plt.plot` stays inline after gptmini has drawn a chart.
"""
from __future__ import annotations

import json
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from .model import IGNORE_INDEX
from .tokenizer import Tokenizer


def figure(width: float, height: float) -> tuple[Figure, Axes]:
    fig = Figure(figsize=(width, height), dpi=100)
    return fig, fig.subplots()


def save_png(fig: Figure, png: Path) -> None:
    """Written whole or not at all (a reader never sees half a PNG)."""
    png = Path(png)
    tmp = png.with_name(png.name + ".tmp.png")
    fig.savefig(tmp)
    tmp.replace(png)


def read_metrics(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def draw_run(ax, rows: list[dict], name: str = "") -> None:
    """A run's training loss as a line and its validation losses as points, in one colour."""
    prefix = f"{name} " if name else ""
    line, = ax.plot([r["step"] for r in rows], [r["train_loss"] for r in rows], label=f"{prefix}train")
    val = [r for r in rows if r.get("val_loss") is not None]
    if val:
        ax.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o--", color=line.get_color(),
                label=f"{prefix}validation")


def plot_loss_curve(metrics_file: Path, png: Path, title: str | None = None) -> None:
    rows = read_metrics(metrics_file)
    if not rows:
        return
    fig, ax = figure(7, 4)
    draw_run(ax, rows)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title or f"{metrics_file.parent.name}: loss")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    margins = [r for r in rows if "rewards/margins" in r]
    if margins:  # a DPO run: how far the chosen answers' reward is ahead of the rejected ones'
        ax.set_ylabel("DPO loss (per pair)")
        right = ax.twinx()
        right.plot([r["step"] for r in margins], [r["rewards/margins"] for r in margins], color="tab:green",
                   label="reward margin (chosen - rejected)")
        right.set_ylabel("reward margin")
        right.legend(loc="upper right")
    fig.tight_layout()
    save_png(fig, png)


# Each token of a formatted example is one of these, and drawn in its colour (a legend names them).
MASK_COLOURS = {"prompt": "#d2e3fc", "answer": "#a8dab5", "end-of-text": "#fdd663", "padding": "#dadce0"}
MASK_LEGEND = {"prompt": "prompt (ignored: label -100)", "answer": "answer (trained)",
               "end-of-text": "end-of-text (trained: the model learns to stop)", "padding": "padding (ignored)"}
CELL_W, CELL_H = 0.09, 0.26  # inches per character of token text, per line of tokens


def mask_roles(ids: list[int], labels: list[int], eot_id: int, width: int | None = None) -> list[str]:
    """Each position's role by its label (as Template.encode gives them), then "padding" up to `width`,
    as a batch pads a shorter example."""
    roles = [("end-of-text" if token == eot_id else "answer") if label != IGNORE_INDEX else "prompt"
             for token, label in zip(ids, labels)]
    return roles + ["padding"] * ((width or len(ids)) - len(ids))


def token_text(tokenizer: Tokenizer, token_id: int, role: str) -> str:
    """What a token's cell says: its text with line breaks and tabs made visible; specials by name."""
    if role == "padding":
        return ""
    if token_id in (tokenizer.eot_id, tokenizer.pad_id, tokenizer.unk_id):
        return tokenizer.id_to_token(token_id) or ""
    return tokenizer.decode([token_id]).replace("\n", "↵").replace("\t", "→")


def mask_layout(examples: list[tuple[list[int], list[int]]], tokenizer: Tokenizer, columns: int,
                captioned: bool = False) -> tuple[list[tuple], list[int]]:
    """(x, line, width, text, role) of every token cell, and each example's first line: examples padded to
    the longest (as one batch holds them), each from a new line (after a line for its caption, if
    `captioned`), wrapped at `columns` characters and after each line break."""
    width = max(len(ids) for ids, _ in examples)
    cells, starts, line = [], [], 0
    for ids, labels in examples:
        starts.append(line)
        x, line = 0, line + captioned
        for token_id, role in zip(ids + [tokenizer.pad_id] * (width - len(ids)),
                                  mask_roles(ids, labels, tokenizer.eot_id, width)):
            text = token_text(tokenizer, token_id, role)
            w = max(1, len(text))
            if x + w > columns:
                x, line = 0, line + 1
            cells.append((x, line, w, text, role))
            x += w
            if text.endswith("↵"):
                x, line = 0, line + 1
        line += 2  # a blank line between examples
    return cells, starts


def draw_mask(examples: list[tuple[list[int], list[int]]], tokenizer: Tokenizer, png: str | Path | None = None,
              captions: list[str] | None = None, columns: int = 90) -> Figure:
    """The loss mask as a picture: every token of each (ids, labels) example (Template.encode's output) in a
    cell coloured by its role (MASK_COLOURS), a caption above each if given, a legend; written to `png` if
    given."""
    cells, starts = mask_layout(examples, tokenizer, columns, captioned=bool(captions))
    lines = cells[-1][1] + 1
    fig, ax = figure(columns * CELL_W + 0.4, lines * CELL_H + 1.1)
    for x, line, w, text, role in cells:
        ax.add_patch(Rectangle((x, line), w, 0.9, facecolor=MASK_COLOURS[role], edgecolor="white", linewidth=0.5))
        ax.text(x + w / 2, line + 0.45, text, ha="center", va="center", family="monospace", fontsize=8)
    ax.set_xlim(0, columns)
    ax.set_ylim(lines, 0)
    ax.axis("off")
    used = [role for role in MASK_COLOURS if any(cell[4] == role for cell in cells)]
    ax.legend(handles=[Patch(facecolor=MASK_COLOURS[r], label=MASK_LEGEND[r]) for r in used], loc="lower left",
              bbox_to_anchor=(0, 1.0), ncol=2, frameon=False, fontsize=8)
    for caption, line in zip(captions or [], starts):
        ax.text(0, line + 0.45, caption, va="center", fontsize=8, style="italic")
    fig.tight_layout()
    if png is not None:
        save_png(fig, Path(png))
    return fig
