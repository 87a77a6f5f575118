"""Calling conventions of transformers releases: what each passes to a model's forward, and that positional
steering reads every one of them right (or refuses).

The conventions are replayed as plain forward calls on a stand-in module, so they stay checked after the pinned
release moves on: 5.23 passes the cache as ``past_key_values=``, 5.24 as ``cache=``; both give position ids and
drop the attention mask of an unpadded batch. Releases before 5.x passed ``cache_position``.
"""

import pytest
import torch
from torch import nn
from transformers import DynamicCache

from steerlab import SteeringError, steer
from steerlab._calling import CACHE_ARGUMENTS, cache_argument, past_length, transformers_version
from steerlab._hooks import HookSet
from steerlab._positions import PositionTracker
from tiny import PROMPTS, greedy, random_vector


class _Forward(nn.Module):
    """Stands in for a model's top-level forward: the tracker only reads the arguments."""

    def forward(self, input_ids=None, **kwargs):
        return input_ids


class _FilledCache:
    """A cache that reports a length, like transformers' Cache objects."""

    def __init__(self, length: int) -> None:
        self.length = length

    def get_seq_length(self) -> int:
        return self.length


def _v523(ids, past, mask=None):
    kwargs = {"input_ids": ids, "past_key_values": _FilledCache(past), "use_cache": True}
    kwargs["position_ids"] = torch.arange(past, past + ids.shape[1])[None].expand(ids.shape[0], -1)
    if mask is not None:
        kwargs["attention_mask"] = mask
    return kwargs


def _v524(ids, past, mask=None):
    kwargs = _v523(ids, past, mask)
    kwargs["cache"] = kwargs.pop("past_key_values")
    return kwargs


def _v4(ids, past, mask=None):  # transformers 4.x: a cache position tensor beside the cache
    kwargs = _v523(ids, past, mask)
    kwargs["cache_position"] = torch.arange(past, past + ids.shape[1])
    del kwargs["past_key_values"]
    return kwargs


CONVENTIONS = {"4.x": _v4, "5.23": _v523, "5.24": _v524}


def _generation_calls(convention, prompt_length: int, steps: int, masked: bool):
    """The forward calls of a greedy decode of one unpadded row under a release's convention."""
    ids = torch.arange(prompt_length)[None] + 5
    mask = torch.ones(1, prompt_length, dtype=torch.long) if masked else None
    yield convention(ids, 0, mask)
    for step in range(steps):
        past = prompt_length + step
        mask = torch.ones(1, past + 1, dtype=torch.long) if masked else None
        yield convention(torch.tensor([[7]]), past, mask)


@pytest.mark.parametrize("masked", [False, True], ids=["no-mask", "mask"])
@pytest.mark.parametrize("release", sorted(CONVENTIONS))
def test_each_release_convention_tells_prompt_from_generated(release, masked):
    module, tracker = _Forward(), PositionTracker()
    seen = {"prompt": [], "generated": [], 3: []}
    with HookSet() as hooks:
        tracker.attach(hooks, module)
        for kwargs in _generation_calls(CONVENTIONS[release], prompt_length=4, steps=3, masked=masked):
            module(**kwargs)
            length = kwargs["input_ids"].shape[1]
            for spec in seen:
                seen[spec].append(tracker.select(spec, 1, length)[0].tolist())
    assert seen["prompt"] == [[True] * 4, [False], [False], [False]]
    assert seen["generated"] == [[False] * 4, [True], [True], [True]]
    assert seen[3] == [[False, False, False, True], [True], [True], [True]]


def test_past_length_reads_every_known_source():
    ids = torch.zeros(2, 3, dtype=torch.long)
    assert past_length((), {"input_ids": ids}, None, 3) == 0  # no cache at all: a new sequence
    assert past_length((), {"cache": _FilledCache(5)}, None, 3) == 5
    assert past_length((), {"past_key_values": _FilledCache(6)}, None, 3) == 6
    assert past_length((), {"cache_position": torch.arange(4, 7)}, None, 3) == 4
    assert past_length((), {"cache": _FilledCache(5)}, torch.ones(2, 11), 3) == 8  # the mask covers past + now
    legacy = ((torch.zeros(2, 1, 9, 4), torch.zeros(2, 1, 9, 4)),)
    assert past_length((), {"past_key_values": legacy}, None, 3) == 9
    assert past_length((), {"cache": None, "use_cache": True}, None, 3) == 0


