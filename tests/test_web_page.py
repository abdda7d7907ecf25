"""The web page in a real browser: Debian's chromium, headless, driven by Playwright's Python driver (no browser
download) against a running minerva on the real SmolLM2. Screenshots of each page go to test-artifacts/screenshots/.

The page's Content-Security-Policy forbids eval, so waits poll page.evaluate() (which the policy does not govern)
or use selectors, never page.wait_for_function.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from minerva.settings import Settings
from tests.scripted_engine import Script, scripted_loader
from tests.servers import ROOT, running_server

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
MODEL = "smollm2-135m-instruct"
LAPTOP = {"width": 1280, "height": 860}
PHONE = {"width": 390, "height": 844}

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city.", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
CALL = b'<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


def scripted_answer(prompt: str, call: int) -> Script:
    if "#weather" in prompt:
        return Script([CALL[i:i + 5] for i in range(0, len(CALL), 5)])
    return Script([b"Hello ", b"from ", b"a ", b"**scripted** ", b"engine."])


@pytest.fixture(scope="module")
def browser() -> Iterator:
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium) to run the browser tests"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield launched
        launched.close()


class LogRecords(logging.Handler):
    """Every record the server logs while the module runs."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def server_log() -> Iterator[LogRecords]:
    records = LogRecords()
    logger = logging.getLogger("minerva")
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(records)
    yield records
    logger.removeHandler(records)
    logger.setLevel(level)


@pytest.fixture(scope="module")
def web(tmp_path_factory, server_log):
    """A real minerva on SmolLM2 (and a fake trainer for fine-tuning jobs), with one unreadable model file."""
    models = tmp_path_factory.mktemp("models")
    (models / "broken.gguf").write_bytes(b"GGUF\x03\x00\x00\x00not a header")
    settings = Settings(models_dirs=[models], data_dir=tmp_path_factory.mktemp("data"), n_threads=2, n_slots=2,
                        n_ctx=2048, finetune_threads=1)
    with running_server(settings, finetune_trainer="tests.finetune_fakes:zero_adapter") as server:
        server.root = f"http://127.0.0.1:{server.port}"
        yield server


@pytest.fixture(scope="module")
def scripted_web():
    """minerva on a scripted engine, for answers the real model does not give on demand (tool calls)."""
    with running_server(Settings(models_dirs=[]), loader=scripted_loader(scripted_answer)) as server:
        server.root = f"http://127.0.0.1:{server.port}"
        yield server


