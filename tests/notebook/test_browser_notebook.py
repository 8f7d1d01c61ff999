"""The notebook tools in a real JupyterLab and a real Notebook 7, driven by Debian's Chromium.

For each front end a notebook (its own file, so its own kernel) is run top to bottom
on the real default model; then the tests use it as a person would: %%generate shows
its text once with a footer and its beam tree grows live; the chat panel sends,
streams and stops, marks an over-long message failed and answers the next one,
keeps the box empty when typing fast, copies and inserts code; the KV monitor's
usage axis follows a generation; a token-view tooltip stays inside the window; a
kernel restart marks the panels dead, and an implicit load says it is loading.
Screenshots go to artifacts/notebook-browser/<front end>/. Waits are on conditions
with generous limits: the machine running these is small and shared.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import nbformat
import pytest
from headless_chromium import CHROMIUM, launch_chromium
from jupyter_browser import Front, assert_no_errors, open_and_run_all, start_server, wait_for

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "notebook-browser"
FAST_TRIES = 10

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(1800),
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium (make system-deps)")]

CELLS = [
    "%load_ext nbllm\n%nbllm load --num-kv-blocks 256 --max-model-len 1024",
    "%%generate --chat --temperature 0 --max-tokens 24 --out answer\nWhat is the capital of France?",
    "%%generate --temperature 0 --max-tokens 12\nThe capital of Italy is Rome. The capital of Spain is\n---\n"
    "The three primary colors are",
    "%%generate --beams 4 --max-tokens 24\nThe capital of France is",
    "from nbllm import SamplingParams\nfrom nbllm.notebook import ChatPanel, KVCacheMonitor\n\n"
    "panel = ChatPanel(system_prompt=\"You are a helpful assistant.\",\n"
    "                  sampling_params=SamplingParams(temperature=0, max_tokens=200), max_height=\"360px\")\npanel",
    "monitor = KVCacheMonitor(interval=0.25)\nmonitor",
    "import json\n\nexample = ChatPanel(max_height=\"300px\")\n"
    "example.load_json(json.dumps([{\"role\": \"user\", \"content\": \"Sum a list, and a table of squares?\"},\n"
    "    {\"role\": \"assistant\", \"content\": \"Here it is:\\n\\n```python\\ndef total(xs):\\n    return sum(xs)\\n```\\n\\n"
    "| n | n² |\\n|---|---|\\n| 2 | 4 |\\n| 3 | 9 |\"}]))\nexample",
    "%%generate --logprobs 5 --temperature 0 --max-tokens 64\nOnce upon a time",
    "# after a kernel restart, run this cell alone: the first use loads the default model\n"
    "%load_ext nbllm\nfrom nbllm.notebook import ChatPanel\nfresh = ChatPanel()\nfresh",
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("jupyter")
    for front in ("lab", "notebook"):
        notebook = nbformat.v4.new_notebook(metadata={"kernelspec": {
            "name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}})
        notebook.cells = [nbformat.v4.new_code_cell(source) for source in CELLS]
        (folder / "root").mkdir(exist_ok=True)
        nbformat.write(notebook, folder / "root" / f"{front}.ipynb")
    yield from start_server(folder)


@pytest.fixture(scope="module")
def browser():
    yield from launch_chromium()


@pytest.fixture(autouse=True)
def screenshot_on_failure(request):
    """A failing test leaves a picture of the page behind."""
    yield
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed and "nb" in request.fixturenames:
        session = request.getfixturevalue("nb")
        session.shot(f"failure-{request.node.name}", session.page)


@pytest.fixture(scope="module", params=["lab", "notebook"])
def nb(request, server, browser):
    """The front end's page with its notebook run top to bottom; `nb.shot(name, locator)` saves a screenshot."""
    front = Front(request.param)
    folder = ARTIFACTS / front.name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server)
    page = context.new_page()
    session = Session(front, page, folder)
    try:
        open_and_run_all(page, front, front.url(server, f"{front.name}.ipynb"), len(CELLS))
        session.shot("01-after-run-all", page)
        assert_no_errors(page)
        yield session
    except BaseException:
        session.shot("failure", page)
        raise
    finally:
        context.close()


