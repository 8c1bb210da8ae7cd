"""Progress bars only where they redraw in place: a terminal, or Jupyter with widgets; plain lines elsewhere."""
import importlib.util
import io
import sys
import types

from gptmini import progress
from gptmini.cli import main

TEN = "pergunta;resposta\n" + "".join(f"Quanto é {i}+1?;{i + 1}\n" for i in range(10))


def tiny_sft(tmp_path) -> int:
    data = tmp_path / "ten.csv"
    data.write_text(TEN, encoding="utf-8")
    return main(["sft", "--data", str(data), "--out", str(tmp_path / "run"), "--tokenizer", "char",
                 "--context-size", "32", "--d-model", "16", "--n-heads", "2", "--n-layers", "1", "--max-steps", "4",
                 "--log-every", "2"])


def test_captured_output_gets_plain_lines_without_no_progress_and_no_carriage_returns(tmp_path, capsys):
    assert tiny_sft(tmp_path) == 0  # stderr is pytest's capture: not a terminal
    err = capsys.readouterr().err
    assert "\r" not in err and "training:" not in err
    assert [line.split(" | ")[0] for line in err.splitlines() if line.startswith("step ")] == ["step 2/4", "step 4/4"]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_the_bar_instead_of_the_lines(tmp_path, monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert tiny_sft(tmp_path) == 0
    shown = terminal.getvalue()
    assert "\r" in shown and "training: 100%" in shown
    assert not [line for line in shown.splitlines() if line.startswith("step ")]


def fake_kernel(monkeypatch, widgets: bool) -> None:
    """What Jupyter and Colab look like from inside: IPython's shell is a kernel app; ipywidgets maybe."""
    shell = types.SimpleNamespace(config={"IPKernelApp": {}})
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: shell))
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: (object() if widgets else None) if name == "ipywidgets" else find_spec(name, *a))


def test_jupyter_gets_the_notebook_bar_where_widgets_are_installed(monkeypatch):
    fake_kernel(monkeypatch, widgets=True)
    monkeypatch.setattr(sys, "stderr", Terminal())  # a kernel's stderr is no terminal, but the widget decides
    assert progress.bar_kind() == "notebook"
    assert progress.bar_kind(show=False) is None


def test_jupyter_without_widgets_gets_plain_lines_not_a_text_bar(monkeypatch):
    fake_kernel(monkeypatch, widgets=False)
    monkeypatch.setattr(sys, "stderr", Terminal())
    assert progress.bar_kind() is None
    assert not progress.shown(progress.bar(total=3))


def test_outside_jupyter_a_terminal_decides(monkeypatch):
    monkeypatch.delitem(sys.modules, "IPython", raising=False)
    monkeypatch.setattr(sys, "stderr", Terminal())
    assert progress.bar_kind() == "terminal"
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert progress.bar_kind() is None
