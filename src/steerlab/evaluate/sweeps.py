"""Sweep layers x strengths (x operators), measuring a behaviour and coherence, and calibrate from the sweep.

Every cell of :func:`sweep` (one intervention at one layer, many alphas) is measured for the vector and for several
random directions of the same norm (the baseline: a distribution, one direction per seed), on one fixed token
batch per metric. Each metric's batch runs unsteered once, recorded at every swept layer
(:class:`steerlab._replay.UnsteeredPass`); a cell then runs only the blocks from its layer up, for each strength.
Records keep the behaviour per question, so effects get intervals over the questions and :func:`calibrate` can
choose a cell on some questions and measure it on the others.

:func:`calibrate` recommends a cell only when its effect, measured on questions that played no part in choosing
it, has the goal's sign and clearly beats the random directions (the rule is in its docstring); otherwise its
:class:`Recommendation` says "no setting found" and shows the best cell. A found one can be recorded in the
vector's metadata (``extra["recommended"]``), which ``alpha="recommended"`` then uses.

The default budget, :data:`DEFAULT_KL_BUDGET` = 0.2 nats/token of ``KL(steered || unsteered)`` on the neutral
text set, is where SmolLM2-135M's generations are still fluent: at its middle layers that KL is reached near
a relative strength of 0.2 (a push of 20% of the residual norm), and text breaks down past ~0.3, where KL is
0.5-0.8 (docs/measure.md has the numbers).
"""

from __future__ import annotations

import math
import os
import sys
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import torch
from torch import nn

from steerlab._interventions import Alpha, is_identity
from steerlab._models import fingerprint, model_id
from steerlab._progress import track
from steerlab._replay import UnsteeredPass
from steerlab._steer import Intervention, Scale, checked_layers
from steerlab._vector import SteeringVector
from steerlab.errors import SteeringError, StrengthWarning
from steerlab.evaluate._partial import PartialResults, digest
from steerlab.evaluate.metrics import ABBehaviour, ABQuestion, NeutralKL
from steerlab.evaluate.results import ResultTable
from steerlab.types import DEFAULT_SCALE

__all__ = [
    "DEFAULT_ALPHAS",
    "DEFAULT_KL_BUDGET",
    "DEFAULT_RANDOM_SEEDS",
    "FALSE_ALARM",
    "MIN_RANDOM_SEEDS",
    "Recommendation",
    "calibrate",
    "effect_interval",
    "sweep",
]

DEFAULT_KL_BUDGET = 0.2
"""Default coherence budget of :func:`calibrate`: mean ``KL(steered || unsteered)`` in nats per token."""

DEFAULT_ALPHAS = (-0.3, -0.2, -0.1, -0.05, 0.0, 0.05, 0.1, 0.2, 0.3)
"""Default strengths of a sweep, relative to the layer's residual norm (``scale="relative"``)."""

DEFAULT_RANDOM_SEEDS = tuple(range(8))
"""Seeds of the random directions a sweep measures beside the vector: eight, so the baseline has a mean and a
spread (one draw's effect at one cell varies by about as much as a weak vector's: sd 0.010 against an effect of
0.02 on SmolLM2, issue 18)."""

INTERVAL_LEVEL = 0.95
"""Coverage of the intervals of effects (percentile bootstrap over the questions)."""

FALSE_ALARM = 0.01
"""How often a random direction is expected to clear the random baseline's bound: the bound is the one-sided
99% prediction bound of one more draw from the random directions' effects (normal, Student's t with k - 1
degrees of freedom for k seeds: mean + t * sd * sqrt(1 + 1/k); 3.2 sd for 8 seeds)."""

MIN_RANDOM_SEEDS = 4
"""The fewest random directions that give the baseline a usable spread (3 degrees of freedom)."""

_RESAMPLES = 2000
_Z = 2.3263478740408408  # the normal's 99% quantile (FALSE_ALARM = 0.01)


def _alpha_key(alpha: Alpha | None) -> Any:
    return list(alpha) if isinstance(alpha, tuple) else alpha


