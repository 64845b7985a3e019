"""The app's request handler without a browser: user text is escaped, work per request is bounded (input
length, interaction size, timeout, queue), and the page never shows the model's filesystem path."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

from crossmat.inference import FormulaPredictor
from crossmat.inference import app as app_mod
from crossmat.inference.app import MAX_INPUT_CHARS, build_app, md_escape, respond
from crossmat.tokenization.vocabulary import ELEMENTS

from .test_inference_support import make_property_model

RENDER = MarkdownIt("commonmark").enable("table")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_property_model(tmp_path_factory.mktemp("secret-location") / "tiny-gap")


@pytest.fixture(scope="module")
def predictor(model_dir: Path) -> FormulaPredictor:
    return FormulaPredictor(model_dir)


@pytest.mark.parametrize("text", ["Fe`O` **x**", "![img](http://evil.example/x.png)", "[a](javascript:alert(1))",
                                  "<img src=x onerror=alert(1)>", "Fe2O3`\n# head", "Xx2 | col |"])
def test_user_text_is_escaped(predictor, text):
    result, explanation = respond(predictor, text, explainer=None)
    html = RENDER.render(result)
    assert "<img" not in html and "<code>" not in html and "<a " not in html and "<h1>" not in html, html
    assert "Invalid formula" in result and explanation == ""
    assert RENDER.render(md_escape(text)).count("<p>") == 1


def test_valid_formula_result_and_escaped_explanation(predictor):
    result, explanation = respond(predictor, "(NH4)2SO4", explainer=lambda f: app_mod.explain_markdown(predictor, f))
    assert "band_gap" in RENDER.render(result) and "(NH4)2SO4" in RENDER.render(result)
    assert "integrated gradients" in explanation and "<code>" in RENDER.render(explanation)


def test_work_per_request_is_bounded(predictor):
    too_long = "H" * (MAX_INPUT_CHARS + 1)
    result, _ = respond(predictor, too_long, explainer=lambda f: pytest.fail("no explanation for refused input"))
    assert f"{MAX_INPUT_CHARS + 1} characters (at most {MAX_INPUT_CHARS})" in result
    every = "".join(ELEMENTS)  # all elements, the 288-second request of issue 13
    assert len(every) <= MAX_INPUT_CHARS
    t0 = time.perf_counter()
    result, explanation = respond(predictor, every, explainer=lambda f: app_mod.explain_markdown(predictor, f))
    elapsed = time.perf_counter() - t0
    assert "band_gap" in result and f"{len(set(ELEMENTS))} distinct elements" in explanation
    assert "Occlusion attribution" in explanation and elapsed < 20, elapsed


def test_explanation_timeout_and_busy(predictor, monkeypatch):
    def slow(_predictor, formula):
        time.sleep(1.5)
        return "done"

    monkeypatch.setattr(app_mod, "explain_markdown", slow)
    explainer = app_mod._BoundedExplainer(predictor, timeout_s=0.3)
    t0 = time.perf_counter()
    assert "longer than 0 s and was abandoned" in respond(predictor, "Fe2O3", explainer)[1]
    assert time.perf_counter() - t0 < 1.4
    assert "busy" in respond(predictor, "NaCl", explainer)[1]  # at most one explanation runs at a time
    time.sleep(1.5)
    explainer.timeout_s = 5
    assert respond(predictor, "NaCl", explainer)[1] == "done"


def test_header_hides_path_and_queue_is_bounded(predictor, model_dir):
    demo = build_app(predictor)
    try:
        texts = [str(getattr(b, "value", "")) for b in demo.blocks.values()]
        header = next(t for t in texts if t.startswith("# CrossMat"))
        assert "a local model" in header
        assert not any(str(model_dir.parent) in t or "secret-location" in t for t in texts), header
        assert demo._queue.max_size == app_mod.QUEUE_SIZE
        handlers = [fn for fn in demo.fns.values() if fn.name == "run"]
        assert len(handlers) == 2 and {fn.concurrency_limit for fn in handlers} == {app_mod.CONCURRENCY}
        assert demo._queue.default_concurrency_limit == app_mod.CONCURRENCY
    finally:
        demo.close()
    assert app_mod.model_label(type("P", (), {"model_path": "someone/crossmat-gap"})()) == "someone/crossmat\\-gap"
