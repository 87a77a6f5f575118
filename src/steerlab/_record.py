"""Record residual-stream activations at chosen layers: batched, padding-aware, stopping early.

By default the residual stream is read at the output of a decoder block (site ``resid_post``), the same
tensor as ``output_hidden_states[layer + 1]`` in Hugging Face numbering; the other sites are the block's
input and the attention and MLP contributions (:data:`steerlab.arch.SITES`).

Attention sink: in most decoder models the first token of every sequence carries a residual norm orders of
magnitude larger than the rest (on SmolLM2-135M about 24,000 against about 175). A mean over tokens that
includes it is dominated by it, and a difference of such means points almost entirely along the sink. So
``reduce="mean"`` and ``reduce="all"`` leave the first real token out unless ``exclude_first_token=False``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from steerlab._calling import cache_argument
from steerlab._forward import input_device
from steerlab._hooks import HookSet
from steerlab._models import ModelFingerprint, fingerprint, model_id
from steerlab._progress import track
from steerlab._text import encode, forward_kwargs, pad_batch, pad_id, position_ids_from_mask, takes_position_ids
from steerlab.arch.registry import check_layer_index, check_site, get_layout
from steerlab.errors import ArchitectureError, DataError

__all__ = ["ActivationReader", "Activations", "Reader", "Reduce", "make_reader", "record", "register_engine_reader"]

Reduce = Literal["last", "mean", "all"]


@dataclass
class Activations:
    """Recorded activations, in the order of the input texts.

    Attributes:
        values: ``layer -> tensor``; ``(n_texts, hidden)`` for ``last``/``mean``; for ``all`` the kept
            tokens of every text stacked, ``(sum(lengths), hidden)``.
        lengths: for ``all``, how many tokens of each text are in ``values`` (else ``None``).
        resid_norm: ``layer -> mean L2 norm`` of the activations at the site over the real tokens read
            (sink excluded): the model's own activation scale there.
    """

    layers: list[int]
    reduce: str
    values: dict[int, torch.Tensor]
    lengths: list[int] | None = None
    resid_norm: dict[int, float] = field(default_factory=dict)
    site: str = "resid_post"

    def per_text(self, layer: int) -> list[torch.Tensor]:
        """For ``reduce="all"``: one ``(tokens, hidden)`` tensor per text."""
        if self.lengths is None:
            return list(self.values[layer])
        return list(torch.split(self.values[layer], self.lengths))


def shared_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens two texts share, leaving at least one token of each to continue."""
    limit = min(len(a), len(b)) - 1
    k = 0
    while k < limit and a[k] == b[k]:
        k += 1
    return k


class _StopForward(Exception):
    """Raised by the hook on the deepest layer asked for: nothing above it needs computing."""


def check_layers(layers: Sequence[int] | int | None, num_layers: int) -> list[int]:
    """The one check of the layers to read: ``None`` is every block, negative indices count from the last
    (``-1``), and the result is 0-based, sorted and unique, so what is recorded is keyed the same way however the
    layers were named."""
    if layers is None:
        return list(range(num_layers))
    if isinstance(layers, int):
        layers = [layers]
    given = [int(x) if not isinstance(x, bool) else x for x in layers]
    if not given:
        raise ArchitectureError("no layers were given; pass at least one layer index, e.g. layers=[12].")
    return sorted({check_layer_index(layer, num_layers, negative=True) for layer in given})


class Reader:
    """What :func:`record` and extraction need of an engine that reads activations: :meth:`run` yields each
    batch's reduced values at :attr:`layers` (0-based, sorted), :attr:`width` is a value's width,
    :attr:`resid_norm` the mean activation norm per layer over everything read so far (real tokens, attention
    sink excluded), and :attr:`model_id` / :attr:`fingerprint` name the model a vector from it belongs to.
    :class:`ActivationReader` reads a transformers model; ``steerlab.vllm`` registers one for a ``vllm.LLM``."""

    layers: list[int]
    width: int
    model_id: str
    fingerprint: ModelFingerprint

    def __init__(self, layers: list[int], reduce: str, site: str, exclude_first_token: bool) -> None:
        if reduce not in ("last", "mean", "all"):
            raise DataError(f"reduce={reduce!r} is not valid; expected 'last', 'mean' or 'all'.")
        self.layers = layers
        self.reduce = reduce
        self.site = site
        self.exclude_first_token = exclude_first_token
        self.single_token_seen = False
        self._norm_sum = dict.fromkeys(self.layers, 0.0)
        self._norm_count = dict.fromkeys(self.layers, 0)

    @property
    def resid_norm(self) -> dict[int, float]:
        """Mean L2 norm of the activations read so far (real tokens, attention sink excluded), per layer."""
        return {layer: self._norm_sum[layer] / max(self._norm_count[layer], 1) for layer in self.layers}

    def run(
        self, token_ids: Sequence[Sequence[int]], batches: Sequence[Sequence[int]], *, progress: bool = False
    ) -> Iterator[tuple[list[int], dict[int, Any]]]:  # pragma: no cover - every reader defines it
        raise NotImplementedError

    def can_share_prefixes(self) -> bool:
        """Whether the reader has :meth:`ActivationReader.run_pairs` (it pays where pairs begin alike)."""
        return False

    def warn_single_tokens(self) -> None:
        if self.single_token_seen and self.reduce != "last" and self.exclude_first_token:
            warnings.warn(
                "some texts have a single token; for them the first token was kept despite exclude_first_token=True.",
                stacklevel=3,
            )


