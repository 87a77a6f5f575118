"""The playground in a real headless Chromium (Debian's, driven by Playwright): pick a vector, move the sliders,
generate, see both answers; run the strength sweep and see the plot. Screenshots go to test-artifacts/."""

from __future__ import annotations

from pathlib import Path

from playwright.sync_api import expect, sync_playwright

from serving import make_library, running_server
from steerlab import steer
from steerlab.engines.transformers import generate

ARTIFACTS = Path(__file__).parents[1] / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def test_playground_steers_side_by_side(smol, tmp_path):
    model, tokenizer = smol
    library = make_library(model, tokenizer, tmp_path)
    prompt = "Describe your morning."
    with running_server(model, tokenizer, library) as (url, _), sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 1100})
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(url + "/")
            expect(page.locator("body")).to_have_attribute("data-ready", "true", timeout=20_000)
            expect(page.locator("#model")).to_have_text("smollm2-135m")
            page.select_option("#vector", "sentiment")
            page.fill("#prompt", prompt)
            page.fill("#max-tokens", "12")
            # Sliders: layer index 1 of [8, 10, 12] is layer 10; strength -0.25 of the residual norm.
            for selector, value in (("#layer", "1"), ("#strength", "-0.25")):
                page.eval_on_selector(
                    selector, "(el, v) => { el.value = v; el.dispatchEvent(new Event('input')); }", value
                )
            expect(page.locator("#layer-value")).to_have_text("10")
            expect(page.locator("#strength-value")).to_have_text("-0.25")
            page.click("#generate")
            for pane in ("#unsteered", "#steered"):
                expect(page.locator(pane)).to_have_attribute("data-state", "done", timeout=60_000)
            unsteered = page.inner_text("#unsteered")
            steered = page.inner_text("#steered")
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "playground.png"), full_page=True)

            page.click("#sweep")
            expect(page.locator("#plot circle.point")).to_have_count(5, timeout=90_000)
            expect(page.locator("#sweep-table tbody tr")).to_have_count(5)
            page.screenshot(path=str(ARTIFACTS / "playground-sweep.png"), full_page=True)
            assert not errors, errors
        finally:
            browser.close()
    # What the page showed is exactly what the library gives for the same settings.
    ((_, plain),) = generate(model, tokenizer, [prompt], max_new_tokens=12)
    with steer(model, library.get("sentiment"), -0.25, layers=[10], scale="relative"):
        ((_, moved),) = generate(model, tokenizer, [prompt], max_new_tokens=12)
    assert unsteered == tokenizer.decode(plain, skip_special_tokens=True)
    assert steered == tokenizer.decode(moved, skip_special_tokens=True)
    assert steered != unsteered
    assert (ARTIFACTS / "playground.png").stat().st_size > 10_000
