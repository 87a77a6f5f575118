"""The public surface: each public package's ``__all__`` is pinned, no module hides behind a function of the same
name, the import-layer contract holds (and would catch a break), and the scripts, benchmarks and examples need
nothing private (the check that the public API is enough)."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]

PUBLIC = {
    "steerlab": [
        "Activations", "ArchSpec", "ArchitectureError", "Comparison", "Condition", "ContrastPair", "Rule",
        "DEFAULT_MODEL", "DataError",
        "ExtractionError", "FormatError", "Generation", "Intervention", "ModelLoadError", "SteeringError",
        "SteeringVector", "SteerlabError", "VectorMismatchError", "__version__", "compare", "directional_ablation",
        "extract_vector", "generate", "get_layout", "load_model", "load_pairs", "record", "register_architecture",
        "resolve_alias", "sentiment_pairs", "set_architecture", "steer", "steer_rows",
    ],
    "steerlab.arch": [
        "ArchSpec", "ModelLayout", "SITES", "get_layout", "register_architecture", "registered_architectures",
        "set_architecture",
    ],
    "steerlab.bake": [
        "BakeCheck", "PROBE_PROMPT", "bake_addition", "orthogonalize", "probe_logits", "save_baked", "verify_baked",
    ],
    "steerlab.cli": ["app", "main"],
    "steerlab.datasets": [
        "ContrastPair", "IOI_NAMES", "IOI_TEMPLATES", "NEUTRAL_PROMPTS", "PairLike", "PatchPair", "balance_ab",
        "dataset_hash", "ioi_pairs", "load_completions", "load_instructions", "load_pairs", "load_patch_pairs",
        "load_statements", "save_patch_pairs",
        "pair_texts", "pairs_from_records", "read_json_file", "sentiment_pairs", "swap_choice_text",
    ],
    "steerlab.doctor": ["Check", "run_checks", "versions"],
    "steerlab.engines": [
        "apply_chat", "apply_messages", "encode", "eos_ids", "generate", "generate_batch", "generated_nll",
        "has_chat_template", "pad_batch", "pad_id",
    ],
    "steerlab.errors": [
        "ArchitectureError", "DataError", "ExtractionError", "FormatError", "ModelLoadError", "SteeringError",
        "SteerlabError", "StrengthWarning", "VectorMismatchError",
    ],
    "steerlab.evaluate": [
        "ABBehaviour", "ABQuestion", "Comparison", "ConditionSearch", "DEFAULT_KL_BUDGET", "FeatureEffects",
        "Generation", "LabelledActivations", "NeutralKL", "Recommendation", "find_condition_point", "fit_probes",
        "generate_rows",
        "record_labelled", "RefusalClassifier", "ResultTable", "SparseAutoencoder", "train_sae",
        "activation_covariance", "activation_pca", "activation_patching",
        "attribution_patching", "logit_diff_metric", "mediation", "patch_nodes", "patching_error", "breakdown",
        "calibrate", "compare", "compare_targeting", "cosine_matrix", "cross_layer_cosine", "feature_effect",
        "feature_effects", "generation_perplexity", "kl_from_unsteered", "load_ab",
        "logit_diff", "logits_over_alphas", "neutral_texts", "p_matching", "phrase_refusal", "probe_layers",
        "prompting_baseline", "sentiment", "sweep", "token_projections", "train_probe", "transfer_matrix",
        "write_report",
    ],
    "steerlab.io": [
        "CONDITIONS_FORMAT", "clear_control_vector", "export_gguf", "export_hub_folder", "import_gguf",
        "load_conditions", "save_conditions", "set_control_vector",
    ],
    "steerlab.types": [
        "Alpha", "BREAKDOWN_STRENGTH", "CONDITION_COMPARISONS", "CONDITION_REDUCES", "CONDITION_SIDES",
        "ConditionComparison", "ConditionReduce", "ConditionSide", "DEFAULT_SCALE", "MAX_STRENGTH", "METHODS", "MODES",
        "Method", "Mode",
        "NAMED_POSITIONS", "NamedPositions", "Positions", "Recommended", "SCALES", "SITES", "Scale", "Site",
    ],
    "steerlab.finetune": ["FineTuned", "finetune"],
    "steerlab.optimize": ["OBJECTIVES", "Objective", "optimize_vector"],
    "steerlab.recipes": [
        "CAA_INSTRUCTIONS", "CAABehaviour", "HeadProbes", "RefusalDirection", "SteeredFinetuning", "caa_behaviour",
        "head_probes", "refusal_direction", "steered_finetuning",
    ],
    "steerlab.serve": [
        "ApiError", "Engine", "EngineBusy", "Event", "Job", "ServeLimits", "VLLMEngine", "VectorLibrary",
        "background_server", "create_app", "open_llm", "serve",
    ],
    "steerlab.vllm": [
        "DISABLE_ENV", "EXTRA_KEY", "TESTED_VLLM", "VECTORS_ENV", "VLLMReader", "check_layout", "register",
        "steering_args",
    ],
}  # fmt: skip


@pytest.mark.parametrize("package", sorted(PUBLIC))
def test_public_names_are_pinned_and_importable(package):
    module = importlib.import_module(package)
    assert sorted(module.__all__) == sorted(PUBLIC[package]), f"{package}.__all__ changed: update PUBLIC"
    for name in module.__all__:
        assert hasattr(module, name), f"{package}.{name} is listed in __all__ but missing"


def test_every_mode_has_one_operator_record():
    """A new mode is one literal in steerlab.types and one record in the operator table: the two must agree."""
    from typing import get_args

    from steerlab._interventions import OPERATORS
    from steerlab.types import Mode

    assert tuple(OPERATORS) == get_args(Mode)


def test_the_method_literal_names_every_extraction_method():
    from typing import get_args

    from steerlab._extract import METHODS
    from steerlab.types import Method

    assert sorted(METHODS) == sorted(get_args(Method))


def _packages():
    import steerlab

    yield steerlab
    for info in pkgutil.walk_packages(steerlab.__path__, "steerlab."):
        if info.ispkg:
            yield importlib.import_module(info.name)


def test_no_module_is_shadowed_by_a_name_of_its_package():
    """``steerlab.steer`` used to be both a module and the function that hid it (``steerlab.steer.Intervention``
    raised AttributeError)."""
    for package in _packages():
        for info in pkgutil.iter_modules(package.__path__):
            value = getattr(package, info.name, None)
            assert value is None or value is importlib.import_module(f"{package.__name__}.{info.name}"), (
                f"{package.__name__}.{info.name} is a module hidden by {value!r}"
            )


def _steerlab_imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "steerlab":
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "steerlab"]
    return found


def test_scripts_benchmarks_and_examples_use_only_the_public_api():
    private = []
    for folder in ("scripts", "benchmarks", "examples"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for line, dotted in _steerlab_imports(path):
                if any(part.startswith("_") and part != "__version__" for part in dotted.split(".")):
                    private.append(f"{path.relative_to(ROOT)}:{line}: {dotted}")
    assert not private, "private imports outside the package:\n" + "\n".join(private)


def _lint_imports(cwd: Path, pythonpath: Path) -> subprocess.CompletedProcess:
    tool = Path(sys.executable).with_name("lint-imports")
    env = {"PYTHONPATH": str(pythonpath), "PATH": "/usr/bin:/bin"}
    return subprocess.run([str(tool), "--config", str(ROOT / "pyproject.toml"), "--no-cache"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300, check=False)  # fmt: skip


def test_the_import_layers_hold():
    done = _lint_imports(ROOT, ROOT / "src")
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_import_contract_catches_a_core_module_importing_an_application(tmp_path):
    shutil.copytree(ROOT / "src" / "steerlab", tmp_path / "steerlab", ignore=shutil.ignore_patterns("__pycache__"))
    with (tmp_path / "steerlab" / "_hooks.py").open("a") as handle:
        handle.write("\nimport steerlab.evaluate.metrics  # noqa\n")
    done = _lint_imports(tmp_path, tmp_path)
    assert done.returncode != 0 and "steerlab._hooks -> steerlab.evaluate.metrics" in done.stdout, done.stdout
