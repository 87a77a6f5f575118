"""The recipes from the command line, small, on the real SmolLM2: every output written, the random control beside
the direction, the chosen layer the best-scoring one."""

import json
from pathlib import Path

from typer.testing import CliRunner

from steerlab import SteeringVector
from steerlab.cli import app
from steerlab.evaluate import ResultTable, write_report
from steerlab.recipes import CAA_INSTRUCTIONS

ROOT = Path(__file__).parents[1] / "datasets"
runner = CliRunner()


def test_refusal_direction_command_writes_the_vector_results_and_control(smol, tmp_path):  # smol: a warm cache
    splits = ROOT / "refusal-direction" / "splits"
    files = [f"--{name.replace('_', '-')}={splits / name}.json" for name in
             ("harmful_train", "harmless_train", "harmful_val", "harmless_val")]  # fmt: skip
    # The judge trained on 40 of the 408 CAA refusal questions: this test checks the wiring, not the judge, and
    # embedding all 816 answers would take most of its time.
    judge_data = tmp_path / "judge.json"
    questions = json.loads((ROOT / "caa/generate/refusal/generate_dataset.json").read_text(encoding="utf-8"))
    judge_data.write_text(json.dumps(questions[:40]), encoding="utf-8")
    result = runner.invoke(app, ["refusal-direction", *files, "--judge-data", str(judge_data), "--limit", "8",
                                 "--layers", "10,20", "--select-prompts", "3", "--select-tokens", "6",
                                 "--max-new-tokens", "6", "--out", str(tmp_path / "refusal")])  # fmt: skip
    assert result.exit_code == 0, result.output
    table = ResultTable.load(tmp_path / "refusal.json")
    selection = table.where(stage="selection")
    assert [r["layer"] for r in selection] == [10, 20]
    best = max(selection, key=lambda r: (r["score"], r["separation"]))
    assert table.meta["chosen_layer"] == best["layer"] and [r["chosen"] for r in selection].count(True) == 1
    evaluation = table.where(stage="evaluation")
    assert [(r["prompts"], r["intervention"], r["direction"]) for r in evaluation] == [
        ("harmless", "unsteered", None), ("harmless", "add", "vector"), ("harmless", "add", "random"),
        ("harmful", "unsteered", None), ("harmful", "ablate", "vector"), ("harmful", "ablate", "random"),
    ]  # fmt: skip
    assert all(r["n"] == 8 and 0 <= r["p_refusal"] <= 1 for r in evaluation)
    assert table.meta["select_tokens"] == 6 and table.meta["judge_n_train"] == 80
    assert all(abs(r["change"] - (r["p_refusal"] - evaluation[3 * (i // 3)]["p_refusal"])) < 1e-12
               for i, r in enumerate(evaluation) if r["direction"])  # fmt: skip
    vec = SteeringVector.load(tmp_path / "refusal.safetensors")
    assert vec.layers == [best["layer"]] and vec.model_id == "smollm2-135m"
    assert "## Result at the chosen layer" in (tmp_path / "refusal.md").read_text()
    assert "| harmful | ablate | random |" in result.stdout
    page = write_report([table], tmp_path / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 1


def test_caa_command_sweeps_against_random_directions_and_calibrates(smol, tmp_path):
    caa = ROOT / "caa"
    texts = tmp_path / "texts.txt"
    texts.write_text("The weather was mild today.\nShe walked to the market.\n", encoding="utf-8")
    result = runner.invoke(app, ["caa", "--pairs", str(caa / "generate/refusal/generate_dataset.json"),
                                 "--questions", str(caa / "test/refusal/test_dataset_ab.json"), "--pair-limit", "4",
                                 "--limit", "4", "--layers", "10", "--alphas", "0,0.1", "--random-seeds", "4",
                                 "--coherence-texts", str(texts), "--instruction", "default",
                                 "--out", str(tmp_path / "caa")])  # fmt: skip
    assert result.exit_code == 0, result.output
    sweep = ResultTable.load(tmp_path / "caa-sweep.json")
    assert sweep.meta["random_seeds"] == [0, 1, 2, 3] and sweep.meta["n_coherence_texts"] == 2
    assert len(sweep.where(direction="random")) == 4 * 2 and len(sweep.where(direction="vector")) == 2
    vec = SteeringVector.load(tmp_path / "caa.safetensors")
    assert vec.layers == [10] and vec.method == "mean_diff"
    # 2 held-out questions cannot clear the random bound: the vector is saved without a setting, and says so.
    assert "no setting found" in result.stdout and "recommended" not in vec.extra
    assert "carries no recommended setting" in result.stderr
    # The prompting baseline on the same 4 questions, with steerlab's refusal instruction (named by the folder).
    assert (
        f"prompting baseline ({CAA_INSTRUCTIONS['refusal']!r})" in result.stdout
        and "(n = 4 questions)" in result.stdout
    )
    questions = str(caa / "test/refusal/test_dataset_ab.json")
    wrong = runner.invoke(app, ["caa", "--pairs", str(texts), "--questions", questions, "--layers", "10",
                                "--instruction", "default", "--out", str(tmp_path / "x")])  # fmt: skip
    assert wrong.exit_code != 0 and "give the instruction's text instead" in wrong.output