class Session:
    def __init__(self, front: Front, page, folder: Path) -> None:
        self.front, self.page, self.folder = front, page, folder

    def shot(self, name: str, target) -> None:
        target.screenshot(path=str(self.folder / f"{name}.png"))

    def cell(self, text: str):
        return self.page.locator(".jp-CodeCell", has_text=text).first

    def run(self, cell) -> None:
        """Run one cell (click into its editor, Shift+Enter)."""
        cell.scroll_into_view_if_needed()
        cell.locator(".jp-InputArea-editor").click()
        self.page.keyboard.press("Shift+Enter")

    def idle(self) -> bool:
        return self.front.kernel_idle(self.page)


class Chat:
    """The chat panel's parts in the page."""

    def __init__(self, panel) -> None:
        self.panel = panel
        self.box = panel.locator(".nbllm-chat-input textarea")
        self.send = panel.locator("button.nbllm-send")
        self.stop = panel.locator("button.nbllm-stop")
        self.status = panel.locator(".nbllm-chat-status")
        self.bubbles = panel.locator(".nbllm-log .nbllm-msg")
        self.replies = panel.locator(".nbllm-log .nbllm-assistant")
        self.max_tokens = panel.locator(".widget-inline-hbox", has_text="max tokens").locator("input")

    def set_max_tokens(self, value: int) -> None:
        self.max_tokens.fill(str(value))
        self.max_tokens.press("Tab")  # the number box sends its value when it loses focus

    def idle(self) -> bool:
        return self.send.is_enabled() and "waiting" not in self.status.inner_text() \
            and "streaming" not in self.status.inner_text()

    def wait_idle(self, what: str, timeout: float = 180) -> None:
        time.sleep(0.5)
        wait_for(self.idle, timeout, what)


def chat_of(nb: Session) -> Chat:
    return Chat(nb.cell("panel = ChatPanel(").locator(".nbllm-chat"))


# ----------------------------------------------------------------------------- %%generate


def test_generate_shows_its_text_once_with_a_footer(nb):
    cell = nb.cell("--out answer")
    cell.scroll_into_view_if_needed()
    outputs = cell.locator(".jp-OutputArea-output")
    text = " ".join(outputs.all_inner_texts())
    assert text.count("Paris") == 1, f"the answer is shown once (streamed), not again as Out[]: {text!r}"
    assert cell.locator(".jp-OutputArea-executeResult").count() == 0
    footer = cell.locator(".nbllm-footer").inner_text()
    assert re.fullmatch(r"(stop|length) · \d+ tokens in [\d.]+ s · [\d.]+ tokens/s · TTFT [\d.]+ s", footer), footer
    nb.shot("02-generate", cell)

    batch = nb.cell("The three primary colors are")
    batch.scroll_into_view_if_needed()
    text = batch.locator(".jp-OutputArea-output").first.inner_text()
    assert "[prompt 1]" in text and "[prompt 2]" in text
    lines = batch.locator(".nbllm-footer").inner_text().splitlines()
    assert [line.split(" ")[:2] for line in lines] == [["[prompt", "1]"], ["[prompt", "2]"]], lines
    nb.shot("02b-generate-batch", batch)

    beams = nb.cell("--beams 4")
    beams.scroll_into_view_if_needed()
    assert beams.locator(".nbb").count() == 1, "the beam tree is drawn once"
    assert "searching" not in beams.locator(".nbb-head").inner_text()
    prompt_label = beams.locator(".nbb [data-node=\"0\"] text").text_content()
    assert prompt_label == "The capital of France is", f"the prompt node is not cut: {prompt_label!r}"
    nb.shot("03-beam-tree", beams.locator(".nbb"))


