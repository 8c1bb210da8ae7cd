"""The web page in a real headless Chromium: send messages, watch the streamed answers appear."""
import shutil

import pytest
import torch

from gptmini import GPTConfig, GPTMini, get_template, save
from gptmini.serve import create_app

from .test_serve import LiveServer, greedy, slow_generation

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--disable-quic"]


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed: sudo apt-get install -y chromium")
def test_page_streams_the_answer_and_keeps_the_conversation(tmp_path, char_tokenizer):
    sync_playwright = pytest.importorskip("playwright.sync_api", reason="pip install playwright (no browser "
                                          "download needed: it drives the system Chromium)").sync_playwright
    torch.manual_seed(0)  # a context long enough for a second turn that carries the first
    model = GPTMini(GPTConfig(vocab_size=char_tokenizer.vocab_size, context_size=256, d_model=32, n_heads=4,
                              n_layers=2)).eval()
    save(tmp_path / "c", model, char_tokenizer, {"template": get_template().to_dict()})
    server = LiveServer(create_app(tmp_path / "c", max_tokens=20))
    slow_generation(server.server, 0.03)  # tokens arrive one by one, so the page must show them as they come
    first = greedy(model, char_tokenizer, "Olá", 20).text
    conversation = [{"role": "user", "content": "Olá"}, {"role": "assistant", "content": first},
                    {"role": "user", "content": "E depois?"}]
    second = greedy(model, char_tokenizer, conversation, 20).text
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            page = browser.new_page()
            text = lambda selector: page.eval_on_selector(selector, "e => e.textContent")
            page.goto(server.url + "/")
            assert text("#title") == "gptmini · c" and page.title() == "gptmini · c"  # the server's title
            assert page.get_attribute("#input", "placeholder") == "Escreva sua mensagem…"
            page.evaluate("""() => {  // every length the first answer's text takes on screen
                window.seen = [];
                new MutationObserver(() => {
                    const t = document.querySelector('#answer-1 .text');
                    if (t) window.seen.push(t.textContent.length);
                }).observe(document.getElementById('log'), {subtree: true, childList: true, characterData: true});
            }""")
            page.fill("#input", "Olá")
            page.click("#send")
            page.wait_for_selector("#answer-1[data-done='1']", timeout=20_000)
            assert text("#answer-1 .text") == first
            assert text(".msg.user .text") == "Olá"
            assert text(".msg.user .info") == "(lido como á→a)"  # this vocabulary has no "á": said under it
            assert text("#answer-1 .info") == "(20 tokens, cortada no limite)"
            partial = {n for n in page.evaluate("window.seen") if 0 < n < len(first)}
            assert len(partial) >= 3, "the answer should appear piece by piece"
            page.fill("#input", "E depois?")
            page.press("#input", "Enter")
            page.wait_for_selector("#answer-3[data-done='1']", timeout=20_000)
            assert text("#answer-3 .text") == second  # the first turn went with the second
            page.screenshot(path=str(tmp_path / "page.png"))
            browser.close()
    finally:
        server.stop()
