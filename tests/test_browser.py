"""The explorers in a real browser: JupyterLab on 127.0.0.1 driven by Debian's chromium (playwright).

Runs notebooks/explore_rank_tradeoffs.ipynb (on the committed sweep in data/) in a temporary
copy, checks the sliders render, moves the rank slider with the keyboard and checks the shown
numbers change. ``LRDNB_SCREENSHOT=1`` also writes figures/explore_rank_tradeoffs.png.
Never downloads a browser: only /usr/bin/chromium (or ``LRDNB_CHROMIUM``) is used.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = "explore_rank_tradeoffs.ipynb"
SWEEP = "sweep_resnet18_32px_b8_forward"  # the notebook's default data (committed)
FRONT = "tradeoff_points_cpu"  # the trade-off notebook's committed points (the front explorer)
CHROMIUM = os.environ.get("LRDNB_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
RUN_TIMEOUT_MS = 300_000  # run-all on a loaded 2-core machine; ~30-60 s when quiet


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, n: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.exists() else "(no log)"


@pytest.fixture
def lab(tmp_path):
    """A JupyterLab server on a free port with a token, serving a temporary copy of the notebook
    and its data; isolated settings (no news pop-up, no update check, no saved workspace)."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no chromium at {CHROMIUM} (Debian: apt-get install chromium; or set LRDNB_CHROMIUM)")
    root = tmp_path / "root"
    (root / "notebooks").mkdir(parents=True)
    (root / "data").mkdir()
    shutil.copy(ROOT / "notebooks" / NOTEBOOK, root / "notebooks" / NOTEBOOK)
    for name in (SWEEP, FRONT):
        for ext in ("csv", "json"):
            src = ROOT / "data" / f"{name}.{ext}"
            assert src.exists(), f"committed result {src} missing: the notebook's default run needs it"
            shutil.copy(src, root / "data" / src.name)
    settings = tmp_path / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    tracker = tmp_path / "settings" / "@jupyterlab" / "notebook-extension"
    tracker.mkdir(parents=True)
    (tracker / "tracker.jupyterlab-settings").write_text(json.dumps({"autoStartDefaultKernel": True, "windowingMode": "none"}))  # every cell in the DOM
    port, token = _free_port(), secrets.token_hex(16)
    log = tmp_path / "lab.log"
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"), JUPYTER_CONFIG_DIR=str(tmp_path / "config"),
               MPLBACKEND="Agg", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
           f"--LabApp.user_settings_dir={tmp_path / 'settings'}", f"--LabApp.workspaces_dir={tmp_path / 'ws'}",
           "--LabApp.news_url=", "--ServerApp.allow_remote_access=False"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # CI containers run as root
        cmd.append("--allow-root")
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=root, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"JupyterLab exited with {proc.returncode}:\n{_tail(log)}")
            try:
                with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                pytest.fail(f"JupyterLab did not answer on {url} within 120 s:\n{_tail(log)}")
            time.sleep(0.5)
        yield {"url": url, "token": token, "root": root, "log": log}
    finally:
        try:  # the server and the kernels it started (its own process group, which we created)
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _summary(page, index: int = 0) -> str:
    return page.locator("table.lrdnb-summary").nth(index).inner_text()


def _step_changes_summary(page, label, key: str, index: int) -> None:
    """One keyboard step on the slider labelled ``label`` changes the ``index``-th summary table."""
    slider = page.locator(".widget-slider", has=page.locator(".widget-label", has_text=label))
    before = _summary(page, index)
    slider.locator(".noUi-handle").first.focus()
    page.keyboard.press(key)
    page.wait_for_function("([old, i]) => document.querySelectorAll('table.lrdnb-summary')[i].innerText !== old",
                           arg=[before, index], timeout=60_000)


