import json
import subprocess
import sys

import pytest

ARGS = ["pretrain", "--tokenizer", "char", "--context-size", "32", "--d-model", "32", "--n-heads", "4", "--n-layers",
        "2", "--batch-size", "4", "--grad-accum", "2", "--max-steps", "8", "--log-every", "1", "--eval-every", "4",
        "--lr", "3e-3", "--no-progress"]


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("".join(f"{i}: a atenção permite que o modelo foque no texto.\n\n" for i in range(80)), encoding="utf-8")
    return path


def losses(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_two_gloo_processes_follow_the_single_process_loss_curve(tmp_path, corpus):
    single = subprocess.run([sys.executable, "-m", "gptmini.cli", *ARGS, "--data", str(corpus), "--out", str(tmp_path / "one")],
                            capture_output=True, text=True, timeout=120)
    assert single.returncode == 0, single.stderr
    double = subprocess.run([sys.executable, "-m", "gptmini.cli", *ARGS, "--devices", "2", "--data", str(corpus),
                             "--out", str(tmp_path / "two")], capture_output=True, text=True, timeout=120)
    assert double.returncode == 0, double.stderr
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert [r["step"] for r in one] == [r["step"] for r in two] == list(range(1, 9))
    for a, b in zip(one, two):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-4)
        assert (a["val_loss"] is None) == (b["val_loss"] is None)
    assert one[-1]["val_loss"] == pytest.approx(two[-1]["val_loss"], abs=1e-4)


def test_world_size_must_divide_the_accumulation(tmp_path, corpus):
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29518",
                          "-m", "gptmini.cli", *ARGS, "--grad-accum", "3", "--data", str(corpus), "--out", str(tmp_path / "x")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "--grad-accum 3 is not a multiple of the 2 processes" in out.stderr
