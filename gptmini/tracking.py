"""Where a training run's metrics go: metrics.jsonl always, and the trackers named by --log-to
(TensorBoard, Weights & Biases) beside it, under the same metric names.

A record is what the Trainer logs every --log-every steps ({"step", "train_loss", "val_loss", "lr",
...}); each tracker gets its numbers at its step. TensorBoard writes event files to OUT/tensorboard
(`tensorboard --logdir OUT`); W&B runs offline, into OUT/wandb, unless WANDB_API_KEY is set (then
`wandb sync` is not needed). Both packages are optional extras: a missing one is one line saying what
to install, before the first step.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import GptminiError

TRACKERS = ("tensorboard", "wandb")
INSTALL = "pip install 'gptmini[{extra}]' (or pip install {package})"


def _needs(tracker: str, package: str) -> GptminiError:
    return GptminiError(f"--log-to {tracker} needs the {package} package: {INSTALL.format(extra=tracker, package=package)}")


class TensorBoard:
    def __init__(self, out: Path, config: dict) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # torch's writer imports the tensorboard package
            raise _needs("tensorboard", "tensorboard") from None
        self.writer = SummaryWriter(log_dir=str(out / "tensorboard"))
        self.writer.add_text("config", f"```\n{json.dumps(config, indent=2, default=str)}\n```")

    def log(self, step: int, values: dict[str, float]) -> None:
        for name, value in values.items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()  # a run watched live shows every record as it is written

    def close(self) -> None:
        self.writer.close()


class WandB:
    def __init__(self, out: Path, config: dict) -> None:
        try:
            import wandb
        except ImportError:
            raise _needs("wandb", "wandb") from None
        # Without a key, offline: the run is written under OUT/wandb for `wandb sync`, never a login prompt.
        mode = "online" if os.environ.get("WANDB_API_KEY") else "offline"
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "gptmini"), name=out.name, dir=str(out),
                              config=config, mode=mode, reinit=True)

    def log(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


class MetricsLog:
    """metrics.jsonl (the record of the run, which resume trims and the loss curve reads) and the trackers."""

    def __init__(self, out: Path, log_to: list[str] | tuple[str, ...] = (), config: dict | None = None,
                 main: bool = True) -> None:
        self.path = out / "metrics.jsonl"
        unknown = sorted(set(log_to) - set(TRACKERS))
        if unknown:
            raise GptminiError(f"--log-to {unknown[0]!r}: choose from {', '.join(TRACKERS)}")
        kinds = {"tensorboard": TensorBoard, "wandb": WandB}
        # Only the main process writes (under torchrun every process builds a Trainer).
        self.trackers = [kinds[name](out, config or {}) for name in dict.fromkeys(log_to)] if main else []

    def write(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        values = {k: v for k, v in record.items() if k != "step" and isinstance(v, (int, float))}
        for tracker in self.trackers:
            tracker.log(record["step"], values)

    def truncate(self, step: int) -> None:
        """Drops the lines logged after `step`, the checkpoint a run resumes from (they will be logged again)."""
        if self.path.is_file():
            lines = [ln for ln in self.path.read_text().splitlines() if ln and json.loads(ln)["step"] <= step]
            self.path.write_text("".join(ln + "\n" for ln in lines))

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.close()