def test_explorers_in_jupyterlab(lab, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1700})
        page.set_default_timeout(120_000)
        expect.set_options(timeout=120_000)  # a loaded CI machine: be patient, never flaky
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        try:
            page.goto(f"{lab['url']}/lab/tree/notebooks/{NOTEBOOK}?token={lab['token']}", wait_until="domcontentloaded")
            n_code = sum(c["cell_type"] == "code" for c in json.loads((lab["root"] / "notebooks" / NOTEBOOK).read_text())["cells"])
            expect(page.locator(".jp-NotebookPanel .jp-CodeCell")).to_have_count(n_code)  # the notebook is loaded
            expect(page.locator(".jp-StatusBar-Item", has_text=re.compile(r"Python 3.*\| Idle"))).to_have_count(
                1, timeout=180_000)  # and its kernel started
            dialog = page.locator(".jp-Dialog")  # "Select Kernel" where the preference is not set
            if dialog.count():
                dialog.locator(".jp-mod-accept").click()
                expect(dialog).to_have_count(0)
            page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
            page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()

            page.wait_for_function(  # every code cell has an execution count: the run is over
                """n => { const p = [...document.querySelectorAll('.jp-NotebookPanel .jp-CodeCell .jp-InputPrompt')];
                          return p.length === n && p.every(e => /\\[\\d+\\]/.test(e.textContent)); }""",
                arg=n_code, timeout=RUN_TIMEOUT_MS)
            tracebacks = [t for t in page.locator(".jp-OutputArea-output").all_inner_texts() if "Traceback" in t]
            assert not tracebacks, tracebacks[0][-2000:]

            # the widgets rendered through the JupyterLab widget manager
            expect(page.locator(".jupyter-widgets.widget-slider").first).to_be_visible()
            assert page.locator(".jupyter-widgets.widget-slider").count() >= 4  # rank, budget, lambda, point
            expect(page.locator("table.lrdnb-summary")).to_have_count(3)
            expect(page.locator(".lrdnb-choice")).to_be_visible()
            before = _summary(page)
            rank_slider = page.locator(".widget-slider", has=page.locator(".widget-label", has_text=re.compile("^rank$")))
            readout = rank_slider.locator(".widget-readout")
            r0 = int(readout.inner_text())

            handle = rank_slider.locator(".noUi-handle").first
            handle.focus()
            page.keyboard.press("ArrowRight")
            expect(readout).to_have_text(str(r0 + 1), timeout=30_000)
            page.wait_for_function(
                "old => document.querySelector('table.lrdnb-summary').innerText !== old", arg=before, timeout=60_000)
            after = _summary(page)
            assert after != before
            assert re.search(rf"\b{r0 + 1}(x\d+)? \(", after), after  # the ranks row shows the new rank
            assert not [t for t in page.locator(".widget-html").all_inner_texts() if t.startswith("error:")]

            _step_changes_summary(page, "time budget", "ArrowLeft", 1)  # the model explorer's totals follow
            _step_changes_summary(page, re.compile("^point$"), "ArrowRight", 2)  # the front explorer's next point
            assert "eager" in _summary(page, 2)
            assert not errors, errors

            # screenshot of the two explorers
            page.keyboard.press("Escape")
            page.locator(".jp-MarkdownCell", has_text="One layer").first.scroll_into_view_if_needed()
            page.locator(".jp-MarkdownCell", has_text="One layer").first.evaluate("e => e.scrollIntoView({block: 'start'})")
            page.wait_for_timeout(500)
            shot = page.locator(".jp-NotebookPanel").screenshot()
            (tmp_path / "explorers.png").write_bytes(shot)
            if os.environ.get("LRDNB_SCREENSHOT"):
                out = ROOT / "figures" / "explore_rank_tradeoffs.png"
                out.parent.mkdir(exist_ok=True)
                out.write_bytes(shot)
        except Exception:
            page.screenshot(path=str(tmp_path / "failure.png"))
            print(f"screenshot: {tmp_path / 'failure.png'}\nJupyterLab log:\n{_tail(lab['log'])}")
            raise
        finally:
            browser.close()
