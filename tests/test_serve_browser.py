"""The web page in a real headless Chromium: send a message, watch the streamed answer appear."""
import shutil

import pytest

from gptmini import get_template, save
from gptmini.serve import create_app

from .test_serve import LiveServer, greedy

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--disable-quic"]


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed: apt-get install -y chromium (.ci/run does)")
def test_page_streams_the_answer(tmp_path, tiny_model, char_tokenizer):
    from playwright.sync_api import sync_playwright

    save(tmp_path / "c", tiny_model, char_tokenizer, {"template": get_template().to_dict()})
    server = LiveServer(create_app(tmp_path / "c", max_tokens=20))
    expected = greedy(tiny_model, char_tokenizer, "Olá", 20).text
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            page = browser.new_page()
            page.goto(server.url + "/")
            page.fill("#input", "Olá")
            page.click("#send")
            page.wait_for_selector("#answer-1[data-done='1']", timeout=20_000)
            assert page.eval_on_selector("#answer-1 .text", "e => e.textContent") == expected
            assert page.inner_text(".msg.user .text") == "Olá"
            page.screenshot(path=str(tmp_path / "page.png"))
            browser.close()
    finally:
        server.stop()
