"""Conditions from the command line and in files: ``steerlab condition find`` writes a condition file (the search of
``find_condition_point``, its held-out F1 shown), ``steerlab generate --condition`` steers only the prompts whose gate
opens (the others equal their unsteered answer), ``steerlab condition check`` says which; bad condition files fail
with one clear line and exit code 1. The CLI runs on a tiny Llama saved as a model folder (SmolLM2's tokenizer)."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
import torch
from typer.testing import CliRunner

from steerlab import Condition, Rule, SteeringVector
from steerlab._models import ModelFingerprint
from steerlab.cli import app
from steerlab.engines import apply_chat
from steerlab.errors import FormatError, SteeringError, SteerlabError
from steerlab.evaluate.conditions import find_condition_point, gate_opens
from steerlab.io import load_conditions, save_conditions
from tiny import SMOL_VOCAB, make_tiny, random_vector

runner = CliRunner()

# The planted property: "cats" three times; the negatives are the same sentences about something else.
SUBJECTS = ["garden", "kitchen", "morning", "river", "city", "winter", "school", "market", "train", "music", "beach",
            "forest"]  # fmt: skip
CATS = [f"Tell me about cats, cats and more cats in the {s}." for s in SUBJECTS]
OTHER = [f"Tell me about the weather and the roads in the {s}." for s in SUBJECTS]


@pytest.fixture(scope="module")
def folder(tmp_path_factory, tokenizer):
    """A tiny Llama with SmolLM2's vocabulary, saved with SmolLM2's tokenizer: what --model loads."""
    path = tmp_path_factory.mktemp("tiny-model")
    make_tiny("llama", vocab=SMOL_VOCAB).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def prompt_files(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts")
    (path / "cats.txt").write_text("\n".join(CATS) + "\n")
    (path / "other.txt").write_text("\n".join(OTHER) + "\n")
    return path / "cats.txt", path / "other.txt"


@pytest.fixture(scope="module")
def found(folder, prompt_files, tmp_path_factory):
    """``steerlab condition find`` run once: (its result, the condition file)."""
    out = tmp_path_factory.mktemp("found") / "cats.json"
    positive, negative = prompt_files
    args = ["condition", "find", "--positive", str(positive), "--negative", str(negative), "--out", str(out),
            "--name", "cats", "--layers", "0-2", "--model", str(folder)]  # fmt: skip
    return runner.invoke(app, args), out


@pytest.fixture(scope="module")
def loaded(folder):
    from steerlab import load_model

    return load_model(str(folder))


def test_find_writes_the_search_of_find_condition_point_with_its_held_out_f1(found, loaded):
    result, path = found
    assert result.exit_code == 0, result.output
    model, tokenizer = loaded
    chat = [[apply_chat(tokenizer, p) for p in texts] for texts in (CATS, OTHER)]
    search = find_condition_point(model, tokenizer, *chat, layers=[0, 1, 2])  # what the command must have run
    body = json.loads(path.read_text())
    assert body["format"] == "steerlab-conditions" and body["rule"] == "cats"
    entry = body["conditions"]["cats"]
    assert entry["vector"] == "cats.cats.safetensors" and (path.parent / entry["vector"]).is_file()
    assert entry["threshold"] == pytest.approx(search.condition.threshold)
    assert (entry["layers"], entry["reduce"], entry["comparison"], entry["side"]) == (
        list(search.condition.layers),
        search.condition.reduce,
        search.condition.comparison,
        search.condition.side,
    )
    assert body["search"]["held_out"]["f1"] == search.held_out_f1 and body["search"]["n_held_out"] == 6
    assert search.train_f1 == 1.0  # the planted word separates the training prompts
    assert "held-out F1" in result.stdout and f"held-out F1 {search.held_out_f1:.3f} (6 prompts)" in result.stdout
    gate = load_conditions(path)
    assert isinstance(gate, Condition) and gate.threshold == pytest.approx(search.condition.threshold)


def test_find_with_a_given_direction_searches_that_direction(folder, loaded, prompt_files, tmp_path):
    model, tokenizer = loaded
    given = random_vector(model, layers=(1, 2), seed=5).save(tmp_path / "dir.safetensors")
    positive, negative = prompt_files
    result = runner.invoke(app, ["condition", "find", "--positive", str(positive), "--negative", str(negative),
                                 "--out", str(tmp_path / "g.json"), "--vector", str(given), "--reduces", "last",
                                 "--model", str(folder)])  # fmt: skip
    assert result.exit_code == 0, result.output
    chat = [[apply_chat(tokenizer, p) for p in texts] for texts in (CATS, OTHER)]
    search = find_condition_point(model, tokenizer, *chat, vector=SteeringVector.load(given), reduces=["last"])
    gate = load_conditions(tmp_path / "g.json")
    assert (gate.threshold, gate.layers, gate.reduce) == (search.condition.threshold, search.condition.layers, "last")
    layer = gate.layers[0]
    assert torch.equal(gate.vector.directions[layer], SteeringVector.load(given).directions[layer])


def test_generate_with_a_condition_steers_only_where_the_gate_opens(found, folder, loaded, tmp_path):
    _, path = found
    model, tokenizer = loaded
    gate = load_conditions(path)
    prompts = [CATS[0], OTHER[0], CATS[1], OTHER[1]]
    opened = gate_opens(model, tokenizer, [apply_chat(tokenizer, p) for p in prompts], gate).tolist()
    assert opened == [True, False, True, False]
    layer = max(gate.layers) + 1  # steered after the gate is read
    vector = random_vector(model, layers=(layer,), scale=6.0).save(tmp_path / "push.safetensors")
    (tmp_path / "prompts.txt").write_text("\n".join(prompts))
    base = ["generate", "--vector", str(vector), "--prompts", str(tmp_path / "prompts.txt"), "--alphas", "0,1",
            "--scale", "absolute", "--max-new-tokens", "6", "--json", "--model", str(folder)]  # fmt: skip
    gated = runner.invoke(app, [*base, "--condition", str(path)])
    always = runner.invoke(app, base)
    assert gated.exit_code == 0 and always.exit_code == 0, gated.output + always.output
    gated_rows = [json.loads(line) for line in gated.stdout.splitlines()]
    always_rows = [json.loads(line) for line in always.stdout.splitlines()]
    assert [row["gate_open"] for row in gated_rows] == opened and "gate_open" not in always_rows[0]
    for row, plain, open_ in zip(gated_rows, always_rows, opened, strict=True):
        unsteered, steered = (g["text"] for g in row["generations"])
        if open_:  # steered exactly as without the gate, and the push shows
            assert steered == plain["generations"][1]["text"] and steered != unsteered
        else:  # answered as unsteered at every strength
            assert steered == unsteered == plain["generations"][0]["text"]
    check = runner.invoke(app, ["condition", "check", "--condition", str(path), "--prompts",
                                str(tmp_path / "prompts.txt"), "--json", "--model", str(folder)])  # fmt: skip
    assert check.exit_code == 0, check.output
    assert [json.loads(line)["gate_open"] for line in check.stdout.splitlines()] == opened
    table = runner.invoke(app, ["condition", "check", "--condition", str(path), "--prompt", CATS[2], "--model",
                                str(folder)])  # fmt: skip
    assert table.exit_code == 0 and "open" in table.stdout and "opens for 1 of 1 prompts" in table.stderr


def _edited(path, tmp_path, edit):
    """A copy of the condition file ``path`` (with its vector) after ``edit(body)``."""
    body = json.loads(path.read_text())
    edit(body)
    copy = tmp_path / path.name
    copy.write_text(json.dumps(body))
    (tmp_path / "cats.cats.safetensors").write_bytes((path.parent / "cats.cats.safetensors").read_bytes())
    return copy


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda b: b["conditions"]["cats"].update(threshold=float("nan")), "finite number"),
        (lambda b: b.update(rule={"all": ["cats", "dogs"]}), r"names the condition 'dogs'.*\['cats'\]"),
        (lambda b: b["conditions"]["cats"].update(treshold=0.1), r"unknown keys \['treshold'\]"),
        (lambda b: b["conditions"]["cats"].update(vector="gone.safetensors"), "gone.safetensors' does not exist"),
        (lambda b: b["conditions"]["cats"].update(layers=[3]), r"layers \[3\], which its vector lacks"),
        (lambda b: b.update(version=2), "format version 2"),
    ],
)
def test_a_bad_condition_file_fails_with_one_clear_line(found, folder, tmp_path, edit, match):
    _, path = found
    bad = _edited(path, tmp_path, edit)
    (tmp_path / "v.safetensors").write_bytes((path.parent / "cats.cats.safetensors").read_bytes())
    result = runner.invoke(app, ["generate", "--vector", str(tmp_path / "v.safetensors"), "--prompt", "Hi",
                                 "--condition", str(bad), "--model", str(folder)])  # fmt: skip
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stderr.startswith("error:") and "condition file" in result.stderr
    assert re.search(match, " ".join(result.stderr.split())), result.stderr


def test_a_condition_vector_of_another_model_is_refused(found, folder, loaded, tmp_path):
    _, path = found
    model, _ = loaded
    foreign = random_vector(make_tiny("gpt2", vocab=SMOL_VOCAB), layers=(1,))
    condition = Condition(foreign, 0.1)
    save_conditions(tmp_path / "foreign.json", {"cats": condition})
    push = random_vector(model, layers=(2,)).save(tmp_path / "push.safetensors")
    for args in (
        ["generate", "--vector", str(push), "--prompt", "Hi", "--condition", str(tmp_path / "foreign.json")],
        ["condition", "check", "--condition", str(tmp_path / "foreign.json"), "--prompt", "Hi"],
    ):
        result = runner.invoke(app, [*args, "--model", str(folder)])
        assert result.exit_code == 1 and "does not fit the model" in result.stderr, result.output
    wrong = runner.invoke(app, ["condition", "find", "--positive", str(tmp_path / "none.txt"), "--negative",
                                str(tmp_path / "none.txt"), "--out", str(tmp_path / "x.json")])  # fmt: skip
    assert wrong.exit_code == 1 and "does not exist" in wrong.stderr
    bad_choice = runner.invoke(app, ["condition", "find", "--positive", "a", "--negative", "b", "--out", "x.json",
                                     "--comparisons", "dot"])  # fmt: skip
    assert bad_choice.exit_code == 1 and "subset of ['cosine', 'projection']" in bad_choice.stderr


def _vector(layers=(1, 2), seed=0):
    gen = torch.Generator().manual_seed(seed)
    return SteeringVector({layer: torch.randn(64, generator=gen) for layer in layers}, model_id="tiny",
                          fingerprint=ModelFingerprint("llama", 64, 4))  # fmt: skip


def test_a_rule_of_conditions_round_trips_through_a_file(tmp_path):
    a = Condition(_vector(), 0.2, layers=[1], comparison="projection", side="smaller", reduce="last")
    b = Condition(_vector(seed=1), -0.1)
    path = save_conditions(tmp_path / "gate.json", {"a": a, "b": b}, {"any": ["a", {"not": "b"}]}, info={"f1": 0.9})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gate.a.safetensors", "gate.b.safetensors", "gate.json"]
    gate = load_conditions(path)
    assert isinstance(gate, Rule) and gate.op == "any" and gate.children[1].op == "not"
    first, second = gate.conditions()
    assert (first.threshold, first.layers, first.comparison, first.side, first.reduce) == (
        0.2,
        (1,),
        "projection",
        "smaller",
        "last",
    )
    assert torch.equal(first.vector.directions[1], a.vector.directions[1]) and second.layers == (1, 2)
    assert json.loads(path.read_text())["search"] == {"f1": 0.9}
    # options left out come from the point the vector records, else need a threshold
    recorded = dataclasses.replace(_vector(), extra={"condition": {"layer": 2, "threshold": 0.3, "reduce": "last"}})
    recorded.save(tmp_path / "rec.safetensors")
    (tmp_path / "short.json").write_text(json.dumps({"conditions": {"r": {"vector": "rec.safetensors"}}}))
    short = load_conditions(tmp_path / "short.json")
    assert (short.threshold, short.layers, short.reduce) == (0.3, (2,), "last")
    _vector().save(tmp_path / "plain.safetensors")
    (tmp_path / "none.json").write_text(json.dumps({"conditions": {"p": {"vector": "plain.safetensors"}}}))
    with pytest.raises(SteeringError, match="condition 'p'.*records no condition point, so give a threshold"):
        load_conditions(tmp_path / "none.json")
    with pytest.raises(SteerlabError, match="need a rule that combines them"):
        save_conditions(tmp_path / "two.json", {"a": a, "b": b})
    with pytest.raises(SteeringError, match="names the condition 'c'"):
        save_conditions(tmp_path / "two.json", {"a": a, "b": b}, {"all": ["a", "c"]})
    assert not (tmp_path / "two.json").exists()
    with pytest.raises(SteerlabError, match="letters, digits"):
        save_conditions(tmp_path / "x.json", {"a/b": a})
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(FormatError, match="is not JSON"):
        load_conditions(tmp_path / "broken.json")
