"""Every recipe in examples/ runs end to end on the embedded model."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parents[1] / "examples"


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("sentiment.py", "example at layer 10:"),
        ("caa_behaviour.py", "unsteered p(matching)"),
        ("refusal.py", "orthogonalised weights:"),
        ("probing.py", "logistic on sp_en_trans"),
    ],
)
def test_example_runs(script, expected, tmp_path, smol):  # smol: the model cache is warm
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert expected in result.stdout
