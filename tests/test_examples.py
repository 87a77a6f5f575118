"""Every recipe in examples/ runs end to end on the embedded model, at the small sizes its options allow (the
defaults are the full recipes; each takes 40-75 s on one thread at full size, 10-15 s like this)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parents[1] / "examples"


@pytest.mark.parametrize(
    ("script", "args", "expected"),
    [
        pytest.param(
            "sentiment.py",
            ["--layers", "6,10", "--prompts", "1", "--max-new-tokens", "8", "--example-tokens", "8"],
            "example at layer 10:",
            id="sentiment",
        ),
        pytest.param(
            "caa_behaviour.py",
            ["--pairs", "4", "--questions", "4", "--random-seeds", "4", "--coherence-texts", "2"],
            "unsteered p(matching)",
            id="caa",
        ),
        pytest.param("refusal.py", ["--pairs", "8", "--max-new-tokens", "8"], "orthogonalised weights:", id="refusal"),
        pytest.param(
            "probing.py",
            ["--layers", "4,8", "--statements", "80", "--transfer", "40"],
            "transfers best at layer",
            id="probing",
        ),
    ],
)
def test_example_runs(script, args, expected, tmp_path, smol):  # smol: the model cache is warm
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert expected in result.stdout
