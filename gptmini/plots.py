"""PNG charts: loss curves of a run (train and validation; a DPO run's reward margin beside them)."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


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
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
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
    tmp = png.with_name(png.name + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(png)
