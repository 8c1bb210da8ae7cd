"""--log-to: TensorBoard and W&B get the metrics.jsonl numbers under the same names, on every training verb."""
import json
import subprocess
import sys

import pytest

from gptmini import GptminiError, get_template, save
from gptmini.cli import build_parser
from gptmini.dpo import dpo
from gptmini.tracking import MetricsLog


def scalars(run_dir) -> dict[str, dict[int, float]]:
    """The TensorBoard event file read back: tag -> {step: value}."""
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    events = accumulator.EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}


def jsonl(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_pretrain_cli_logs_to_tensorboard_what_metrics_jsonl_holds(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("O modelo de linguagem prevê a próxima palavra.\n" * 400, encoding="utf-8")  # a validation split too
    out = subprocess.run([sys.executable, "-m", "gptmini.cli", "pretrain", "--data", str(corpus), "--out",
                          str(tmp_path / "run"), "--tokenizer", "char", "--context-size", "16", "--d-model", "16",
                          "--n-heads", "2", "--n-layers", "1", "--max-steps", "6", "--log-every", "2", "--eval-every",
                          "3", "--batch-size", "2", "--no-progress", "--log-to", "tensorboard"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    logged, records = scalars(tmp_path / "run"), jsonl(tmp_path / "run")
    assert {"train_loss", "val_loss", "lr", "tokens_per_s", "tokens"} <= set(logged)
    for record in records:
        assert logged["train_loss"][record["step"]] == pytest.approx(record["train_loss"], rel=1e-6)
        if record["val_loss"] is not None:
            assert logged["val_loss"][record["step"]] == pytest.approx(record["val_loss"], rel=1e-6)
    assert sorted(logged["train_loss"]) == [r["step"] for r in records]


def test_every_training_verb_takes_log_to():
    parser = build_parser()
    for verb in ("pretrain", "sft", "dpo"):
        args = parser.parse_args([verb, "--out", "x", "--data", "d", "--log-to", "tensorboard", "--log-to", "wandb"])
        assert args.log_to == ["tensorboard", "wandb"], verb


def test_dpo_logs_its_own_metrics_to_tensorboard_and_wandb_offline(tmp_path, tiny_model, char_tokenizer, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    save(tmp_path / "base", tiny_model, char_tokenizer, {"template": get_template().to_dict()})
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": p, "chosen": "sim", "rejected": "não"}) + "\n"
                             for p in ("olá", "oi", "ação", "modelo")), encoding="utf-8")
    dpo(tmp_path / "run", pairs, str(tmp_path / "base"), val_fraction=0,
        train={"max_steps": 2, "batch_size": 2, "log_every": 1, "show_progress": False,
               "log_to": ["tensorboard", "wandb"]})
    records, logged = jsonl(tmp_path / "run"), scalars(tmp_path / "run")
    dpo_names = set(records[-1]) - {"step", "val_loss"}
    assert any("reward" in name for name in dpo_names) and dpo_names <= set(logged)
    wandb.teardown()  # the run file is written by W&B's service process: wait for it to flush and exit
    run_file = next((tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb"))  # offline: no key, no login
    assert all(name.encode() in run_file.read_bytes() for name in ("train_loss", "rewards/margins"))


@pytest.mark.parametrize("tracker,module", [("tensorboard", "torch.utils.tensorboard"), ("wandb", "wandb")])
def test_a_missing_tracker_is_one_line_saying_what_to_install(tmp_path, monkeypatch, tracker, module):
    monkeypatch.setitem(sys.modules, module, None)  # import now fails as it does when the package is absent
    with pytest.raises(GptminiError, match=rf"--log-to {tracker} needs the {tracker} package: pip install "
                                           rf"'gptmini\[{tracker}\]'"):
        MetricsLog(tmp_path, [tracker])
