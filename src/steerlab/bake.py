"""Bake steering into the weights, so a plain transformers model steers with no hooks and no steerlab.

Two kinds of steering can be baked:

* :func:`bake_addition`: ``add`` of a constant vector at ``resid_post``, ``mlp_out`` or ``attn_out`` becomes a
  bias on the output projection of the block's MLP (``resid_post``, ``mlp_out``) or attention (``attn_out``),
  created when the layer has none. The MLP is a block's last write, so its bias shifts the block output by
  exactly ``alpha * v``.
* :func:`orthogonalize`: ``ablate`` of one direction everywhere (:func:`steerlab.directional_ablation`)
  becomes weight orthogonalisation: the direction is projected out of every matrix and bias that writes to
  the residual stream and out of the embeddings (Arditi et al.). Tied input/output embeddings are untied
  first, since the unembedding reads the residual stream and must stay as it was.

What cannot be baked, and is refused with a :class:`~steerlab.errors.SteeringError`: position-dependent
steering (``positions`` other than ``"all"``: a bias acts on every token), ``clamp`` and ``ablate_then_add``
(they depend on each token's own projection, which no fixed weight change reproduces), ``ablate`` at chosen
layers only (it is not a change of weights unless it applies everywhere), per-row steering, ``resid_pre``,
and architectures whose sublayers are normalised after their output projection (``ArchSpec.post_norms``: Gemma
2/3, OLMo 2; a bias or an orthogonal projection before a norm does not survive the norm) or have no module whose
output is exactly a sublayer's contribution (``ArchSpec.attn_out`` / ``mlp_out`` of ``None``: Bloom adds the
residual inside its sublayers).

A baked model saves with ``save_pretrained`` and loads in plain transformers when the architecture's config
has a switch that creates the bias (Llama's ``mlp_bias``, ``attention_bias``; GPT-2, GPT-NeoX, GPT-J,
GPT-Neo and Phi have biases already). For others (e.g. Mistral, Qwen2, Phi-3) the baked model works in memory
(useful with ``torch.compile``, which ignores hooks added after compiling), and :func:`save_baked` refuses
to write a folder that would silently lose the bias. :func:`verify_baked` reloads a saved folder with plain
transformers and compares its logits with the hooked model's (:func:`probe_logits`, taken before baking).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from steerlab._forward import batched_logits
from steerlab._state import peek, state
from steerlab._steer import Intervention, as_interventions, steer
from steerlab._text import apply_chat, encode, pad_batch, pad_id
from steerlab._vector import SteeringVector
from steerlab.arch.registry import ModelLayout, get_layout, text_config
from steerlab.errors import SteeringError
from steerlab.types import DEFAULT_SCALE, Positions, Scale, Site

__all__ = ["PROBE_PROMPT", "BakeCheck", "bake_addition", "orthogonalize", "probe_logits", "save_baked", "verify_baked"]

_BIAS_FLAGS = ("mlp_bias", "attention_bias", "bias", "use_bias", "add_bias_linear")


def _writer(layout, layer: int, site: str) -> nn.Module:
    """The last linear layer inside ``site``'s module that writes the residual width: its output projection
    (checked for every registered architecture by the tests, which compare baked and hooked logits)."""
    module, _ = layout.site_module(layer, site)
    width = layout.hidden_size
    writers = [
        m
        for m in module.modules()
        if (isinstance(m, nn.Linear) and m.out_features == width) or (isinstance(m, Conv1D) and m.nf == width)
    ]
    if not writers:
        raise SteeringError(
            f"cannot find the output projection of {site} in block {layer} of "
            f"'{layout.model_type}'; this architecture cannot be baked."
        )
    return writers[-1]


def _check_bakeable(layout: ModelLayout, site: str, sublayers: tuple[str, ...]) -> None:
    """Refuse what no weight change reproduces exactly: from the architecture's facts (its ArchSpec) and the
    site; ``sublayers`` are the sites whose output projections the bake will change."""
    spec, name = layout.spec, layout.model_type
    if spec.post_norms:
        raise SteeringError(
            f"'{name}' normalises each sublayer's output after its projection, so steering cannot be baked into "
            "its weights exactly (a bias or projection before the norm does not survive it); steer it with hooks "
            "(steerlab.steer) instead."
        )
    missing = [sub for sub in sublayers if getattr(spec, sub) is None]
    if missing:
        raise SteeringError(
            f"'{name}' has no module whose output is exactly its {' or '.join(missing)} contribution (its "
            f"sublayers add the residual inside, or its layout was guessed: source '{layout.source}'), so steering "
            "cannot be baked into its weights exactly; steer it with hooks (steerlab.steer) instead, or register "
            "the architecture with its sublayer paths (steerlab.arch.register_architecture)."
        )
    if site not in ("resid_post", "mlp_out", "attn_out"):
        raise SteeringError(
            f"an addition at site '{site}' cannot be baked: only resid_post, mlp_out and attn_out "
            "are outputs of a weight that can carry a bias."
        )


def _residual_multiplier(model: nn.Module, layout: ModelLayout) -> float:
    name = layout.spec.residual_multiplier
    value = 1.0 if name is None else getattr(text_config(model), name, None)
    if value is None or not isinstance(value, (int, float)) or value == 0:
        raise SteeringError(
            f"'{layout.model_type}' multiplies each sublayer's output by config.{name} before the residual add, "
            f"but that is {value!r}, not a non-zero number; steering at resid_post cannot be baked. Steer it with "
            "hooks (steerlab.steer), or bake at site='mlp_out'."
        )
    return float(value)


def _add_bias(linear: nn.Module, delta: torch.Tensor) -> None:
    weight = linear.weight
    if linear.bias is None:
        linear.bias = nn.Parameter(torch.zeros(delta.shape[0], dtype=weight.dtype, device=weight.device))
    with torch.no_grad():
        linear.bias.add_(delta.to(device=weight.device, dtype=weight.dtype))


def bake_addition(
    model: nn.Module,
    vector: SteeringVector | Intervention,
    alpha: float | None = None,
    *,
    layers: Sequence[int] | None = None,
    site: Site | None = None,
    scale: Scale = DEFAULT_SCALE,
    positions: Positions | None = None,
    inplace: bool = False,
) -> nn.Module:
    """A copy of ``model`` (or ``model`` itself with ``inplace=True``) that behaves like
    ``steer(model, vector, alpha, ...)`` with no hooks.

    ``vector`` is a vector with the options here, or an :class:`~steerlab.Intervention` (mode ``add``, every
    position, no norm preservation: what a bias can do) carrying them. The copy costs a second set of weights;
    ``inplace=True`` avoids it, and then ``model`` stays steered for as long as it lives.

    Example:
        >>> baked = bake_addition(model, vec, alpha=0.1, scale="relative")   # model itself is unchanged
        >>> save_baked(baked, tokenizer, "smollm2-happy")   # loads with plain transformers
    """
    (item,) = as_interventions(vector, alpha=alpha, layers=layers, site=site, scale=scale, positions=positions)
    if item.positions != "all":
        raise SteeringError(
            f"positions={item.positions!r} cannot be baked: a bias acts on every token. Use hooks "
            "(steerlab.steer) for position-dependent steering."
        )
    if item.resolved_site == "heads":
        raise SteeringError(
            "the 'heads' site cannot be baked here (a head's push becomes a bias of the attention output projection "
            "only through its weights); steer it with hooks (steerlab.steer)."
        )
    if item.condition is not None:
        raise SteeringError(
            "a conditional intervention cannot be baked: a bias acts on every prompt, whatever its condition says. "
            "Use hooks (steerlab.steer) to steer conditionally."
        )
    if item.mode != "add" or item.preserve_norm:
        raise SteeringError(
            f"only additions can be baked into biases, not mode={item.mode!r}"
            + (" with preserve_norm" if item.preserve_norm else "")
            + "; use orthogonalize() to remove a direction from the weights, or hooks (steerlab.steer)."
        )
    item.vector.check_fits(model)
    _check_bakeable(
        get_layout(model), item.resolved_site, ("attn_out" if item.resolved_site == "attn_out" else "mlp_out",)
    )
    model = model if inplace else _copy(model)  # checked first: a refused bake copies nothing
    layout = get_layout(model)
    site = item.resolved_site
    target = "attn_out" if site == "attn_out" else "mlp_out"
    _check_bakeable(layout, site, (target,))
    deltas = item.deltas()
    writers = {layer: _writer(layout, layer, target) for layer in deltas}
    # A bias on the MLP's projection reaches the block output times the architecture's residual multiplier
    # (Granite); at the sublayer sites the hook's addition is multiplied the same way, so only resid_post divides.
    factor = 1.0 / _residual_multiplier(model, layout) if site == "resid_post" else 1.0
    for layer, delta in deltas.items():
        _add_bias(writers[layer], float(item.alpha) * factor * delta.float())
    _record(
        model,
        {
            "kind": "add",
            "alpha": float(item.alpha),
            "layers": sorted(deltas),
            "site": site,
            "scale": item.scale,
            "vector": item.vector.header(),
        },
    )
    return model


def _project_out_rows(weight: torch.Tensor, unit: torch.Tensor) -> None:
    """Remove ``unit`` from every row (each row lives in the residual space): ``W - (W u) u^T``."""
    w = weight.data
    w.sub_(((w.float() @ unit)[:, None] * unit[None, :]).to(w.dtype))


def _project_out_outputs(linear: nn.Module, unit: torch.Tensor) -> None:
    """Make a layer's output orthogonal to ``unit`` (weight and bias)."""
    if isinstance(linear, Conv1D):  # y = x W + b, W is (in, out)
        _project_out_rows(linear.weight, unit)
    else:  # y = W x + b, W is (out, in): project the columns
        w = linear.weight.data
        w.sub_((unit[:, None] * (unit @ w.float())[None, :]).to(w.dtype))
    if linear.bias is not None:
        b = linear.bias.data
        b.sub_(((b.float() @ unit) * unit).to(b.dtype))


