import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from gptmini import GPTConfig, GPTMini, GptminiError, load
from gptmini.pretrain import pretrain
from gptmini.train import Trainer, TrainConfig, lr_at

TINY = {"context_size": 32, "d_model": 32, "n_heads": 4, "n_layers": 2, "dropout": 0.1}


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    para = "A atenção permite que o modelo foque nas partes mais relevantes do texto. Não é mágica.\n\n"
    path.write_text("".join(f"{i}: {para}" for i in range(60)), encoding="utf-8")
    return path


def run_pretrain(out, corpus, **train):
    cfg = {"max_steps": 12, "batch_size": 4, "eval_every": 4, "save_every": 5, "log_every": 2, "lr": 3e-3,
           "show_progress": False, **train}
    return pretrain(out, [corpus], tokenizer="char", model=TINY, train=cfg)


def weights(path):
    return load(path).model.state_dict()


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    cfg = TrainConfig(max_steps=100, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(10, cfg) == pytest.approx(1.0) and lr_at(100, cfg) == pytest.approx(0.1)
    assert lr_at(55, cfg) == pytest.approx(0.55)
    assert lr_at(55, TrainConfig(max_steps=100, lr=1.0, warmup_steps=10, min_lr_ratio=0.0, schedule="linear")) == pytest.approx(0.5)
    assert lr_at(40, cfg, total=40.5) == pytest.approx(0.1, abs=1e-3)  # a time budget's plan: the floor by its end


def test_a_time_budget_fits_the_decay_so_the_run_ends_annealed(tmp_path, corpus, capsys):
    # --max-time 2 with a huge --max-steps: the decay is planned over the steps 2 s allow, not 10**6
    summary = run_pretrain(tmp_path / "run", corpus, max_steps=10**6, max_time=2, log_every=1, eval_every=10**6,
                           save_every=10**6)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    floor = 3e-3 * TrainConfig.min_lr_ratio
    assert summary["stopped"] == "time limit" and rows[-1]["step"] == summary["steps"] < 10**6
    assert max(r["lr"] for r in rows) > 5 * floor  # it warmed up to its peak region ...
    assert rows[-1]["lr"] < 1.2 * floor  # ... and ends at the floor, annealed
    assert rows[-1]["val_loss"] is not None  # the annealed end is validated
    state = json.loads((tmp_path / "run" / "last" / "train_state" / "state.json").read_text())
    assert state["seconds_per_step"] > 0  # the pace the schedule goes on from after --resume
    assert "budget allows about" in capsys.readouterr().err


def test_the_plan_is_said_before_the_first_step_and_many_epochs_are_warned_of(tmp_path, corpus, interrupt_at, capsys):
    interrupt_at(1)
    run_pretrain(tmp_path / "run", corpus, max_steps=1000)
    out = capsys.readouterr().err  # progress lines go with the bars, stdout keeps the results
    tokens = load(tmp_path / "run" / "last").meta["data"]["train_tokens"]
    net = load(tmp_path / "run" / "last").model
    assert (f"plan: {net.num_parameters():,} parameters; 1,000 steps of about 128 tokens (128,000 tokens); one epoch, "
            f"a pass over the {tokens:,} training tokens, is {tokens / 128:,.1f} steps, so the run is "
            f"{1000 * 128 / tokens:,.1f} epochs; its duration is measured over the first steps") in out
    assert f"warning: 1,000 steps are {1000 * 128 / tokens:,.0f} epochs of {tokens:,} training tokens" in out


def test_pretrain_writes_checkpoints_metrics_and_curve(tmp_path, corpus):
    summary = run_pretrain(tmp_path / "run", corpus)
    run = tmp_path / "run"
    assert summary["steps"] == 12 and summary["best_val_loss"] is not None
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4, 6, 8, 10, 12]
    assert {"step", "tokens", "train_loss", "val_loss", "lr", "tokens_per_s"} <= set(rows[0])
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert (run / "loss.png").read_bytes()[:4] == b"\x89PNG"
    best = load(run / "best")
    assert best.meta["training"]["best_val_loss"] == pytest.approx(min(r["val_loss"] for r in rows if r["val_loss"] is not None), abs=1e-5)
    assert load(run / "last").meta["training"]["step"] == 12