# Readers for other engines (a factory returns None for a model that is not its engine's): steerlab.vllm adds
# one when it is imported, which vLLM does in every process through the plugin's entry point.
_ENGINE_READERS: list[Callable[..., Reader | None]] = []


def register_engine_reader(factory: Callable[..., Reader | None]) -> None:
    """Let :func:`record` and :func:`~steerlab.extract_vector` read another engine's models: ``factory(model,
    **reader_options)`` returns a :class:`Reader`, or ``None`` for a model that is not its engine's."""
    if factory not in _ENGINE_READERS:
        _ENGINE_READERS.append(factory)


def make_reader(model: Any, **options: Any) -> Reader:
    """The reader for ``model``: a registered engine's, else :class:`ActivationReader` (transformers)."""
    for factory in _ENGINE_READERS:
        reader = factory(model, **options)
        if reader is not None:
            return reader
    if type(model).__module__.split(".")[0] == "vllm":
        raise ArchitectureError(
            f"{type(model).__name__} is a vLLM engine, but steerlab's vLLM reader is not loaded: import steerlab.vllm "
            "first (vLLM loads it through the plugin's entry point unless STEERLAB_VLLM_DISABLE is set)."
        )
    return ActivationReader(model, **options)


class ActivationReader(Reader):
    """Runs batches through a transformers model and hands back, per batch, the reduced activations at chosen
    layers.

    The one engine behind :func:`record` (which keeps everything) and extraction (which folds each batch into
    running statistics and keeps nothing else). Stops the forward pass after the deepest layer it reads.
    ``layers`` may be ``None`` (every block) or count from the last (``-1``); :attr:`layers` holds them 0-based.
    ``resid_norm`` accumulates the mean activation norm per layer over every batch read so far.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        layers: Sequence[int] | int | None,
        reduce: Reduce = "last",
        site: str = "resid_post",
        exclude_first_token: bool = True,
        padding_side: str = "left",
        pad_id: int = 0,
    ) -> None:
        check_site(site)
        layout = get_layout(model)
        super().__init__(check_layers(layers, layout.num_layers), reduce, site, exclude_first_token)
        self.model = model
        self.layout = layout
        self.width = layout.site_width(site)  # the residual width; heads x head width at "heads"
        self.padding_side = padding_side
        self.pad_id = pad_id
        self.model_id = model_id(model)
        self.fingerprint = fingerprint(model)

    def _reduce(
        self, layer: int, hidden: torch.Tensor, mask: torch.Tensor, order: torch.Tensor, weight: int
    ) -> torch.Tensor | list[torch.Tensor] | None:
        """Reduce one layer's activations of a batch; ``order`` numbers each row's real tokens from 1 (the
        sink is number 1), ``weight`` counts tokens shared by several texts once per text in ``resid_norm``.
        ``weight == 2`` marks a shared prefix: only its norms are needed."""
        if hidden.shape[-1] != self.width:
            raise ArchitectureError(
                f"{self.site} of block {layer} has width {hidden.shape[-1]}, but the layout expects "
                f"{self.width}; the layer layout is wrong for this model. Override it with "
                "steerlab.arch.set_architecture."
            )
        hidden = hidden.float()
        real = mask.bool()
        keep = real & (order > 1) if self.exclude_first_token else real
        empty = ~keep.any(-1)
        if weight == 1 and empty.any():  # a one-token text: its only token is the sink; keep it, not nothing
            self.single_token_seen = True
            keep = keep | (real & empty[:, None])
        norms = hidden.norm(dim=-1)
        self._norm_sum[layer] += weight * float(norms[keep].sum())
        self._norm_count[layer] += weight * int(keep.sum())
        if weight != 1:
            return None
        if self.reduce == "last":
            last = (mask * torch.arange(mask.shape[1], device=mask.device)).argmax(-1)
            return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        if self.reduce == "mean":
            weights = keep.to(hidden.dtype)[..., None]
            return (hidden * weights).sum(1) / weights.sum(1)
        return [hidden[row][keep[row]] for row in range(hidden.shape[0])]

    @contextmanager
    def _hooked(self, state: dict[str, Any]) -> Iterator[None]:
        deepest = self.layers[-1]

        def make_hook(layer: int):
            def hook(hidden: torch.Tensor) -> None:
                state["out"][layer] = self._reduce(layer, hidden, state["mask"], state["order"], state["weight"])
                if layer == deepest:
                    raise _StopForward

            return hook

        with HookSet() as hooks, torch.inference_mode():
            for layer in self.layers:
                module, is_input = self.layout.site_module(layer, self.site)
                hooks.on_hidden(module, is_input, make_hook(layer))
            yield

    def _forward(self, state: dict[str, Any], **kwargs: Any) -> None:
        try:
            self.model(**kwargs)
        except _StopForward:
            return
        raise ArchitectureError(  # pragma: no cover - the deepest hook always raises
            f"{self.site} of block {self.layers[-1]} was never reached in the forward pass."
        )

    def run(
        self, token_ids: Sequence[Sequence[int]], batches: Sequence[Sequence[int]], *, progress: bool = False
    ) -> Iterator[tuple[list[int], dict[int, Any]]]:
        """For each batch (a list of indices into ``token_ids``), yield ``(indices, layer -> values)``: values
        are ``(batch, hidden)`` float32 tensors for ``last``/``mean``, a list of ``(tokens, hidden)`` for ``all``."""
        device = input_device(self.model)
        state: dict[str, Any] = {"weight": 1}
        with self._hooked(state):
            for rows in track(batches, "recording", show=progress):
                rows = list(rows)
                input_ids, mask = pad_batch([list(token_ids[i]) for i in rows], self.pad_id, side=self.padding_side)
                input_ids, mask = input_ids.to(device), mask.to(device)
                state.update(mask=mask, order=mask.cumsum(-1), out={})
                self._forward(state, **forward_kwargs(self.model, input_ids, mask))
                yield rows, state["out"]

    def can_share_prefixes(self) -> bool:
        """Whether :meth:`run_pairs` applies: the last token is read, and the model takes position ids (so a
        continuation after a padded prefix sees the positions it would see alone)."""
        return self.reduce == "last" and takes_position_ids(self.model)

    def run_pairs(
        self,
        first: Sequence[Sequence[int]],
        second: Sequence[Sequence[int]],
        groups: Sequence[Sequence[int]],
        *,
        progress: bool = False,
    ) -> Iterator[tuple[list[int], dict[int, Any]]]:
        """Read pairs of texts that begin with the same tokens, computing that common beginning once.

        For each group of pair indices: the common prefixes run once, filling a KV cache (up to the deepest
        layer read); the cache is repeated for the two texts of each pair, and both continuations run on it.
        Yields ``(text indices, layer -> values)`` like :meth:`run`, where text ``k`` is ``first[k]`` and text
        ``len(first) + k`` is ``second[k]``. The numbers equal :meth:`run`'s up to float rounding; every pair
        needs a common prefix of at least one token and a continuation of at least one on both sides
        (:func:`shared_prefix_length`).
        """
        from transformers import DynamicCache

        if not self.can_share_prefixes():
            raise DataError("run_pairs reads the last token of models that take position ids; use run().")
        n = len(first)
        device = input_device(self.model)
        cache_name = cache_argument(self.model)  # `cache` from transformers 5.24 on, `past_key_values` before
        state: dict[str, Any] = {}
        with self._hooked(state):
            for group in track(groups, "recording", show=progress):
                group = list(group)
                common = [shared_prefix_length(first[i], second[i]) for i in group]
                if min(common) < 1:
                    raise DataError("every pair given to run_pairs needs a common first token.")
                prefixes = [list(first[i][:k]) for i, k in zip(group, common, strict=True)]
                prefix_ids, prefix_mask = pad_batch(prefixes, self.pad_id)
                prefix_ids, prefix_mask = prefix_ids.to(device), prefix_mask.to(device)
                cache = DynamicCache(config=self.model.config)
                # The prefix counts twice in the norms: run() would have read it once in each text.
                state.update(mask=prefix_mask, order=prefix_mask.cumsum(-1), out={}, weight=2)
                kwargs = {**forward_kwargs(self.model, prefix_ids, prefix_mask), "use_cache": True}
                self._forward(state, **kwargs, **{cache_name: cache})
                cache.batch_repeat_interleave(2)
                rows = [index for i in group for index in (i, n + i)]  # interleaved, as the repeated cache
                rests = [list(text[k:]) for i, k in zip(group, common, strict=True) for text in (first[i], second[i])]
                rest_ids, rest_mask = pad_batch(rests, self.pad_id, side="right")
                rest_ids, rest_mask = rest_ids.to(device), rest_mask.to(device)
                full_mask = torch.cat([prefix_mask.repeat_interleave(2, dim=0), rest_mask], dim=1)
                width = rest_ids.shape[1]
                order = full_mask.cumsum(-1)[:, -width:]
                state.update(mask=rest_mask, order=order, out={}, weight=1)
                self._forward(
                    state,
                    input_ids=rest_ids,
                    attention_mask=full_mask,
                    position_ids=position_ids_from_mask(full_mask)[:, -width:],
                    **{cache_name: cache},
                    use_cache=True,
                )
                yield rows, state["out"]


def check_texts(texts: Sequence[str]) -> list[str]:
    """The texts as a list, or a clear error for an empty list or an empty / non-string entry."""
    texts = list(texts)
    if not texts:
        raise DataError("no texts to record; pass at least one string.")
    if any(not isinstance(t, str) or not t for t in texts):
        raise DataError("every text must be a non-empty string; found an empty or non-string entry.")
    return texts


def length_batches(lengths: Sequence[int], batch_size: int, max_padding: float = 0.1) -> list[list[int]]:
    """Indices grouped into batches of at most ``batch_size`` texts of similar length.

    Longest first; a batch is closed before padding would exceed ``max_padding`` of its tokens, so little
    compute goes to padding (a forward pass costs in proportion to rows x longest row).
    """
    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}.")
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    batches: list[list[int]] = []
    current: list[int] = []
    waste = 0
    for index in order:
        if current:
            longest = lengths[current[0]]
            extra = longest - lengths[index]
            if len(current) == batch_size or waste + extra > max_padding * longest * (len(current) + 1):
                batches.append(current)
                current, waste = [], 0
            else:
                waste += extra
        current.append(index)
    if current:
        batches.append(current)
    return batches


def record(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    layers: Sequence[int] | int | None = None,
    reduce: Reduce = "last",
    batch_size: int = 16,
    exclude_first_token: bool = True,
    padding_side: str = "left",
    site: str = "resid_post",
    progress: bool | None = None,
) -> Activations:
    """Run ``texts`` through ``model`` and keep the block outputs at ``layers``.

    ``model`` is a transformers model, or a ``vllm.LLM`` served with steerlab's plugin (``import steerlab.vllm``;
    docs/vllm.md): the same tokens, layers, sites and reductions, read inside vLLM's batches.

    Args:
        layers: block indices, 0-based (Hugging Face numbering) or negative from the last (``-1``); the result is
            keyed 0-based. ``None`` (default) reads every block, which runs the whole model and keeps
            ``n_texts x num_layers x hidden`` floats (``n_texts x tokens x ...`` for ``reduce="all"``); naming
            layers stops the forward pass after the deepest one.
        reduce: ``"last"`` (the last real token), ``"mean"`` (mean over real tokens) or ``"all"``.
        exclude_first_token: leave the attention-sink token out of ``mean``/``all`` (see module doc).
        padding_side: ``"left"`` or ``"right"``; both give the same numbers (position ids count only real
            tokens), the choice only matters for speed on some kernels.
        site: ``resid_post`` (block output, default), ``resid_pre`` (block input), ``attn_out`` or ``mlp_out``
            (a sublayer's contribution to the residual stream); see :data:`steerlab.arch.SITES`.
        progress: report progress on stderr (a bar on a terminal, a plain line every 10 s otherwise); ``None``
            reports when there are more than 8 batches.

    Example:
        >>> acts = record(model, tokenizer, ["I love it", "I hate it"], layers=[10, 12])
        >>> acts.values[10].shape
        torch.Size([2, 576])
    """
    texts = check_texts(texts)
    reader = make_reader(
        model,
        layers=layers,
        reduce=reduce,
        site=site,
        exclude_first_token=exclude_first_token,
        padding_side=padding_side,
        pad_id=pad_id(tokenizer),
    )
    token_ids = encode(tokenizer, texts)
    batches = length_batches([len(ids) for ids in token_ids], batch_size)
    show = progress if progress is not None else len(batches) > 8
    per_text: dict[int, list[torch.Tensor | None]] = {layer: [None] * len(texts) for layer in reader.layers}
    for rows, values in reader.run(token_ids, batches, progress=show):
        for layer, batch_values in values.items():
            for row, text_i in enumerate(rows):
                per_text[layer][text_i] = batch_values[row].cpu()
    reader.warn_single_tokens()
    stacked: dict[int, torch.Tensor] = {}
    lengths = None
    for layer in reader.layers:
        items = [t for t in per_text[layer] if t is not None]
        if reduce == "all":
            lengths = [t.shape[0] for t in items]
            stacked[layer] = torch.cat(items)
        else:
            stacked[layer] = torch.stack(items)
    return Activations(reader.layers, reduce, stacked, lengths, reader.resid_norm, site)