def test_beam_tree_grows_while_it_searches(nb):
    cell = nb.cell("--beams 4")
    cell.scroll_into_view_if_needed()
    # every header the output shows, recorded in the page as it changes (polling could miss a fast search)
    cell.evaluate("""cell => {
        window.nbllmHeads = [];
        new MutationObserver(() => {
            const head = cell.querySelector(".nbb-head");
            const text = head ? head.textContent : "";
            if (text && text !== window.nbllmHeads[window.nbllmHeads.length - 1]) window.nbllmHeads.push(text);
        }).observe(cell, { childList: true, subtree: true, characterData: true });
    }""")
    nb.run(cell)
    time.sleep(2)
    wait_for(lambda: nb.idle() and "searching" not in cell.locator(".nbb-head").inner_text(), 300,
             "the beam search to end")
    heads = nb.page.evaluate("window.nbllmHeads")
    steps = [int(re.search(r"(\d+) steps", h).group(1)) for h in heads if "searching" in h]
    assert len(set(steps)) >= 2 and steps == sorted(steps), f"the tree grew step by step: {steps}"
    assert "searching" not in heads[-1] and cell.locator(".nbb").count() == 1


# ----------------------------------------------------------------------------- the chat panel


def test_chat_sends_streams_and_stops(nb):
    chat = chat_of(nb)
    chat.panel.scroll_into_view_if_needed()
    chat.box.click()
    chat.box.fill("What is the capital of France?")
    chat.send.click()
    wait_for(lambda: chat.replies.count() == 1, 60, "the reply bubble")
    chat.wait_idle("the first reply to finish")
    assert "Paris" in chat.replies.nth(0).inner_text() and "tokens/s" in chat.status.inner_text()
    assert chat.box.input_value() == ""
    nb.shot("04-chat-answer", chat.panel)

    chat.box.click()
    chat.box.type("Write a very long story")
    chat.box.press("Shift+Enter")  # a new line in the message, not a send (nor a cell run)
    chat.box.type("about a dragon who learns to bake bread.")
    assert "\n" in chat.box.input_value() and chat.replies.count() == 1
    chat.box.press("Enter")
    wait_for(lambda: chat.replies.count() == 2 and len(chat.replies.nth(1).inner_text()) > 40, 120,
             "the long reply to start")
    lengths = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(set(lengths)) < 4:
        lengths.append(len(chat.replies.nth(1).inner_text()))
        time.sleep(0.4)
    assert lengths[-1] > lengths[0] and len(set(lengths)) >= 4, f"the reply streams in: {lengths}"
    nb.shot("05-chat-streaming", chat.panel)
    chat.stop.click()
    wait_for(lambda: "stopped" in chat.status.inner_text(), 60, "the reply to stop")
    stopped = len(chat.replies.nth(1).inner_text())
    time.sleep(1.5)
    assert len(chat.replies.nth(1).inner_text()) == stopped, "no text arrives after Stop"


def test_chat_marks_an_over_long_message_failed_and_answers_the_next(nb):
    chat = chat_of(nb)
    chat.panel.scroll_into_view_if_needed()
    before = chat.bubbles.count()
    chat.box.click()
    chat.box.fill("word " * 1500)  # the engine was loaded with --max-model-len 1024
    chat.box.press("Enter")
    wait_for(lambda: chat.status.locator(".nbllm-error").count() == 1, 120, "the error in the status line")
    status = chat.status.inner_text()
    assert "maximum context length is 1024" in status and "Undo puts it back" in status, status
    failed = chat.panel.locator(".nbllm-log .nbllm-failed")
    assert failed.count() == 1 and "not sent" in failed.inner_text()
    assert chat.bubbles.count() == before + 1
    nb.shot("06-chat-failed-turn", chat.panel)

    chat.box.fill("Thank you! What is the capital of France?")
    chat.box.press("Enter")
    wait_for(lambda: chat.bubbles.count() == before + 3, 60, "the next exchange")
    chat.wait_idle("the reply after the failed turn")
    assert "error" not in chat.status.inner_text() and "tokens/s" in chat.status.inner_text()
    assert "Paris" in chat.replies.last.inner_text()
    assert failed.count() == 1, "the failed message stays marked (and is not resent)"
    log = chat.panel.locator(".nbllm-log")
    height, scroll_height, top = log.evaluate("e => [e.clientHeight, e.scrollHeight, e.scrollTop]")
    assert height <= 362 and scroll_height > 2 * height, "a scroll box, not a panel that grows without end"
    assert top + height >= scroll_height - 40, "kept scrolled to the newest text"
    nb.shot("07-chat-recovered", chat.panel)


