"""Directions from contrasting activations.

The functions at the top are pure: ``(positives, negatives) -> direction`` on ``(n_pairs, hidden)``
tensors, row ``i`` of each forming pair ``i``. :data:`METHODS` holds one :class:`Method` record per method (the
function, how many pairs it takes, and whether it needs every pair's difference or only their mean), which
everything that depends on the method reads. :func:`extract_vector` runs the model and folds the activations
into each layer's direction as the record says.

Methods:

* ``mean_diff`` (CAA, Rimsky et al.): mean of ``pos - neg``.
* ``pca_diff`` (repeng's ``pca_diff``): first principal component of the pair differences, after centring
  them (so it is the main axis along which the differences *vary*; equal to repeng's output).
* ``pca_center`` (RepE / repeng's ``pca_center``): first principal component of the activations after each
  pair is centred on its own midpoint; this keeps the mean difference and is the more stable of the two.
* ``actadd`` (Turner et al.): the difference of a single pair.

PCA directions are unit vectors with their sign fixed so that, in most pairs, the positive text projects
higher than the negative one (ties broken by the mean projection).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from steerlab._pairs import PairLike, as_pairs, dataset_hash, pair_texts
from steerlab._record import Reduce, length_batches, make_reader, shared_prefix_length
from steerlab._text import encode, pad_id
from steerlab.errors import ExtractionError

__all__ = ["METHODS", "Method", "actadd", "extract_vector", "mean_diff", "pca_center", "pca_diff"]


def _check(pos: torch.Tensor, neg: torch.Tensor, method: str) -> torch.Tensor:
    """Validate a (positives, negatives) pair of tensors for ``method`` and return their differences in float64."""
    if pos.dim() != 2 or pos.shape != neg.shape:
        raise ExtractionError(
            f"{method}: positives and negatives must both be (n_pairs, hidden) with the same shape; found "
            f"{tuple(pos.shape)} and {tuple(neg.shape)}. Pass one positive and one negative per pair."
        )
    METHODS[method].check_pairs(pos.shape[0])
    bad = ~(torch.isfinite(pos).all(-1) & torch.isfinite(neg).all(-1))
    if bad.any():
        raise ExtractionError(
            f"{method}: activations of pairs {bad.nonzero().flatten().tolist()[:5]} contain NaN or inf (the model "
            "overflowed, often fp16 on a model trained in bf16). Load the model in float32 or bfloat16."
        )
    return pos.double() - neg.double()


def _first_component(points: torch.Tensor) -> torch.Tensor:
    # Right singular vector of the (already centred) data: the first principal axis.
    _, _, vh = torch.linalg.svd(points.double(), full_matrices=False)
    return vh[0]


def _orient(direction: torch.Tensor, diffs: torch.Tensor) -> torch.Tensor:
    proj = diffs @ direction
    votes = int((proj > 0).sum()) - int((proj < 0).sum())
    if votes < 0 or (votes == 0 and float(proj.mean()) < 0):
        direction = -direction
    return direction


def _pca_diff(diffs: torch.Tensor) -> torch.Tensor:
    centred = diffs - diffs.mean(0)
    if float(centred.abs().max()) == 0.0:
        raise ExtractionError(
            "pca_diff: all pair differences are identical, so they have no principal axis; use mean_diff or pca_center."
        )
    return _orient(_first_component(centred), diffs)


def _pca_center(diffs: torch.Tensor) -> torch.Tensor:
    # Centred on its pair's midpoint, a pair is the two points +d/2 and -d/2: their principal axis is the first
    # (uncentred) right singular vector of the differences themselves.
    return _orient(_first_component(diffs), diffs)


def mean_diff(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """Mean of ``pos - neg`` (CAA). Not normalised: its norm is the typical separation of the pairs."""
    return _check(pos, neg, "mean_diff").mean(0).to(pos.dtype)


def actadd(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """The difference of a single pair (ActAdd: e.g. "Love" minus "Hate")."""
    return _check(pos, neg, "actadd")[0].to(pos.dtype)


def pca_diff(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """First principal component of the centred pair differences (repeng ``pca_diff``), unit norm."""
    return _pca_diff(_check(pos, neg, "pca_diff")).to(pos.dtype)


def pca_center(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """First principal component of the activations centred on each pair's midpoint (RepE), unit norm."""
    return _pca_center(_check(pos, neg, "pca_center")).to(pos.dtype)