def orthogonalize(
    model: nn.Module, vector: SteeringVector, source: int | None = None, *, inplace: bool = False
) -> nn.Module:
    """A copy of ``model`` (or ``model`` itself with ``inplace=True``) with one direction projected out of every
    weight that writes to the residual stream.

    Equivalent to ``steer(model, directional_ablation(model, vector, source))`` on every token.

    Example:
        >>> ablated = orthogonalize(model, refusal, source=12)
        >>> save_baked(ablated, tokenizer, "smollm2-no-refusal")
    """
    vector.check_fits(model)
    _check_bakeable(get_layout(model), "resid_post", ("attn_out", "mlp_out"))
    model = model if inplace else _copy(model)
    layout = get_layout(model)
    one = vector.at_layers([0], source).normalized_copy()
    unit = one.directions[0].float()
    writers = [_writer(layout, layer, site) for layer in range(layout.num_layers) for site in ("attn_out", "mlp_out")]
    _untie_output_embeddings(model)
    width = layout.hidden_size
    embeddings = [m for m in model.modules() if isinstance(m, nn.Embedding) and m.embedding_dim == width]
    if not embeddings:
        raise SteeringError("found no embedding of the residual width to orthogonalise; cannot bake the ablation.")
    with torch.no_grad():
        for emb in embeddings:  # token embeddings and learned absolute positions (GPT-2, GPT-Neo, OPT)
            _project_out_rows(emb.weight, unit.to(emb.weight.device))
        for linear in writers:
            _project_out_outputs(linear, unit.to(linear.weight.device))
    _record(
        model, {"kind": "orthogonalize", "source_layer": one.extra.get("copied_from_layer"), "vector": vector.header()}
    )
    return model