def test_chat_box_stays_empty_when_typing_fast(nb):
    chat = chat_of(nb)
    chat.panel.scroll_into_view_if_needed()
    chat.set_max_tokens(4)
    came_back = []
    for i in range(FAST_TRIES):
        message = f"Quick message number {i}, typed fast"
        chat.box.click()
        nb.page.keyboard.type(message, delay=0)
        nb.page.keyboard.press("Enter")
        wait_for(lambda: chat.panel.locator(".nbllm-log .nbllm-user", has_text=message).count() == 1, 60,
                 f"message {i} in the log")
        chat.wait_idle(f"reply {i}")
        time.sleep(0.5)  # any late value update has arrived by now
        if chat.box.input_value():
            came_back.append((i, chat.box.input_value()))
            chat.box.fill("")
    assert came_back == [], f"sent text came back into the box in {len(came_back)} of {FAST_TRIES} tries"
    nb.shot("08-chat-fast-typing", chat.panel)


def test_code_blocks_copy_and_insert(nb):
    panel = nb.cell("example = ChatPanel(").locator(".nbllm-chat")
    panel.scroll_into_view_if_needed()
    table = panel.locator(".nbllm-log table")
    assert table.count() == 1 and "9" in table.inner_text(), "markdown tables are rendered"
    nb.shot("09-chat-code-and-table", panel)
    panel.locator(".nbllm-code-button", has_text="Copy").click()
    wait_for(lambda: "def total" in nb.page.evaluate("navigator.clipboard.readText()"), 20, "the code on the clipboard")
    cells_before = nb.page.locator(".jp-CodeCell").count()
    panel.locator(".nbllm-code-button", has_text="Insert").click()
    wait_for(lambda: nb.page.locator(".jp-CodeCell").count() == cells_before + 1, 30, "a new cell")
    inserted = nb.cell("example = ChatPanel(").locator("xpath=following-sibling::*[1]")
    wait_for(lambda: "return sum(xs)" in inserted.inner_text(), 30, "the code in the new cell below")
    nb.shot("10-code-inserted", nb.page)


# ----------------------------------------------------------------------------- the monitor


def usage_axis(monitor) -> float:
    return float(monitor.locator('svg[data-chart="usage"]').get_attribute("data-ymax"))


def test_monitor_axis_follows_usage_while_a_reply_streams(nb):
    chat = chat_of(nb)
    monitor = nb.cell("monitor = KVCacheMonitor(").locator(".nbllm-kvm")
    chat.set_max_tokens(200)
    chat.box.click()
    chat.box.fill("Write a very long story about a dragon who learns to bake bread.")
    chat.box.press("Enter")
    wait_for(lambda: "1 running" in monitor.inner_text(), 120, "the monitor to show the running request")
    monitor.scroll_into_view_if_needed()
    axes, usages = [], []
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        text = monitor.inner_text()
        axes.append(usage_axis(monitor))
        usages.append(float(re.search(r"KV cache ([\d.]+)%", text).group(1)))
        if len(axes) == 8 and "1 running" in text:
            nb.shot("11-monitor-during-reply", monitor)
        if "1 running" not in text:
            break
        time.sleep(0.5)
    if chat.stop.is_enabled():
        chat.stop.click()
    chat.wait_idle("the reply to end")
    peak = max(usages)
    assert 0 < peak < 50, usages
    assert max(axes) < 10 * peak + 1.5, f"the axis is scaled to the usage ({peak}%), not 0-100%: {axes}"
    assert all(a >= u for a, u in zip(axes, usages)), "the usage stays on the chart"
    path = monitor.locator('svg[data-chart="usage"] path').first.get_attribute("d")
    ys = {float(y) for y in re.findall(r"V([\d.]+)", path)}
    assert len(ys) >= 2, "the line moves: not flat at the bottom"
    assert monitor.locator('svg[data-chart="tokens_per_s"]').count() == 1
    rate = re.search(r"([\d.,]+|–) tokens/s", monitor.inner_text()).group(1)
    assert rate == "–" or float(rate.replace(",", "")) < 5000, f"no absurd tokens/s: {rate}"
    wait_for(lambda: "0 running" in monitor.inner_text(), 60, "the blocks to be freed")

    grid = monitor.locator("canvas.nbllm-kvm-grid")
    box = grid.bounding_box()
    nb.page.mouse.move(box["x"] + 3, box["y"] + 3)
    tip = nb.page.locator(".nbllm-kvm-tip")
    wait_for(lambda: tip.count() == 1 and tip.inner_text().startswith("block 0:"), 20, "the block's hover text")
    nb.shot("12-monitor-after-stop", monitor)