@dataclass(frozen=True)
class Method:
    """One extraction method.

    Attributes:
        name: what ``extract_vector(method=...)`` and ``steerlab extract --method`` take.
        function: ``(positives, negatives) -> direction`` on ``(n_pairs, hidden)`` tensors (row ``i`` of each
            forming pair ``i``); calling the record calls it.
        from_differences: the same direction from the ``(n_pairs, hidden)`` float64 pair differences, for a method
            that needs each pair's difference (the PCA methods: an axis and a vote over pairs); ``None`` when the
            mean difference is all it needs, which :class:`PairStatistics` keeps as a running sum (memory
            independent of the number of pairs).
        min_pairs, max_pairs: how many pairs it takes (``max_pairs=None``: no limit).

    Example:
        >>> METHODS["pca_diff"].per_pair, METHODS["pca_diff"](pos, neg).shape
        (True, torch.Size([576]))
    """

    name: str
    function: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    from_differences: Callable[[torch.Tensor], torch.Tensor] | None = None
    min_pairs: int = 1
    max_pairs: int | None = None

    def __call__(self, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        return self.function(pos, neg)

    @property
    def per_pair(self) -> bool:
        """Whether the direction needs every pair's difference (``False``: their mean is enough)."""
        return self.from_differences is not None

    def check_pairs(self, n_pairs: int) -> None:
        """Raise unless the method can use ``n_pairs`` pairs."""
        if self.max_pairs == self.min_pairs and n_pairs != self.min_pairs:
            raise ExtractionError(
                f"{self.name} needs exactly {self.min_pairs} pair{'s' * (self.min_pairs != 1)}, found {n_pairs}; "
                "use mean_diff for several pairs."
            )
        if n_pairs < self.min_pairs:
            raise ExtractionError(f"{self.name} needs at least {self.min_pairs} pairs, found {n_pairs}.")
        if self.max_pairs is not None and n_pairs > self.max_pairs:
            raise ExtractionError(f"{self.name} needs at most {self.max_pairs} pairs, found {n_pairs}.")


METHODS: dict[str, Method] = {
    method.name: method
    for method in (
        Method("mean_diff", mean_diff),
        Method("pca_diff", pca_diff, from_differences=_pca_diff, min_pairs=2),
        Method("pca_center", pca_center, from_differences=_pca_center, min_pairs=2),
        Method("actadd", actadd, min_pairs=1, max_pairs=1),
    )
}


def method_record(name: str) -> Method:
    """The record of method ``name``, or an error listing the methods."""
    if name not in METHODS:
        raise ExtractionError(f"unknown method {name!r}; choose one of {sorted(METHODS)}.")
    return METHODS[name]


class PairStatistics:
    """What one layer's direction needs from the pairs, folded in text by text, in any order.

    A method whose direction is the mean difference (``mean_diff``, ``actadd``) keeps a running float64 sum
    (positives added, negatives subtracted): memory independent of the number of pairs. One that needs each pair's
    difference (:attr:`Method.per_pair`: the PCA methods) keeps one float32 difference per pair
    (``n_pairs x hidden``), the least that orienting the axis by a vote over pairs needs; never the activations
    of the other tokens. A pair's two texts may arrive in different batches.
    """

    def __init__(self, method: str, n_pairs: int, width: int) -> None:
        self.record = method_record(method)
        self.method = method
        self.n_pairs = n_pairs
        self.seen = torch.zeros(2 * n_pairs, dtype=torch.bool)
        self.total = torch.zeros(width, dtype=torch.float64)
        # float32 like the activations themselves: half the memory of float64; the SVD runs in float64.
        self.diffs = torch.zeros(n_pairs, width, dtype=torch.float32) if self.record.per_pair else None

    def add(self, text_ids: Sequence[int], values: torch.Tensor) -> None:
        """Fold in activations: row ``i`` belongs to text ``text_ids[i]``, where text ``k < n_pairs`` is the
        positive of pair ``k`` and text ``n_pairs + k`` its negative."""
        ids = torch.as_tensor(list(text_ids), dtype=torch.long)
        pairs = ids % self.n_pairs
        bad = ~torch.isfinite(values).all(-1).cpu()
        if bad.any():
            raise ExtractionError(
                f"{self.method}: activations of pairs {sorted(set(pairs[bad].tolist()))[:5]} contain NaN or inf "
                "(the model overflowed, often fp16 on a model trained in bf16). Load the model in float32 or bfloat16."
            )
        signed = values.double().cpu() * torch.where(ids < self.n_pairs, 1.0, -1.0).double()[:, None]
        self.total += signed.sum(0)
        if self.diffs is not None:
            self.diffs.index_add_(0, pairs, signed.float())
        self.seen[ids] = True

    def direction(self) -> torch.Tensor:
        """The layer's direction (float32) from everything folded in."""
        if not bool(self.seen.all()):
            raise ExtractionError(f"{self.method}: {int(self.seen.sum())} of {2 * self.n_pairs} texts were read.")
        if self.record.from_differences is not None:
            return self.record.from_differences(self.diffs.double()).float()
        return (self.total / self.n_pairs).float()


# Prefix sharing costs an extra forward call per batch; it pays when pairs share at least this many tokens and
# the shared tokens are at least this fraction of all (sentiment pairs share ~16% and run faster whole; CAA A/B
# pairs share ~50% and extract twice as fast shared).
_MIN_SHARED = 4
_MIN_SAVED = 0.25


def extract_vector(
    model: nn.Module,
    tokenizer: Any,
    pairs: Iterable[PairLike],
    *,
    layers: Sequence[int] | int | None = None,
    method: str = "mean_diff",
    reduce: Reduce = "last",
    site: str = "resid_post",
    normalize: bool = False,
    chat: bool | None = None,
    batch_size: int = 16,
    share_prefixes: bool = True,
    progress: bool | None = None,
):
    """Extract a :class:`~steerlab.SteeringVector` (one direction per layer) from contrast pairs.

    ``model`` is a transformers model, or a ``vllm.LLM`` served with steerlab's plugin (pass
    ``llm.get_tokenizer()``): the vector is then read where the model is served, with the same numbers up to float
    rounding (docs/vllm.md, "Reading").

    Args:
        pairs: contrast pairs, each a :class:`~steerlab.ContrastPair` or in a peer's shape
            (:data:`~steerlab.datasets.PairLike`): a ``(positive, negative)`` tuple (steering-vectors), a dict with
            keys ``positive``/``negative`` (and optionally ``prompt``) or a ``DatasetEntry`` (repeng). Anything
            else raises :class:`~steerlab.DataError` naming the item's index.
        layers: block indices to read, 0-based (Hugging Face numbering) or negative from the last (``-1``: the
            last block); the vector's layers are stored 0-based. ``None`` (default, as in steering-vectors)
            reads every block: the forward pass then runs through the whole model instead of stopping after the
            deepest layer asked for, the PCA methods keep ``n_pairs x hidden`` floats per layer, and the vector
            holds one direction per block.
        method: one of :data:`METHODS`: ``mean_diff``, ``pca_diff``, ``pca_center``, ``actadd``.
        reduce: which tokens stand for a text: ``last`` (default) or ``mean`` (first token excluded).
        site: where in the block to read (``resid_post`` default; see :data:`steerlab.arch.SITES`).
        normalize: scale each layer's direction to unit norm, so ``alpha`` is a force in residual units.
        chat: put a pair's ``prompt`` in the chat template (``None``: when the tokenizer has one).
        share_prefixes: with ``reduce="last"``, run the tokens both texts of a pair begin with once (a shared
            prompt or chat template; CAA pairs share all but the answer) and continue both from its KV cache.
            Same numbers up to float rounding; ``False`` runs every text whole.

    Example:
        >>> pairs = [ContrastPair("I love it", "I hate it"), ContrastPair("So happy", "So sad")]
        >>> vec = extract_vector(model, tokenizer, pairs, layers=[12], method="mean_diff")
        >>> vec.save("sentiment.safetensors")
        >>> last = extract_vector(model, tokenizer, [("I love it", "I hate it")], layers=[-1], method="actadd")
        >>> last.layers  # SmolLM2-135M has 30 blocks
        [29]
    """
    from steerlab._vector import SteeringVector

    record = method_record(method)
    if reduce == "all":
        raise ExtractionError("reduce='all' gives one row per token, not per pair; use 'last' or 'mean'.")
    pairs = as_pairs(pairs)
    if not pairs:
        raise ExtractionError("no contrast pairs were given; at least one is needed (two for PCA methods).")
    n = len(pairs)
    record.check_pairs(n)
    pos_texts, neg_texts = pair_texts(pairs, tokenizer, chat=chat)
    reader = make_reader(model, layers=layers, reduce=reduce, site=site, pad_id=pad_id(tokenizer))
    token_ids = encode(tokenizer, pos_texts + neg_texts)
    stats = {layer: PairStatistics(method, n, reader.width) for layer in reader.layers}
    # Pairs whose texts begin alike (a shared prompt, "I love" / "I hate") run that beginning once.
    common = [shared_prefix_length(token_ids[i], token_ids[n + i]) for i in range(n)] if share_prefixes else [0] * n
    shared = [i for i in range(n) if common[i] >= _MIN_SHARED] if reader.can_share_prefixes() else []
    if sum(common[i] for i in shared) < _MIN_SAVED * sum(len(ids) for ids in token_ids):
        shared = []  # too little in common: the extra forward calls would cost more than they save
    alone = sorted(set(range(2 * n)) - set(shared) - {n + i for i in shared})
    batches = [[alone[j] for j in b] for b in length_batches([len(token_ids[i]) for i in alone], batch_size)]
    groups = [[shared[j] for j in b] for b in length_batches([common[i] for i in shared], max(1, batch_size // 2))]
    show = progress if progress is not None else len(batches) + len(groups) > 8
    streams = [reader.run(token_ids, batches, progress=show)]
    if groups:
        streams.append(reader.run_pairs(token_ids[:n], token_ids[n:], groups, progress=show))
    # Each batch is folded into the statistics and dropped: memory does not grow with the number of pairs.
    for stream in streams:
        for rows, values in stream:
            for layer, batch_values in values.items():
                stats[layer].add(rows, batch_values)
    reader.warn_single_tokens()
    directions = {layer: stat.direction() for layer, stat in stats.items()}
    vector = SteeringVector(
        directions=directions,
        model_id=reader.model_id,
        fingerprint=reader.fingerprint,
        site=site,
        method=method,
        dataset_hash=dataset_hash(pairs),
        resid_norm=reader.resid_norm,
        extra={"reduce": reduce, "n_pairs": n},
    )
    return vector.normalized_copy() if normalize else vector
