"""``steerlab doctor``: does steering behave on *this* installation?

Upstream releases change what a model's forward is called with (transformers 5.24 renamed the KV cache and stopped
passing a mask for unpadded rows), and such a change can leave steering silently off. The doctor prints the
versions in use and checks, on tiny random models built on the spot (no download, a few seconds), the invariants
every steering result rests on:

- ``add`` shifts the block output by exactly ``alpha * v``; ``ablate`` leaves no projection on ``v``; ``clamp``
  keeps the projection inside its band, and by default both leave the first token (the attention sink) alone;
- ``positions`` ``"prompt"`` / ``"generated"`` / ``k`` steer the same tokens with and without a KV cache, for a
  lone unpadded prompt and in a left-padded batch (where every row equals the row generated alone), and
  ``"generated"`` changes the text while leaving the prompt's own logits alone;
- per-row steering: every row of a batch equals that row run alone under its own interventions.

Each check compares two computations that take different paths through steerlab (cached against uncached,
batched against alone, steered against the closed-form result), so a broken part shows up as a disagreement.

Example:
    >>> from steerlab.doctor import run_checks
    >>> all(check.ok for check in run_checks())
    True
"""

from __future__ import annotations

import platform
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["Check", "run_checks", "versions"]

_PROMPTS = [[5, 17, 93, 44, 8], [31, 7], [12, 99, 40, 18, 27, 36, 70]]
_NEW_TOKENS = 6
_LAYER = 1


@dataclass
class Check:
    """One check: what was checked, whether it held, and what was seen when it did not."""

    name: str
    ok: bool
    detail: str = ""