def effect_interval(effects: Sequence[float], *, level: float = INTERVAL_LEVEL, seed: int = 0) -> tuple[float, float]:
    """A percentile-bootstrap interval of the mean of per-question effects (questions resampled with replacement,
    2000 times, from a generator seeded with ``seed``, so the same effects always give the same interval).

    Example:
        >>> effect_interval([0.1, 0.12, 0.08, 0.11])
        (0.0875, 0.1125)
    """
    values = torch.tensor([float(x) for x in effects], dtype=torch.float64)
    if values.numel() == 0:
        raise SteeringError("an interval needs at least one per-question effect; got none.")
    if values.numel() == 1:
        return float(values[0]), float(values[0])
    gen = torch.Generator().manual_seed(seed)
    means = values[torch.randint(values.numel(), (_RESAMPLES, values.numel()), generator=gen)].mean(1)
    tail = (1.0 - level) / 2
    lo, hi = torch.quantile(means, torch.tensor([tail, 1.0 - tail], dtype=torch.float64)).tolist()
    return lo, hi


def _band(effects: Sequence[float]) -> tuple[float, float, float]:
    """Mean, sample sd and prediction margin of the random directions' effects: one more random direction lands
    beyond ``mean + margin`` (or below ``mean - margin``) with probability :data:`FALSE_ALARM` if they are normal.
    The t quantile is the Cornish-Fisher expansion of the normal's (within 2% of the table from 3 degrees of
    freedom up); fewer than :data:`MIN_RANDOM_SEEDS` draws say too little about the spread: infinite margin."""
    k = len(effects)
    mean = sum(effects) / k
    if k < 2:
        return mean, 0.0, math.inf
    sd = math.sqrt(sum((x - mean) ** 2 for x in effects) / (k - 1))
    z, df = _Z, k - 1
    t = (
        z
        + (z**3 + z) / (4 * df)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3)
    )
    return mean, sd, (t * sd * math.sqrt(1 + 1 / k) if k >= MIN_RANDOM_SEEDS else math.inf)


def _beats(interval: Sequence[float], mean: float, margin: float, sign: float) -> bool:
    """The whole interval lies beyond zero and beyond the random bound ``mean + margin`` on the ``sign`` side."""
    near = min(sign * interval[0], sign * interval[1])  # the end closest to zero, seen from the goal's side
    return near > 0 and near > sign * mean + margin


def _question_values(behaviour: Any, logits: torch.Tensor, metric: str) -> list[float] | None:
    """The metric per given question (the mean of its asked rows: both orders of a balanced A/B question), or
    ``None`` for a behaviour without ``per_item``."""
    per_item = getattr(behaviour, "per_item", None)
    if per_item is None:
        return None
    rows = per_item(logits)
    ids = getattr(behaviour, "question_ids", None) or list(range(len(rows)))
    sums: dict[int, float] = {}
    counts: dict[int, int] = {}
    for question, row in zip(ids, rows, strict=True):
        sums[question] = sums.get(question, 0.0) + float(row[metric])
        counts[question] = counts.get(question, 0) + 1
    return [sums[q] / counts[q] for q in sorted(sums)]


