"""SAE-targeted steering (SAE-TS; Chalnev, Siu and Conmy 2024): learn how steering at a layer moves an SAE's features,
then solve for the vector that moves the chosen features and as little else as possible.

A feature's decoder row is the direction the SAE *writes* that feature with, not the direction that makes the model
*produce* it: added to the residual stream it also moves other features, through the SAE's own encoder and through
the blocks in between. SAE-TS measures that instead of assuming it:

1. :func:`feature_effects` steers along ``samples`` random unit directions, all of one strength, at ``layer`` (at or
   below the SAE's layer), one direction per row of a batch (:func:`steerlab.steer_rows`), reads the SAE's site on
   fixed texts and encodes it. A direction's *effect* is the change of every feature's mean pre-activation (by
   default; or activation) over the texts' tokens (each text's first, the attention sink, left out) from the
   unsteered run. Pre-activations (the encoder's output before TopK / ReLU / JumpReLU) are the default because a
   sparse SAE's activations do not move at all under most pushes: a feature outside the top k stays exactly 0, so
   the fit would see nothing of the features one wants to reach; the pre-activation says how far each is from
   firing and moves smoothly. A linear map
   ``effect ~= M @ direction + b`` is fitted by ridge least squares; ``b`` is what any push of that size does
   whatever its direction (the paper's bias term). Its R^2 on a held-out fifth of the samples says how far to trust it.
2. :meth:`FeatureEffects.targeted_vector` solves ``min ||M v - t||^2 + ridge ||v||^2`` for ``t`` = one on the chosen
   features and zero on every other: the direction whose predicted effect is those features and nothing else.
3. :func:`feature_effect` measures one intervention's effect the same way (check a prediction, compare vectors);
   :func:`compare_targeting` sets the targeted vector beside the feature's decoder row and a random direction.

One difference from the paper: it measures effects on text *generated* under steering (encoded by the unsteered
model); here they are read downstream in the same forward pass on fixed texts, which is deterministic and costs one
forward pass up to the SAE's layer per direction. Steering at a layer below the SAE's shows what the blocks in
between do to a push; at the SAE's own layer only its encoder is between.

Example:
    >>> effects = feature_effects(model, tok, sae, neutral_texts(), layer=8, samples=1024)
    >>> vec = effects.targeted_vector([2682])          # SmolLM2's "wonderful!" feature, targeted from layer 8
    >>> measured = feature_effect(model, tok, sae, neutral_texts(), Intervention(vec, alpha=0.2))
    >>> measured[2682], effects.predict(vec.directions[8])[2682]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from steerlab._progress import track
from steerlab._record import ActivationReader, check_texts
from steerlab._steer import Intervention, steer_rows
from steerlab._text import encode, pad_id
from steerlab._vector import SteeringVector
from steerlab.arch.registry import check_layer_index
from steerlab.errors import DataError
from steerlab.evaluate.metrics import kl_from_unsteered
from steerlab.evaluate.results import ResultTable
from steerlab.evaluate.sae import SparseAutoencoder

__all__ = ["FeatureEffects", "compare_targeting", "feature_effect", "feature_effects"]


@dataclass
class FeatureEffects:
    """How steering at ``layer`` moves an SAE's features: ``effect ~= matrix @ unit direction + bias`` at strength
    ``alpha`` (relative to the layer's mean residual norm ``resid_norm``).

    Attributes:
        matrix: ``(features, hidden)``, the linear part of the effect of a unit direction at ``alpha``.
        measure: ``"pre"`` (effects on the features' pre-activations) or ``"post"`` (on their activations).
        bias: ``(features,)``, the effect any direction of that strength has on average.
        r2: the fit's R^2 on held-out samples (the share of the effects' variance it predicts, over all features).
        samples: how many random directions were measured.
        texts: how many texts each was measured on.
        stats: the run's settings and sizes (ridge, seed, tokens).

    Example:
        >>> effects.r2, effects.predict(vec.directions[8]).topk(5)
    """

    matrix: torch.Tensor
    bias: torch.Tensor
    layer: int
    alpha: float
    resid_norm: float
    r2: float
    samples: int
    texts: int
    sae: SparseAutoencoder = field(repr=False)
    measure: str = "pre"
    stats: dict[str, Any] = field(default_factory=dict)

    def predict(self, direction: torch.Tensor) -> torch.Tensor:
        """The predicted effect ``(features,)`` of steering along ``direction`` (made unit) at ``alpha``."""
        direction = _unit(direction, self.matrix.shape[1])
        return self.matrix @ direction + self.bias

    def targeted_vector(self, features: Sequence[int], *, ridge: float | None = None) -> SteeringVector:
        """The unit direction at :attr:`layer` whose predicted effect is the ``features`` and nothing else:
        ``argmin ||M v - t||^2 + ridge ||v||^2`` with ``t`` one on ``features`` and zero elsewhere (ridge: default
        1e-3 of the largest eigenvalue of ``M^T M``), returned as a :class:`~steerlab.SteeringVector` (resid_post,
        relative strengths against the layer's norm) that records the targets, the predicted target effect and
        the predicted off-target effect at :attr:`alpha`.

        Example:
            >>> with steer(model, effects.targeted_vector([2682]), alpha=0.2): model.generate(...)
        """
        chosen = _features(features, self.matrix.shape[0])
        target = torch.zeros(self.matrix.shape[0], dtype=torch.float64)
        target[chosen] = 1.0
        m = self.matrix.double()
        gram = m.T @ m
        ridge = float(ridge) if ridge is not None else 1e-3 * float(torch.linalg.eigvalsh(gram)[-1])
        solved = torch.linalg.solve(gram + ridge * torch.eye(gram.shape[0], dtype=gram.dtype), m.T @ target)
        if not bool(torch.isfinite(solved).all()) or float(solved.norm()) == 0.0:
            raise DataError(
                "the fitted effects give no direction for these features (they do not move under any push measured); "
                "choose features that fire on the texts, or measure more samples."
            )
        direction = (solved / solved.norm()).float()
        predicted = self.predict(direction)
        off = torch.ones_like(predicted, dtype=torch.bool)
        off[chosen] = False
        return SteeringVector(
            directions={self.layer: direction},
            model_id=self.sae.model_id,
            fingerprint=self.sae.fingerprint,
            site="resid_post",
            method="sae_targeted",
            normalized=True,
            resid_norm={self.layer: self.resid_norm},
            extra={"sae_targets": chosen, "sae_layer": self.sae.layer, "sae_width": self.sae.width,
                   "effects_alpha": self.alpha, "effects_r2": self.r2, "effects_samples": self.samples,
                   "predicted_target_effect": float(predicted[chosen].mean()),
                   "predicted_off_target_effect": float(predicted[off].norm())},
        )  # fmt: skip


def feature_effects(
    model: nn.Module,
    tokenizer: Any,
    sae: SparseAutoencoder,
    texts: Sequence[str],
    *,
    layer: int | None = None,
    alpha: float = 0.2,
    samples: int = 1024,
    ridge: float = 1.0,
    seed: int = 0,
    measure: str = "pre",
    directions_per_batch: int = 8,
    progress: bool | None = None,
) -> FeatureEffects:
    """Measure the effect on ``sae``'s features of ``samples`` random unit directions at ``layer`` (default: the
    SAE's layer; resid_post, at or below the SAE's layer) at strength ``alpha`` (relative to the layer's mean
    residual norm on ``texts``), and fit ``effect ~= M @ direction + b`` (ridge least squares, penalty ``ridge``),
    with its R^2 on a held-out fifth of the samples. ``measure``: ``"pre"`` (default) fits the features'
    pre-activations, ``"post"`` their activations (see the module doc).

    Cost: one forward pass of ``texts`` up to the SAE's layer per sample; ``directions_per_batch`` directions run
    side by side in one batch (rows of ``len(texts) * directions_per_batch``). The fit needs more samples than the
    residual width to be well posed; below that the ridge penalty carries it.

    Example:
        >>> effects = feature_effects(model, tok, sae, neutral_texts(), layer=8, samples=1024)
        >>> effects.r2
    """
    sae.check_fits(model)
    texts = check_texts(texts)
    layer = sae.layer if layer is None else check_layer_index(layer, sae.fingerprint.num_layers)
    if sae.site != "resid_post" and layer == sae.layer:
        raise DataError(f"the SAE reads {sae.site!r}; steer below its layer ({sae.layer}) to measure effects on it.")
    if layer > sae.layer:
        raise DataError(
            f"layer {layer} is above the SAE's layer ({sae.layer}): a push there cannot reach it. Steer at a layer "
            f"from 0 to {sae.layer}."
        )
    if samples < 10 or directions_per_batch < 1 or not ridge >= 0:
        raise DataError(f"samples={samples} must be >= 10, directions_per_batch >= 1, ridge={ridge} >= 0.")
    if measure not in ("pre", "post"):
        raise DataError(f"measure={measure!r}: expected 'pre' (pre-activations) or 'post' (activations).")
    token_ids = encode(tokenizer, texts)
    plain, norms = _mean_features(model, sae, token_ids, [None], pad_id(tokenizer), measure, also_layer=layer)
    resid_norm = norms[layer]
    hidden = sae.fingerprint.hidden_size
    gen = torch.Generator().manual_seed(seed)
    units = torch.randn(samples, hidden, generator=gen)
    units = units / units.norm(dim=-1, keepdim=True)
    interventions = [_push(sae, layer, unit, alpha, resid_norm) for unit in units]
    show = progress if progress is not None else samples > 64
    pad = pad_id(tokenizer)
    effects = torch.cat([
        _mean_features(model, sae, token_ids, interventions[i : i + directions_per_batch], pad, measure)[0]
        for i in track(range(0, samples, directions_per_batch), "measuring feature effects", show=show)
    ]) - plain  # fmt: skip
    held = max(1, samples // 5)
    fit_x, fit_y, test_x, test_y = units[held:], effects[held:], units[:held], effects[:held]
    matrix, bias = _ridge(fit_x, fit_y, ridge)
    residual = test_y - (test_x @ matrix.T + bias)
    r2 = 1.0 - float((residual**2).sum() / ((test_y - test_y.mean(0)) ** 2).sum().clamp_min(1e-30))
    matrix, bias = _ridge(units, effects, ridge)  # the final map uses every sample
    stats = {"ridge": ridge, "seed": seed, "tokens": sum(len(ids) - 1 for ids in token_ids), "held_out": held}
    return FeatureEffects(matrix, bias, layer, float(alpha), resid_norm, r2, samples, len(texts), sae, measure, stats)


def feature_effect(
    model: nn.Module,
    tokenizer: Any,
    sae: SparseAutoencoder,
    texts: Sequence[str],
    steering: Intervention,
    *,
    measure: str = "post",
) -> torch.Tensor:
    """The measured change ``(features,)`` of every feature's mean activation (``measure="post"``) or
    pre-activation (``"pre"``) on ``texts`` (tokens but each text's first) when ``steering`` is on, from the
    unsteered run: what :func:`feature_effects` fits, for one vector.

    Example:
        >>> effect = feature_effect(model, tok, sae, texts, Intervention(vec, alpha=0.2))
        >>> effect[2682], effect.abs().topk(5)
    """
    sae.check_fits(model)
    token_ids = encode(tokenizer, check_texts(texts))
    if measure not in ("pre", "post"):
        raise DataError(f"measure={measure!r}: expected 'pre' (pre-activations) or 'post' (activations).")
    means, _ = _mean_features(model, sae, token_ids, [None, steering], pad_id(tokenizer), measure)
    return means[1] - means[0]


def compare_targeting(
    model: nn.Module,
    tokenizer: Any,
    effects: FeatureEffects,
    features: Sequence[int],
    texts: Sequence[str],
    *,
    alpha: float | None = None,
    kl_texts: Sequence[str] | None = None,
    random_seed: int = 0,
) -> ResultTable:
    """For each feature of ``features``, steer at ``alpha`` (default: the strength the effects were measured at)
    along its SAE-TS vector, its decoder row at the targeting layer, its decoder row at the SAE's own layer and a
    random direction at the targeting layer (the control), and measure on ``texts`` (held out from the fit, so
    the comparison is fair) the change of the target feature, the norm of every other feature's change and their
    ratio (all on activations: what the SAE reads as the features firing), the change of the target's
    pre-activation, and KL from the unsteered model on ``kl_texts`` (default: the neutral set). Returns a
    ``ResultTable(kind="sae_targeting")``.

    Example:
        >>> table = compare_targeting(model, tok, effects, [2682], held_out_texts)
        >>> [(r["arm"], round(r["ratio"], 2)) for r in table.records]
    """
    sae, layer = effects.sae, effects.layer
    alpha = effects.alpha if alpha is None else float(alpha)
    texts = check_texts(texts)
    records = []
    for feature in _features(features, sae.width):
        targeted = effects.targeted_vector([feature])
        row = sae.directions()[feature]
        row_here = replace(targeted, directions={layer: row / row.norm()}, method="sae_feature",
                           extra={"sae_feature": feature})  # fmt: skip
        arms = [("sae_ts", targeted, layer), ("decoder_row", row_here, layer),
                ("decoder_row", sae.feature_vector(feature), sae.layer),
                ("random", targeted.random_like(seed=random_seed), layer)]  # fmt: skip
        for arm, vector, at in arms:
            steering = Intervention(vector, alpha=alpha, layers=[at])
            effect = feature_effect(model, tokenizer, sae, texts, steering)
            pre = feature_effect(model, tokenizer, sae, texts, steering, measure="pre")
            others = float(torch.cat([effect[:feature], effect[feature + 1 :]]).norm())
            kl = kl_from_unsteered(model, tokenizer, vector, alpha, layer=at, texts=kl_texts)
            records.append({"feature": feature, "arm": f"{arm}, layer {at}", "method": arm, "layer": at,
                            "target": float(effect[feature]), "others": others,
                            "ratio": float(effect[feature]) / max(others, 1e-12), "target_pre": float(pre[feature]),
                            "kl": kl})  # fmt: skip
    meta = {"alpha": alpha, "n_texts": len(texts), "sae_layer": sae.layer, "targeting_layer": layer,
            "effects": {"samples": effects.samples, "texts": effects.texts, "r2": effects.r2, "alpha": effects.alpha,
                        "measure": effects.measure, **effects.stats},
            "random_seed": random_seed}  # fmt: skip
    return ResultTable("sae_targeting", records, meta)


def _mean_features(
    model: nn.Module,
    sae: SparseAutoencoder,
    token_ids: list[list[int]],
    steering: Sequence[Intervention | None],
    pad: int,
    measure: str,
    also_layer: int | None = None,
) -> tuple[torch.Tensor, dict[int, float]]:
    """Per entry of ``steering``, the mean feature activations ``(entries, features)`` over every text's tokens but
    the first, all entries in one batch (each text once per entry, its own steering per row); and the mean
    residual norms read (at the SAE's layer, and at ``also_layer``)."""
    layers = sorted({sae.layer, sae.layer if also_layer is None else also_layer})
    reader = ActivationReader(model, layers=layers, reduce="all", site=sae.site, pad_id=pad)
    rows = [ids for _ in steering for ids in token_ids]
    per_row = [item for item in steering for _ in token_ids]
    with steer_rows(model, per_row):
        ((_, read),) = list(reader.run(rows, [list(range(len(rows)))]))
    acts = read[sae.layer]
    means = []
    for k in range(len(steering)):
        tokens = torch.cat(acts[k * len(token_ids) : (k + 1) * len(token_ids)])
        means.append((sae.encode(tokens) if measure == "post" else sae.pre_activations(tokens)).mean(0))
    return torch.stack(means), reader.resid_norm


def _push(sae: SparseAutoencoder, layer: int, unit: torch.Tensor, alpha: float, resid_norm: float) -> Intervention:
    vector = SteeringVector(
        directions={layer: unit}, model_id=sae.model_id, fingerprint=sae.fingerprint, site="resid_post",
        method="random", normalized=True, resid_norm={layer: resid_norm},
    )  # fmt: skip
    return Intervention(vector, alpha=alpha, layers=[layer], scale="relative")


def _ridge(x: torch.Tensor, y: torch.Tensor, ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``y ~= x @ M.T + b`` by ridge least squares (the intercept not penalised): ``(M, b)``."""
    x, y = x.double(), y.double()
    x_mean, y_mean = x.mean(0), y.mean(0)
    xc, yc = x - x_mean, y - y_mean
    gram = xc.T @ xc + ridge * torch.eye(x.shape[1], dtype=x.dtype)
    matrix = torch.linalg.solve(gram, xc.T @ yc).T  # (features, hidden)
    bias = y_mean - matrix @ x_mean
    return matrix.float(), bias.float()


def _unit(direction: torch.Tensor, width: int) -> torch.Tensor:
    direction = torch.as_tensor(direction).float().reshape(-1)
    if direction.shape[0] != width or not bool(torch.isfinite(direction).all()) or float(direction.norm()) == 0:
        raise DataError(f"expected a finite, non-zero direction of width {width}; got shape {tuple(direction.shape)}.")
    return direction / direction.norm()


def _features(features: Sequence[int], width: int) -> list[int]:
    chosen = list(features) if not isinstance(features, int) else [features]
    bad = [f for f in chosen if isinstance(f, bool) or not isinstance(f, int) or not 0 <= f < width]
    if not chosen or bad or len(set(chosen)) != len(chosen):
        raise DataError(f"features={list(chosen)!r}: expected distinct feature indices from 0 to {width - 1}.")
    return chosen