def test_a_cache_under_an_unknown_name_fails_loudly():
    """A future release that renames the cache again must stop positional steering, not silently disable it."""
    module, tracker = _Forward(), PositionTracker()
    with HookSet() as hooks:
        tracker.attach(hooks, module)
        ids = torch.tensor([[7]])
        for kwargs in (
            {"input_ids": ids, "kv_cache": _FilledCache(4)},
            {"input_ids": ids, "past_state": torch.zeros(1)},
            {"input_ids": ids, "cache": object()},
            {"input_ids": ids, "cache": _FilledCache(4), "past_key_values": _FilledCache(4)},
        ):
            with pytest.raises(SteeringError) as info:
                module(**kwargs)
            assert f"transformers {transformers_version()}" in str(info.value)
        with pytest.raises(SteeringError, match="positional arg1=DynamicCache"):
            module(ids, DynamicCache())
        with pytest.raises(SteeringError, match="2-D"):
            module(input_ids=ids, attention_mask=torch.ones(1, 1, 1, 4))


def test_cache_argument_follows_the_installed_release(tiny):
    model = tiny("llama")
    assert cache_argument(model) in CACHE_ARGUMENTS
    with pytest.raises(SteeringError, match="takes none of"):
        cache_argument(_Forward())


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma2"])
@pytest.mark.parametrize("positions", ["generated", 2])
def test_a_lone_unpadded_prompt_is_steered_during_generation(tiny, arch, positions):
    """transformers 5.24 hands generate's decoding steps of a lone prompt no attention mask: the steps must still
    count as generated (the bug of issue 11: they counted as prompt, and nothing was steered)."""
    model = tiny(arch)
    vec = random_vector(model, layers=(1, 2), scale=8.0)
    row = [PROMPTS[0]]
    plain = greedy(model, row)
    with steer(model, vec, alpha=1.0, positions=positions, scale="absolute"):
        steered = greedy(model, row)
        uncached = greedy(model, row, use_cache=False)  # re-feeds the whole sequence: positions are plain indices
    assert torch.equal(steered, uncached)
    with steer(model, vec, alpha=1.0, positions="all", scale="absolute"):
        everywhere = greedy(model, row)
    assert not torch.equal(steered, plain)
    if positions == "generated":
        assert not torch.equal(steered, everywhere)  # the prompt was left alone


def test_manual_decode_with_the_installed_cache_name_equals_generate(tiny):
    """A hand-written decode loop (cache under the release's own keyword, no mask) steers as generate does."""
    model = tiny("llama")
    vec = random_vector(model, layers=(1,), scale=8.0)
    row = PROMPTS[2]
    with steer(model, vec, alpha=1.0, positions="generated", scale="absolute"):
        expected = greedy(model, [row])[0].tolist()
        cache = DynamicCache(config=model.config)
        ids, got = torch.tensor([row]), []
        with torch.no_grad():
            for _ in range(len(expected)):
                past = cache.get_seq_length()
                positions = torch.arange(past, past + ids.shape[1])[None]
                logits = model(input_ids=ids, position_ids=positions, use_cache=True, **{cache_argument(model): cache})
                ids = logits.logits[:, -1:].argmax(-1)
                got.append(int(ids))
    assert got == expected


def test_doctor_passes_here_and_exits_zero():
    from typer.testing import CliRunner

    from steerlab.cli import app

    result = CliRunner().invoke(app, ["doctor"])
    assert result.exit_code == 0, result.output
    assert f"transformers  {transformers_version()}" in result.stdout
    assert "checks passed" in result.stdout and "FAIL" not in result.stdout


def test_doctor_fails_on_a_tracker_that_never_sees_the_past(monkeypatch):
    """A tracker that takes every call for a new sequence and counts positions per call (how 5.24's unmasked calls
    looked to the tracker before issue 11, and the known bug of other libraries): the doctor must notice, exit 1."""
    from typer.testing import CliRunner

    import steerlab._positions
    from steerlab.cli import app
    from steerlab.doctor import run_checks

    monkeypatch.setattr(steerlab._positions, "past_length", lambda args, kwargs, mask, length: 0)
    monkeypatch.setattr(
        steerlab._positions,
        "real_token_index",
        lambda mask, batch, length, past, device: torch.arange(length, device=device).expand(batch, length),
    )
    failed = [check.name for check in run_checks(("llama",)) if not check.ok]
    assert "[llama] positions='generated': a lone prompt steers the same with and without a KV cache" in failed
    assert "[llama] add shifts the block output by alpha * v" not in failed  # only what is broken fails
    result = CliRunner().invoke(app, ["doctor"])
    assert result.exit_code == 1
    assert "FAIL" in result.stdout and "checks failed" in result.stderr
