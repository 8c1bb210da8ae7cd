"""One client for any OpenAI-compatible chat endpoint (Ollama, llama.cpp's server, vLLM, a hosted API,
`gptmini serve`): the teacher of `gptmini augment` and the judge of `gptmini eval --judge`.

Plain HTTP through httpx (the `teacher` extra) so that every failure becomes one line saying what to do.
Timeouts, dropped connections, 429 and 5xx are retried with exponential backoff (a busy or restarting
server recovers); a refused connection, a refused key (401/403), a model the server lacks (404) and any
other 4xx are not, since asking again cannot change the answer.
"""
from __future__ import annotations

import os
import time

from .errors import GptminiError

API_KEY_ENV = "OPENAI_API_KEY"
INSTALL_HINT = "pip install 'gptmini[teacher]'"


def chat_url(endpoint: str) -> str:
    """The chat-completions URL of an endpoint given as http://host:port, http://host:port/v1 or the full path."""
    if not endpoint.startswith(("http://", "https://")):
        raise GptminiError(f"endpoint {endpoint!r}: expected an http(s) URL, e.g. http://localhost:11434/v1 (Ollama)")
    base = endpoint.rstrip("/")
    if base.endswith("/chat/completions"):
        return base
    return base + ("/chat/completions" if base.endswith("/v1") else "/v1/chat/completions")


def server_message(response) -> str:
    """The error text of a response: OpenAI's {"error": {"message"}}, Ollama's {"error": "..."}, FastAPI's
    {"detail"}, else the start of the body; on one line."""
    try:
        body = response.json()
        error = body.get("error") or body.get("detail") or body
        text = error.get("message", error) if isinstance(error, dict) else error
    except (ValueError, AttributeError):
        text = response.text
    return " ".join(str(text).split())[:200] or "no message"


def retryable(status: int) -> bool:
    return status == 429 or status >= 500


class ChatClient:
    """Chat completions from `model` at `endpoint`; `retries` more tries after a timeout or a 5xx/429,
    waiting backoff, 2 x backoff, 4 x backoff ... seconds between them."""

    def __init__(self, endpoint: str, model: str, api_key: str | None = None, timeout: float = 120.0,
                 retries: int = 4, backoff: float = 1.0) -> None:
        try:
            import httpx
        except ModuleNotFoundError:
            raise GptminiError(f"talking to an OpenAI-compatible endpoint needs httpx: {INSTALL_HINT}") from None
        self.url, self.model = chat_url(endpoint), model
        self.key = api_key or os.environ.get(API_KEY_ENV)
        headers = {"Authorization": f"Bearer {self.key}"} if self.key else {}
        self.http = httpx.Client(headers=headers, timeout=timeout)
        self.timeout, self.retries, self.backoff = timeout, retries, backoff

    def chat(self, messages: list[dict], temperature: float = 0.0, max_tokens: int | None = None) -> str:
        """The text of the first choice ("" when the server sent none)."""
        body = {"model": self.model, "messages": messages, "temperature": temperature}
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        response = self._post(body)
        try:
            content = response.json()["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise GptminiError(f"{self.url} answered something that is not an OpenAI chat completion: "
                               f"{response.text[:120]!r}") from None
        return content if isinstance(content, str) else ""

    def check(self) -> None:
        """One tiny request, so that a server that is down, a refused key or a missing model fail before any
        long work (eval answers every question before the judge is asked anything)."""
        self.chat([{"role": "user", "content": "ok"}], max_tokens=1)

    def models(self) -> list[str]:
        """The model names the server lists (GET .../models); empty if it lists none or cannot say."""
        import httpx

        try:
            data = self.http.get(self.url.removesuffix("/chat/completions") + "/models").json()["data"]
            return [m["id"] for m in data]
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            return []

    def _post(self, body: dict):
        import httpx

        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                response = self.http.post(self.url, json=body)
            except httpx.ConnectError as exc:
                raise GptminiError(f"cannot connect to {self.url} ({exc}): is the server running, at that "
                                   "address and port?") from None
            except httpx.TimeoutException:
                failure = f"no answer within {self.timeout:g} s"
            except httpx.TransportError as exc:  # the connection dropped mid-answer
                failure = f"connection lost ({exc})"
            else:
                if response.status_code < 400:
                    return response
                if not retryable(response.status_code):
                    raise self._refused(response)
                failure = f"HTTP {response.status_code} ({server_message(response)})"
        raise GptminiError(f"{self.url}: {failure}, on each of {self.retries + 1} tries; check the server, or give "
                           "it more time (a longer timeout)")

    def _refused(self, response) -> GptminiError:
        status, message = response.status_code, server_message(response)
        if status in (401, 403):
            fix = "check the key" if self.key else "this endpoint needs one"
            return GptminiError(f"{self.url} refused the API key (HTTP {status}: {message}); {fix}: --api-key KEY "
                                f"or ${API_KEY_ENV}")
        if status == 404:
            names = self.models()
            if self.model not in names:
                listed = f"it has: {', '.join(names[:10])}" if names else "it lists none"
                return GptminiError(f"model {self.model!r} not found at {self.url} (HTTP 404: {message}; {listed}); "
                                    "give a model the server has (Ollama: ollama pull NAME first)")
            return GptminiError(f"{self.url}: HTTP 404 ({message}); is this an OpenAI-compatible endpoint (…/v1)?")
        return GptminiError(f"{self.url} refused the request (HTTP {status}: {message})")
