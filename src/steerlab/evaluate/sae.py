"""Sparse autoencoders (SAEs) on a model's activations, through sae-lens: train one, load one, read features, turn a
feature into a steering vector, and say which features a steering vector is made of.

An SAE here is a sae-lens ``SAE`` bound to one site of one model (:class:`SparseAutoencoder`): the layer and site come
from its ``metadata.hook_name`` in TransformerLens naming (``blocks.12.hook_resid_post`` is steerlab's ``resid_post``
of block 12, the output of block 12: Hugging Face's ``hidden_states[13]``), and its input width must be the model's.

* :func:`train_sae` records the site's activations on texts with steerlab's reader (real tokens only; the first
  token of each text, the attention sink, left out: its norm is ~50x the others' and would dominate the loss) and
  trains a TopK SAE on them with sae-lens's own trainer, reporting tokens, width, L0, explained variance, dead
  features and the time taken.
* :meth:`SparseAutoencoder.load` reads a folder sae-lens wrote (``cfg.json`` + weights) or a sae-lens release id
  (``SAE.from_pretrained``; needs the Hugging Face hub).
* :meth:`SparseAutoencoder.feature_vector` turns a feature's decoder row into a :class:`~steerlab.SteeringVector`;
  :meth:`~SparseAutoencoder.decompose` lists the features whose decoder rows a vector is closest to, with their
  cosines; :meth:`~SparseAutoencoder.top_activating` finds the tokens of texts where a feature fires most.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from steerlab._forward import frozen_weights, input_device
from steerlab._hooks import HookSet
from steerlab._models import ModelFingerprint, fingerprint, model_id
from steerlab._record import check_texts, record
from steerlab._steer import Intervention, steer
from steerlab._text import encode, forward_kwargs, pad_batch, pad_id
from steerlab._vector import SteeringVector
from steerlab.arch.registry import check_site, get_layout
from steerlab.errors import ArchitectureError, DataError
from steerlab.evaluate.patching import Metric, gradient_tap
from steerlab.evaluate.results import ResultTable

__all__ = ["SparseAutoencoder", "train_sae"]

_SITE_HOOKS = {"resid_post": "hook_resid_post", "resid_pre": "hook_resid_pre", "attn_out": "hook_attn_out",
               "mlp_out": "hook_mlp_out"}  # fmt: skip
_HOOK_NAME = re.compile(r"^blocks\.(\d+)\.(hook_resid_post|hook_resid_pre|hook_attn_out|hook_mlp_out)$")


def hook_name(layer: int, site: str) -> str:
    """The TransformerLens hook name sae-lens records for steerlab's ``site`` of block ``layer``."""
    check_site(site)
    return f"blocks.{layer}.{_SITE_HOOKS[site]}"


def parse_hook_name(name: str) -> tuple[int, str]:
    """steerlab's (layer, site) for a TransformerLens hook name, or a clear error for a hook steerlab cannot read."""
    found = _HOOK_NAME.match(name or "")
    if found is None:
        raise ArchitectureError(
            f"the SAE reads the hook {name!r}; steerlab can bind SAEs on blocks.<layer>.hook_resid_post, "
            "hook_resid_pre, hook_attn_out or hook_mlp_out (the residual stream and the sublayer outputs). Pass "
            "layer= and site= to say where it reads if its metadata names the hook otherwise."
        )
    site = {hook: site for site, hook in _SITE_HOOKS.items()}[found.group(2)]
    return int(found.group(1)), site