def test_interrupted_and_resumed_run_ends_with_identical_weights(tmp_path, corpus, interrupt_at):
    run_pretrain(tmp_path / "straight", corpus)
    interrupt_at(7)
    summary = run_pretrain(tmp_path / "resumed", corpus)
    assert summary["stopped"] == "interrupted" and summary["steps"] == 7
    interrupt_at(None)
    summary = pretrain(tmp_path / "resumed", [corpus], resume=True)
    assert summary["steps"] == 12
    a, b = weights(tmp_path / "straight" / "last"), weights(tmp_path / "resumed" / "last")
    assert all(torch.equal(a[k], b[k]) for k in a)
    resumed_steps = [json.loads(x)["step"] for x in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert resumed_steps == [2, 4, 6, 7, 8, 10, 12]  # the interrupted step logs once, nothing twice


def test_gradient_accumulation_averages_over_all_counted_tokens(tmp_path):
    torch.manual_seed(0)
    model = GPTMini(GPTConfig(vocab_size=20, context_size=8, d_model=16, n_heads=2, n_layers=1))
    x = torch.randint(0, 20, (3, 8))
    y = x.clone()
    y[0, :7] = -100  # micro-batch A counts 1 token, micro-batch B counts 16
    micro = [(x[:1], y[:1]), (x[1:], y[1:])]

    class Fixed:
        def __init__(self, batches):
            self.batches = list(batches)

        def next(self):
            return self.batches.pop(0)

        def state_dict(self):
            return {}

    def step(batches, accum):
        net = GPTMini(model.config)
        net.load_state_dict(model.state_dict())
        trainer = Trainer(net, tokenizer=type("T", (), {"pad_id": -1})(), train=Fixed(batches), val=None,
                          cfg=TrainConfig(grad_accum=accum, grad_clip=0, weight_decay=0), out=tmp_path)
        result = trainer.train_step(lr=1e-2)
        return result.loss, result.counted, net.state_dict()

    loss_a, counted_a, after_a = step(micro, 2)
    loss_b, counted_b, after_b = step([(x, y)], 1)
    assert counted_a == counted_b == 17
    assert loss_a == pytest.approx(loss_b, rel=1e-5)
    assert all(torch.allclose(after_a[k], after_b[k], atol=1e-6) for k in after_a)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, corpus, monkeypatch):
    original = Trainer.train_step

    def explode_at_4(self, lr):
        result = original(self, lr)
        return result._replace(loss=math.nan) if self.step == 3 else result

    monkeypatch.setattr(Trainer, "train_step", explode_at_4)
    with pytest.raises(GptminiError, match="loss became nan at step 4; the last good checkpoint is kept"):
        run_pretrain(tmp_path / "run", corpus, save_every=2)
    assert load(tmp_path / "run" / "last").meta["training"]["step"] == 2


def test_output_folder_with_a_run_needs_resume_or_overwrite(tmp_path, corpus):
    run_pretrain(tmp_path / "run", corpus, max_steps=2)
    before = (tmp_path / "run" / "last" / "model.safetensors").read_bytes()
    with pytest.raises(GptminiError, match="holds a previous run; pass --resume .* or --overwrite"):
        run_pretrain(tmp_path / "run", corpus, max_steps=2)
    assert (tmp_path / "run" / "last" / "model.safetensors").read_bytes() == before
    pretrain(tmp_path / "run", [corpus], tokenizer="char", model=TINY, overwrite=True,
             train={"max_steps": 3, "batch_size": 4, "show_progress": False})
    assert load(tmp_path / "run" / "last").meta["training"]["step"] == 3


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_saves_and_exits_cleanly(tmp_path, corpus, sig):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "gptmini.cli", "pretrain", "--data", str(corpus), "--out", str(out), "--tokenizer",
           "char", "--context-size", "32", "--d-model", "32", "--n-heads", "4", "--n-layers", "2",
           "--batch-size", "4", "--max-steps", "100000", "--log-every", "1", "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (out / "metrics.jsonl").exists() and time.time() < deadline:
        time.sleep(0.1)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert "interrupted at step" in stderr and "--resume" in stderr
    step = load(out / "last").meta["training"]["step"]
    assert 1 <= step < 100000 and json.loads(stdout)["stopped"] == "interrupted"
    assert "Traceback" not in stderr
    assert os.path.isdir(out / "last" / "train_state")
