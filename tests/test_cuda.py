"""The CUDA path: training in each precision, the engine and the scheduler on a GPU, int8 refused there.

Every test here is marked `cuda`: skipped, with the reason, where torch has no CUDA GPU (pytest -m cuda
runs them on one). The kernels' autocast tests run on CUDA too (tests/test_model.py, DEVICES).
"""
import pytest
import torch

from gptmini import Engine, GptminiError, SamplingParams, load
from gptmini.pretrain import pretrain
from gptmini.scheduler import Scheduler
from tests.test_train import TINY, corpus  # noqa: F401 (corpus: the fixture)

pytestmark = pytest.mark.cuda


def run_pretrain(out, corpus, device: str, precision: str) -> dict:
    """30 steps without dropout: the CPU's and the GPU's runs differ only by their arithmetic."""
    train = {"max_steps": 30, "batch_size": 4, "eval_every": 10, "lr": 3e-3, "show_progress": False,
             "device": device, "precision": precision}
    return pretrain(out, [corpus], tokenizer="char", model={**TINY, "dropout": 0.0}, train=train)


@pytest.mark.parametrize("precision, within", [("fp32", 0.02), ("bf16", 0.05), ("fp16", 0.1)])
def test_pretraining_on_the_gpu_learns_as_on_the_cpu_in_each_precision_and_saves_fp32(tmp_path, corpus, precision,
                                                                                     within, capsys):
    if precision == "bf16" and torch.cuda.get_device_capability() < (8, 0):
        pytest.skip("this GPU has no native bf16")
    on_cpu = run_pretrain(tmp_path / "cpu", corpus, "cpu", "fp32")
    summary = run_pretrain(tmp_path / "run", corpus, "cuda", precision)
    assert f"on cuda:0 ({torch.cuda.get_device_name(0)}) in {precision}" in capsys.readouterr().err
    assert summary["best_val_loss"] == pytest.approx(on_cpu["best_val_loss"], rel=within)
    # fp16's gradient scaler starts high and halves on each overflow: a few skipped steps, counted
    assert ("skipped_steps" in summary) == (precision == "fp16") and summary.get("skipped_steps", 0) < 10
    weights = load(tmp_path / "run" / "last").model.state_dict()
    assert {t.dtype for t in weights.values()} == {torch.float32}


def test_the_engine_on_the_gpu_answers_as_on_the_cpu(tiny_model, char_tokenizer):
    params = SamplingParams(max_new_tokens=20)
    prompts = [char_tokenizer.encode(t) for t in ("Atenção", "o modelo", "a")]
    on_cpu = [c.token_ids for c in Engine(tiny_model, char_tokenizer).generate(prompts, params)]
    gpu = Engine(tiny_model.to("cuda"), char_tokenizer)
    assert [c.token_ids for c in gpu.generate(prompts, params)] == on_cpu
    assert [gpu.generate([p], params)[0].token_ids for p in prompts] == on_cpu


def test_the_scheduler_on_the_gpu_gives_each_request_its_alone_answer(tiny_model, char_tokenizer):
    engine = Engine(tiny_model.to("cuda"), char_tokenizer)
    params = SamplingParams(max_new_tokens=15)
    prompts = [char_tokenizer.encode(t) for t in ("Atenção", "o modelo de linguagem", "ç")]
    scheduler = Scheduler(engine, max_batch=2)
    requests = [scheduler.submit(p, params) for p in prompts]
    scheduler.run()
    assert [r.completion.token_ids for r in requests] == [engine.generate([p], params)[0].token_ids for p in prompts]


def test_int8_is_refused_on_the_gpu_in_one_line(tiny_model, char_tokenizer):
    with pytest.raises(GptminiError, match=r"--quantize int8 runs on the CPU .* not on cuda:0: give --device cpu"):
        Engine(tiny_model.to("cuda"), char_tokenizer, quantize="int8")


def test_two_processes_train_with_nccl_when_there_are_two_gpus(tmp_path, corpus):
    if torch.cuda.device_count() < 2:
        pytest.skip("NCCL needs a GPU per process: this machine has one")
    import subprocess
    import sys

    command = [sys.executable, "-m", "gptmini.cli", "pretrain", "--data", str(corpus), "--out", str(tmp_path / "run"),
               "--tokenizer", "char", "--max-steps", "4", "--grad-accum", "2", "--batch-size", "4", "--device", "cuda",
               "--devices", "2", "--no-progress", "--context-size", "32", "--d-model", "32", "--n-heads", "4"]
    out = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "run" / "last").is_dir()
