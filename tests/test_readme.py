"""The README's Python blocks run as written: in order, in one namespace, as a reader pastes them."""
import contextlib
import re
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
