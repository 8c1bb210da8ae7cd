import subprocess
import sys

import pytest
import torch

from gptmini import GPTConfig, GPTMini, Tokenizer, get_template, save
from gptmini.cli import main
from gptmini.train import Trainer

PT_TEXT = "Atenção, não é ação? O modelo de linguagem prevê a próxima palavra.\nÇÃO àéíóú ü ñ"
ASCII_TEXT = "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789 #:.,?!'\"-\n"


def pytest_collection_modifyitems(config, items):
    """Tests marked `cuda` run on a CUDA GPU; without one they are skipped, with the reason."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU: torch.cuda.is_available() is False here")
    for item in items:
        if item.get_closest_marker("cuda"):
            item.add_marker(skip)


def run_command(*args, stdin: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """`gptmini ARGS` in a process of its own (what a user runs), its output captured as text."""
    return subprocess.run([sys.executable, "-m", "gptmini.cli", *map(str, args)], input=stdin, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="session", autouse=True)
def compiled_steps_cache(tmp_path_factory):
    """Compiled decode steps (gptmini.compiled) kept in this run's own folder, not the user's cache: a
    run compiles its steps the first time it needs them, then loads them."""
    mp = pytest.MonkeyPatch()
    mp.setenv("GPTMINI_CACHE", str(tmp_path_factory.mktemp("gptmini-cache")))
    yield
    mp.undo()


@pytest.fixture
def run_main(capfd):
    """run_main(*args): the command run by main() in this process, the function the installed command
    calls, -> (exit status, stderr). A process of its own would cost a torch import, seconds, for each."""
    def run(*args) -> tuple[int, str]:
        capfd.readouterr()
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:  # argparse's own errors exit from inside parse_args
            code = exc.code
        return code, capfd.readouterr().err

    return run


@pytest.fixture
def char_tokenizer() -> Tokenizer:
    return Tokenizer.train_char([PT_TEXT, "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ#:.,\n"])


@pytest.fixture
def tiny_model(char_tokenizer) -> GPTMini:
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=char_tokenizer.vocab_size, context_size=64, d_model=32, n_heads=4, n_layers=2)
    return GPTMini(config).eval()


@pytest.fixture
def interrupt_at(monkeypatch):
    """interrupt_at(n): training runs started after it stop as Ctrl-C stops them, at the end of their
    n-th step (saved, resumable); interrupt_at(None): runs go on to their end again."""
    original = Trainer.train_step

    def arm(step: int | None) -> None:
        def stopping(self, lr):
            result = original(self, lr)
            if self.step == step - 1:  # self.step counts the steps done before this one
                self.stop_requested = True
            return result

        monkeypatch.setattr(Trainer, "train_step", original if step is None else stopping)

    return arm


@pytest.fixture
def ascii_ckpt(tmp_path):
    """A checkpoint whose char vocabulary has no accents (the course's: its examples are written without
    them), with large random weights, so that its greedy text depends on every character of the prompt."""
    tokenizer = Tokenizer.train_char([ASCII_TEXT])
    torch.manual_seed(3)  # its answers to the tests' prompts differ, some run over several lines
    model = GPTMini(GPTConfig(vocab_size=tokenizer.vocab_size, context_size=96, d_model=32, n_heads=4, n_layers=2))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.5)
    save(tmp_path / "ascii", model.eval(), tokenizer, {"template": get_template().to_dict()})
    return tmp_path / "ascii"
