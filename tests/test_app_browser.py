"""The Gradio app end to end in headless Chromium (Playwright + Debian's /usr/bin/chromium).

scripts/test.sh (the README test command, run by CI) finds or installs Chromium and exports CROSSMAT_CHROMIUM;
set CROSSMAT_SKIP_BROWSER_TEST=1 to skip on a machine without Chromium.
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest

from crossmat.inference import FormulaPredictor
from crossmat.inference.app import build_app, predict_markdown

from .test_inference_support import make_property_model

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _chromium() -> str:
    path = os.environ.get("CROSSMAT_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        if os.environ.get("CROSSMAT_SKIP_BROWSER_TEST") == "1":
            pytest.skip("CROSSMAT_SKIP_BROWSER_TEST=1 and no chromium")
        pytest.fail("chromium not found: run bash scripts/test.sh (installs it), apt-get install -y chromium, or set CROSSMAT_CHROMIUM / CROSSMAT_SKIP_BROWSER_TEST=1")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def predictor(tmp_path_factory: pytest.TempPathFactory) -> FormulaPredictor:
    return FormulaPredictor(make_property_model(tmp_path_factory.mktemp("app") / "tiny-gap"))


def test_predict_markdown_messages(predictor: FormulaPredictor) -> None:
    text, ok = predict_markdown(predictor, "Fe2O3")
    assert ok and "band_gap" in text and "eV" in text
    for bad, reason in [("", "empty string"), ("Xx2", "unknown element 'Xx'"), ("H" * 10_000, "10000 characters")]:
        text, ok = predict_markdown(predictor, bad)
        assert not ok and "Invalid formula" in text and reason in text and len(text) < 300


def test_app_in_headless_chromium(predictor: FormulaPredictor) -> None:
    chromium = _chromium()
    import playwright.sync_api as playwright  # in the dev extra

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    port = _free_port()
    demo = build_app(predictor)
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, show_error=False)
    try:
        with playwright.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/", wait_until="domcontentloaded", timeout=60_000)
            box = page.locator("#formula textarea, #formula input").first
            result, explanation = page.locator("#result"), page.locator("#explanation")
            expected = predictor.predict(["Fe2O3"]).values[0, 0]

            box.fill("Fe2O3")
            page.locator("#predict").click()
            playwright.expect(result).to_contain_text("band_gap", timeout=60_000)
            assert f"{expected:.4g} eV" in result.inner_text()
            playwright.expect(explanation).to_contain_text("Fe", timeout=60_000)
            assert "integrated gradients" in explanation.inner_text()

            box.fill("Xx2O3")
            box.press("Enter")
            playwright.expect(result).to_contain_text("Invalid formula", timeout=60_000)
            text = result.inner_text()
            assert "unknown element 'Xx'" in text and "Traceback" not in text
            assert explanation.inner_text().strip() == ""

            box.fill("NaCl")  # the app is still up after the bad input
            page.locator("#predict").click()
            playwright.expect(result).to_contain_text("NaCl", timeout=60_000)
            browser.close()
    finally:
        demo.close()


def test_app_script_refuses_without_model(tmp_path: Path) -> None:
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "CROSSMAT_MODEL"}
    proc = subprocess.run([sys.executable, str(repo / "app.py")], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 2 and "no model" in proc.stderr