def _untie_output_embeddings(model: nn.Module) -> None:
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    inputs = model.get_input_embeddings()
    if output is None or output.weight is not inputs.weight:
        return
    output.weight = nn.Parameter(inputs.weight.detach().clone())
    for config in {id(c): c for c in (model.config, model.config.get_text_config())}.values():
        config.tie_word_embeddings = False


def _copy(model: nn.Module) -> nn.Module:
    """A deep copy that steerlab knows as the same model: the name it was loaded under, any architecture override
    and what was baked before travel with it (the per-model state is keyed by the object, not copied by deepcopy)."""
    twin = copy.deepcopy(model)
    original = peek(model)
    if original is not None:
        mine = state(twin)
        mine.arch, mine.model_id, mine.baked = original.arch, original.model_id, list(original.baked)
    return twin


def _record(model: nn.Module, entry: dict[str, Any]) -> None:
    state(model).baked.append(entry)


def _expected_keys(model: nn.Module, config: Any) -> set[str]:
    """The parameter names plain transformers creates for ``config`` (built on the meta device: no memory)."""
    with torch.device("meta"):
        fresh = type(model)(config)
    return set(fresh.state_dict())


def save_baked(model: nn.Module, tokenizer: Any, path: str | Path) -> Path:
    """Save a baked model so that plain transformers loads it with every baked weight.

    Turns on the config switch that makes the architecture create the new biases (zero-filling the other
    biases that switch adds), checks on the meta device that plain transformers will create every parameter
    the model now has, and refuses with a clear error if some would be dropped at load.
    """
    config = copy.deepcopy(model.config)
    have = set(model.state_dict())
    missing = have - _expected_keys(model, config)
    for flag in _BIAS_FLAGS:
        if not missing:
            break
        if getattr(config, flag, None) is False:
            trial = copy.deepcopy(config)
            setattr(trial, flag, True)
            expected = _expected_keys(model, trial)
            if len(have - expected) < len(missing):
                config, missing = trial, have - expected
    if missing:
        raise SteeringError(
            f"'{config.model_type}' has no config switch that creates the baked parameters "
            f"{sorted(missing)[:4]}{'...' if len(missing) > 4 else ''}; plain transformers would drop them at load. "
            "The baked model works in memory; to ship steering for this architecture, use a vector file with "
            "steerlab, or bake on an architecture with biases (Llama, GPT-2, GPT-NeoX, ...)."
        )
    _fill_new_biases(model, _expected_keys(model, config) - have)
    model.config = config
    path = Path(path)
    model.save_pretrained(path)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    return path