def sweep(
    model: nn.Module,
    tokenizer: Any,
    vector: SteeringVector,
    behaviour: ABBehaviour | Sequence[ABQuestion],
    *,
    layers: Sequence[int] | None = None,
    alphas: Sequence[Alpha] = DEFAULT_ALPHAS,
    modes: Sequence[str] = ("add",),
    scale: Scale = DEFAULT_SCALE,
    coherence: NeutralKL | Sequence[str] | None = None,
    random_seeds: Sequence[int] = DEFAULT_RANDOM_SEEDS,
    batch_size: int = 16,
    progress: bool | None = None,
    partial: str | os.PathLike | None = None,
    joint: bool = False,
) -> ResultTable:
    """Measure a behaviour and coherence for every (mode, layer, alpha), for ``vector`` and for same-norm random
    directions, one per seed of ``random_seeds`` (the baseline's distribution).

    Cost: every random seed costs as much as the vector itself (each is swept over every cell), so the default 8
    seeds make a sweep 9 times the vector's own cost; ``random_seeds=()`` measures the vector alone, and
    :func:`calibrate` then refuses to recommend. Memory: the recorded unsteered pass keeps one ``(rows, tokens,
    width)`` tensor per swept layer for each metric's batch (50 questions in both orders at 8 layers of a 7B
    model in bfloat16: about 1.3 GB on its device).

    Args:
        behaviour: an :class:`~steerlab.evaluate.metrics.ABBehaviour` (or A/B questions, wrapped with A/B balancing), or
            any object with ``name``, ``input_ids``, ``attention_mask``, ``last_only`` and ``score(logits) ->
            dict`` whose first key is the behaviour value; with ``per_item(logits)`` (records holding that key)
            and optionally ``question_ids`` (the question of each row) the records keep per-question values, which
            intervals and :func:`calibrate` need.
        layers: layers to sweep, each one steered alone (default: all of the vector's layers).
        alphas: strengths; with ``scale="relative"`` (default) fractions of the layer's residual norm.
        coherence: a :class:`~steerlab.evaluate.metrics.NeutralKL`, or texts for one (default: the neutral set).
        random_seeds: seeds of the random directions (:meth:`SteeringVector.random_like`; default
            :data:`DEFAULT_RANDOM_SEEDS`, eight).
        progress: report progress on stderr (a bar on a terminal, a plain line every 10 s otherwise); ``None``
            reports when there are more than 4 cells (mode, layer, direction).
        partial: a file that keeps the finished cells as the sweep goes (JSON lines, each cell's records once all
            its alphas are measured), so an interrupted sweep loses at most the cell it was on. Run the same sweep
            again with the same ``partial`` and it resumes: cells in the file are read back, the others measured
            and appended, and the result equals an uninterrupted run's. The file's first line names the run (a
            hash of the model, the vector and the random directions, layers, alphas, modes, scale, seeds, the
            behaviour's and coherence texts' tokens); a file from another run raises
            :class:`~steerlab.SteeringError` (delete it or pass another path), never mixes in.
        joint: steer ``layers`` together, as one cell per mode, instead of each alone: for a vector that acts as a
            whole across layers, such as ITI's shift of the top-k heads (``recipes.HeadProbes.vector(k)``; sweep
            one per k). The cell's records carry ``layer`` = the list of layers; the random directions have the
            vector's norm at each of them; :func:`calibrate` and ``alpha="recommended"`` take the list.

    Returns a ``ResultTable(kind="sweep")`` with one record per cell and direction: ``mode, layer, alpha, scale,
    direction`` (``vector`` or ``random``), ``seed`` (the random direction's; ``None`` for the vector), the
    behaviour's values, ``effect`` (the change from unsteered) with ``effect_lo``/``effect_hi`` (a 95% bootstrap
    interval over the questions), ``kl``, ``entropy``, ``added_norm`` (norm of the added vector; for ``add``) and
    ``per_question`` (the behaviour per question; JSON only). Vector records also carry ``random_mean`` and
    ``random_sd`` (the random directions' effects at the same cell) and ``beats_random``: whether the effect's
    interval lies wholly beyond zero and beyond the random directions' bound (:data:`FALSE_ALARM`). That flag is
    per cell, on every question: choosing a cell by it is a maximum over noise, which :func:`calibrate` avoids.

    Example:
        >>> questions = load_ab("datasets/caa/test/refusal/test_dataset_ab.json")[:20]
        >>> result = sweep(model, tokenizer, vec, questions, layers=[8, 12], alphas=[-0.2, 0, 0.2])
        >>> print(calibrate(result).summary())
    """
    vector.check_fits(model)
    if not isinstance(behaviour, ABBehaviour) and not hasattr(behaviour, "score"):
        behaviour = ABBehaviour(tokenizer, list(behaviour))
    if not isinstance(coherence, NeutralKL):
        coherence = NeutralKL(tokenizer, coherence)
    layers = checked_layers(vector, layers)
    # What each cell steers: one layer, or (joint) all of them; a list in the records, a string in cell keys.
    steered: list[int | list[int]] = [list(layers)] if joint else list(layers)
    alphas = list(alphas)
    if not alphas or not layers or not modes:
        raise SteeringError("a sweep needs at least one layer, one alpha and one mode.")
    seeds = [int(x) for x in random_seeds]
    if len(set(seeds)) != len(seeds):
        raise SteeringError(f"random_seeds={seeds} repeats a seed; give distinct seeds, e.g. range(8).")
    directions: dict[int | None, SteeringVector] = {None: vector}
    directions.update({seed: vector.random_like(seed=seed) for seed in seeds})
    # Opened before any forward pass: a file from another run fails at once, not after the unsteered passes.
    store = None
    if partial is not None:
        identity = _run_identity(model, directions, behaviour, coherence, layers, alphas, modes, scale)
        if joint:  # only then: files of one-layer sweeps keep the identity they were written with
            identity["joint"] = True
        store = PartialResults(partial, "sweep", identity)
    coherence.reference(model, batch_size)
    # One unsteered pass per metric, recorded at every swept layer: each (direction, alpha) then runs only the
    # blocks from its layer up (nothing below a steered layer changes), and the unsteered behaviour comes free.
    # The rows of one question (its two orders) run packed, their shared beginning once.
    templates = [Intervention(vector, mode=mode, layers=_as_list(cell), scale=scale) for mode in modes
                 for cell in steered]  # fmt: skip
    bases = {
        id(metric): UnsteeredPass(
            model, metric.input_ids, metric.attention_mask, templates, last_only=metric.last_only,
            batch_size=batch_size, groups=getattr(metric, "question_ids", None),
        )
        for metric in (behaviour, coherence)
    }  # fmt: skip

    def measure(metric: Any, template: Intervention | None, cell_alphas: list, per_question: bool = False):
        """``repr(alpha) -> (scores, per-question values of the first score or None)``."""
        out = {}
        for alpha, logits in bases[id(metric)].steered(template, cell_alphas):
            scores = metric.score(logits)
            values = _question_values(metric, logits, next(iter(scores))) if per_question else None
            out[repr(alpha)] = (scores, values)
        return out

    unsteered, unsteered_pq = measure(behaviour, None, [None], per_question=True)[repr(None)]
    first = next(iter(unsteered))
    cells = [(mode, _cell_key(layer), seed) for mode in modes for layer in steered for seed in directions]
    steered_of = {_cell_key(layer): layer for layer in steered}
    show = progress if progress is not None else len(cells) > 4
    finished = dict(store.done) if store is not None else {}  # cell -> its records, read back from `partial`
    todo = [cell for cell in cells if cell not in finished]
    if show and len(todo) < len(cells):
        done = len(cells) - len(todo)
        print(f"sweeping: resuming from {partial}, {done}/{len(cells)} cells done", file=sys.stderr, flush=True)
    with warnings.catch_warnings():  # a sweep measures what strong pushes cost: no StrengthWarning per cell
        warnings.simplefilter("ignore", StrengthWarning)
        for mode, cell_key, seed in track(todo, "sweeping", show=show):
            layer = steered_of[cell_key]
            template = Intervention(directions[seed], mode=mode, layers=_as_list(layer), scale=scale)
            moving = [a for a in alphas if not is_identity(mode, a)]
            scores = measure(behaviour, template, moving, per_question=True) if moving else {}
            kls = measure(coherence, template, moving) if moving else {}
            delta_norm = float(torch.cat([d.flatten().float() for d in template.deltas().values()]).norm())
            cell_records = []
            for alpha in alphas:
                key = repr(alpha)
                values, per_question = scores.get(key, (unsteered, unsteered_pq))
                coh = kls[key][0] if key in kls else {"kl": 0.0, "entropy": None}
                rec = {"mode": mode, "layer": layer, "alpha": _alpha_key(alpha), "scale": scale,
                       "direction": "vector" if seed is None else "random", "seed": seed}  # fmt: skip
                rec.update(values)
                rec["effect"] = values[first] - unsteered[first]
                if per_question is not None and unsteered_pq is not None:
                    diffs = [a - b for a, b in zip(per_question, unsteered_pq, strict=True)]
                    rec["effect_lo"], rec["effect_hi"] = effect_interval(diffs)
                rec.update(coh)
                rec["added_norm"] = abs(float(alpha)) * delta_norm if mode == "add" else None
                rec["per_question"] = per_question
                cell_records.append(rec)
            if store is not None:
                store.add((mode, cell_key, seed), cell_records)
            finished[mode, cell_key, seed] = cell_records
    records = [dict(rec) for cell in cells for rec in finished[cell]]  # in cell order, resumed or not
    _mark_random_bands(records)
    meta = {
        "metric": first,
        "behaviour": getattr(behaviour, "name", first),
        "unsteered": unsteered,
        "unsteered_per_question": unsteered_pq,
        "n_items": int(behaviour.input_ids.shape[0]),
        "n_questions": None if unsteered_pq is None else len(unsteered_pq),
        "n_coherence_texts": int(coherence.input_ids.shape[0]),
        "layers": layers,
        "joint": joint,
        "alphas": [_alpha_key(a) for a in alphas],
        "modes": list(modes),
        "scale": scale,
        "vector": {"model_id": vector.model_id, "method": vector.method, "layers": vector.layers},
        "random_seeds": seeds,
        "interval": f"{INTERVAL_LEVEL:.0%} percentile bootstrap over questions ({_RESAMPLES} resamples, seed 0)",
        "resid_norm": {str(k): v for k, v in vector.resid_norm.items() if k in layers},
    }
    return ResultTable("sweep", records, meta)


