"""Layer discovery: a registry keyed by ``config.model_type``, a user override, and a warned heuristic.

Resolution order (first match wins):

1. an override attached to this model object with :func:`set_architecture`;
2. the registry entry for ``config.model_type`` (built in, or added with :func:`register_architecture`);
3. a heuristic: the ``nn.ModuleList`` whose length equals ``num_hidden_layers`` (warns, and says how to
   register the architecture so the warning goes away).

Whatever is found is checked against the config: the number of blocks must equal ``num_hidden_layers``;
the residual width is checked by :mod:`steerlab.record` on the first activation it sees.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

from torch import nn

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
    """Where to find the parts of a decoder-only transformer.

    Attributes:
        layers: dotted paths from the top-level model to the ``ModuleList`` of decoder blocks; the first
            that exists is used (multimodal wrappers nest the text model one level deeper).
        attn_out: path from a block to the module whose output the block adds to the residual stream as
            the attention's contribution, or ``None`` if there is none (the block adds the residual inside).
        mlp_out: the same for the MLP.

    Example:
        >>> register_architecture("my_llama_clone", ArchSpec(layers=("backbone.blocks",)))
    """

    layers: tuple[str, ...]
    attn_out: str | None = "self_attn"
    mlp_out: str | None = "mlp"


_LAYERS = ("model.layers", "model.language_model.layers")
_LLAMA_LIKE = ArchSpec(layers=_LAYERS)
# Gemma 2/3 and OLMo 2 normalise each sublayer's output before adding it to the residual stream.
_POST_NORM = ArchSpec(layers=_LAYERS, attn_out="post_attention_layernorm", mlp_out="post_feedforward_layernorm")

_REGISTRY: dict[str, ArchSpec] = {
    "gpt2": ArchSpec(layers=("transformer.h",), attn_out="attn", mlp_out="mlp"),
    "gpt_neo": ArchSpec(layers=("transformer.h",), attn_out="attn", mlp_out="mlp"),
    "gptj": ArchSpec(layers=("transformer.h",), attn_out="attn", mlp_out="mlp"),
    "falcon": ArchSpec(layers=("transformer.h",), attn_out="self_attention", mlp_out="mlp"),
    # Bloom's attention and MLP add the residual inside themselves: no clean sublayer output to hook.
    "bloom": ArchSpec(layers=("transformer.h",), attn_out=None, mlp_out=None),
    "gpt_neox": ArchSpec(layers=("gpt_neox.layers",), attn_out="attention", mlp_out="mlp"),
    "opt": ArchSpec(layers=("model.decoder.layers",), attn_out="self_attn", mlp_out="fc2"),
    "phi": ArchSpec(layers=("model.layers",), attn_out="self_attn", mlp_out="mlp"),
    **dict.fromkeys(("gemma2", "gemma3", "gemma3_text", "olmo2"), _POST_NORM),
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
            "granite",
            "cohere",
            "smollm3",
        ),
        _LLAMA_LIKE,
    ),
}


@dataclass
class ModelLayout:
    """The resolved layout of one model: its blocks and its dimensions."""

    model_type: str
    layers: nn.ModuleList
    layers_path: str
    spec: ArchSpec
    num_layers: int
    hidden_size: int
    source: str = field(default="registry")  # "override", "registry" or "heuristic"

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


def check_site(site: str) -> None:
    """Raise unless ``site`` is one of :data:`SITES`."""
    if site not in SITES:
        raise ArchitectureError(f"unknown site {site!r}; expected one of {list(SITES)}.")


def check_layer_index(index: int, num_layers: int) -> None:
    """Raise if ``index`` is not a valid 0-based block index (negative indices are not accepted)."""
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < num_layers:
        raise ArchitectureError(
            f"layer index {index!r} is out of range: this model has {num_layers} decoder layers, "
            f"numbered 0..{num_layers - 1} (Hugging Face numbering). Choose layers in that range."
        )


def register_architecture(model_type: str, spec: ArchSpec) -> None:
    """Register (or replace) where the blocks are for every model whose ``config.model_type`` matches."""
    _REGISTRY[model_type] = spec


def registered_architectures() -> dict[str, ArchSpec]:
    """A copy of the registry: ``model_type -> ArchSpec``."""
    return dict(_REGISTRY)


def set_architecture(model: nn.Module, spec: ArchSpec) -> None:
    """Override the layout for this one model object (wins over the registry)."""
    model._steerlab_arch = spec  # an attribute, not a module: nothing of the model is replaced


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


def get_layout(model: nn.Module) -> ModelLayout:
    """Find the decoder blocks of ``model`` and check them against its config.

    Example:
        >>> layout = get_layout(model)
        >>> layout.num_layers, layout.hidden_size
        (30, 576)
    """
    n_layers, width = _dims(model)
    model_type = getattr(text_config(model), "model_type", None) or getattr(model.config, "model_type", "?")
    override: ArchSpec | None = getattr(model, "_steerlab_arch", None)
    spec = override or _REGISTRY.get(model_type) or _REGISTRY.get(getattr(model.config, "model_type", ""))
    if spec is not None:
        for path in spec.layers:
            found = _resolve_path(model, path)
            if isinstance(found, nn.ModuleList):
                if len(found) != n_layers:
                    raise ArchitectureError(
                        f"'{path}' holds {len(found)} blocks but config.num_hidden_layers is {n_layers}; "
                        "the registered layout does not fit this model. Override it with "
                        "steerlab.arch.set_architecture(model, ArchSpec(layers=('path.to.blocks',)))."
                    )
                source = "override" if override is not None else "registry"
                return ModelLayout(model_type, found, path, spec, n_layers, width, source)
        if override is not None:
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
    warnings.warn(
        f"model_type '{model_type}' is not in steerlab's registry; guessed the decoder blocks at '{path}'. "
        f"If that is right, silence this with steerlab.arch.register_architecture('{model_type}', "
        f"ArchSpec(layers=('{path}',)))",
        stacklevel=2,
    )
    return ModelLayout(
        model_type,
        layers,
        path,
        ArchSpec(layers=(path,), attn_out=None, mlp_out=None),
        n_layers,
        width,
        "heuristic",
    )
