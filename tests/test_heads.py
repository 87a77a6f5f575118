"""Attention heads as a site: the input of the attention output projection, split by head, read and steered per
(layer, head) on every registered architecture; a change to one head moves only what that head feeds."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from steerlab import Intervention, SteeringVector, get_layout, record, steer, steer_rows
from steerlab._models import fingerprint, model_id
from steerlab._record import ActivationReader
from steerlab.bake import bake_addition
from steerlab.engines import pad_batch
from steerlab.errors import ArchitectureError, DataError, SteeringError
from steerlab.evaluate.probes import split, train_probe
from steerlab.recipes import head_probes
from tiny import ARCHS, PROMPTS

HEAD = 2


def heads_vector(model, layers=(1,), seed=3, scale=4.0):
    width = get_layout(model).site_width("heads")
    gen = torch.Generator().manual_seed(seed)
    dirs = {layer: torch.randn(width, generator=gen) * scale for layer in layers}
    return SteeringVector(dirs, model_id=model_id(model), fingerprint=fingerprint(model), site="heads")


def captured(model, layer, fn, prompts=PROMPTS):
    """The input and output of block ``layer``'s attention output projection, and block 0's output, under ``fn``."""
    module, _, _ = get_layout(model).heads(layer)
    seen = {}
    handles = [
        module.register_forward_hook(lambda m, args, out: seen.update(x=args[0].detach(), y=out.detach())),
        get_layout(model)
        .block(0)
        .register_forward_hook(
            lambda m, args, out: seen.update(b0=(out[0] if isinstance(out, tuple) else out).detach())
        ),
    ]
    ids, mask = pad_batch(prompts, 2, side="left")
    try:
        with torch.no_grad():
            fn(lambda: model(input_ids=ids, attention_mask=mask))
    finally:
        for handle in handles:
            handle.remove()
    return seen


@pytest.mark.parametrize("arch", ARCHS)
def test_adding_to_one_head_changes_only_what_that_head_feeds(tiny, arch):
    model = tiny(arch)
    module, count, size = get_layout(model).heads(1)
    assert count * size == get_layout(model).site_width("heads")
    vec = heads_vector(model)
    item = Intervention(vec, alpha=1.0, scale="absolute", heads=[HEAD])
    base = captured(model, 1, lambda run: run())

    def steered(run):
        with steer(model, item):
            run()

    moved = captured(model, 1, steered)
    span = slice(HEAD * size, (HEAD + 1) * size)
    delta = moved["x"] - base["x"]
    others = torch.ones(count * size, dtype=torch.bool)
    others[span] = False
    assert torch.equal(moved["x"][..., others], base["x"][..., others])  # the other heads, bit for bit
    torch.testing.assert_close(delta[..., span], vec.directions[1][span].expand_as(delta[..., span]), rtol=0, atol=1e-4)
    # What the head feeds: the projection of its slice alone (module(delta) - module(0) works for Linear and Conv1D).
    fed = torch.zeros(count * size)
    fed[span] = vec.directions[1][span]
    with torch.no_grad():
        expected = module(fed[None, None]) - module(torch.zeros(1, 1, count * size))
    torch.testing.assert_close(moved["y"] - base["y"], expected.expand_as(base["y"]), rtol=1e-4, atol=1e-3)
    assert torch.equal(moved["b0"], base["b0"])  # the block before is untouched


def test_per_head_steering_is_per_row_and_ablate_removes_each_heads_own_component(tiny):
    model = tiny("llama")
    _, count, size = get_layout(model).heads(1)
    vec = heads_vector(model)
    ablate = Intervention(vec, mode="ablate", positions="all", heads=[0, 3])
    base = captured(model, 1, lambda run: run())

    def rows(run):
        with steer_rows(model, [None, ablate, None]):
            run()

    moved = captured(model, 1, rows)
    assert torch.equal(moved["x"][[0, 2]], base["x"][[0, 2]])  # rows without it, bit for bit
    x = moved["x"][1].view(-1, count, size)
    for head in range(count):
        v = vec.directions[1][head * size : (head + 1) * size]
        projection = x[:, head] @ (v / v.norm())
        if head in (0, 3):
            assert projection.abs().max() < 1e-4
        else:
            assert torch.equal(x[:, head], base["x"][1].view(-1, count, size)[:, head])


def test_the_heads_site_is_recorded_as_the_projection_input(tiny):
    model = tiny("gpt2")
    reader = ActivationReader(model, layers=[2], reduce="all", site="heads", exclude_first_token=False, pad_id=2)
    read = {rows[0]: values[2][0] for rows, values in reader.run(PROMPTS, [[i] for i in range(len(PROMPTS))])}
    for row, value in read.items():
        alone = captured(model, 2, lambda run: run(), prompts=[PROMPTS[row]])  # no padding: the same positions
        assert value.shape == (len(PROMPTS[row]), 32)
        torch.testing.assert_close(value, alone["x"][0], rtol=0, atol=1e-5)


def test_bad_heads_fail_with_clear_errors(tiny):
    model = tiny("llama")
    vec = heads_vector(model)
    with (
        pytest.raises(SteeringError, match=r"heads \[7\] do not exist: block 1 of 'llama' has 4 attention heads"),
        steer(model, vec, 1.0, scale="absolute", heads=[7]),
    ):
        pass
    with pytest.raises(SteeringError, match="is not valid; expected a non-empty list"):
        Intervention(vec, 1.0, scale="absolute", heads=[-1])
    with pytest.raises(SteeringError, match="which exist at the 'heads' site"):
        Intervention(dataclasses.replace(vec, site="resid_post"), 1.0, scale="absolute", heads=[0])
    narrow = dataclasses.replace(vec, directions={1: vec.directions[1][:16]})
    wrong_width = r"directions are 32 wide \(heads x head width\), but the vector's are \[16\]"
    with pytest.raises(SteeringError, match=wrong_width), steer(model, narrow, 1.0, scale="absolute"):
        pass
    with pytest.raises(SteeringError, match="'heads' site cannot be baked"):
        bake_addition(model, vec, 1.0, scale="absolute")
    layout = get_layout(model)
    with pytest.raises(ArchitectureError, match="site 'heads' is not available for model_type 'llama'"):
        dataclasses.replace(layout, num_heads=None).heads(0)


# -- ITI -----------------------------------------------------------------------------------------------------------


def labelled():
    from test_conditions import OTHER_TOPIC, TOPIC

    return TOPIC + OTHER_TOPIC, [1] * len(TOPIC) + [0] * len(OTHER_TOPIC)


def test_head_probes_are_mass_mean_probes_per_head_ranked_by_held_out_accuracy(tiny, tokenizer):
    model = tiny("qwen3")
    texts, labels = labelled()
    probes = head_probes(model, tokenizer, texts, labels, held_out=0.25, seed=2)
    assert probes.accuracy.shape == (4, 4) and (probes.n_train, probes.n_held_out) == (12, 4)
    acts = record(model, tokenizer, texts, layers=None, site="heads", reduce="last")
    train, test = split(labels, 0.25, 2)
    y = torch.tensor(labels)
    for layer, head in [(0, 0), (2, 3), (3, 1)]:
        x = acts.values[layer][:, head * 8 : (head + 1) * 8]
        probe = train_probe(x[train], y[train], method="mass_mean", layer=layer)
        assert float(probes.accuracy[layer, head]) == pytest.approx(probe.accuracy(x[test], y[test]))
        assert float(probes.train_accuracy[layer, head]) == pytest.approx(probe.train_accuracy)
        unit = probe.direction / probe.direction.norm()
        assert float(probes.std[layer, head]) == pytest.approx(float((x[train].double() @ unit).std()), rel=1e-4)
    best = probes.top(5)
    accuracies = [float(probes.accuracy[layer, head]) for layer, head in best]
    assert accuracies == sorted(accuracies, reverse=True) and accuracies[0] == float(probes.accuracy.max())


def test_the_iti_vector_shifts_exactly_its_heads_and_records_them(tiny, tokenizer):
    model = tiny("llama")
    texts, labels = labelled()
    probes = head_probes(model, tokenizer, texts, labels)
    vec = probes.vector(k=3)
    chosen = probes.top(3)
    assert vec.site == "heads" and vec.method == "iti"
    assert vec.extra["iti"]["heads"] == {
        str(layer): sorted(h for ly, h in chosen if ly == layer) for layer in sorted({ly for ly, _ in chosen})
    }
    for layer in vec.layers:
        per_head = vec.directions[layer].view(4, 8)
        for head in range(4):
            if (layer, head) in chosen:
                row = probes.layers.index(layer)
                assert float(per_head[head].norm()) == pytest.approx(float(probes.std[row, head]), rel=1e-5)
            else:
                assert torch.equal(per_head[head], torch.zeros(8))
    layer = vec.layers[0]
    base = captured(model, layer, lambda run: run())

    def steered(run):
        with steer(model, vec, 0.5, scale="absolute"):
            run()

    moved = captured(model, layer, steered)
    for head in range(4):
        same = torch.equal(moved["x"][..., head * 8 : (head + 1) * 8], base["x"][..., head * 8 : (head + 1) * 8])
        assert same == ((layer, head) not in chosen)
    control = probes.random_vector(k=3, seed=1)
    assert control.method == "iti_random" and control.extra["iti"]["k"] == 3
    with pytest.raises(DataError, match=r"k=17 heads asked for; expected 1..16"):
        probes.vector(k=17)
    with pytest.raises(DataError, match="labels must be 0 and 1"):
        head_probes(model, tokenizer, texts, [1] * len(texts))


@pytest.mark.filterwarnings("ignore::steerlab.errors.StrengthWarning")  # strong pushes move a tiny model
def test_an_iti_vector_is_swept_as_one_cell_for_its_k_and_strength(tiny, tokenizer):
    """ITI's k and strength under the KL budget: one joint sweep per k (the k heads steered together, as ITI
    does), each cell equal to a full pass steering every head of the vector, then calibrate on it."""
    from steerlab.evaluate import logits_over_alphas
    from steerlab.evaluate.metrics import ABBehaviour, neutral_texts
    from steerlab.evaluate.sweeps import calibrate, sweep
    from test_measure import MANY

    model = tiny("llama")
    texts, labels = labelled()
    probes = head_probes(model, tokenizer, texts, labels)
    behaviour = ABBehaviour(tokenizer, MANY[:6], balance=False)
    for k in (2, 5):
        vec = probes.vector(k)
        result = sweep(model, tokenizer, vec, behaviour, alphas=[0.0, 4.0], scale="absolute", joint=True,
                       coherence=neutral_texts()[:2], random_seeds=range(4))  # fmt: skip
        assert {tuple(r["layer"]) for r in result.records} == {tuple(vec.layers)}
        (cell,) = result.where(direction="vector", alpha=4.0)
        template = Intervention(vec, layers=vec.layers, scale="absolute")
        ((_, full),) = logits_over_alphas(model, behaviour.input_ids, behaviour.attention_mask, template, [4.0],
                                          last_only=True, reuse_prefix=False)  # fmt: skip
        assert cell["p_matching"] == pytest.approx(behaviour.score(full)["p_matching"], abs=1e-4)
        assert cell["kl"] > 0 and cell["p_matching"] != result.meta["unsteered"]["p_matching"]
        rec = calibrate(result, kl_budget=1e6)
        assert rec.layer == vec.layers and rec.alpha == 4.0  # the one steered cell, found or not


def test_cli_sweeps_an_iti_vector_jointly(tokenizer, tmp_path):
    """`steerlab sweep --joint` on a tiny model folder: every record steers the ITI vector's layers together, and
    `calibrate --sweep` names them."""
    import json
    from pathlib import Path

    from typer.testing import CliRunner

    from steerlab import load_model
    from steerlab.cli import app
    from tiny import SMOL_VOCAB, make_tiny

    make_tiny("llama", vocab=SMOL_VOCAB).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    model, _ = load_model(str(tmp_path / "model"))  # as the CLI loads it, so the vector names the same model
    texts, labels = labelled()
    vec = head_probes(model, tokenizer, texts, labels).vector(3).save(tmp_path / "iti.safetensors")
    (tmp_path / "neutral.txt").write_text("The sky is blue.\nA cup of tea.\n")
    runner = CliRunner()
    questions = str(Path(__file__).parents[1] / "datasets" / "caa" / "test" / "refusal" / "test_dataset_ab.json")
    result = runner.invoke(app, ["sweep", "--vector", str(vec), "--questions", questions, "--limit", "5", "--joint",
                                 "--scale", "absolute", "--alphas", "0,3", "--random-seeds", "4", "--coherence-texts",
                                 str(tmp_path / "neutral.txt"), "--out", str(tmp_path / "s"), "--model",
                                 str(tmp_path / "model")])  # fmt: skip
    assert result.exit_code == 0, result.output
    layers = SteeringVector.load(vec).layers
    records = json.loads((tmp_path / "s.json").read_text())["records"]
    assert len(records) == 2 * 5 and all(r["layer"] == layers for r in records)
    calibrated = runner.invoke(app, ["calibrate", "--vector", str(vec), "--sweep", str(tmp_path / "s.json"), "--out",
                                     str(tmp_path / "c.safetensors"), "--budget", "1e6"])  # fmt: skip
    assert f"layers {layers}, alpha 3" in calibrated.stdout, calibrated.output
