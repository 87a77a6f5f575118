from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))

# With 2 cores, torch on 2 threads beside anything else ran 25-40x slower than on 1.
torch.set_num_threads(int(os.environ.get("STEERLAB_TEST_THREADS", "1")))

from steerlab import load_model  # noqa: E402
from steerlab._hooks import live_hooks  # noqa: E402
from steerlab.arch import registered_architectures  # noqa: E402
from tiny import SMALL_VOCAB, SMOL_VOCAB, make_tiny  # noqa: E402

# The vLLM engine tests need vLLM, which has an environment of its own (.venv-vllm: it needs transformers<5.20);
# `make test` runs them there (`make test-vllm`), where they never skip.
collect_ignore = [] if importlib.util.find_spec("vllm") else ["test_vllm.py", "test_vllm_serve.py"]

# -- layers ------------------------------------------------------------------------------------------------------
# Every test belongs to exactly one layer, given here (and only here: files carry no layer marks, so files can be
# edited and merged without touching this table). A file's entry is the default for its tests; an entry
# "file::test" (the function name, without parameters) overrides it for one test.
#   unit  no model at all (tensors, files, parsing; SmolLM2's tokenizer is allowed)
#   arch  tiny random models (tests/tiny.py), in process
#   real  real pretrained weights: SmolLM2, the judges' sentence embedder, llama.cpp on SmolLM2's GGUF
#   apps  the front ends: CLI, HTTP server, browser, subprocesses, the notebook, examples, benchmarks
LAYER_NAMES = ("unit", "arch", "real", "apps")
LAYERS = {
    "test_arch.py": "arch",
    "test_arch.py::test_registry_covers_required_architectures": "unit",
    "test_arch.py::test_no_candidate_lists_what_was_found": "unit",
    "test_bake.py": "arch",
    "test_benchmarks.py": "apps",
    "test_benchmarks.py::test_the_docs_page_is_built_from_result_files": "unit",
    "test_calling.py": "arch",
    "test_calling.py::test_each_release_convention_tells_prompt_from_generated": "unit",
    "test_calling.py::test_past_length_reads_every_known_source": "unit",
    "test_calling.py::test_a_cache_under_an_unknown_name_fails_loudly": "unit",
    "test_calling.py::test_doctor_passes_here_and_exits_zero": "apps",
    "test_calling.py::test_doctor_fails_on_a_tracker_that_never_sees_the_past": "apps",
    "test_cli.py": "apps",
    "test_cli_conditions.py": "apps",
    "test_cli_conditions.py::test_a_rule_of_conditions_round_trips_through_a_file": "unit",
    "test_conditions.py": "arch",
    "test_conditions.py::test_unit_rule_logic_and_scores": "unit",
    "test_conditions.py::test_a_new_prompt_after_a_cached_step_starts_a_new_sequence": "unit",
    "test_conditions.py::test_threshold_search_finds_the_best_f1_of_every_threshold": "unit",
    "test_data.py": "unit",
    "test_docs.py": "unit",
    "test_examples.py": "apps",
    "test_extract.py": "unit",
    "test_extract.py::test_streaming_extraction_equals_record_then_method": "arch",
    "test_extract.py::test_too_few_pairs_fail_before_the_model_runs": "arch",
    "test_extract.py::test_shared_prefixes_give_the_numbers_of_whole_texts": "arch",
    "test_extract.py::test_peer_shapes_give_the_vector_of_contrast_pairs": "arch",
    "test_extract.py::test_negative_layers_count_from_the_last_and_none_is_every_block": "arch",
    "test_finetune.py": "arch",
    "test_sae.py": "arch",
    "test_sae.py::test_hook_names_follow_transformer_lens": "unit",
    "test_sae.py::test_cli_trains_decomposes_and_writes_a_feature": "apps",
    "test_gguf.py": "arch",
    "test_heads.py": "arch",
    "test_heads.py::test_cli_sweeps_an_iti_vector_jointly": "apps",
    "test_hooks.py": "unit",
    "test_gguf.py::test_cli_export_import": "apps",
    "test_hub.py": "arch",
    "test_hub.py::test_cli_export_hub": "apps",
    "test_interventions.py": "arch",
    "test_interventions.py::test_operators_on_tensors": "unit",
    "test_interventions.py::test_alpha_validation": "unit",
    "test_judges.py": "real",
    "test_layers.py": "unit",
    "test_judges.py::test_phrase_judge": "unit",
    "test_llamacpp.py": "real",
    "test_measure.py": "arch",
    "test_measure.py::test_swap_choices_exchanges_texts_and_letter": "unit",
    "test_measure.py::test_load_ab_leaves_out_multiple_choice_with_a_warning": "unit",
    "test_measure.py::test_probes_separable_data_and_errors": "unit",
    "test_measure.py::test_transfer_trains_on_all_of_one_set_and_tests_on_all_of_another": "unit",
    "test_measure.py::test_probes_report_a_shuffled_label_control": "unit",
    "test_measure.py::test_balance_ab_adds_swapped_pairs": "unit",
    "test_measure_real.py": "real",
    "test_measure_real.py::test_cli_sweep_calibrate_probe_breakdown_report": "apps",
    "test_models.py": "unit",
    "test_models.py::test_local_folder_with_dtype": "arch",
    "test_models.py::test_meta_device_builds_the_structure_without_weights": "arch",
    "test_models.py::test_device_map_with_disk_offload_steers_like_the_plain_model": "arch",
    "test_models.py::test_vector_follows_the_layer_dtype": "arch",
    "test_models.py::test_cached_weights_equal_direct_gguf_load": "real",
    "test_notebook.py": "apps",
    "test_notebook.py::test_notebook_is_stored_without_outputs": "unit",
    "test_optimize.py": "arch",
    "test_mediation.py": "arch",
    "test_mediation.py::test_smollm2_sentiment_steering_is_carried_downstream": "real",
    "test_patch_pairs.py": "unit",
    "test_patching.py": "arch",
    "test_patching.py::test_smollm2_ioi_attribution_error_is_reported": "real",
    "test_patching.py::test_cli_patch_writes_tables_and_a_report_and_refuses_bad_pairs": "apps",
    "test_prefix.py": "arch",
    "test_progress.py": "unit",
    "test_public_api.py": "unit",
    "test_real_smollm2.py": "real",
    "test_recipes.py": "apps",
    "test_record.py": "arch",
    "test_serve.py": "apps",
    "test_serve_app.py": "apps",
    "test_serve_conditions.py": "arch",
    "test_serve_conditions.py::test_conditional_and_plain_requests_over_http": "apps",
    "test_serve_engine.py": "arch",
    "test_serve_openai.py": "unit",
    "test_serve_validate.py": "arch",
    "test_serve_playground.py": "apps",
    "test_steer.py": "arch",
    "test_vector.py": "unit",
    "test_vllm.py": "real",
    "test_vllm_serve.py": "apps",
    "test_vllm_spec.py": "unit",
}
# What a layer's tests may not ask for: a unit test loads no model, an arch test no real weights.
_FORBIDDEN_FIXTURES = {
    "unit": {"tiny", "smol", "refusal_judge"},
    "arch": {"smol", "refusal_judge"},
}


