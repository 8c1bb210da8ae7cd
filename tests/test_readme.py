"""The README's Python blocks run as written: in order, in one namespace, as a reader pastes them."""
import contextlib
import re
import shlex
import socket
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", README.read_text(encoding="utf-8"), flags=re.S | re.M)
SERVER_URL = re.compile(r"http://127\.0\.0\.1:(\d+)/v1")


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@contextlib.contextmanager
def server_for(block: str):
    """A block that talks to `gptmini serve` gets one, on the checkpoint an earlier block saved ("ckpt"), at the
    block's port (or, where that port is taken on this machine, a free one written into the block)."""
    match = SERVER_URL.search(block)
    if not match:
        yield block
        return
    pytest.importorskip("openai")
    from gptmini.serve import create_app
    from tests.test_serve import LiveServer

    port = int(match.group(1))
    server = LiveServer(create_app("ckpt", max_tokens=32), port if port_is_free(port) else None)  # short answers: quick
    try:
        yield block.replace(f"127.0.0.1:{port}", f"127.0.0.1:{server.port}")
    finally:
        server.stop()


def test_the_readme_has_its_python_blocks():
    assert len(BLOCKS) >= 3 and any("encode_prompt" in b for b in BLOCKS)


def test_readme_python_blocks_run_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # blocks write files ("ckpt")
    namespace: dict = {"__name__": "__readme__"}
    for number, block in enumerate(BLOCKS, 1):
        with server_for(block) as runnable:
            exec(compile(runnable, f"README.md, python block {number}", "exec"), namespace)
    assert (tmp_path / "ckpt" / "model.safetensors").is_file()


PT_BR = README.with_name("README.pt-BR.md")


def shown_commands(markdown: str) -> list[list[str]]:
    """Every `gptmini ...` command in the bash blocks, as argv (continuation lines joined, comments and
    pipes cut: `echo x | gptmini chat ...` gives the chat command)."""
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", markdown, flags=re.S | re.M):
        for line in block.replace("\\\n", " ").splitlines():
            segment: list[str] = []
            for word in shlex.split(line, comments=True) + ["|"]:
                if word not in ("|", "&&"):
                    segment.append(word)
                    continue
                if segment[:1] == ["gptmini"]:
                    commands.append(segment[1:])
                segment = []
    return commands


def test_the_portuguese_readme_is_linked_from_the_top_of_the_readme():
    assert "(README.pt-BR.md)" in README.read_text(encoding="utf-8").split("## Quick start")[0]


def test_every_command_the_portuguese_readme_shows_exists_with_those_flags(capsys):
    from gptmini.cli import build_parser

    commands = shown_commands(PT_BR.read_text(encoding="utf-8"))
    assert len(commands) >= 15 and {argv[0] for argv in commands} >= {"pretrain", "sft", "eval", "chat", "serve"}
    parser = build_parser()
    for argv in commands:
        try:
            parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"README.pt-BR.md shows `gptmini {shlex.join(argv)}`: {capsys.readouterr().err.strip()}")