def _fill_new_biases(model: nn.Module, names: set[str]) -> None:
    """Zero biases for parameters the new config switch adds (e.g. Llama's mlp_bias adds gate/up biases)."""
    for name in sorted(names):
        owner_name, _, leaf = name.rpartition(".")
        owner = model.get_submodule(owner_name)
        if leaf != "bias" or getattr(owner, "bias", None) is not None:
            raise SteeringError(f"the config switch adds '{name}', which steerlab cannot fill; cannot save.")
        weight = owner.weight
        size = weight.shape[1] if isinstance(owner, Conv1D) else weight.shape[0]
        owner.bias = nn.Parameter(torch.zeros(size, dtype=weight.dtype, device=weight.device))


PROBE_PROMPT = "Tell me about your weekend."
"""The prompt on which a baked model is compared with the hooked one."""


@dataclass(frozen=True)
class BakeCheck:
    """How closely a saved baked model reproduces the hooked model's logits on :data:`PROBE_PROMPT`."""

    max_diff: float
    logit_scale: float

    @property
    def ok(self) -> bool:
        """Within float rounding: at most 1e-3 of the largest logit."""
        return self.max_diff <= 1e-3 * max(self.logit_scale, 1.0)


def probe_logits(
    model: nn.Module,
    tokenizer: Any,
    steering: SteeringVector | Intervention | Sequence[Intervention] | None = None,
    prompt: str = PROBE_PROMPT,
) -> torch.Tensor:
    """Float32 logits of ``prompt`` (in the chat template when there is one) under ``steering`` (hooks), or of
    the model as it is: the reference a baked model must reproduce. Take it before baking, which changes the model.

    Example:
        >>> reference = probe_logits(model, tokenizer, Intervention(vec, alpha=0.1, scale="relative"))
    """
    ids = encode(tokenizer, [apply_chat(tokenizer, prompt)])
    input_ids, mask = pad_batch(ids, pad_id(tokenizer), side="left")
    with steer(model, steering) if steering is not None else contextlib.nullcontext():
        return batched_logits(model, input_ids, mask, batch_size=1)


def verify_baked(folder: str | Path, tokenizer: Any, reference: torch.Tensor, prompt: str = PROBE_PROMPT) -> BakeCheck:
    """Load ``folder`` with plain transformers (no steerlab) and compare its logits on ``prompt`` with
    ``reference`` (from :func:`probe_logits` on the hooked model).

    Example:
        >>> reference = probe_logits(model, tokenizer, Intervention(vec, alpha=0.1, scale="relative"))
        >>> save_baked(bake_addition(model, vec, alpha=0.1, scale="relative"), tokenizer, "smollm2-happy")
        >>> verify_baked("smollm2-happy", tokenizer, reference).ok
        True
    """
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(folder).eval()
    reloaded = probe_logits(plain, tokenizer, None, prompt)
    if reloaded.shape != reference.shape:
        raise SteeringError(
            f"the reference logits have shape {tuple(reference.shape)} but the saved model gives "
            f"{tuple(reloaded.shape)}; take the reference with probe_logits(...) on the same prompt."
        )
    return BakeCheck(float((reloaded - reference).abs().max()), float(reference.abs().max()))