class Tab:
    """One browser page on one server, recording what the page must never do: fetch from another host, or fail."""

    def __init__(self, browser, root: str, viewport: dict = LAPTOP, color_scheme: str = "light"):
        self.root = root
        self.context = browser.new_context(viewport=viewport, color_scheme=color_scheme)
        self.page = self.context.new_page()
        self.foreign: list[str] = []
        self.errors: list[str] = []
        host = urlsplit(root).netloc
        self.page.on("request", lambda r: None if urlsplit(r.url).netloc == host else self.foreign.append(r.url))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("console", lambda m: self.errors.append(m.text) if "Content Security Policy" in m.text else None)

    def open(self, route: str) -> None:
        self.page.goto(f"{self.root}/{route}")

    def until(self, script: str, timeout_s: float = 60.0, what: str = "") -> object:
        """Poll a JavaScript expression until it is truthy; its value."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = self.page.evaluate(script)
            if value:
                return value
            assert time.monotonic() < deadline, f"timed out waiting for {what or script}"
            time.sleep(0.1)

    def screenshot(self, name: str, full_page: bool = True) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=full_page)
        return path

    def close(self) -> None:
        self.context.close()
        assert self.foreign == [], f"the page fetched from other hosts: {self.foreign}"
        assert self.errors == [], f"the page failed: {self.errors}"


@pytest.fixture
def tab(browser, web) -> Iterator[Tab]:
    opened = Tab(browser, web.root)
    yield opened
    opened.close()


def wait_for(condition: Callable[[], object], timeout_s: float = 30.0, what: str | Callable[[], str] = "") -> object:
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what() if callable(what) else what}"
        time.sleep(0.1)
    return value


def listed_model(web, model_id: str = MODEL) -> dict:
    return next(m for m in httpx.get(web.base_url + "/models").json()["data"] if m["id"] == model_id)


def cell(row, field: str) -> object:
    return json.loads(row.locator(f'td[data-field="{field}"]').get_attribute("data-value"))


def test_the_models_table_shows_the_embedded_models_real_metadata(tab, web, smollm2_path):
    tab.open("#/models")
    row = tab.page.locator(f'tr[data-model-id="{MODEL}"]')
    row.wait_for()
    model = listed_model(web)
    for field in ("format", "quantization", "file_size_mb", "tensor_count", "parameter_count", "architecture",
                  "context_length", "capabilities", "loaded"):
        assert cell(row, field) == model[field], field
    text = row.inner_text()
    for shown in ("Q4_1", "gguf", "98.36 MB", "272", "134.5M", "llama", "8,192", "tools", "json_schema",
                  "embedded default"):
        assert shown in text
    assert "broken.gguf" in tab.page.locator(".failures").inner_text()
    assert next(iter(web.state.registry.failures().values())) in tab.page.locator(".failures").inner_text()
    tab.screenshot("models")

    tab.page.fill("#model-filter", "no-such-model")
    assert tab.page.locator("tr[data-model-id]").count() == 0
    assert "No model matches" in tab.page.locator(".models-table tbody").inner_text()
    tab.page.fill("#model-filter", "llama q4_1")
    assert tab.page.locator("tr[data-model-id]").count() == 1
    tab.page.fill("#model-filter", "")
    params = tab.page.locator('th:has(button[data-sort="parameter_count"])')
    tab.page.click('button[data-sort="parameter_count"]')
    assert params.get_attribute("aria-sort") == "ascending"
    tab.page.keyboard.press("Enter")  # the sort buttons are real buttons: the keyboard works them too
    assert params.get_attribute("aria-sort") == "descending"

    tab.page.click(f'a.model-id[data-model="{MODEL}"]')
    tab.page.locator(".model-detail .detail-title").wait_for()
    detail = tab.page.locator(".model-detail").inner_text()
    for shown in (MODEL, "49,152", "gpt2", "<|im_start|>", "576", "30", str(smollm2_path), "gguf_version"):
        assert shown in detail, shown
    tab.page.click(".model-detail summary")
    assert "<|im_start|>" in tab.page.locator(".model-detail pre.template").inner_text()
    tab.screenshot("model-detail")

    tab.open("#/models")
    row.wait_for()
    light = tab.page.evaluate("getComputedStyle(document.body).backgroundColor")
    tab.page.emulate_media(color_scheme="dark")
    assert tab.page.evaluate("getComputedStyle(document.body).backgroundColor") != light
    tab.screenshot("models-dark")


def test_a_chat_streams_an_answer_and_the_stop_button_cancels_it_on_the_server(tab, web, server_log):
    tab.open("#/chat")
    tab.until(f"document.querySelector('#chat-model').value === {json.dumps(MODEL)}", what="the model picker")
    tab.page.fill("#chat-temperature", "0")
    tab.page.fill("#chat-max_tokens", "24")
    tab.page.fill("#chat-input", "What is the capital of France?")
    tab.page.press("#chat-input", "Enter")
    answer = tab.page.locator(".message-assistant").last
    answer.locator("[data-stat=finish]").wait_for(timeout=300_000)
    assert answer.locator(".content").inner_text().strip()
    stats = answer.locator(".message-stats").inner_text()
    assert "TTFT" in stats and "tokens/s" in stats and "prompt tokens cached" in stats
    tab.screenshot("chat")

    tab.page.fill("#chat-max_tokens", "2000")
    tab.page.fill("#chat-input", "Write a very long story about a dragon who learns to read.")
    tab.page.click("#chat-send")
    answer = tab.page.locator(".message-assistant").nth(1)
    tab.until("(document.querySelectorAll('.message-assistant .content')[1]?.textContent.length ?? 0) > 20",
              timeout_s=300, what="the second answer to stream")
    assert tab.page.locator("#chat-send").is_hidden(), answer.inner_text()  # still streaming: Stop replaces Send
    tab.page.click("#chat-stop")
    answer.locator("[data-stat=stopped]").wait_for(timeout=10_000)
    assert tab.page.locator("#chat-send").is_visible()
    wait_for(lambda: any("POST /v1/chat/completions" in line and "outcome=client_disconnected" in line
                         for line in server_log.lines), timeout_s=60,
             what=lambda: "the server to log the cancel; it logged:\n" + "\n".join(server_log.lines[-5:]))
    engine = web.state.pool.loaded()[MODEL]
    wait_for(lambda: engine.stats().active_slots == 0, timeout_s=60, what="the slot to be freed")

    tab.page.reload()  # conversations are kept in the browser
    tab.page.locator(".message-assistant").nth(1).wait_for()
    assert "capital of France" in tab.page.locator(".conversation-list").inner_text()
    assert tab.page.locator(".message-assistant [data-stat=stopped]").count() == 1


def test_a_model_is_unloaded_from_the_page(tab, web):
    tab.open("#/models")
    row = tab.page.locator(f'tr[data-model-id="{MODEL}"]')
    row.wait_for()
    if not cell(row, "loaded"):
        row.locator('button[data-action="load"]').click()
        tab.until(f"document.querySelector('tr[data-model-id=\"{MODEL}\"] td[data-field=\"loaded\"]')"
                  ".dataset.value === 'true'", timeout_s=120, what="the model to load")
    assert web.state.pool.is_loaded(MODEL)
    assert "loaded" in row.locator('td[data-field="loaded"]').inner_text()
    row.locator('button[data-action="unload"]').click()
    tab.until(f"document.querySelector('tr[data-model-id=\"{MODEL}\"] td[data-field=\"loaded\"]')"
              ".dataset.value === 'false'", what="the row to show the model unloaded")
    assert not web.state.pool.is_loaded(MODEL)
    state = next(m for m in httpx.get(web.root + "/minerva/models").json()["data"] if m["id"] == MODEL)
    assert state["loaded"] is False and state["memory_bytes"] is None


def painted_above_the_baseline(tab: Tab, chart_id: str) -> int:
    """Pixels of the chart's series colours in the upper half of its canvas: a peak, where a zero line sits lower
    (the y axis ends just above the highest value, so the tallest series reaches the top)."""
    return tab.page.evaluate("""(id) => {
        const canvas = document.querySelector(`#${id} canvas`);
        const style = getComputedStyle(document.documentElement);
        const colors = [1, 2, 3].map((n) => {
            const hex = style.getPropertyValue(`--chart-${n}`).trim();
            return [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));
        });
        const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, Math.floor(canvas.height / 2)).data;
        let count = 0;
        for (let i = 0; i < data.length; i += 4) {
            if (data[i + 3] > 200 && colors.some(([r, g, b]) =>
                Math.abs(data[i] - r) + Math.abs(data[i + 1] - g) + Math.abs(data[i + 2] - b) < 60)) count++;
        }
        return count;
    }""", chart_id)


def test_the_server_page_charts_draw_from_live_metrics(tab, web):
    import openai

    tab.open("#/server")
    tab.page.locator("#chart-tokens canvas").wait_for()
    tab.until("Number(document.querySelector('#chart-requests').dataset.points) >= 2", what="two scrapes")
    client = openai.OpenAI(base_url=web.base_url, api_key="sk-local", max_retries=0, timeout=120)
    answer = client.chat.completions.create(model=MODEL, max_tokens=12, temperature=0,
                                            messages=[{"role": "user", "content": "Say hello."}])
    assert answer.usage.completion_tokens > 0
    for chart in ("chart-tokens", "chart-requests"):
        tab.until(f"Number(document.querySelector('#{chart}').dataset.max) > 0", what=f"{chart} to show the request")
        wait_for(lambda chart=chart: painted_above_the_baseline(tab, chart) > 10, what=f"{chart} to draw its peak")
    tab.until("Number(document.querySelector('#chart-memory').dataset.points) > 0", what="memory of the loaded model")
    assert MODEL in tab.page.locator("#chart-memory").inner_text()
    tiles = tab.page.locator(".tiles").inner_text()
    assert "Tokens generated" in tiles and "Slots in use" in tiles
    tab.screenshot("server")
    tab.page.emulate_media(color_scheme="dark")
    tab.page.wait_for_timeout(300)
    tab.screenshot("server-dark")


def test_the_pages_metrics_parser_reads_what_the_server_writes(tab, web):
    from prometheus_client.parser import text_string_to_metric_families

    httpx.get(f"{web.base_url}/models/{MODEL}")  # an endpoint label with braces: /v1/models/{model_id:path}
    tab.open("#/server")
    tab.page.locator("#chart-tokens canvas").wait_for()
    parsed = tab.page.evaluate("""async () => {
        const { parsePrometheus } = await import('./web/prometheus.js');
        const text = await (await fetch('metrics')).text();
        return { text, samples: parsePrometheus(text) };
    }""")
    expected = [{"name": s.name, "labels": s.labels, "value": s.value}
                for family in text_string_to_metric_families(parsed["text"]) for s in family.samples]
    assert parsed["samples"] == expected
    assert any("{" in s["labels"].get("endpoint", "") for s in parsed["samples"])


def test_a_wrong_api_key_shows_a_clear_message_and_the_right_one_is_kept(browser, tmp_path):
    settings = Settings(models_dirs=[tmp_path], include_default_model=False, api_keys=["sk-right"])
    with running_server(settings) as server:
        keyed = Tab(browser, f"http://127.0.0.1:{server.port}")
        try:
            keyed.open("#/models")
            dialog = keyed.page.locator("#key-dialog")
            dialog.wait_for()
            assert "requires an API key" in dialog.inner_text()
            keyed.page.fill("#key-input", "sk-wrong")
            keyed.page.press("#key-input", "Enter")
            keyed.until("document.querySelector('#key-message').classList.contains('key-refused')",
                        what="the refusal")
            message = dialog.inner_text()
            assert "The server refused the API key" in message and "Incorrect or missing API key" in message
            keyed.screenshot("api-key-refused", full_page=False)
            keyed.page.fill("#key-input", "sk-right")
            keyed.page.click('#key-dialog button[value="save"]')
            keyed.page.locator(".models-table .empty").wait_for()
            assert "No models registered" in keyed.page.locator(".models-table").inner_text()
            assert keyed.page.evaluate("localStorage.getItem('minerva.apiKey')") == "sk-right"
            keyed.page.reload()  # asked once: the key is kept in the browser
            keyed.page.locator(".models-table .empty").wait_for()
            assert not dialog.is_visible()
        finally:
            keyed.close()


def test_tool_calls_are_shown_as_calls(browser, scripted_web):
    chat = Tab(browser, scripted_web.root)
    try:
        chat.open("#/chat")
        chat.until(f"document.querySelector('#chat-model').value === {json.dumps(MODEL)}", what="the model picker")
        chat.page.click(".tools-field summary")
        chat.page.fill("#chat-tools", json.dumps([WEATHER]))
        chat.page.select_option("#chat-tool-choice", "required")
        chat.page.fill("#chat-input", "#weather in Paris?")
        chat.page.click("#chat-send")
        call = chat.page.locator(".message-assistant .tool-call")
        call.wait_for()
        chat.page.locator(".message-assistant [data-stat=finish]").wait_for()
        assert call.locator(".tool-call-name").inner_text() == "get_weather"
        assert json.loads(call.locator(".tool-call-args").inner_text()) == {"city": "Paris"}
        assert "finish: tool_calls" in chat.page.locator(".message-assistant .message-stats").inner_text()
        chat.screenshot("chat-tool-call")
    finally:
        chat.close()


def test_model_output_cannot_inject_markup(browser, scripted_web):
    chat = Tab(browser, scripted_web.root)
    try:
        chat.open("#/chat")
        chat.until("document.querySelector('#chat-model').value !== ''", what="the model picker")
        html = chat.page.evaluate("""async () => {
            const { markdownToHtml } = await import('./web/markdown.js');
            return markdownToHtml('<img src=x onerror=alert(1)> ![pic](http://example.com/a.png) '
                + '<script>alert(2)</script> [link](javascript:alert(3)) **bold**');
        }""")
        assert "<img" not in html and "<script" not in html and "javascript:" not in html
        assert "onerror" not in html.replace("&lt;img src=x onerror=alert(1)&gt;", "")
        assert "<strong>bold</strong>" in html and 'href="http://example.com/a.png"' in html
    finally:
        chat.close()


def test_the_fine_tuning_page_uploads_a_file_starts_a_job_and_tries_the_model(tab, web):
    lines = "".join(json.dumps({"messages": [{"role": "user", "content": f"What is code {i}?"},
                                             {"role": "assistant", "content": f"Code {i} is blue."}]}) + "\n"
                    for i in range(12))
    tab.open("#/finetune")
    tab.until(f"document.querySelector('#ft-model').value === {json.dumps(MODEL)}", what="the base model picker")
    tab.page.set_input_files("#ft-file", files=[{"name": "facts.jsonl", "mimeType": "application/jsonl",
                                                 "buffer": lines.encode()}])
    tab.page.fill("#ft-suffix", "web")
    tab.page.click("#ft-start")
    tab.page.locator('.job-detail [data-status="succeeded"]').wait_for(timeout=180_000)
    (job,) = httpx.get(web.base_url + "/fine_tuning/jobs").json()["data"]
    assert job["status"] == "succeeded" and job["user_provided_suffix"] == "web"
    assert tab.page.locator(f'.job-list [data-job-id="{job["id"]}"]').count() == 1
    tab.until("Number(document.querySelector('.job-detail .chart').dataset.points) === 4", what="four loss points")
    events = tab.page.locator(".event-list").inner_text()
    assert "Step 4/4: training loss=0.50" in events and "New fine-tuned model created" in events
    tab.screenshot("finetune")
    tab.page.click("#ft-try")
    tab.until(f"document.querySelector('#chat-model')?.value === {json.dumps(job['fine_tuned_model'])}",
              what="the chat to pick the fine-tuned model")
    assert tab.page.evaluate("location.hash") == "#/chat"


def test_the_pages_fit_a_phone(browser, web):
    phone = Tab(browser, web.root, viewport=PHONE)
    try:
        for route, ready in (("#/chat", "#chat-input"), ("#/models", f'tr[data-model-id="{MODEL}"]'),
                             ("#/finetune", "#ft-file"), ("#/server", "#chart-tokens canvas")):
            phone.open(route)
            phone.page.locator(ready).wait_for()
            if route == "#/server":
                phone.until("Number(document.querySelector('#chart-requests').dataset.points) >= 2", what="two scrapes")
            width = phone.page.evaluate("document.documentElement.scrollWidth")
            assert width <= PHONE["width"], f"{route} is {width}px wide on a {PHONE['width']}px phone"
            phone.screenshot(f"phone-{route.strip('#/')}")
    finally:
        phone.close()