def _as_list(layer: int | list[int]) -> list[int]:
    return list(layer) if isinstance(layer, list) else [layer]


def _cell_key(layer: int | list[int] | tuple[int, ...]) -> int | str:
    """A cell's layer as a key (hashable, and the same after a JSON round trip): the layer, or ``"2+3"`` for a
    joint cell."""
    return "+".join(str(x) for x in layer) if isinstance(layer, (list, tuple)) else layer


def _run_identity(
    model: nn.Module,
    directions: dict[int | None, SteeringVector],
    behaviour: Any,
    coherence: NeutralKL,
    layers: list[int],
    alphas: list,
    modes: Sequence[str],
    scale: Scale,
) -> dict[str, Any]:
    """What a sweep's numbers depend on, as a partial results file's header holds it: small parts as they are (so
    a refused file's error can name them), tensors and token batches as digests."""
    vector = directions[None]
    dtype = next(model.parameters()).dtype
    tokens = [getattr(behaviour, a) for a in ("input_ids", "attention_mask", "question_ids", "letter_ids",
                                             "matching_is_a") if getattr(behaviour, a, None) is not None]  # fmt: skip
    return {
        "model": f"{model_id(model)} ({dtype})",
        "model_fingerprint": fingerprint(model).as_dict(),
        "vector": digest(*(vector.directions[k] for k in sorted(vector.directions)), vector.resid_norm),
        "random_directions": digest(
            *(d.directions[k] for seed, d in directions.items() if seed is not None for k in sorted(d.directions))
        ),
        "layers": layers,
        "alphas": [_alpha_key(a) for a in alphas],
        "modes": list(modes),
        "scale": scale,
        "random_seeds": [seed for seed in directions if seed is not None],
        "behaviour": digest(getattr(behaviour, "name", type(behaviour).__name__), *tokens),
        "coherence_texts": digest(coherence.input_ids, coherence.attention_mask),
    }