def layer_of(item: pytest.Item) -> str | None:
    """The layer the table gives ``item``: its own entry, else its file's, else None."""
    file = item.path.name
    name = getattr(item, "originalname", None) or item.name
    return LAYERS.get(f"{file}::{name}", LAYERS.get(file))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test with its layer, and refuse a test with no layer, several, or fixtures beyond its layer."""
    problems = []
    for item in items:
        layer = layer_of(item)
        if layer is not None:
            item.add_marker(getattr(pytest.mark, layer))
        marked = [mark.name for mark in item.iter_markers() if mark.name in LAYER_NAMES]
        if len(marked) != 1:
            problems.append(f"{item.nodeid}: layer marks {marked}; give it exactly one in LAYERS (tests/conftest.py)")
            continue
        used = _FORBIDDEN_FIXTURES.get(marked[0], set()) & set(getattr(item, "fixturenames", ()))
        if used:
            problems.append(f"{item.nodeid}: a '{marked[0]}' test uses {sorted(used)}; correct LAYERS")
    if problems:
        raise pytest.UsageError("tests without exactly one fitting layer:\n  " + "\n  ".join(problems))


# -- leak guards ---------------------------------------------------------------------------------------------------


def steerlab_hooks(model: nn.Module) -> int:
    """How many hooks defined by steerlab are on any module of ``model``."""
    count = 0
    for module in model.modules():
        for hooks in (module._forward_hooks, module._forward_pre_hooks):
            count += sum(1 for fn in hooks.values() if getattr(fn, "__module__", "").startswith("steerlab"))
    return count


@pytest.fixture(autouse=True)
def nothing_left_behind():
    """Every test must remove every hook it added through steerlab, on whatever model (HookSet counts them; only
    _hooks.py registers hooks, checked by tests/test_hooks.py), and leave the architecture registry as it was."""
    hooks, registry = live_hooks(), registered_architectures()
    yield
    assert live_hooks() == hooks, f"{live_hooks() - hooks} steerlab hook(s) left registered after the test"
    assert registered_architectures() == registry, "the test changed the architecture registry and left it so"


# -- models --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def smol_cache():
    """SmolLM2's dequantized cache folder, written if missing, and ``direct``: the model loaded straight from the
    GGUF when this session wrote the folder from it (else None). Writing the cache loads the GGUF anyway (~40 s);
    keeping that model spares the test of cached against direct loading a second load on a fresh machine."""
    from types import SimpleNamespace

    from steerlab._models import _dequantize_to_cache, _gguf_cache_path, resolve_alias

    gguf = resolve_alias("smollm2-135m")
    folder = _gguf_cache_path(gguf)
    direct = None
    if not (folder / "config.json").is_file():  # load_model's own test for a finished cache
        direct, _ = _dequantize_to_cache(gguf, folder)
    return SimpleNamespace(folder=folder, direct=direct)


@pytest.fixture(scope="session")
def smol(smol_cache):
    """The real SmolLM2-135M-Instruct (installed by `make test`; never skipped)."""
    return load_model("smollm2-135m")


@pytest.fixture(scope="session")
def tokenizer(smol_cache):
    """SmolLM2's tokenizer alone, for tiny models fed real text: read from the dequantized model's cache folder
    without loading the 135M weights."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smol_cache.folder)


_TINY_CACHE: dict[tuple[str, int], nn.Module] = {}


@pytest.fixture
def tiny(request):
    """Factory: ``tiny(arch)`` gives a tiny random model of that architecture (shared per session).

    Its vocabulary is small, unless the test uses the ``tokenizer`` fixture: then it is SmolLM2's, so that real
    text can feed it."""
    vocab = SMOL_VOCAB if "tokenizer" in request.fixturenames else SMALL_VOCAB

    def get(arch: str) -> nn.Module:
        if (arch, vocab) not in _TINY_CACHE:
            _TINY_CACHE[arch, vocab] = make_tiny(arch, vocab=vocab)
        return _TINY_CACHE[arch, vocab]

    return get


@pytest.fixture(scope="session")
def refusal_judge():
    """The embedding refusal classifier, trained once on the CAA refusal answers shipped in datasets/."""
    from steerlab.evaluate.judges import RefusalClassifier

    return RefusalClassifier.train(Path(__file__).parents[1] / "datasets/caa/generate/refusal/generate_dataset.json")
