"""A Jupyter server and a headless Chromium for the browser tests, in JupyterLab and in Notebook 7.

One server (jupyterlab, with the `notebook` package's Notebook 7 front end beside it)
serves a temporary root folder on 127.0.0.1 with its own port, token, config,
runtime and workspace folders; it is stopped through the Popen handle that started
it. `Front` knows the two front ends' few differences (the URL, how to tell the
kernel is idle). Waits are on conditions, with generous limits: these tests run on
a loaded two-core machine.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

TOKEN = "nbllm-browser-test"


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _responds(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


def start_server(folder: Path) -> Iterator[str]:
    """Serve `folder/root` with JupyterLab and Notebook 7; yields the base URL (a generator for fixtures)."""
    root = folder / "root"
    root.mkdir(exist_ok=True)
    settings = folder / "user-settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True, exist_ok=True)  # no news toast over the screenshots, no network
    (settings / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    port = free_port()
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(folder / "config"), JUPYTER_RUNTIME_DIR=str(folder / "runtime"))
    log = open(folder / "server.log", "wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ServerApp.ip=127.0.0.1",
         f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={TOKEN}",
         f"--ServerApp.root_dir={root}", f"--LabApp.workspaces_dir={folder / 'workspaces'}",
         f"--LabApp.user_settings_dir={folder / 'user-settings'}"],
        stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _responds(f"{base}/api/status?token={TOKEN}") or server.poll() is not None, 120,
                 "the Jupyter server to start")
        assert server.poll() is None, (folder / "server.log").read_text()
        yield base
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


@dataclass
class Front:
    """One front end: JupyterLab ("lab") or Notebook 7 ("notebook")."""

    name: str

    def url(self, base: str, notebook: str) -> str:
        path = f"lab/tree/{notebook}" if self.name == "lab" else f"notebooks/{notebook}"
        return f"{base}/{path}?token={TOKEN}"

    def kernel_idle(self, page) -> bool:
        if self.name == "lab":
            return page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").count() > 0
        # Notebook 7 shows the kernel's state in the notebook's toolbar and in the page's title icon
        return page.evaluate("""() => {
            const busy = document.querySelector('.jp-NotebookPanel .jp-Notebook-ExecutionIndicator');
            if (busy) return busy.getAttribute('data-status') === 'idle';
            const status = document.querySelector('.jp-KernelStatus, .jp-NotebookKernelStatus');
            return !!status && /idle/i.test(status.getAttribute('title') || status.textContent || '');
        }""")


def open_and_run_all(page, front: Front, url: str, code_cells: int, timeout: float = 600) -> None:
    """Open the notebook, wait for its kernel, run every cell and wait until all have run."""
    page.goto(url)
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=180_000)

    def ready() -> bool:
        dismiss_kernel_dialog(page)
        return front.kernel_idle(page) and page.locator(".jp-Dialog").count() == 0

    wait_for(ready, 180, "the kernel to be idle")
    time.sleep(1.0)  # let the kernel connection settle before running everything

    def started() -> bool:  # a cell shows [*] or a number once Run All has taken effect
        prompts = page.locator(".jp-CodeCell .jp-InputArea-prompt").all_inner_texts()
        return any(p.strip() not in ("[ ]:", "") for p in prompts)

    for _ in range(5):  # a busy front end can drop the first menu click; re-click only if nothing started
        dismiss_kernel_dialog(page)
        page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
        page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
        try:
            wait_for(started, 30, "Run All to start")
            break
        except AssertionError:
            page.keyboard.press("Escape")

    def finished() -> bool:  # a fresh kernel numbers the cells 1..N
        prompts = [p.strip() for p in page.locator(".jp-CodeCell .jp-InputArea-prompt").all_inner_texts()]
        return f"[{code_cells}]:" in prompts and not any("*" in p for p in prompts) and front.kernel_idle(page)

    wait_for(finished, timeout, "all cells to finish", interval=0.5)


def dismiss_kernel_dialog(page) -> None:
    """A front end may ask which kernel to start, although the notebook names one: take the proposed one."""
    select = page.locator(".jp-Dialog button", has_text="Select")
    if select.count() and select.first.is_visible():
        select.first.click()


def assert_no_errors(page) -> None:
    errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
    tracebacks = [t for t in errors.all_inner_texts() if "Traceback" in t or "Error" in t]
    assert not tracebacks, tracebacks
    assert page.locator(".jp-RenderedText[data-mime-type='application/vnd.jupyter.error']").count() == 0
