"""The one OpenAI-compatible client (augment's teacher, eval's judge) against real HTTP servers."""
import re
import subprocess
import sys
import time

import pytest

from gptmini import GptminiError
from gptmini.openai_client import ChatClient, chat_url
from tests.openai_stub import Stub, gptmini_server, stub_server  # noqa: F401  (fixtures)
from tests.test_serve import free_port

HELLO = [{"role": "user", "content": "Olá"}]


def client(url, model="teacher", **options):
    return ChatClient(url, model, **{"timeout": 5.0, "retries": 2, "backoff": 0.01, **options})


def test_endpoint_forms_all_reach_the_chat_path():
    assert chat_url("http://h:1") == chat_url("http://h:1/v1/") == chat_url("http://h:1/v1/chat/completions") \
        == "http://h:1/v1/chat/completions"
    with pytest.raises(GptminiError, match="expected an http"):
        chat_url("localhost:11434")


def test_gptmini_serve_answers_through_the_client(gptmini_server):
    text = client(gptmini_server().url, "served").chat(HELLO, max_tokens=8)
    assert isinstance(text, str) and text  # a tiny model's text: the mechanics, not the quality


def test_5xx_and_timeouts_are_retried_then_answered(stub_server):
    stub = Stub(reply=lambda prompt: "resposta", delay=1.0, script=[503, "slow", 502])
    started = time.perf_counter()
    assert client(stub_server(stub), timeout=0.3, retries=3).chat(HELLO) == "resposta"
    assert len(stub.requests) == 4 and time.perf_counter() - started < 3


@pytest.mark.parametrize("fault, expected", [
    (500, "HTTP 500 (the stub is overloaded), on each of 3 tries"),
    ("slow", "no answer within 0.2 s, on each of 3 tries"),
])
def test_a_failure_that_lasts_is_one_line_after_the_retries(stub_server, fault, expected):
    stub = Stub(script=[fault] * 3, delay=0.5)
    with pytest.raises(GptminiError, match=re.escape(expected)) as exc:
        client(stub_server(stub), timeout=0.2).chat(HELLO)
    assert "\n" not in str(exc.value) and len(stub.requests) == 3


def test_refusals_are_one_line_each_and_not_retried(stub_server):
    url = stub_server(stub := Stub(key="right", models=("qwen2.5:7b", "llama3.1:8b")))
    with pytest.raises(GptminiError, match=r"refused the API key \(HTTP 401: Incorrect API key provided\); this "
                                           r"endpoint needs one: --api-key KEY or \$OPENAI_API_KEY"):
        client(url, "qwen2.5:7b").chat(HELLO)
    with pytest.raises(GptminiError, match="refused the API key .*; check the key"):
        client(url, "qwen2.5:7b", api_key="wrong").chat(HELLO)
    with pytest.raises(GptminiError, match=r"model 'llama3:70b' not found at .* \(HTTP 404: model 'llama3:70b' not "
                                           r"found; it has: qwen2.5:7b, llama3.1:8b\)"):
        client(url, "llama3:70b", api_key="right").chat(HELLO)
    assert stub.requests == []  # none reached the model, none was asked twice
    assert client(url, "llama3.1:8b", api_key="right").chat(HELLO) == "ok"


def test_a_server_that_is_not_there_or_not_openai_is_one_line(stub_server, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(GptminiError, match=r"cannot connect to http://127.0.0.1:\d+/v1/chat/completions .*is the "
                                           "server running"):
        client(f"http://127.0.0.1:{free_port()}").chat(HELLO)
    with pytest.raises(GptminiError, match="answered something that is not an OpenAI chat completion: '<html>"):
        client(stub_server(Stub(script=["junk"]))).chat(HELLO)


def test_the_key_comes_from_the_environment(stub_server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "right")
    assert client(stub_server(Stub(key="right"))).chat(HELLO) == "ok"


def test_without_httpx_it_is_one_line_saying_what_to_install(tmp_path):
    code = ("import sys; sys.modules['httpx'] = None; from gptmini.cli import main; "
            f"sys.exit(main(['augment', '--data', 'x.csv', '--endpoint', 'http://h', '--model', 'm', '--out', 'o']))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.strip() == ("gptmini augment: error: talking to an OpenAI-compatible "
                                                          "endpoint needs httpx: pip install 'gptmini[teacher]'")