def _mark_random_bands(records: list[dict[str, Any]]) -> None:
    """Give every vector record the random directions' effects at its cell (mean, sd) and whether its interval
    clears them; random records get the same keys, empty."""
    random: dict[tuple, list[float]] = {}
    for r in records:
        if r["direction"] == "random":
            random.setdefault((r["mode"], _cell_key(r["layer"]), repr(r["alpha"])), []).append(r["effect"])
    for r in records:
        key = (r["mode"], _cell_key(r["layer"]), repr(r["alpha"]))
        effects = random.get(key) if r["direction"] == "vector" else None
        if not effects:
            r.update(random_mean=None, random_sd=None, beats_random=None)
            continue
        mean, sd, margin = _band(effects)
        interval = (r["effect_lo"], r["effect_hi"]) if "effect_lo" in r else (r["effect"], r["effect"])
        beats = _beats(interval, mean, margin, 1.0) or _beats(interval, mean, margin, -1.0)  # no goal here
        r.update(random_mean=mean, random_sd=sd, beats_random=beats)


@dataclass
class Recommendation:
    """What :func:`calibrate` found: a recommended (layer, alpha), or "no setting found" with the best cell.
    ``layer`` is a list of layers for a joint sweep's cell (steered together).

    ``effect`` and ``interval`` are measured on the held-out questions only (the cell was chosen on the others,
    where its effect was ``selection_effect``). ``random_mean`` / ``random_sd`` are the random directions' held-out
    effects at the same cell; ``random_best_mean`` / ``random_best_sd`` those of the cells the same choice picks
    for each random direction on its own. ``found`` says whether the effect passed :func:`calibrate`'s rule and
    ``reason`` says why (or why not).

    Example:
        >>> rec = calibrate(result)
        >>> print(rec.summary())
        no setting found: the held-out effect's 95% interval [-0.004, +0.031] includes 0 (n = 25 questions). Best ...
    """

    found: bool
    reason: str
    layer: int | list[int]
    alpha: Any
    mode: str
    scale: str
    metric: str
    goal: str
    effect: float
    interval: tuple[float, float]
    selection_effect: float
    random_mean: float
    random_sd: float
    random_bound: float
    random_best_mean: float
    random_best_sd: float
    random_best_bound: float
    kl: float
    budget: float
    n_selection: int
    n_held_out: int
    random_seeds: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """One paragraph: the outcome, the cell, its held-out effect with its interval, the random baselines.

        Example:
            >>> print(calibrate(result).summary())
            recommended: layer 10, alpha 0.1 (add, relative): held-out effect on p_matching +0.081 ...
        """
        alpha = f"[{self.alpha[0]}, {self.alpha[1]}]" if isinstance(self.alpha, (list, tuple)) else f"{self.alpha:g}"
        level = f"{INTERVAL_LEVEL:.0%}"
        where = f"layers {self.layer}" if isinstance(self.layer, list) else f"layer {self.layer}"
        cell = (
            f"{where}, alpha {alpha} ({self.mode}, {self.scale}): held-out effect on {self.metric} "
            f"{self.effect:+.3f} ({level} interval [{self.interval[0]:+.3f}, {self.interval[1]:+.3f}], "
            f"n = {self.n_held_out} questions; chosen on {self.n_selection} others, where it was "
            f"{self.selection_effect:+.3f}); random directions ({len(self.random_seeds)} seeds): at this cell "
            f"{self.random_mean:+.3f} (sd {self.random_sd:.3f}, bound {self.random_bound:+.3f}), at their own best "
            f"cells {self.random_best_mean:+.3f} (sd {self.random_best_sd:.3f}, bound {self.random_best_bound:+.3f}); "
            f"KL {self.kl:.3f} <= {self.budget:g}"
        )
        if self.found:
            return f"recommended: {cell}."
        return f"no setting found: {self.reason}. Best cell: {cell}."

    def annotate(self, vector: SteeringVector) -> SteeringVector:
        """A copy of ``vector`` whose metadata records this recommendation under ``extra["recommended"]`` (what
        ``alpha="recommended"`` reads). Refused when no setting was found: a vector carries only a setting that
        beat the random baseline.

        Example:
            >>> rec = calibrate(result)
            >>> if rec.found:
            ...     rec.annotate(vec).save("refusal.safetensors")
        """
        if not self.found:
            raise SteeringError(
                f"no setting found ({self.reason}), so there is nothing to record in the vector. Expected a "
                "Recommendation with found=True; measure on more questions, sweep other layers or strengths, or "
                "steer with an explicit alpha."
            )
        return replace(vector, extra={**vector.extra, "recommended": self.as_dict()})


