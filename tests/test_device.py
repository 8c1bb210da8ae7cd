"""--device and --precision: resolved in one place (device.py), said at the start, refused in one line."""
import subprocess
import sys

import numpy as np
import pytest
import torch

from gptmini import GPTConfig, GPTMini, GptminiError, Tokenizer
from gptmini.cli import build_parser, main
from gptmini.data.batches import WindowBatches
from gptmini.device import Precision, resolve_device, resolve_precision
from gptmini.train import Trainer, TrainConfig

NO_GPU = not torch.cuda.is_available() and not torch.backends.mps.is_available()
ONLY_CPU = pytest.mark.skipif(not NO_GPU, reason="auto picks the CPU only on a machine without CUDA or MPS")


def verbs_with_device() -> list[str]:
    """Every verb whose parser has --device: a verb added later is checked too."""
    verbs = next(a for a in build_parser()._actions if a.dest == "verb").choices
    return sorted(name for name, p in verbs.items() if any("--device" in a.option_strings for a in p._actions))


def test_every_verb_that_runs_a_model_takes_device_and_refuses_an_unknown_one_in_one_line(capsys):
    assert verbs_with_device() == ["chat", "dpo", "eval", "generate", "pairs", "pretrain", "serve", "sft"]
    for verb in verbs_with_device():
        for device, reason in (("gpu", "gpu: unknown device"), ("cuda:99", "cuda:99: ")):
            with pytest.raises(SystemExit) as exit_:
                build_parser().parse_args([verb, "--device", device])  # before any other argument is looked at
            err = capsys.readouterr().err
            assert exit_.value.code == 2
            assert f"gptmini {verb}: error: argument --device: {reason}" in err and "can use: auto, cpu" in err, err


def test_an_unavailable_device_is_one_line_and_exit_2_from_the_command(tmp_path):
    out = subprocess.run([sys.executable, "-m", "gptmini.cli", "generate", "--model", str(tmp_path), "--device",
                          "cuda:99", "hi"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.splitlines()[-1].startswith("gptmini generate: error: argument --device: cuda:99: ")
    assert f"this torch ({torch.__version__}) can use: auto, cpu" in out.stderr


@ONLY_CPU
def test_auto_is_the_cpu_here_and_the_training_plan_says_so(tmp_path, capsys):
    assert build_parser().parse_args(["generate", "--model", "m"]).device == "auto"
    assert resolve_device() == torch.device("cpu") and resolve_precision("auto", torch.device("cpu")) == "fp32"
    trainer = tiny_trainer(tmp_path)
    assert trainer.plan().endswith("; on cpu (auto: no CUDA or MPS device) in fp32 (auto)")


@ONLY_CPU
def test_fp16_on_the_cpu_is_refused_in_one_line_before_any_work(tmp_path, capsys):
    assert main(["pretrain", "--out", str(tmp_path / "run"), "--precision", "fp16"]) == 2
    assert capsys.readouterr().err.strip() == ("gptmini pretrain: error: --precision fp16 needs a CUDA GPU (fp16 "
                                               "autocast with a gradient scaler); on cpu use fp32 (the default "
                                               "there) or bf16")
    assert not (tmp_path / "run").exists()


def test_bf16_on_the_cpu_trains_under_cpu_autocast_and_keeps_fp32_weights(tmp_path):
    trainer = tiny_trainer(tmp_path, precision="bf16", device="cpu")
    assert trainer.plan().endswith("; on cpu in bf16")
    calls = []
    forward = trainer.train_forward
    trainer.train_forward = lambda *a, **k: calls.append(torch.get_autocast_dtype("cpu")
                                                         if torch.is_autocast_enabled("cpu") else None) or forward(*a, **k)
    trainer.train_step(1e-3)
    assert calls == [torch.bfloat16]
    assert {p.dtype for p in trainer.model.parameters()} == {torch.float32}


@pytest.mark.parametrize("capability, auto, bf16", [((9, 0), "bf16", "bf16"), ((8, 0), "bf16", "bf16"),
                                                    ((7, 5), "fp32", "refused")])
def test_precision_on_a_gpu_follows_its_compute_capability(monkeypatch, capability, auto, bf16):
    """nanochat's choice: bf16 where the GPU has it natively (>= 8.0), else fp32; fp16 by choice."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    gpu = torch.device("cuda", 0)  # a device object only: nothing runs on it
    assert resolve_precision("auto", gpu) == auto and resolve_precision("fp16", gpu) == "fp16"
    if bf16 == "refused":  # torch.cuda.is_bf16_supported() says True on a T4: it counts emulation
        with pytest.raises(GptminiError, match=r"Tesla T4 \(compute capability 7.5\) has no native bfloat16.*fp16"):
            resolve_precision("bf16", gpu)
    else:
        assert resolve_precision("bf16", gpu) == "bf16"


def test_bf16_alias_and_precision_reach_the_training_config():
    from gptmini.cli import train_overrides

    parse = build_parser().parse_args
    assert train_overrides(parse(["pretrain", "--out", "o", "--bf16"]))["precision"] == "bf16"
    assert train_overrides(parse(["sft", "--out", "o", "--precision", "fp32"]))["precision"] == "fp32"
    assert "precision" not in train_overrides(parse(["dpo", "--out", "o", "--data", "d"]))  # resume keeps its own


def tiny_trainer(tmp_path, grad_accum: int = 1, **train) -> Trainer:
    torch.manual_seed(0)
    tok = Tokenizer.train_char(["abcdefgh"])
    model = GPTMini(GPTConfig(vocab_size=tok.vocab_size, context_size=16, d_model=16, n_heads=2, n_layers=1))
    tokens = np.random.default_rng(0).integers(0, tok.vocab_size, 2000).astype(np.uint16)
    cfg = TrainConfig(batch_size=2, grad_accum=grad_accum, show_progress=False, **train)
    return Trainer(model, tok, WindowBatches(tokens, 16, 2, seed=0), None, cfg, tmp_path)


def test_a_step_reads_the_device_once_however_many_micro_batches(tmp_path, monkeypatch):
    """The losses add up on the device: no host sync per micro-batch (on a GPU each would stall the queue)."""
    trainer = tiny_trainer(tmp_path, grad_accum=4)
    reads = []
    for name in ("item", "tolist"):
        original = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda t, _o=original, _n=name: reads.append(_n) or _o(t))
    result = trainer.train_step(1e-3)
    assert reads == ["tolist"] and 0 < result.loss < 10 and result.counted == 4 * 2 * 16


def test_fp16_steps_that_overflow_are_skipped_and_counted():
    """The GradScaler's part (CPU autocast runs fp16 too): an inf gradient skips the step, the scale drops."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(4, 1)
    optimizer = torch.optim.AdamW(layer.parameters(), lr=0.1, fused=True)
    precision = Precision("fp16", torch.device("cpu"))
    before = [p.detach().clone() for p in layer.parameters()]
    for factor in (float("inf"), 1.0):
        with precision.autocast():
            loss = layer(torch.full((1, 4), 0.5)).float().sum() * factor  # x 2**15 (the scale after one skip): fits fp16
        precision.backward(loss)
        precision.step(optimizer, layer.parameters(), grad_clip=1.0)
        optimizer.zero_grad()
        if factor != 1.0:  # skipped: the weights are as they were
            assert precision.skipped == 1 and all(torch.equal(p, b) for p, b in zip(layer.parameters(), before))
    assert precision.skipped == 1 and not torch.equal(layer.weight, before[0])  # the finite step was taken
