"""The notebook tour in a real JupyterLab, driven by Debian's Chromium through playwright.

Starts JupyterLab on 127.0.0.1 (its own port, token, workspace and root folder),
runs notebooks/notebook_tour.ipynb with the real default model, watches a
%%generate cell stream, chats in the panel (Send, streaming, Enter, Stop), watches
the KV monitor change during a reply, and saves screenshots under
artifacts/notebook-browser/. The server is stopped by the Popen handle that started it.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / "notebooks" / "notebook_tour.ipynb"
ARTIFACTS = REPO / "artifacts" / "notebook-browser"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TOKEN = "nbllm-browser-test"

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(240),
              pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian's chromium (make system-deps)")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, interval: float = 0.25):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture
def lab(tmp_path):
    """A JupyterLab server serving a copy of the tour; yields its base URL."""
    root = tmp_path / "root"
    root.mkdir()
    shutil.copy(NOTEBOOK, root / NOTEBOOK.name)
    settings = tmp_path / "user-settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)  # no "official Jupyter news?" toast over the screenshots, no network
    (settings / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    port = free_port()
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(tmp_path / "config"), JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"))
    log = open(tmp_path / "lab.log", "wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ServerApp.ip=127.0.0.1",
         f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={TOKEN}",
         f"--ServerApp.root_dir={root}", f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}",
         f"--LabApp.user_settings_dir={tmp_path / 'user-settings'}"],
        stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _responds(f"{base}/api/status?token={TOKEN}") or server.poll() is not None, 60,
                 "JupyterLab to start")
        assert server.poll() is None, (tmp_path / "lab.log").read_text()
        yield base
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def _responds(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def test_tour_in_jupyterlab(lab):
    from playwright.sync_api import sync_playwright

    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{lab}/lab/tree/{NOTEBOOK.name}?token={TOKEN}")
            try:
                run_all_cells(page)
                page.screenshot(path=str(ARTIFACTS / "01-after-run-all.png"))
                check_outputs(page)
                generate_streams(page)
                chat_and_stop(page)
            except BaseException:
                page.screenshot(path=str(ARTIFACTS / "failure.png"))
                raise
        finally:
            browser.close()


def kernel_idle(page) -> bool:
    return page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").count() > 0


def run_all_cells(page) -> None:
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)

    def ready() -> bool:  # Lab sometimes asks which kernel to start, although the notebook names one
        select = page.locator(".jp-Dialog button", has_text="Select")
        if select.count() and select.first.is_visible():
            select.first.click()
        return kernel_idle(page) and page.locator(".jp-Dialog").count() == 0

    wait_for(ready, 60, "the kernel to be idle")
    time.sleep(1.0)  # let the kernel connection settle before running everything

    def started() -> bool:  # a cell shows [*] or a number once Run All has taken effect
        prompts = page.locator(".jp-CodeCell .jp-InputArea-prompt").all_inner_texts()
        return any(p.strip() not in ("[ ]:", "") for p in prompts)

    for _ in range(3):  # a busy Lab can drop the first menu click; re-click only if nothing started
        page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
        page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
        try:
            wait_for(started, 20, "Run All to start")
            break
        except AssertionError:
            page.keyboard.press("Escape")
    code_cells = page.locator(".jp-CodeCell").count()

    def finished() -> bool:  # a fresh kernel numbers the cells 1..N; cells scrolled away may show no prompt
        prompts = [p.strip() for p in page.locator(".jp-CodeCell .jp-InputArea-prompt").all_inner_texts()]
        return f"[{code_cells}]:" in prompts and not any("*" in p for p in prompts) and kernel_idle(page)

    wait_for(finished, 150, "all cells to finish")


def check_outputs(page) -> None:
    errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
    tracebacks = [t for t in errors.all_inner_texts() if "Traceback" in t or "Error" in t]
    assert not tracebacks, tracebacks
    outputs = " ".join(page.locator(".jp-OutputArea-output").all_inner_texts())
    assert "Paris" in outputs, "%%generate streamed its answer into the cell"
    assert "100 of 100 rows answered" in outputs, "df.llm.generate answered the 100-row frame"
    assert page.locator(".nbllm-chat").count() == 1 and page.locator(".nbllm-kv-monitor").count() == 1
    tree = page.locator(".nbb svg").first  # %%generate --beams: the beam tree view rendered by JupyterLab
    tree.scroll_into_view_if_needed()
    assert tree.is_visible() and page.locator(".nbb").first.locator("rect").count() > 3
    page.locator(".nbb").first.screenshot(path=str(ARTIFACTS / "01e-beam-tree.png"))
    for name, text in (("01a-generate-cell", "--out answer"), ("01b-batch-cell", "The three primary colors"),
                       ("01c-plot-cell", "plot_kv_usage(monitor.history)")):
        cell = page.locator(".jp-CodeCell", has_text=text).first
        cell.scroll_into_view_if_needed()
        cell.screenshot(path=str(ARTIFACTS / f"{name}.png"))


def generate_streams(page) -> None:
    """Run the batch %%generate cell again and watch its output grow while the kernel works."""
    cell = page.locator(".jp-CodeCell", has_text="The three primary colors").first
    cell.scroll_into_view_if_needed()
    cell.locator(".jp-InputArea-editor").click()
    page.keyboard.press("Shift+Enter")
    output = cell.locator(".jp-OutputArea-output")
    lengths = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        lengths.append(len(" ".join(output.all_inner_texts())))
        if len(lengths) > 3 and kernel_idle(page):
            break
        time.sleep(0.1)
    final = len(" ".join(output.all_inner_texts()))
    partial = {n for n in lengths if 0 < n < final}
    assert len(partial) >= 2, f"the %%generate output grows while tokens arrive: {lengths}"
    cell.screenshot(path=str(ARTIFACTS / "01d-generate-rerun.png"))


def chat_and_stop(page) -> None:
    panel = page.locator(".nbllm-chat")
    monitor = page.locator(".nbllm-kv-monitor")
    replies = panel.locator(".nbllm-assistant")
    status = panel.locator(".nbllm-chat-status")
    panel.scroll_into_view_if_needed()

    # Send: a short question, answered in full.
    panel.locator(".nbllm-chat-input textarea").fill("What is the capital of France?")
    panel.locator("button.nbllm-send").click()
    wait_for(lambda: replies.count() == 1, 20, "the reply bubble")
    wait_for(lambda: "tokens/s" in status.inner_text() and panel.locator("button.nbllm-send").is_enabled(), 60,
             "the first reply to finish")
    assert "Paris" in replies.nth(0).inner_text()
    panel.screenshot(path=str(ARTIFACTS / "02-chat-answer.png"))

    # Enter sends; the long reply streams in; the monitor's picture changes; Stop ends it.
    monitor.scroll_into_view_if_needed()
    idle_picture = monitor.locator("img.nbllm-kv-grid").get_attribute("src")
    idle_chart = monitor.locator("svg polyline").get_attribute("points")
    textarea = panel.locator(".nbllm-chat-input textarea")
    textarea.click()
    textarea.type("Write a very long story")
    textarea.press("Shift+Enter")  # a new line in the message, not a send (nor a cell run)
    textarea.type("about a dragon who learns to bake bread.")
    assert "\n" in textarea.input_value() and replies.count() == 1
    textarea.press("Enter")
    wait_for(lambda: replies.count() == 2 and len(replies.nth(1).inner_text()) > 20, 60, "the long reply to start")
    lengths = []
    for _ in range(8):
        lengths.append(len(replies.nth(1).inner_text()))
        time.sleep(0.3)
    assert lengths[-1] > lengths[0] and len(set(lengths)) >= 3, f"the reply streams in: {lengths}"
    wait_for(lambda: "1 running" in monitor.inner_text(), 10, "the monitor to show the running request")
    busy_picture = monitor.locator("img.nbllm-kv-grid").get_attribute("src")
    assert busy_picture != idle_picture, "the block grid changed during the generation"
    assert monitor.locator("svg polyline").get_attribute("points") != idle_chart
    monitor.screenshot(path=str(ARTIFACTS / "03-monitor-during-reply.png"))
    panel.screenshot(path=str(ARTIFACTS / "04-chat-streaming.png"))

    panel.locator("button.nbllm-stop").click()
    wait_for(lambda: "stopped" in status.inner_text(), 20, "the reply to stop")
    stopped_length = len(replies.nth(1).inner_text())
    time.sleep(1.0)
    assert len(replies.nth(1).inner_text()) == stopped_length, "no text arrives after Stop"
    wait_for(lambda: "0 running" in monitor.inner_text() and "KV cache 0.0%" in monitor.inner_text(), 10,
             "the monitor to show the blocks freed")
    panel.screenshot(path=str(ARTIFACTS / "05-chat-stopped.png"))
    monitor.screenshot(path=str(ARTIFACTS / "06-monitor-after-stop.png"))