def calibrate(
    result: ResultTable,
    *,
    kl_budget: float = DEFAULT_KL_BUDGET,
    goal: Literal["increase", "decrease"] = "increase",
    holdout: float = 0.5,
    split_seed: int = 0,
) -> Recommendation:
    """Choose a cell of a sweep on some questions and test it on the others against random directions.

    1. The questions are split at random (``split_seed``): a ``holdout`` share (default half) is held out.
    2. Among the vector's steered cells whose KL stays within ``kl_budget`` nats/token (default
       :data:`DEFAULT_KL_BUDGET`), the cell with the largest mean effect in the ``goal`` direction on the
       *selection* questions is chosen.
    3. Its effect is measured on the *held-out* questions, with a 95% percentile-bootstrap interval over them
       (:func:`effect_interval`).
    4. The same is done for every random direction of the sweep: its held-out effect at the chosen cell, and the
       held-out effect of the cell the same choice picks for that random direction alone (what this procedure
       gives for a direction with no meaning).

    A setting is recommended (``found=True``) only when the interval's end nearest zero lies on the goal's side
    of zero, beyond the random directions' bound at the chosen cell, and beyond the bound of the random
    directions' own chosen cells. A bound is the level one more random direction passes with probability
    :data:`FALSE_ALARM` (1%): ``mean + t * sd * sqrt(1 + 1/k)`` over the k seeds' held-out effects, about 3.2 sd
    for 8 seeds. Why this rule: the held-out split removes the optimism of taking a maximum over many cells;
    requiring the whole interval beyond the bound guards against lucky questions and a lucky direction at once;
    the second bound answers "would any direction of this norm, chosen the same way, do as well?" (on SmolLM2 a
    random direction's own best cell beat a real vector's, issue 18). Otherwise ``found=False``, ``reason`` says
    which test failed, and the best cell is still shown.

    Raises :class:`~steerlab.SteeringError` for a sweep it cannot judge: no cell within the budget, fewer than
    :data:`MIN_RANDOM_SEEDS` random seeds, no per-question values (a sweep from an older steerlab, or a behaviour
    without ``per_item``), or fewer than 2 questions on either side of the split.

    Example:
        >>> rec = calibrate(result, kl_budget=0.2)
        >>> print(rec.summary())
        >>> if rec.found:
        ...     vec = rec.annotate(vec)            # steer(model, vec, alpha="recommended") uses it
    """
    if result.kind != "sweep":
        raise SteeringError(f"calibrate needs a sweep result, got a {result.kind!r} table.")
    if goal not in ("increase", "decrease"):
        raise SteeringError(f"goal={goal!r} is not valid; expected 'increase' or 'decrease'.")
    if not kl_budget > 0:
        raise SteeringError(f"kl_budget must be a positive number of nats per token, got {kl_budget}.")
    if not 0 < holdout < 1:
        raise SteeringError(f"holdout must be a share of the questions between 0 and 1 (e.g. 0.5), got {holdout}.")
    metric = result.meta.get("metric", "p_matching")
    base = result.meta.get("unsteered_per_question")
    vector_rows = result.where(direction="vector")
    if base is None or any(r.get("per_question") is None for r in vector_rows):
        raise SteeringError(
            "this sweep has no per-question values, which calibrate needs to choose on some questions and test on "
            "others; run the sweep again with this version of steerlab (its behaviour needs per_item(logits))."
        )
    seeds = sorted({r["seed"] for r in result.where(direction="random")})
    if len(seeds) < MIN_RANDOM_SEEDS:
        raise SteeringError(
            f"the sweep has {len(seeds)} random direction(s); calibrate compares the vector with the spread of "
            f"several and needs at least {MIN_RANDOM_SEEDS}. Run sweep with random_seeds=range(8) (the default)."
        )
    n = len(base)
    n_held = round(n * holdout)
    if n_held < 2 or n - n_held < 2:
        raise SteeringError(
            f"the sweep has {n} questions: {n - n_held} to choose on and {n_held} to test on; expected at least 2 "
            "on each side. Sweep more questions (20 or more give a usable interval)."
        )
    order = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed)).tolist()
    selection, held = sorted(order[: n - n_held]), sorted(order[n - n_held :])
    sign = 1.0 if goal == "increase" else -1.0

    def diffs(rec: dict[str, Any], questions: list[int]) -> list[float]:
        return [rec["per_question"][i] - base[i] for i in questions]

    def mean(values: list[float]) -> float:
        return sum(values) / len(values)

    def choose(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
        allowed = [
            r for r in rows
            if r["kl"] is not None and r["kl"] <= kl_budget and not is_identity(r["mode"], r["alpha"])
        ]  # fmt: skip
        return max(allowed, key=lambda r: sign * mean(diffs(r, selection))) if allowed else None

    best = choose(vector_rows)
    if best is None:
        raise SteeringError(
            f"no steered cell of the sweep has KL <= {kl_budget} nats/token; sweep smaller strengths or raise the "
            "budget (kl_budget=...)."
        )
    effect = mean(diffs(best, held))
    interval = effect_interval(diffs(best, held))
    cell = [
        r for r in result.where(direction="random", mode=best["mode"], layer=best["layer"])
        if r["alpha"] == best["alpha"]
    ]  # fmt: skip
    cell_mean, cell_sd, cell_margin = _band([mean(diffs(r, held)) for r in cell])
    own = []
    for seed in seeds:
        chosen = choose(result.where(direction="random", seed=seed))
        own.append(mean(diffs(chosen, held)) if chosen is not None else 0.0)  # nothing in budget: no effect
    own_mean, own_sd, own_margin = _band(own)
    shown = f"[{interval[0]:+.3f}, {interval[1]:+.3f}]"
    found = False
    if sign * effect <= 0:
        reason = f"the held-out effect {effect:+.3f} does not go the goal's way (goal={goal!r})"
    elif not _beats(interval, 0.0, 0.0, sign):
        reason = f"the held-out effect's {INTERVAL_LEVEL:.0%} interval {shown} includes 0 (n = {n_held} questions)"
    elif not _beats(interval, cell_mean, cell_margin, sign):
        reason = (
            f"the held-out effect's interval {shown} does not clear the random directions at the same cell "
            f"(bound {cell_mean + sign * cell_margin:+.3f})"
        )
    elif not _beats(interval, own_mean, own_margin, sign):
        reason = (
            f"the held-out effect's interval {shown} does not clear what random directions chosen the same way "
            f"give (bound {own_mean + sign * own_margin:+.3f})"
        )
    else:
        found = True
        reason = (
            f"the held-out effect's interval {shown} is on the goal's side of 0 and clears the random directions, "
            "at this cell and at their own best cells"
        )
    return Recommendation(
        found=found,
        reason=reason,
        layer=[int(x) for x in best["layer"]] if isinstance(best["layer"], list) else int(best["layer"]),
        alpha=best["alpha"],
        mode=best["mode"],
        scale=best["scale"],
        metric=metric,
        goal=goal,
        effect=effect,
        interval=interval,
        selection_effect=mean(diffs(best, selection)),
        random_mean=cell_mean,
        random_sd=cell_sd,
        random_bound=cell_mean + sign * cell_margin,
        random_best_mean=own_mean,
        random_best_sd=own_sd,
        random_best_bound=own_mean + sign * own_margin,
        kl=float(best["kl"]),
        budget=float(kl_budget),
        n_selection=len(selection),
        n_held_out=len(held),
        random_seeds=seeds,
    )