# ----------------------------------------------------------------------------- the views


def test_token_tooltip_stays_inside_the_window(nb):
    view = nb.cell("--logprobs 5").locator(".nbt")
    view.scroll_into_view_if_needed()
    tokens = view.locator(".nbt-t")
    last = tokens.last
    last.scroll_into_view_if_needed()
    viewport = nb.page.viewport_size
    # put the view's last line near the bottom of the window, as a reader scrolling down would
    nb.page.mouse.wheel(0, last.bounding_box()["y"] - (viewport["height"] - 40))
    time.sleep(0.5)
    height_before = view.bounding_box()["height"]
    last.hover()
    tip = nb.page.locator(".nbllm-tip")
    wait_for(lambda: tip.count() == 1 and tip.is_visible(), 20, "the tooltip")
    tip_box, token_box = tip.bounding_box(), last.bounding_box()
    assert tip_box["y"] >= 0 and tip_box["y"] + tip_box["height"] <= viewport["height"], tip_box
    assert tip_box["x"] >= 0 and tip_box["x"] + tip_box["width"] <= viewport["width"], tip_box
    if token_box["y"] + token_box["height"] + tip_box["height"] > viewport["height"]:
        assert tip_box["y"] + tip_box["height"] <= token_box["y"] + 1, "no room below: it opens above the token"
    assert view.bounding_box()["height"] == height_before, "no blank space added to the output"
    nb.shot("13-token-tooltip", nb.page)
    nb.page.mouse.move(1, 1)
    wait_for(lambda: tip.count() == 0, 10, "the tooltip to go")


# ----------------------------------------------------------------------------- restarts


def test_a_restart_marks_panels_dead_and_a_new_panel_says_it_is_loading(nb):
    page = nb.page
    page.locator(".lm-MenuBar-itemLabel", has_text="Kernel").first.click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Restart Kernel…?$")).first.click()
    confirm = page.locator(".jp-Dialog button.jp-mod-accept")
    wait_for(lambda: confirm.count() > 0, 30, "the restart dialog")
    confirm.first.click()
    banners = page.locator(".nbllm-dead")
    wait_for(lambda: banners.count() >= 3, 60, "the dead-kernel banners (chat panels and monitor)")
    texts = banners.all_text_contents()  # the DOM's text: a banner scrolled out of a windowed notebook still has it
    assert all(text == "kernel restarted: re-run this cell" for text in texts), texts
    chat = chat_of(nb)
    assert chat.box.is_disabled()
    nb.shot("14-after-restart", chat.panel)
    wait_for(nb.idle, 120, "the new kernel")

    cell = nb.cell("after a kernel restart")
    nb.run(cell)
    notice = cell.locator(".jp-OutputArea-output").first
    seen = set()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not cell.locator(".nbllm-chat").count():
        if notice.count():
            seen.add(notice.inner_text().strip())
        time.sleep(0.3)
    loading = [t for t in seen if t.startswith("loading SmolLM2-135M-Instruct…")]
    assert loading, f"an implicit load says so: {seen}"
    wait_for(lambda: "loaded SmolLM2-135M-Instruct in" in cell.inner_text(), 60, "the load to be reported")
    wait_for(lambda: cell.locator(".nbllm-chat-input textarea").count() == 1, 60, "the new panel")
    nb.shot("15-implicit-load", cell)
