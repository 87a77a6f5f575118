"""Measuring on the real SmolLM2: one small end-to-end sweep, the CLI through its runner, and the HTML report
opened in Debian's Chromium."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from steerlab import SteeringVector, extract_vector, load_pairs
from steerlab.cli import app
from steerlab.evaluate.metrics import load_ab, neutral_texts
from steerlab.evaluate.results import ResultTable
from steerlab.evaluate.sweeps import calibrate, sweep

ROOT = Path(__file__).parents[1] / "datasets"
runner = CliRunner()


@pytest.fixture(scope="module")
def refusal_vector(smol, tmp_path_factory):
    model, tokenizer = smol
    pairs = load_pairs(ROOT / "caa" / "generate" / "refusal" / "generate_dataset.json")[:12]
    vec = extract_vector(model, tokenizer, pairs, layers=[10])
    return vec, vec.save(tmp_path_factory.mktemp("measure") / "refusal.safetensors")


def test_small_real_sweep_and_calibration(smol, refusal_vector):
    model, tokenizer = smol
    vec, _ = refusal_vector
    questions = load_ab(ROOT / "caa" / "test" / "refusal" / "test_dataset_ab.json")[:6]
    # Coherence on 2 neutral texts: only that steered cells have some KL and alpha 0 none is asserted (the budget
    # below is 10 nats), and with 8 texts the KL passes were most of this test's time.
    result = sweep(model, tokenizer, vec, questions, alphas=[-0.1, 0.0, 0.1], coherence=neutral_texts()[:2],
                   random_seeds=range(4))  # fmt: skip
    assert len(result.records) == 3 * 5 and result.meta["n_items"] == 12 and result.meta["n_questions"] == 6
    assert 0.0 < result.meta["unsteered"]["p_matching"] < 1.0
    for r in result.records:
        assert (r["kl"] == 0.0) == (r["alpha"] == 0.0)
        assert 0.0 <= r["p_matching"] <= 1.0 and 0.0 <= r["p_a"] <= 1.0
    assert all(r["kl"] > 1e-4 for r in result.where(direction="vector") if r["alpha"] != 0.0)
    for r in result.where(direction="vector"):
        assert r["effect_lo"] <= r["effect"] <= r["effect_hi"] and isinstance(r["beats_random"], bool)
    rec = calibrate(result, kl_budget=10.0)
    assert rec.layer == 10 and rec.alpha in (-0.1, 0.1) and (rec.n_selection, rec.n_held_out) == (3, 3)
    assert rec.summary().startswith("recommended: " if rec.found else "no setting found: ")


def test_cli_sweep_calibrate_probe_breakdown_report(smol, refusal_vector, tmp_path):
    _, path = refusal_vector
    questions = ROOT / "caa" / "test" / "refusal" / "test_dataset_ab.json"
    texts = tmp_path / "coherence.txt"  # KL on 3 of the neutral texts instead of all 24: the test checks plumbing
    texts.write_text("\n".join(neutral_texts()[:3]) + "\n\n", encoding="utf-8")
    common = ["--vector", str(path), "--questions", str(questions), "--limit", "4", "--alphas", "0,0.1",
              "--random-seeds", "4", "--coherence-texts", str(texts)]  # fmt: skip
    partial = ["--partial", str(tmp_path / "sweep.partial.jsonl")]
    result = runner.invoke(app, ["sweep", *common, *partial, "--out", str(tmp_path / "sweep")])
    assert result.exit_code == 0, result.output
    table = ResultTable.load(tmp_path / "sweep.json")
    assert table.kind == "sweep" and (tmp_path / "sweep.csv").is_file() and len(table.records) == 2 * 5
    assert "95% interval" in result.stdout and "sweeping: 5/5 (100%)" in result.stderr  # plain lines: no terminal
    assert table.meta["n_coherence_texts"] == 3, table.meta
    assert len((tmp_path / "sweep.partial.jsonl").read_text().splitlines()) == 1 + 5  # the header, 5 cells
    again = runner.invoke(app, ["sweep", *common, *partial, "--out", str(tmp_path / "again")])
    assert again.exit_code == 0 and "resuming from" in again.stderr and "5/5 cells done" in again.stderr
    assert ResultTable.load(tmp_path / "again.json").records == table.records
    changed = [*common[:6], "--alphas", "0,0.2", *common[8:]]  # another sweep: other alphas
    other = runner.invoke(app, ["sweep", *changed, *partial, "--out", str(tmp_path / "x")])
    assert other.exit_code == 1 and "not from this sweep" in other.stderr and "differs in alphas" in other.stderr
    missing = runner.invoke(app, ["sweep", *common[:-1], str(tmp_path / "none.txt"), "--out", str(tmp_path / "x")])
    assert missing.exit_code == 1 and "--coherence-texts file" in missing.stderr and "does not exist" in missing.stderr

    result = runner.invoke(app, ["calibrate", "--vector", str(path), "--sweep", str(tmp_path / "sweep.json"),
                                 "--budget", "5", "--out", str(tmp_path / "cal.safetensors")])  # fmt: skip
    # Deterministic (seeded split and random directions): with 2 held-out questions the effect's interval includes
    # 0, so calibration honestly finds no setting, and writes nothing.
    assert result.exit_code == 1 and "no setting found" in result.stdout and "not written" in result.stderr
    assert "Best cell: layer 10, alpha 0.1" in result.stdout and "random directions (4 seeds)" in result.stdout
    assert not (tmp_path / "cal.safetensors").exists()

    bad = runner.invoke(app, ["calibrate", "--vector", str(path), "--out", str(tmp_path / "x.safetensors")])
    assert bad.exit_code == 1 and "exactly one of" in bad.stderr
    bad = runner.invoke(app, ["calibrate", "--vector", str(path), "--sweep", str(tmp_path / "sweep.json"), *partial,
                              "--out", str(tmp_path / "x.safetensors")])  # fmt: skip
    assert bad.exit_code == 1 and "no sweep runs" in bad.stderr

    got = ROOT / "geometry-of-truth"
    result = runner.invoke(app, ["probe", "--data", str(got / "cities.csv"), "--data", str(got / "sp_en_trans.csv"),
                                 "--layers", "6,10", "--limit", "40", "--out", str(tmp_path / "probe"),
                                 "--save-vector", str(tmp_path / "truth.safetensors")])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert ResultTable.load(tmp_path / "probe-transfer.json").kind == "transfer"
    assert SteeringVector.load(tmp_path / "truth.safetensors").method.startswith("probe_")

    result = runner.invoke(app, ["breakdown", "--vector", str(path), "--alphas", "0.5,2", "--max-new-tokens", "4",
                                 "--coherence-texts", str(texts), "--out", str(tmp_path / "breakdown")])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert ResultTable.load(tmp_path / "breakdown.json").meta["n_texts"] == 3
    assert "layer 10: coherence collapses" in result.stdout

    result = runner.invoke(app, ["pca", "--data", str(got / "cities.csv"), "--layer", "10", "--limit", "40",
                                 "--components", "3", "--out", str(tmp_path / "pca"),
                                 "--save-vector", str(tmp_path / "pc0.safetensors")])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "layer 10 axis 0:" in result.stdout
    pca = ResultTable.load(tmp_path / "pca.json")
    assert pca.kind == "pca" and len(pca.records) == 40 and {r["label"] for r in pca.records} == {0, 1}
    axis = SteeringVector.load(tmp_path / "pc0.safetensors")
    assert axis.layers == [10] and abs(float(axis.directions[10].norm()) - 1.0) < 1e-4

    files = [str(tmp_path / f"{n}.json") for n in ("sweep", "probe", "probe-transfer", "breakdown", "pca")]
    result = runner.invoke(app, ["report", *files, "--out", str(tmp_path / "report.html")])
    assert result.exit_code == 0, result.output
    _check_in_chromium(tmp_path / "report.html", expected_images=7)


def _check_in_chromium(page_path: Path, expected_images: int) -> None:
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"],
        )  # fmt: skip
        try:
            page = browser.new_page()
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            requests: list[str] = []
            page.on("request", lambda req: requests.append(req.url))
            page.goto(page_path.resolve().as_uri())
            page.wait_for_load_state("load")
            sizes = page.eval_on_selector_all("img", "imgs => imgs.map(i => [i.complete, i.naturalWidth])")
        finally:
            browser.close()
    assert not errors, errors
    assert len(sizes) == expected_images and all(done and width > 100 for done, width in sizes), sizes
    assert all(url.startswith(("file:", "data:")) for url in requests), requests  # self-contained