@dataclass
class SparseAutoencoder:
    """A sae-lens SAE bound to one site of one model.

    Attributes:
        sae: the sae-lens SAE (``encode`` / ``decode``, ``W_dec``: ``(width, hidden)``).
        layer, site: where it reads (see the module doc).
        model_id, fingerprint: the model it was bound to (checked on every use with a model).
        resid_norm: the mean activation norm at the site on the texts it was trained on (``None`` when unknown):
            what relative strengths of its feature vectors are measured in.
        stats: how it was trained (tokens, width, k, L0, explained variance, dead features, seconds), if here.

    Example:
        >>> sae = train_sae(model, tok, texts, layer=12)
        >>> sae.stats["explained_variance"], sae.stats["l0"]
        >>> sae.decompose(sentiment_vector)[:3]          # the features the vector is closest to
        >>> with steer(model, sae.feature_vector(123), alpha=0.1): ...
    """

    sae: Any
    layer: int
    site: str
    model_id: str
    fingerprint: ModelFingerprint
    resid_norm: float | None = None
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def width(self) -> int:
        """The number of features."""
        return int(self.sae.cfg.d_sae)

    @classmethod
    def bind(cls, sae: Any, model: nn.Module, *, layer: int | None = None, site: str | None = None,
             resid_norm: float | None = None, stats: dict[str, Any] | None = None) -> SparseAutoencoder:  # fmt: skip
        """Bind a sae-lens SAE to ``model``, checking that it fits: its input width is the model's, its layer
        exists. The layer and site come from ``sae.cfg.metadata.hook_name`` unless given."""
        meta = sae.cfg.metadata
        if layer is None or site is None:
            found_layer, found_site = parse_hook_name(getattr(meta, "hook_name", None) or "")
            layer = found_layer if layer is None else layer
            site = found_site if site is None else site
        check_site(site)
        mine = fingerprint(model)
        if int(sae.cfg.d_in) != mine.hidden_size:
            raise ArchitectureError(
                f"the SAE reads activations of width {sae.cfg.d_in}, but this model's residual width is "
                f"{mine.hidden_size}; use an SAE trained on this model (train_sae, or a release for it)."
            )
        if not 0 <= layer < mine.num_layers:
            raise ArchitectureError(
                f"the SAE reads block {layer}, but the model has blocks 0-{mine.num_layers - 1}; use an SAE trained "
                "on this model."
            )
        saved = getattr(meta, "steerlab", None) or {}  # what save() wrote: the norm and the training statistics
        if resid_norm is None:
            resid_norm = saved.get("resid_norm")
        stats = saved.get("stats") if stats is None else stats
        return cls(sae, int(layer), site, model_id(model), mine, resid_norm, dict(stats or {}))

    @classmethod
    def load(cls, source: str | Path, model: nn.Module, *, sae_id: str | None = None, layer: int | None = None,
             site: str | None = None, device: str = "cpu") -> SparseAutoencoder:  # fmt: skip
        """A folder written by sae-lens (or :meth:`save`), or a sae-lens release id with its ``sae_id`` (downloaded
        from the Hugging Face hub), bound to ``model``.

        Example:
            >>> sae = SparseAutoencoder.load("saes/smollm2-l12", model)
            >>> sae = SparseAutoencoder.load("gemma-scope-2b-pt-res-canonical", gemma,
            ...                              sae_id="layer_20/width_16k/canonical")
        """
        from sae_lens import SAE

        path = Path(source)
        if path.exists():
            if not (path / "cfg.json").exists():
                raise DataError(f"{path} holds no SAE: expected cfg.json and the weights sae-lens writes.")
            sae = SAE.load_from_disk(path, device=device)
        elif sae_id is None:
            raise DataError(
                f"{source!r} is not a folder; to load a sae-lens release give its sae_id too, e.g. "
                "SparseAutoencoder.load('gpt2-small-res-jb', model, sae_id='blocks.8.hook_resid_pre')."
            )
        else:
            sae = SAE.from_pretrained(str(source), sae_id, device=device)
        return cls.bind(sae, model, layer=layer, site=site)

    def save(self, path: str | Path) -> Path:
        """Write the SAE in sae-lens's format (loadable by sae-lens alone), with the layer, the site, the model and
        steerlab's statistics in its metadata."""
        meta = self.sae.cfg.metadata
        meta.hook_name = hook_name(self.layer, self.site)
        meta.model_name = self.model_id
        meta.steerlab = {"resid_norm": self.resid_norm, "stats": self.stats}
        path = Path(path)
        saver = getattr(self.sae, "save_inference_model", None) or self.sae.save_model
        saver(path)
        return path

    def check_fits(self, model: nn.Module) -> None:
        """Refuse a model other than the one this SAE was bound to (by shape)."""
        theirs = fingerprint(model)
        if theirs.hidden_size != self.fingerprint.hidden_size or theirs.num_layers != self.fingerprint.num_layers:
            raise ArchitectureError(
                f"this SAE was bound to '{self.model_id}' ({self.fingerprint.hidden_size} wide, "
                f"{self.fingerprint.num_layers} blocks); the model given is {theirs.hidden_size} wide with "
                f"{theirs.num_layers} blocks. Bind it to this model with SparseAutoencoder.bind or load."
            )

    def encode(self, activations: torch.Tensor) -> torch.Tensor:
        """Feature activations ``(n, width)`` of activations ``(n, hidden)`` read at this SAE's site."""
        if activations.shape[-1] != self.sae.cfg.d_in:
            raise DataError(f"activations of width {activations.shape[-1]}; this SAE reads width {self.sae.cfg.d_in}.")
        with torch.no_grad():
            return self.sae.encode(activations.to(self.sae.W_dec.dtype).to(self.sae.W_dec.device)).float().cpu()

    def pre_activations(self, activations: torch.Tensor) -> torch.Tensor:
        """Every feature's pre-activation ``(n, width)``: the encoder's output before the SAE's activation function
        (TopK, ReLU, JumpReLU), as sae-lens's ``hook_sae_acts_pre`` sees it. Dense where :meth:`encode` is sparse:
        how far each feature is from firing, which moves smoothly with the input.

        Example:
            >>> sae.pre_activations(acts)[:, 812].mean()
        """
        if activations.shape[-1] != self.sae.cfg.d_in:
            raise DataError(f"activations of width {activations.shape[-1]}; this SAE reads width {self.sae.cfg.d_in}.")
        seen: list[torch.Tensor] = []
        with torch.no_grad(), HookSet() as hooks:
            hooks.forward(self.sae.hook_sae_acts_pre, lambda module, args, out: seen.append(out))
            self.sae.encode(activations.to(self.sae.W_dec.dtype).to(self.sae.W_dec.device))
        return seen[0].float().cpu()

    def directions(self) -> torch.Tensor:
        """Every feature's decoder row ``(width, hidden)``, float32 on the CPU."""
        return self.sae.W_dec.detach().float().cpu()

    def feature_vector(self, feature: int) -> SteeringVector:
        """Feature ``feature``'s decoder row as a steering vector at this SAE's layer and site. With the norm of the
        SAE's training activations recorded, relative strengths work (``alpha = 0.1``: a tenth of a typical
        activation); otherwise steer with ``scale="absolute"``.

        Example:
            >>> with steer(model, sae.feature_vector(812), alpha=0.15): model.generate(...)
        """
        if isinstance(feature, bool) or not isinstance(feature, int) or not 0 <= feature < self.width:
            raise DataError(f"feature {feature!r} does not exist: this SAE has features 0-{self.width - 1}.")
        return SteeringVector(
            directions={self.layer: self.directions()[feature].clone()},
            model_id=self.model_id,
            fingerprint=self.fingerprint,
            site=self.site,
            method="sae_feature",
            resid_norm={} if self.resid_norm is None else {self.layer: float(self.resid_norm)},
            extra={"sae_feature": feature, "sae_width": self.width},
        )

    def decompose(self, vector: SteeringVector, *, top: int = 10) -> list[dict[str, Any]]:
        """The features whose decoder rows are closest in direction to ``vector`` at this SAE's layer, by cosine
        (``top`` each way: the most positive first, then the most negative). A cosine near 1 says the vector is
        that one feature; many small ones say it is spread over many.

        Example:
            >>> [(row["feature"], round(row["cosine"], 2)) for row in sae.decompose(sentiment)[:3]]
        """
        if self.layer not in vector.directions:
            raise DataError(f"the vector has layers {vector.layers}; this SAE reads layer {self.layer}.")
        if vector.site != self.site:
            raise DataError(f"the vector was read at {vector.site!r}; this SAE reads {self.site!r}.")
        rows = self.directions()
        unit = vector.directions[self.layer].float()
        cosines = (rows @ unit) / (rows.norm(dim=-1).clamp_min(1e-12) * unit.norm().clamp_min(1e-12))
        top = min(top, self.width)
        order = torch.cat([cosines.argsort(descending=True)[:top], cosines.argsort()[:top]])
        return [{"feature": int(i), "cosine": float(cosines[i]), "rank": k if k < top else k - top,
                 "sign": "+" if k < top else "-"} for k, i in enumerate(order)]  # fmt: skip

    def decomposition(self, vectors: SteeringVector | Mapping[str, SteeringVector], *, top: int = 10) -> ResultTable:
        """:meth:`decompose` of one vector or of named vectors as a ``ResultTable(kind="sae_features")`` (one record
        per vector and feature: ``vector``, ``feature``, ``cosine``, ``sign``, ``rank``), for reports and files.

        Example:
            >>> sae.decomposition({"sentiment": sentiment, "refusal": refusal}, top=5).to_json("features.json")
        """
        named = {"vector": vectors} if isinstance(vectors, SteeringVector) else dict(vectors)
        records = [{"vector": name, **row} for name, vector in named.items() for row in self.decompose(vector, top=top)]
        meta = {"sae_layer": self.layer, "site": self.site, "sae_width": self.width, "model_id": self.model_id,
                "top": top, "stats": self.stats}  # fmt: skip
        return ResultTable("sae_features", records, meta)

    def activations(self, model: nn.Module, tokenizer: Any, texts: Sequence[str], *, batch_size: int = 16,
                    progress: bool | None = None) -> list[torch.Tensor]:  # fmt: skip
        """Per text, the feature activations of its tokens ``(tokens, width)`` (every real token, the first too)."""
        self.check_fits(model)
        acts = record(model, tokenizer, texts, layers=[self.layer], reduce="all", site=self.site,
                      exclude_first_token=False, batch_size=batch_size, progress=progress)  # fmt: skip
        return [self.encode(hidden) for hidden in acts.per_text(self.layer)]

    def top_activating(
        self,
        model: nn.Module,
        tokenizer: Any,
        texts: Sequence[str],
        feature: int,
        *,
        k: int = 5,
        context: int = 8,
        activations: Sequence[torch.Tensor] | None = None,
    ) -> list[dict[str, Any]]:
        """The ``k`` tokens of ``texts`` where ``feature`` fires most (the first token of each text, the attention
        sink, left out), each with its text, position, token, activation and the ``context`` tokens before it.
        ``activations``: :meth:`activations` of the same texts, computed once for many features.

        Example:
            >>> acts = sae.activations(model, tok, texts)
            >>> {f: sae.top_activating(model, tok, texts, f, activations=acts) for f in (12, 812)}
        """
        self.feature_vector(feature)  # checks the index
        texts = check_texts(texts)
        if activations is None:
            activations = self.activations(model, tokenizer, texts)
        elif len(activations) != len(texts):
            raise DataError(f"{len(activations)} activations for {len(texts)} texts; compute them for these texts.")
        found = []
        for t, (acts, ids) in enumerate(zip(activations, encode(tokenizer, texts), strict=True)):
            for pos in range(1, len(ids)):
                value = float(acts[pos, feature])
                if value > 0:
                    found.append((value, t, pos, ids))
        found.sort(key=lambda item: -item[0])
        return [{"text": t, "position": pos, "token": tokenizer.decode([ids[pos]]), "activation": value,
                 "context": tokenizer.decode(ids[max(1, pos - context) : pos + 1])}
                for value, t, pos, ids in found[:k]]  # fmt: skip

    def quality(
        self, model: nn.Module, tokenizer: Any, texts: Sequence[str], *, batch_size: int = 32,
        progress: bool | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        """How well the SAE reads ``texts`` (e.g. held out from its training): ``tokens``, ``l0``,
        ``explained_variance`` and ``dead_features`` on their tokens (each text's first, the attention sink, left
        out), measured as :func:`train_sae` measures its training tokens.

        Example:
            >>> sae.quality(model, tok, validation_texts)["explained_variance"]
        """
        self.check_fits(model)
        acts = record(model, tokenizer, check_texts(texts), layers=[self.layer], reduce="all", site=self.site,
                      batch_size=batch_size, progress=progress)  # fmt: skip
        return _quality(self.sae, acts.values[self.layer])

    def attribute(
        self,
        model: nn.Module,
        tokenizer: Any,
        prompts: Sequence[str],
        steering: Intervention,
        metric: Metric,
        *,
        top: int = 10,
        batch_size: int = 8,
    ) -> dict[str, Any]:
        """Which features carry a steering intervention's effect on ``metric``: per feature, the change of its
        activation under the steering times the metric's gradient along its decoder row, summed over each prompt's
        tokens (the first, the attention sink, left out) and averaged over prompts: the first-order share of the
        effect that flows through that feature (attribution patching, with the SAE's features as the nodes).

        ``steering`` acts at this SAE's layer and site; the gradient is taken on the steered run. The features
        together give ``through_features``; what the SAE does not reconstruct is ``error`` (``first_order`` =
        the two summed = the change of the activations dotted with the gradient), and ``effect`` is the metric's
        measured change. Returns those and ``features``: the ``top`` features by size of attribution, each with its
        attribution and its mean change of activation (summed over tokens).

        Example:
            >>> metric = logit_diff_metric(tok, " good", " bad")
            >>> found = sae.attribute(model, tok, prompts, Intervention(sentiment, alpha=0.1), metric)
            >>> found["features"][:3], found["through_features"], found["effect"]
        """
        self.check_fits(model)
        layers = list(steering.layers or steering.vector.layers)
        if layers != [self.layer] or steering.resolved_site != self.site:
            raise DataError(
                f"the steering acts at layers {layers}, {steering.resolved_site!r}; attribute through this SAE's "
                f"features needs it at layer {self.layer}, {self.site!r} only (Intervention(..., "
                f"layers=[{self.layer}]))."
            )
        prompts = check_texts(prompts)
        module, is_input = get_layout(model).site_module(self.layer, self.site)
        device = input_device(model)
        totals = {
            "feature": torch.zeros(self.width, dtype=torch.float64),
            "delta": torch.zeros(self.width, dtype=torch.float64),
        }
        sums = {"first_order": 0.0, "through_features": 0.0, "effect": 0.0}
        ids = encode(tokenizer, prompts)
        rows_done = 0
        for start in range(0, len(ids), batch_size):
            chunk = ids[start : start + batch_size]
            input_ids, mask = pad_batch(chunk, pad_id(tokenizer), side="left")
            input_ids, mask = input_ids.to(device), mask.to(device)
            pairs = torch.arange(start, start + len(chunk), device=device)
            seen: dict[str, torch.Tensor] = {}

            def keep(name: str, into: dict[str, torch.Tensor] = seen):
                def hook(hidden: torch.Tensor) -> None:
                    into[name] = hidden

                return hook

            with torch.no_grad(), HookSet() as hooks:
                hooks.on_hidden(module, is_input, keep("plain"))
                plain_metric = metric(model(**forward_kwargs(model, input_ids, mask)).logits, pairs).float()
            tapped: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
            # The gradient goes to the tap's leaf alone: no graph is kept for the weights.
            with frozen_weights(model), torch.enable_grad(), steer(model, steering), HookSet() as hooks:
                # after the steering hook: sees the steered value
                hooks.on_hidden(module, is_input, gradient_tap(tapped, "steered"))
                steered_metric = metric(model(**forward_kwargs(model, input_ids, mask)).logits, pairs).float()
                (grad,) = torch.autograd.grad(steered_metric.sum(), tapped["steered"][1])
            real = mask.bool() & (mask.cumsum(-1) > 1)  # real tokens but each row's first
            plain, steered, grad = seen["plain"].detach()[real], tapped["steered"][0][real], grad[real].float()
            delta = self.encode(steered) - self.encode(plain)  # (tokens, width)
            along = grad.cpu() @ self.directions().T  # (tokens, width): the gradient along each decoder row
            totals["feature"] += (delta * along).sum(0).double()
            totals["delta"] += delta.sum(0).double()
            sums["first_order"] += float(((steered - plain).float() * grad).sum())
            sums["effect"] += float((steered_metric - plain_metric).sum())
            rows_done += len(chunk)
        per_feature = totals["feature"] / rows_done
        sums = {k: v / rows_done for k, v in sums.items()}
        sums["through_features"] = float(per_feature.sum())
        order = per_feature.abs().argsort(descending=True)[: min(top, self.width)]
        features = [{"feature": int(f), "attribution": float(per_feature[f]),
                     "delta_activation": float(totals["delta"][f] / rows_done)} for f in order]  # fmt: skip
        return {**sums, "error": sums["first_order"] - sums["through_features"], "n": rows_done, "features": features}


def _quality(sae: Any, acts: torch.Tensor) -> dict[str, Any]:
    """``tokens``, ``l0`` (mean active features per token), ``explained_variance`` (1 - the reconstruction's squared
    error over the activations' variance about their mean) and ``dead_features`` (features that never fire) of a
    sae-lens SAE on activations ``(tokens, hidden)``."""
    with torch.no_grad():
        acts = acts.to(sae.W_dec.dtype).to(sae.W_dec.device)
        features = torch.cat([sae.encode(chunk) for chunk in acts.split(8192)])
        recon = torch.cat([sae.decode(chunk) for chunk in features.split(8192)])
        explained = 1 - float(((acts - recon) ** 2).sum() / ((acts - acts.mean(0)) ** 2).sum())
        return {"tokens": int(acts.shape[0]), "l0": float((features > 0).float().sum(-1).mean()),
                "explained_variance": explained, "dead_features": int(((features > 0).sum(0) == 0).sum())}  # fmt: skip


def _batches(acts: torch.Tensor, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    """Shuffled batches of the recorded activations, one pass after another, for sae-lens's trainer."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(acts.shape[0], generator=gen)
        for start in range(0, acts.shape[0] - batch_size + 1, batch_size):
            yield acts[order[start : start + batch_size]]


def train_sae(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    layer: int,
    site: str = "resid_post",
    width: int | None = None,
    k: int = 32,
    epochs: float = 3.0,
    batch_size: int = 1024,
    lr: float = 5e-4,
    seed: int = 0,
    progress: bool | None = None,
) -> SparseAutoencoder:
    """Train a TopK SAE (sae-lens's ``TopKTrainingSAE`` and ``SAETrainer``) on the activations of ``texts`` at
    ``layer`` / ``site``.

    Args:
        texts: the training text; every real token but each text's first (the attention sink) is one sample.
        width: the number of features (default: 8x the residual width).
        k: features active per token (TopK; the L0).
        epochs: passes over the recorded tokens (the tokens are recorded once and kept in memory).
        batch_size, lr, seed: the trainer's (Adam, constant rate; the shuffling's seed).

    The result's ``stats``: ``tokens``, ``width``, ``k``, ``l0``, ``explained_variance`` and ``dead_features``
    (features that never fire on the training tokens), ``record_seconds`` and ``train_seconds``.

    Example:
        >>> sae = train_sae(model, tok, texts, layer=12, width=4608, k=32)
        >>> sae.save("saes/smollm2-l12")
    """
    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    texts = check_texts(texts)
    if k < 1 or batch_size < 1 or not (math.isfinite(lr) and lr > 0) or not epochs > 0:
        raise DataError(f"k={k}, batch_size={batch_size} must be >= 1, lr={lr} and epochs={epochs} positive.")
    began = time.perf_counter()
    show = progress if progress is not None else len(texts) > 2000
    recorded_acts = record(model, tokenizer, texts, layers=[layer], reduce="all", site=site, batch_size=32,
                           progress=show)  # fmt: skip
    acts = recorded_acts.values[layer]
    hidden = acts.shape[1]
    width = width or 8 * hidden
    if acts.shape[0] < batch_size:
        raise DataError(
            f"the texts give {acts.shape[0]} tokens, fewer than one batch of {batch_size}; give more text or a "
            "smaller batch_size."
        )
    if not 0 < k <= width:
        raise DataError(f"k={k} must be between 1 and the width ({width}).")
    recorded = time.perf_counter()
    torch.manual_seed(seed)
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=hidden, d_sae=width, k=k, device=str(acts.device)))
    steps = max(1, int(epochs * acts.shape[0]) // batch_size)
    config = SAETrainerConfig(
        total_training_samples=steps * batch_size, train_batch_size_samples=batch_size, lr=lr, lr_end=lr, device="cpu",
        logger=LoggingConfig(log_to_wandb=False), n_batches_for_norm_estimate=min(100, steps),
        dead_feature_window=max(1, steps // 4), feature_sampling_window=max(1, steps // 2),
    )  # fmt: skip
    trained = SAETrainer(config, sae, _batches(acts, batch_size, seed)).fit()
    finished = time.perf_counter()
    stats = {**_quality(trained, acts), "texts": len(texts), "width": width, "k": k, "epochs": epochs,
             "steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed,
             "record_seconds": round(recorded - began, 1), "train_seconds": round(finished - recorded, 1)}  # fmt: skip
    norm = recorded_acts.resid_norm[layer]
    return SparseAutoencoder(trained, layer, site, model_id(model), fingerprint(model), norm, stats)