def versions() -> dict[str, str]:
    """The versions that decide how steering behaves: Python, torch, transformers, steerlab."""
    import transformers

    from steerlab._version import __version__

    return {
        "steerlab": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def _tiny(arch: str) -> nn.Module:
    """A 2-layer random causal LM of a vocabulary of 128 tokens; embeddings scaled up so that effects of
    steering and of padding mistakes are far above float noise."""
    import transformers as tf

    tokens = dict(bos_token_id=1, eos_token_id=2, pad_token_id=2)
    common = dict(vocab_size=128, max_position_embeddings=64, **tokens)
    configs: dict[str, Callable[[], object]] = {
        "llama": lambda: tf.LlamaConfig(
            **common,
            hidden_size=32,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=64,
        ),
        # GPT-J's blocks return tuples and it has parallel attention and MLP: a second code path.
        "gptj": lambda: tf.GPTJConfig(
            vocab_size=128, n_embd=32, n_layer=3, n_head=4, rotary_dim=4, n_positions=64, **tokens
        ),
    }
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        config = configs[arch]()
        model = tf.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
        with torch.no_grad():
            model.get_input_embeddings().weight.mul_(20.0)
    model.eval()
    model.config.name_or_path = f"doctor-{arch}"  # what from_pretrained would set: the name model_id() reports
    return model


def _vector(model: nn.Module, seed: int = 1, scale: float = 8.0):
    from steerlab._models import fingerprint, model_id
    from steerlab._vector import SteeringVector

    fp = fingerprint(model)
    gen = torch.Generator().manual_seed(seed)
    direction = torch.randn(fp.hidden_size, generator=gen) * scale
    return SteeringVector({_LAYER: direction}, model_id=model_id(model), fingerprint=fp)


def _greedy(model: nn.Module, rows: list[list[int]], *, use_cache: bool = True) -> torch.Tensor:
    """Greedy new tokens through steerlab's one decode loop (``eos_token_id=None``: always ``_NEW_TOKENS``)."""
    from steerlab._text import pad_batch
    from steerlab.engines.transformers import generate_batch

    ids, mask = pad_batch(rows, 2, side="left")
    return generate_batch(
        model, ids, mask, max_new_tokens=_NEW_TOKENS, pad_token_id=2, use_cache=use_cache, eos_token_id=None
    )


def _block_output(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, output_hidden_states=True).hidden_states[_LAYER + 1]


def _operators(model: nn.Module) -> Iterator[Check]:
    from steerlab._steer import steer

    vec = _vector(model)
    unit = vec.directions[_LAYER] / vec.directions[_LAYER].norm()
    ids = torch.tensor([_PROMPTS[0]])
    base = _block_output(model, ids)
    with steer(model, vec, alpha=0.5, scale="absolute"):
        moved = _block_output(model, ids)
    error = float((moved - base - 0.5 * vec.directions[_LAYER]).abs().max())
    yield Check("add shifts the block output by alpha * v", error < 1e-3, f"largest deviation {error:.2e}")
    with steer(model, vec, alpha=1.0, mode="ablate", scale="absolute"):
        ablated = _block_output(model, ids)
    left = float((ablated[:, 1:] @ unit).abs().max())
    yield Check("ablate removes the projection on v", left < 1e-3, f"largest projection left {left:.2e}")
    with steer(model, vec, alpha=(-1.0, 1.0), mode="clamp", scale="absolute"):
        clamped = _block_output(model, ids)
    proj = clamped[:, 1:] @ unit
    inside = bool(((proj >= -1.0 - 1e-3) & (proj <= 1.0 + 1e-3)).all())
    yield Check("clamp keeps the projection in its band", inside, f"projections {proj.flatten().tolist()}")
    # The projection modes leave the first token (the attention sink) alone unless positions="all".
    sink = bool(torch.equal(ablated[:, 0], base[:, 0]) and torch.equal(clamped[:, 0], base[:, 0]))
    yield Check("ablate and clamp leave the first token (the attention sink) alone", sink, "" if sink else "changed")


def _positions(model: nn.Module) -> Iterator[Check]:
    from steerlab._steer import steer

    vec = _vector(model)
    lone = [_PROMPTS[2]]
    plain_lone, plain_batch = _greedy(model, lone), _greedy(model, _PROMPTS)
    for spec in ("prompt", "generated", 3):
        with steer(model, vec, alpha=1.0, positions=spec, scale="absolute"):
            cached, uncached = _greedy(model, lone), _greedy(model, lone, use_cache=False)
            batch = _greedy(model, _PROMPTS)
            alone = torch.cat([_greedy(model, [row]) for row in _PROMPTS])
        yield Check(
            f"positions={spec!r}: a lone prompt steers the same with and without a KV cache",
            torch.equal(cached, uncached),
            f"cached {cached.tolist()} vs uncached {uncached.tolist()}",
        )
        yield Check(
            f"positions={spec!r}: every row of a left-padded batch equals the row alone",
            torch.equal(batch, alone),
            f"batched {batch.tolist()} vs alone {alone.tolist()}",
        )
        if spec != "prompt":  # steering only the prompt may leave a short greedy text unchanged
            changed = not torch.equal(cached, plain_lone) and not torch.equal(batch, plain_batch)
            yield Check(f"positions={spec!r} changes the generated text", changed, f"steered {cached.tolist()}")
    ids = torch.tensor(lone)
    with torch.no_grad():
        plain_logits = model(input_ids=ids).logits
        with steer(model, vec, alpha=1.0, positions="generated", scale="absolute"):
            prompt_logits = model(input_ids=ids).logits
    yield Check(
        "positions='generated' leaves the prompt's logits alone",
        torch.equal(plain_logits, prompt_logits),
        f"largest logit change {float((plain_logits - prompt_logits).abs().max()):.2e}",
    )


def _per_row(model: nn.Module) -> Iterator[Check]:
    from steerlab._steer import Intervention, steer, steer_rows

    vec, other = _vector(model), _vector(model, seed=2)
    rows = [
        Intervention(vec, alpha=1.0, positions="generated", scale="absolute"),
        None,
        Intervention(other, alpha=(-0.5, 0.5), mode="clamp", scale="absolute"),
    ]
    with steer_rows(model, rows):
        batch = _greedy(model, _PROMPTS)
    alone = []
    for prompt, item in zip(_PROMPTS, rows, strict=True):
        if item is None:
            alone.append(_greedy(model, [prompt]))
        else:
            with steer(model, item):
                alone.append(_greedy(model, [prompt]))
    expected = torch.cat(alone)
    yield Check(
        "per-row steering: each row equals the row run alone",
        torch.equal(batch, expected),
        f"batched {batch.tolist()} vs alone {expected.tolist()}",
    )


def run_checks(archs: tuple[str, ...] = ("llama", "gptj")) -> list[Check]:
    """Run every check on tiny random models of ``archs``; a check that raises counts as failed, with the error."""
    from steerlab._calling import cache_argument

    def cache_convention(model: nn.Module) -> Iterator[Check]:
        yield Check(f"forward takes its KV cache as {cache_argument(model)!r}", True)

    checks: list[Check] = []
    for arch in archs:
        model = _tiny(arch)  # seeded inside its own fork of the RNG; the checks themselves draw no random numbers
        for group in (cache_convention, _operators, _positions, _per_row):
            try:
                checks.extend(Check(f"[{arch}] {c.name}", c.ok, c.detail) for c in group(model))
            except Exception as error:  # noqa: BLE001 - a crash is a finding, reported with the others
                last = traceback.format_exception_only(type(error), error)[-1].strip()
                checks.append(Check(f"[{arch}] {group.__name__.strip('_')} checks", False, last))
    return checks
