"""Every benchmark script runs end to end (on a tiny model, without the peers) and writes its result file.

The benchmarks themselves run only in `make bench`; this keeps them from rotting.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tiny import SMOL_VOCAB, make_tiny

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory, tokenizer):
    folder = tmp_path_factory.mktemp("tiny-llama")
    make_tiny("llama", vocab=SMOL_VOCAB).save_pretrained(folder)  # the scripts feed it real text
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize(
    ("script", "options", "key"),
    [
        ("extraction", [], "cosines"),
        ("steering_overhead", ["--new-tokens", "3"], "worst_steerlab_ratio"),
        ("mixed_batch", ["--new-tokens", "3"], "same_tokens"),
        ("sweep_reuse", ["--alphas", "3"], "results"),
        ("memory", ["--pairs", "4", "--factor", "3", "--only", "steerlab pca_diff"], "peak_ratio"),
        ("scale", [], "shapes"),
        (
            "sweep_speed",
            ["--questions", "2", "--pairs", "2", "--layers", "1", "--alphas=-0.2,0,0.2", "--texts", "2"],
            "speedup",
        ),
        ("coherence_scoring", ["--new-tokens", "3", "--prompts", "2", "--strengths", "3"], "speedup"),
        ("optimize_memory", ["--pairs", "4", "--steps", "1", "--batch", "4"], "working_ratio"),
    ],
)
def test_benchmark_script_runs(tiny_folder, tmp_path, script, options, key):
    out = tmp_path / f"{script}.json"
    command = [sys.executable, str(BENCH / f"{script}.py"), "--model", str(tiny_folder), "--no-peers"]
    command += ["--repeats", "1", "--json", str(out), *options]
    done = subprocess.run(command, cwd=BENCH, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert key in result and result["markdown"].count("|") > 4
    if script == "mixed_batch":
        assert result["same_tokens"] is True  # one batch with a vector per row == each row alone
    if script in ("sweep_speed", "coherence_scoring"):
        assert result["max_abs_diff"] <= 1e-4  # the recorded-pass sweep gives the cell-by-cell numbers
    if script == "sweep_reuse":
        assert all(r["max_abs_diff"] <= 1e-3 * max(1.0, r["max_abs_logit"]) for r in result["results"].values())


def test_the_docs_page_is_built_from_result_files(tmp_path, monkeypatch):
    sys.path.insert(0, str(BENCH))
    try:
        import run_all
    finally:
        sys.path.remove(str(BENCH))
    results = {name: run_all.load(name) for name in run_all.BENCHMARKS}
    monkeypatch.setattr(run_all, "DOC", tmp_path / "benchmarks.md")
    monkeypatch.setattr(run_all, "PLOT", tmp_path / "benchmarks.png")
    run_all.write_doc(results)
    page = (tmp_path / "benchmarks.md").read_text()
    assert page == (BENCH.parent / "docs" / "benchmarks.md").read_text(), (
        "docs/benchmarks.md is stale: run_all --docs-only"
    )
    assert (tmp_path / "benchmarks.png").stat().st_size > 10_000
