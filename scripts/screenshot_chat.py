"""docs/chat.png: the web page of a trained assistant, three turns asked in a real headless Chromium.

    python scripts/screenshot_chat.py runs/demo/sft/last docs/chat.png "pergunta 1" "pergunta 2" "pergunta 3"

Starts `gptmini serve` on 127.0.0.1, types each question into the page as a user would, waits for
each answer to finish streaming, prints the answers and saves the screenshot.
"""
from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import urllib.request

from playwright.sync_api import sync_playwright

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(model: str, out: str, questions: list[str]) -> None:
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "gptmini.cli", "serve", "--model", model, "--port", str(port)])
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(url + "/health", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=FLAGS)
            page = browser.new_page(viewport={"width": 900, "height": 760})
            page.goto(url + "/")
            for turn, question in enumerate(questions):
                page.fill("#input", question)
                page.press("#input", "Enter")
                answer = f"#answer-{2 * turn + 1}"
                page.wait_for_selector(f"{answer}[data-done='1']", timeout=60_000)
                print(f"{question} -> {page.eval_on_selector(answer + ' .text', 'e => e.textContent')}")
            page.screenshot(path=out)
            browser.close()
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
