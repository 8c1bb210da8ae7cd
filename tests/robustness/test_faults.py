"""Faults during training: SIGKILL at random points, a failing disk, the safety of load paths."""
import json
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gptmini import GptminiError, load
from gptmini.pretrain import pretrain

ARGS = ["--tokenizer", "char", "--context-size", "64", "--d-model", "64", "--n-heads", "4", "--n-layers", "2",
        "--batch-size", "8", "--max-steps", "60", "--save-every", "4", "--eval-every", "8", "--log-every", "1",
        "--dropout", "0.1", "--no-progress"]


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("".join(f"{i}: o modelo aprende padrões a partir de dados, não é mágica.\n\n" for i in range(120)),
                    encoding="utf-8")
    return path


def start(corpus, out, *extra):
    return subprocess.Popen([sys.executable, "-m", "gptmini.cli", "pretrain", "--data", str(corpus), "--out", str(out),
                             *ARGS, *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def steps_logged(out: Path) -> int:
    try:
        return max((json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines() if line),
                   default=0)
    except (OSError, ValueError):
        return 0


def test_sigkill_at_random_points_then_resume_equals_an_uninterrupted_run(tmp_path, corpus):
    straight = start(corpus, tmp_path / "straight")
    assert straight.wait(timeout=300) == 0, straight.stderr.read()
    out, rng, kills = tmp_path / "killed", random.Random(0), 0
    proc = start(corpus, out)
    while kills < 5:
        target = steps_logged(out) + rng.randint(3, 9)
        while steps_logged(out) < target and proc.poll() is None:
            time.sleep(0.005)
        if proc.poll() is not None:
            break
        time.sleep(rng.random() * 0.05)  # anywhere inside a step or a checkpoint write
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        for name in ("last", "best"):  # whatever survived is loadable
            if (out / name).exists() or list(out.glob(f".{name}.old-*")):
                load(out / name)
        proc = start(corpus, out, "--resume") if (out / "last").exists() else start(corpus, out, "--overwrite")
    assert proc.wait(timeout=300) == 0, proc.stderr.read()
    assert kills == 5
    a, b = load(tmp_path / "straight" / "last").model.state_dict(), load(out / "last").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_failing_disk_keeps_the_previous_checkpoint(tmp_path, corpus, monkeypatch):
    train = {"max_steps": 4, "save_every": 2, "batch_size": 4, "show_progress": False}
    model = {"context_size": 32, "d_model": 32, "n_heads": 4, "n_layers": 1}
    pretrain(tmp_path / "run", [corpus], tokenizer="char", model=model, train=train)
    before = {name: (tmp_path / "run" / name / "model.safetensors").read_bytes() for name in ("last", "best")}
    import gptmini.checkpoint as ckpt_module

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt_module, "save_file", disk_full)
    with pytest.raises(GptminiError, match=r"(last|best): could not write \(No space left on device\); the previous version is kept"):
        pretrain(tmp_path / "run", [corpus], resume=True, train={"max_steps": 6})
    assert {name: (tmp_path / "run" / name / "model.safetensors").read_bytes() for name in before} == before
    assert load(tmp_path / "run" / "last").meta["training"]["step"] == 4
    assert not list((tmp_path / "run").glob(".*"))  # no temporary left behind


def test_a_crash_between_the_two_renames_is_recovered(tmp_path, corpus):
    pretrain(tmp_path / "run", [corpus], tokenizer="char", model={"context_size": 32, "d_model": 32, "n_heads": 4,
             "n_layers": 1}, train={"max_steps": 2, "batch_size": 4, "show_progress": False})
    (tmp_path / "run" / "last").rename(tmp_path / "run" / ".last.old-12345")
    assert load(tmp_path / "run" / "last").meta["training"]["step"] == 2


def test_no_load_path_can_unpickle():
    root = Path(__file__).resolve().parents[2] / "gptmini"
    for file in root.rglob("*.py"):
        text = file.read_text(encoding="utf-8")
        assert not re.search(r"\bpickle\.loads?\(|\bimport pickle\b", text), file
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, f"{file}: {call}"
