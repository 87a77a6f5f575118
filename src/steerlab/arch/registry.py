"""Layer discovery: a registry keyed by ``config.model_type``, a user override, and a warned heuristic.

Resolution order (first match wins):

1. an override for this model object set with :func:`set_architecture`;
2. the registry entry for ``config.model_type`` (built in, or added with :func:`register_architecture`);
3. a heuristic: the ``nn.ModuleList`` whose length equals ``num_hidden_layers`` (warns, and says how to
   register the architecture so the warning goes away).

Whatever is found is checked against the config: the number of blocks must equal ``num_hidden_layers``;
the residual width is checked by :mod:`steerlab.record` on the first activation it sees.

Every fact steerlab needs about an architecture is a field of its :class:`ArchSpec` (where the blocks, the
sublayer outputs and the final norm are; whether sublayer outputs are normalised; how the logits are scaled), so
code outside this package asks the layout, never the model type. The resolved :class:`ModelLayout` is cached per
model object (in :mod:`steerlab._state`, not on the model) and resolved again when the override, the registry
entry, the model type or the dimensions change.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace

from torch import nn

from steerlab._state import state
from steerlab.errors import ArchitectureError
from steerlab.types import SITES

__all__ = [
    "SITES",
    "ArchSpec",
    "ModelLayout",
    "get_layout",
    "register_architecture",
    "registered_architectures",
    "set_architecture",
]


# SITES (where in a block activations are read and changed) is defined with the other literals in steerlab.types.


@dataclass(frozen=True)
class ArchSpec:
    """Every fact steerlab needs about one decoder-only architecture.

    Paths are dotted attribute paths. The defaults describe a Llama-like model, so a Llama clone needs only
    ``layers``.

    Attributes:
        layers: paths from the top-level model to the ``ModuleList`` of decoder blocks; the first that exists is
            used (multimodal wrappers nest the text model one level deeper).
        attn_out: path from a block to the module whose output the block adds to the residual stream as the
            attention's contribution, or ``None`` if there is none (the block adds the residual inside).
        mlp_out: the same for the MLP.
        post_norms: each sublayer's output is normalised before it is added to the residual stream (Gemma 2/3,
            OLMo 2: ``attn_out`` / ``mlp_out`` are then those norms). A bias or a projection before such a norm
            does not survive it, so :mod:`steerlab.bake` refuses these architectures.
        residual_multiplier: name of the config attribute each sublayer's output is multiplied by before it is
            added to the residual stream (Granite's ``residual_multiplier``), or ``None``. :mod:`steerlab.bake`
            divides a ``resid_post`` bias by it, so the block output still moves by exactly ``alpha * v``.
        final_norm: path from the module holding the blocks (the parent of ``layers``) to the norm applied to
            the last block's output before the unembedding, or ``None`` if unknown.
        project_out: path from that same module to a projection between the final norm and the unembedding,
            applied when the model has one (OPT variants whose embedding width differs from the residual's).
        logit_scale: name of the config attribute the logits are multiplied by (Cohere's ``logit_scale``).
        logit_divisor: name of the config attribute the logits are divided by (Granite's ``logits_scaling``).
        logit_softcap: name of the config attribute ``c`` of the final soft cap ``c * tanh(logits / c)`` (Gemma
            2/3's ``final_logit_softcapping``). Each of the three is skipped when the config's value is ``None``.

    The last five describe the output head, ``last block output -> logits``, which
    :func:`steerlab.evaluate.logits_over_alphas` recomputes to replay the blocks above a steered layer (and
    checks against the model's own logits before trusting).

    Example:
        >>> register_architecture("my_llama_clone", ArchSpec(layers=("backbone.blocks",), final_norm="ln_out"))
    """

    layers: tuple[str, ...]
    attn_out: str | None = "self_attn"
    mlp_out: str | None = "mlp"
    post_norms: bool = False
    residual_multiplier: str | None = None
    final_norm: str | None = "norm"
    project_out: str | None = None
    logit_scale: str | None = None
    logit_divisor: str | None = None
    logit_softcap: str | None = None


_LAYERS = ("model.layers", "model.language_model.layers")
_LLAMA_LIKE = ArchSpec(layers=_LAYERS)
# GPT-2 and its descendants: blocks at transformer.h, final norm ln_f.
_GPT2_LIKE = ArchSpec(layers=("transformer.h",), attn_out="attn", mlp_out="mlp", final_norm="ln_f")
# Gemma 2/3 and OLMo 2 normalise each sublayer's output before adding it to the residual stream.
_POST_NORM = ArchSpec(
    layers=_LAYERS, attn_out="post_attention_layernorm", mlp_out="post_feedforward_layernorm", post_norms=True
)

_REGISTRY: dict[str, ArchSpec] = {
    "gpt2": _GPT2_LIKE,
    "gpt_neo": _GPT2_LIKE,
    "gptj": _GPT2_LIKE,
    "falcon": ArchSpec(layers=("transformer.h",), attn_out="self_attention", mlp_out="mlp", final_norm="ln_f"),
    # Bloom's attention and MLP add the residual inside themselves: no clean sublayer output to hook.
    "bloom": ArchSpec(layers=("transformer.h",), attn_out=None, mlp_out=None, final_norm="ln_f"),
    "gpt_neox": ArchSpec(
        layers=("gpt_neox.layers",), attn_out="attention", mlp_out="mlp", final_norm="final_layer_norm"
    ),
    # OPT's blocks flatten the tokens before the MLP (fc1, fc2 sit in the block; no MLP module): fc2's output is
    # (batch * tokens, hidden), where neither recording nor positional steering can find a token. No mlp_out.
    "opt": ArchSpec(
        layers=("model.decoder.layers",),
        attn_out="self_attn",
        mlp_out=None,
        final_norm="final_layer_norm",
        project_out="project_out",
    ),
    "phi": ArchSpec(layers=("model.layers",), final_norm="final_layernorm"),
    "olmo2": _POST_NORM,
    **dict.fromkeys(("gemma2", "gemma3", "gemma3_text"), replace(_POST_NORM, logit_softcap="final_logit_softcapping")),
    "cohere": replace(_LLAMA_LIKE, logit_scale="logit_scale"),
    "granite": replace(_LLAMA_LIKE, residual_multiplier="residual_multiplier", logit_divisor="logits_scaling"),
    **dict.fromkeys(
        (
            "llama",
            "mistral",
            "mixtral",
            "qwen2",
            "qwen2_moe",
            "qwen3",
            "qwen3_moe",
            "gemma",
            "phi3",
            "olmo",
            "smollm3",
        ),
        _LLAMA_LIKE,
    ),
}

# Where a wrapper keeps the model it wraps, tried after the model itself: peft's PeftModel (LoRA and the other
# adapters) holds the transformers model at base_model.model, so a registered layout is still found, and steering
# hooks land on the same blocks the adapters train through.
_WRAPPERS = ("", "base_model.model.")

# What the heuristic looks for when a model type is not registered: the final norm's usual names on the module
# holding the blocks, and the config attributes that scale the logits (the fields of ArchSpec they fill).
_FINAL_NORM_NAMES = ("norm", "ln_f", "final_layer_norm", "final_layernorm", "norm_f")
_LOGIT_ATTRIBUTES = {
    "logit_scale": "logit_scale",
    "logit_divisor": "logits_scaling",
    "logit_softcap": "final_logit_softcapping",
}


@dataclass
class ModelLayout:
    """The resolved layout of one model: its blocks, its dimensions and the parts of its output head.

    Attributes:
        model_type: the text config's ``model_type``.
        layers: the ``ModuleList`` of decoder blocks, found at ``layers_path``.
        spec: the :class:`ArchSpec` it was resolved with (for the heuristic, one built from what was found).
        num_layers, hidden_size: from the config, checked against the blocks.
        num_heads: the config's ``num_attention_heads`` (``None`` when it has none).
        source: ``"override"``, ``"registry"`` or ``"heuristic"``.
        final_norm: the module ``spec.final_norm`` names, or ``None`` when the model has none there.
        project_out: the module ``spec.project_out`` names, or ``None`` when the model has none there.
    """

    model_type: str
    layers: nn.ModuleList
    layers_path: str
    spec: ArchSpec
    num_layers: int
    hidden_size: int
    source: str = field(default="registry")  # "override", "registry" or "heuristic"
    final_norm: nn.Module | None = None
    project_out: nn.Module | None = None
    num_heads: int | None = None  # the config's num_attention_heads

    def block(self, index: int) -> nn.Module:
        """The decoder block at ``index`` (0-based, Hugging Face numbering)."""
        check_layer_index(index, self.num_layers)
        return self.layers[index]

    def site_module(self, index: int, site: str) -> tuple[nn.Module, bool]:
        """The module to hook for ``site`` at block ``index``, and whether to hook its input (a pre-hook)."""
        check_site(site)
        block = self.block(index)
        if site in ("resid_pre", "resid_post"):
            return block, site == "resid_pre"
        if site == "heads":
            return self.heads(index)[0], True
        path = self.spec.attn_out if site == "attn_out" else self.spec.mlp_out
        module = _resolve_path(block, path) if path else None
        if module is None:
            why = (
                f"'{path}' is not a module of its blocks"
                if path
                else "its blocks have no module whose output is exactly that sublayer's contribution"
            )
            raise ArchitectureError(
                f"site '{site}' is not available for model_type '{self.model_type}': {why}. Use 'resid_pre' or "
                "'resid_post', or register the architecture with the right module path."
            )
        return module, False

    def heads(self, index: int) -> tuple[nn.Module, int, int]:
        """The attention output projection of block ``index`` (its input holds the heads' outputs side by side),
        the number of heads and each head's width: what the ``heads`` site reads and steers.

        Example:
            >>> module, heads, head_size = get_layout(model).heads(3)   # SmolLM2: o_proj, 9, 64
        """
        block = self.block(index)
        found = [
            module
            for name, module in block.named_modules()
            if "." in name
            and name.rsplit(".", 1)[1] in _OUT_PROJECTIONS
            and any(part in name.rsplit(".", 1)[0].rsplit(".", 1)[-1] for part in ("attn", "attention"))
        ]
        heads = self.num_heads
        width = _input_width(found[0]) if len(found) == 1 else None
        if len(found) != 1 or not heads or not width or width % heads:
            raise ArchitectureError(
                f"site 'heads' is not available for model_type '{self.model_type}': it needs the attention output "
                f"projection (a module named one of {list(_OUT_PROJECTIONS)} inside the attention, whose input is "
                f"num_attention_heads equal slices); found {len(found)} such module(s), {heads} heads, input width "
                f"{width}. Use the 'attn_out' site, or register the architecture."
            )
        return found[0], heads, width // heads

    def site_width(self, site: str) -> int:
        """The width of the activations at ``site``: the residual width, or heads x head width for ``heads``."""
        if site == "heads":
            _, heads, head_size = self.heads(0)
            return heads * head_size
        return self.hidden_size


# The names of attention output projections (Llama-like o_proj, OPT and GPT-J out_proj, GPT-2 c_proj, NeoX, Falcon,
# Phi and Bloom dense), looked for inside a module whose name says attention.
_OUT_PROJECTIONS = ("o_proj", "out_proj", "c_proj", "dense")


def _input_width(module: nn.Module) -> int | None:
    width = getattr(module, "in_features", None)
    if width is None:
        weight = getattr(module, "weight", None)  # GPT-2's Conv1D: weight (in, out)
        width = weight.shape[0] if weight is not None and weight.dim() == 2 else None
    return width


def check_site(site: str) -> None:
    """Raise unless ``site`` is one of :data:`SITES`."""
    if site not in SITES:
        raise ArchitectureError(f"unknown site {site!r}; expected one of {list(SITES)}.")


def check_layer_index(index: int, num_layers: int, *, negative: bool = False) -> int:
    """Raise if ``index`` is not a valid block index; return it 0-based (Hugging Face numbering).

    With ``negative=True`` an index may count from the end as in Python (``-1``: the last block), as the layer
    ids of repeng and TransformerLens users do; everything stored (a vector's layers) stays 0-based.

    Example:
        >>> check_layer_index(-1, 30, negative=True)
        29
    """
    low = -num_layers if negative else 0
    if isinstance(index, bool) or not isinstance(index, int) or not low <= index < num_layers:
        counted = f", or {low}..-1 counted from the last" if negative else ""
        raise ArchitectureError(
            f"layer index {index!r} is out of range: this model has {num_layers} decoder layers, "
            f"numbered 0..{num_layers - 1} (Hugging Face numbering){counted}. Choose layers in that range."
        )
    return index % num_layers


def register_architecture(model_type: str, spec: ArchSpec) -> None:
    """Register (or replace) the facts of every model whose ``config.model_type`` matches.

    Models already in use pick the new entry up on their next :func:`get_layout`.

    Example:
        >>> register_architecture("my_llama_clone", ArchSpec(layers=("backbone.blocks",)))
    """
    if not isinstance(spec, ArchSpec):
        raise ArchitectureError(
            f"register_architecture needs an ArchSpec, got {type(spec).__name__}; "
            "write ArchSpec(layers=('path.to.blocks',))."
        )
    _REGISTRY[model_type] = spec


def registered_architectures() -> dict[str, ArchSpec]:
    """A copy of the registry: ``model_type -> ArchSpec``."""
    return dict(_REGISTRY)


def set_architecture(model: nn.Module, spec: ArchSpec | None) -> None:
    """Override the layout for this one model object (wins over the registry); ``None`` removes the override.

    Nothing is written onto the model: the override is kept beside it (:mod:`steerlab._state`) and applies to
    this object only (not to a ``copy.deepcopy`` of it).

    Example:
        >>> set_architecture(model, ArchSpec(layers=("model.decoder.blocks",), final_norm="ln_out"))
        >>> get_layout(model).source
        'override'
        >>> set_architecture(model, None)   # back to the registry
    """
    if spec is not None and not isinstance(spec, ArchSpec):
        raise ArchitectureError(
            f"set_architecture needs an ArchSpec or None, got {type(spec).__name__}; "
            "write ArchSpec(layers=('path.to.blocks',))."
        )
    found = state(model)
    found.arch = spec
    found.layout = found.layout_key = None  # resolve again on the next get_layout


def text_config(model: nn.Module):
    """The config that describes the decoder stack (the text config of a multimodal model)."""
    config = model.config
    get_text = getattr(config, "get_text_config", None)
    return get_text() if callable(get_text) else config


def _resolve_path(root: nn.Module, path: str) -> nn.Module | None:
    node = root
    for part in path.split("."):
        if not hasattr(node, part):
            return None
        node = getattr(node, part)
    return node if isinstance(node, nn.Module) else None


def _dims(model: nn.Module) -> tuple[int, int]:
    cfg = text_config(model)
    n_layers = getattr(cfg, "num_hidden_layers", None)
    width = getattr(cfg, "hidden_size", None)
    if n_layers is None or width is None:
        raise ArchitectureError(
            f"the model config ({type(cfg).__name__}) has no num_hidden_layers/hidden_size; "
            "steerlab needs both to check the layer layout. Set them on model.config."
        )
    return int(n_layers), int(width)


def _parent(model: nn.Module, layers_path: str) -> nn.Module:
    """The module holding the block list (paths in an ArchSpec's head fields start there)."""
    head, _, _ = layers_path.rpartition(".")
    return _resolve_path(model, head) if head else model


def _heuristic(model: nn.Module, n_layers: int) -> tuple[str, nn.ModuleList] | None:
    candidates = [
        (name, mod)
        for name, mod in model.named_modules()
        if isinstance(mod, nn.ModuleList) and len(mod) == n_layers and name
    ]
    if not candidates:
        return None
    # Prefer the shallowest list whose name looks like a block list.
    candidates.sort(key=lambda item: (item[0].split(".")[-1] not in ("layers", "h", "blocks"), item[0].count(".")))
    return candidates[0]


def _guessed_spec(model: nn.Module, path: str) -> ArchSpec:
    """An ArchSpec for blocks found by the heuristic: no sublayer sites (their modules are unknown), and the
    output head as far as the usual names show it (a wrong guess only costs the replay its shortcut: it checks
    the head against the model's own logits first)."""
    parent = _parent(model, path)
    norms = [name for name in _FINAL_NORM_NAMES if isinstance(getattr(parent, name, None), nn.Module)]
    config = text_config(model)
    logits = {field_name: attr for field_name, attr in _LOGIT_ATTRIBUTES.items() if hasattr(config, attr)}
    return ArchSpec(
        layers=(path,),
        attn_out=None,
        mlp_out=None,
        final_norm=norms[0] if len(norms) == 1 else None,
        project_out="project_out",
        **logits,
    )


def _layout(
    model: nn.Module,
    model_type: str,
    layers: nn.ModuleList,
    path: str,
    spec: ArchSpec,
    dims: tuple[int, int],
    source: str,
) -> ModelLayout:
    parent = _parent(model, path)
    final_norm = _resolve_path(parent, spec.final_norm) if spec.final_norm and parent is not None else None
    project_out = _resolve_path(parent, spec.project_out) if spec.project_out and parent is not None else None
    heads = getattr(text_config(model), "num_attention_heads", None)
    return ModelLayout(
        model_type, layers, path, spec, *dims, source, final_norm, project_out, int(heads) if heads else None
    )


def get_layout(model: nn.Module) -> ModelLayout:
    """Find the decoder blocks of ``model`` and check them against its config.

    The layout is cached for this model object: a second call returns the same :class:`ModelLayout` until the
    override (:func:`set_architecture`), the registry entry, the model type, the dimensions or the block list
    change.

    Example:
        >>> layout = get_layout(model)
        >>> layout.num_layers, layout.hidden_size
        (30, 576)
    """
    dims = _dims(model)
    n_layers, width = dims
    model_type = getattr(text_config(model), "model_type", None) or getattr(model.config, "model_type", "?")
    found_state = state(model)
    override: ArchSpec | None = found_state.arch
    spec = override or _REGISTRY.get(model_type) or _REGISTRY.get(getattr(model.config, "model_type", ""))
    key = (model_type, dims, spec)
    cached = found_state.layout
    if (
        cached is not None
        and found_state.layout_key == key
        and _resolve_path(model, cached.layers_path) is cached.layers
    ):
        return cached
    layout = _resolve(model, model_type, dims, spec, override is not None)
    found_state.layout, found_state.layout_key = layout, key
    return layout


def _resolve(
    model: nn.Module, model_type: str, dims: tuple[int, int], spec: ArchSpec | None, is_override: bool
) -> ModelLayout:
    n_layers = dims[0]
    if spec is not None:
        for path in (prefix + p for p in spec.layers for prefix in _WRAPPERS):
            found = _resolve_path(model, path)
            if isinstance(found, nn.ModuleList):
                if len(found) != n_layers:
                    raise ArchitectureError(
                        f"'{path}' holds {len(found)} blocks but config.num_hidden_layers is {n_layers}; "
                        "the registered layout does not fit this model. Override it with "
                        "steerlab.arch.set_architecture(model, ArchSpec(layers=('path.to.blocks',)))."
                    )
                return _layout(model, model_type, found, path, spec, dims, "override" if is_override else "registry")
        if is_override:
            raise ArchitectureError(
                f"the architecture override names {list(spec.layers)}, but none of them is a ModuleList "
                f"on this {type(model).__name__}. Check the dotted path."
            )
    guess = _heuristic(model, n_layers)
    if guess is None:
        lists = [f"{n} ({len(m)})" for n, m in model.named_modules() if isinstance(m, nn.ModuleList)]
        raise ArchitectureError(
            f"cannot find the decoder blocks of model_type '{model_type}': expected a ModuleList of "
            f"{n_layers} blocks (config.num_hidden_layers); found ModuleLists: {lists or 'none'}. "
            "Register it: steerlab.arch.register_architecture("
            f"'{model_type}', ArchSpec(layers=('path.to.blocks',)))."
        )
    path, layers = guess
    # stacklevel 3: the caller of get_layout (this function is called by it).
    warnings.warn(
        f"model_type '{model_type}' is not in steerlab's registry; guessed the decoder blocks at '{path}'. "
        f"If that is right, silence this with steerlab.arch.register_architecture('{model_type}', "
        f"ArchSpec(layers=('{path}',)))",
        stacklevel=3,
    )
    return _layout(model, model_type, layers, path, _guessed_spec(model, path), dims, "heuristic")
