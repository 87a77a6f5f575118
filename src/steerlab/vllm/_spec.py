"""A request's ``steering`` field, as it travels through vLLM, and what it means: parsed into the library's own
:class:`~steerlab.Intervention` list, checked against the served model, and given a prefix-cache salt.

A request carries its steering in ``SamplingParams.extra_args["steering"]``: a list of entries with the keys of
the built-in server's ``steering`` field plus ``preserve_norm``, or that list as a JSON string (over HTTP vLLM's
``vllm_xargs`` holds scalars only). ``vector`` names a ``.safetensors`` file, a shared folder or a Hub repo id
(anything :meth:`SteeringVector.load` reads), or a file ``<name>.safetensors`` in the folder named by
``$STEERLAB_VECTORS``. Nothing here imports vLLM: the plugin's front end and its workers both call it, and the
unit tests run it alone.

Example:
    >>> args = steering_args([{"vector": "happy.safetensors", "alpha": 0.15, "layers": [12]}])
    >>> SamplingParams(max_tokens=32, extra_args=args)
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from steerlab._models import ModelFingerprint
from steerlab._steer import Intervention, resolve_entries
from steerlab._vector import SteeringVector
from steerlab.arch.registry import registered_architectures
from steerlab.errors import SteeringError, SteerlabError

__all__ = [
    "CAPTURE_KEY",
    "EXTRA_KEY",
    "CaptureSpec",
    "SITES",
    "VECTORS_ENV",
    "Plan",
    "RequestSteering",
    "parse_capture",
    "parse_steering",
    "steering_args",
    "sublayer_path",
    "vector_digest",
]

EXTRA_KEY = "steering"
"""The key of ``SamplingParams.extra_args`` (``vllm_xargs`` over HTTP) that carries a request's steering."""
VECTORS_ENV = "STEERLAB_VECTORS"
"""An environment variable naming a folder of ``<name>.safetensors`` vectors that requests may name."""

CAPTURE_KEY = "steerlab_capture"
"""The key of ``SamplingParams.extra_args`` that asks a worker to keep a request's prompt activations (what
:func:`steerlab.record` and :func:`steerlab.extract_vector` send when given a ``vllm.LLM``)."""

_KEYS = ("vector", "alpha", "mode", "layers", "positions", "scale", "preserve_norm", "site")
# The sites the plugin steers at: a decoder layer's input and output (vLLM hands on (hidden, residual), whose sum is
# the residual stream) and its attention and MLP outputs (the modules steerlab's architecture registry names).
SITES = ("resid_pre", "resid_post", "attn_out", "mlp_out")


@dataclass(frozen=True)
class Plan:
    """One operator application at one layer, resolved for a request (what a hook applies to its tokens)."""

    layer: int
    mode: str
    direction: torch.Tensor  # float32, already scaled for "add" (the library's resolve_entries)
    alpha: Any
    positions: Any  # "all", "prompt", "generated" or an int k
    preserve_norm: bool
    site: str = "resid_post"


@dataclass(frozen=True)
class RequestSteering:
    """A request's steering: the interventions, their per-layer plan (layer order, then the order given) and
    the prefix-cache salt (``None`` when no prompt token is steered, so prompt blocks may be shared)."""

    interventions: tuple[Intervention, ...]
    plans: tuple[Plan, ...]
    salt: str | None

    @property
    def layers(self) -> list[int]:
        return sorted({plan.layer for plan in self.plans})


def steering_args(entries: Sequence[Mapping[str, Any]], extra_args: Mapping[str, Any] | None = None) -> dict:
    """``extra_args`` for :class:`vllm.SamplingParams` that steer a request with ``entries`` (each a dict with
    ``vector``, ``alpha`` and optionally ``mode``, ``layers``, ``positions``, ``scale``, ``preserve_norm``). The
    list travels as a JSON string, the form that also passes over HTTP as ``vllm_xargs``.

    Example:
        >>> steering_args([{"vector": "happy.safetensors", "alpha": 0.15}])
        {'steering': '[{"vector": "happy.safetensors", "alpha": 0.15}]'}
    """
    return {**(extra_args or {}), EXTRA_KEY: json.dumps(list(entries))}


class _VectorCache:
    """Vectors by source, loaded once; a file is read again when its size or modification time changes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, Any], tuple[SteeringVector, str]] = {}

    def get(self, source: str) -> tuple[SteeringVector, str]:
        path = _named_vector(source)
        target = path if path is not None else source
        stamp = None
        if Path(target).is_file():
            stat = Path(target).stat()
            stamp = (stat.st_size, stat.st_mtime_ns)
        key = (str(target), stamp)
        with self._lock:
            if key not in self._cache:
                vector = SteeringVector.load(target)
                self._cache[key] = (vector, vector_digest(vector))
            return self._cache[key]


def _named_vector(source: str) -> Path | None:
    folder = os.environ.get(VECTORS_ENV)
    if not folder or "/" in source or source.endswith(".safetensors"):
        return None
    path = Path(folder).expanduser() / f"{source}.safetensors"
    return path if path.is_file() else None


def vector_digest(vector: SteeringVector) -> str:
    """What the KV cache depends on: the directions and the norms that scale them."""
    digest = hashlib.sha256()
    for layer in vector.layers:
        digest.update(str(layer).encode())
        digest.update(vector.directions[layer].float().contiguous().numpy().tobytes())
    digest.update(json.dumps(sorted(vector.resid_norm.items())).encode())
    return digest.hexdigest()


_VECTORS = _VectorCache()


def _entries(raw: Any) -> list[dict[str, Any]]:
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as err:
            raise SteeringError(
                f"extra_args['{EXTRA_KEY}'] is not valid JSON ({err}); expected a list of entries such as "
                '[{"vector": "happy.safetensors", "alpha": 0.15}].'
            ) from None
    if isinstance(raw, Mapping):
        raw = [raw]
    if not isinstance(raw, list) or not all(isinstance(entry, Mapping) for entry in raw):
        raise SteeringError(
            f"extra_args['{EXTRA_KEY}'] must be a list of entries (objects with 'vector' and 'alpha'), found "
            f"{type(raw).__name__}."
        )
    for i, entry in enumerate(raw):
        unknown = sorted(set(entry) - set(_KEYS))
        if unknown:
            raise SteeringError(f"{EXTRA_KEY}[{i}]: unknown keys {unknown}; expected some of {list(_KEYS)}.")
        if "vector" not in entry:
            raise SteeringError(f"{EXTRA_KEY}[{i}]: 'vector' is required (a .safetensors path or a vector name).")
    return [dict(entry) for entry in raw]


def parse_steering(
    raw: Any, model: ModelFingerprint, model_name: str, *, salt: str | None = None
) -> RequestSteering | None:
    """A request's ``steering`` value as checked interventions and their plan, or ``None`` when it has none.

    Each entry becomes an :class:`~steerlab.Intervention` (every check of the library: mode, alpha, layers,
    positions, scale, strength) and its vector is checked against the served model's fingerprint
    (:class:`~steerlab.errors.VectorMismatchError`). An intervention that is the identity (alpha 0 for ``add``)
    adds nothing, so a request of only those runs unsteered. ``salt`` is the request's own ``cache_salt``, folded
    into the steering salt.

    Example:
        >>> steering = parse_steering('[{"vector": "happy.safetensors", "alpha": 0.15}]', fingerprint, "smollm2")
        >>> steering.layers, steering.salt is not None
        ([12], True)
    """
    if raw is None:
        return None
    entries = _entries(raw)
    items, plans, digests = [], [], []
    for i, entry in enumerate(entries):
        where = f"{EXTRA_KEY}[{i}]"
        try:
            vector, digest = _VECTORS.get(str(entry["vector"]))
            vector.check_fingerprint(model, model_name, warn=False)
            alpha = entry.get("alpha")
            item = Intervention(
                vector,
                tuple(alpha) if isinstance(alpha, list) else alpha,
                entry.get("mode", "add"),
                entry.get("layers"),
                entry.get("positions"),
                entry.get("site"),
                entry.get("scale", "relative"),
                bool(entry.get("preserve_norm", False)),
            )
            if item.resolved_site not in SITES:
                raise SteeringError(
                    f"site {item.resolved_site!r} is not steered through vLLM yet; expected one of {list(SITES)}. "
                    "Steer attention heads with transformers."
                )
            if item.resolved_site in ("attn_out", "mlp_out") and sublayer_path(model, item.resolved_site) is None:
                raise SteeringError(
                    f"site {item.resolved_site!r} is not known for model type {model.model_type!r} (steerlab's "
                    "architecture registry names no such module for it); steer resid_pre or resid_post."
                )
            resolved, _ = resolve_entries(item)
        except SteerlabError as err:
            raise type(err)(f"{where}: {err}") from None
        if item.is_identity:
            continue
        items.append(item)
        digests.append(digest)
        for (layer, site), e in resolved.items():
            plans.append(Plan(layer, e.mode, e.direction.float(), e.alpha, e.positions, e.preserve_norm, site))
    if not items:
        return None
    plans.sort(key=lambda plan: plan.layer)  # stable: the order given stays within a layer and site
    steers_prompt = any(item.positions != "generated" for item in items)
    return RequestSteering(tuple(items), tuple(plans), _salt(entries, digests, salt) if steers_prompt else None)


def sublayer_path(model: ModelFingerprint, site: str) -> str | None:
    """The path, inside a decoder layer, of the module whose output is ``site`` (``attn_out`` / ``mlp_out``) for the
    served model type, as steerlab's architecture registry names it (vLLM keeps Hugging Face's module names for
    the architectures it shares with transformers); ``None`` when the registry has none."""
    spec = registered_architectures().get(model.model_type)
    if spec is None:
        return None
    return spec.attn_out if site == "attn_out" else spec.mlp_out


def _salt(entries: list[dict[str, Any]], digests: list[str], salt: str | None) -> str:
    """A cache salt that differs for every different steering of the prompt: the entries as given and the content
    of their vectors (a file rewritten under the same name salts differently)."""
    digest = hashlib.sha256(json.dumps([entries, digests, salt], sort_keys=True, default=str).encode())
    return f"steerlab-{digest.hexdigest()[:32]}"


@dataclass(frozen=True)
class CaptureSpec:
    """What a request asks its workers to read: the prompt's activations at ``site`` of ``layers``, reduced as
    :func:`steerlab.record` reduces them, kept under ``id`` until the caller fetches them."""

    id: str
    layers: tuple[int, ...]
    site: str
    reduce: str
    exclude_first_token: bool


_CAPTURE_KEYS = {"id", "layers", "site", "reduce", "exclude_first_token"}


def parse_capture(raw: Any, model: ModelFingerprint) -> CaptureSpec | None:
    """A request's ``steerlab_capture`` value, checked against the served model, or ``None`` when it has none.

    Only a dict is accepted, never a JSON string: over HTTP ``vllm_xargs`` carries strings and scalars alone, so a
    capture (whose results are fetched from the workers in the caller's process) cannot be asked for remotely.

    Example:
        >>> parse_capture({"id": "a1", "layers": [12], "site": "resid_post", "reduce": "last",
        ...                "exclude_first_token": True}, fingerprint).layers
        (12,)
    """
    if raw is None:
        return None
    if not isinstance(raw, Mapping) or set(raw) != _CAPTURE_KEYS:
        found = sorted(raw) if isinstance(raw, Mapping) else type(raw).__name__
        raise SteeringError(
            f"extra_args['{CAPTURE_KEY}'] must be a dict with keys {sorted(_CAPTURE_KEYS)}, found {found}; it is "
            "set by steerlab.record / steerlab.extract_vector given a vllm.LLM, in the process that made it (it "
            "cannot travel over HTTP)."
        )
    site, reduce = raw["site"], raw["reduce"]
    if site not in SITES:
        raise SteeringError(f"{CAPTURE_KEY}: site {site!r} is not read through vLLM; expected one of {list(SITES)}.")
    if site in ("attn_out", "mlp_out") and sublayer_path(model, site) is None:
        raise SteeringError(
            f"{CAPTURE_KEY}: site {site!r} is not known for model type {model.model_type!r}; read resid_pre or "
            "resid_post."
        )
    if reduce not in ("last", "mean", "all"):
        raise SteeringError(f"{CAPTURE_KEY}: reduce={reduce!r} is not valid; expected 'last', 'mean' or 'all'.")
    layers = raw["layers"]
    if (
        not isinstance(layers, (list, tuple))
        or not layers
        or not all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x < model.num_layers for x in layers)
    ):
        raise SteeringError(
            f"{CAPTURE_KEY}: layers must be a non-empty list of block indices in 0..{model.num_layers - 1}, found "
            f"{layers!r}."
        )
    return CaptureSpec(str(raw["id"]), tuple(sorted(set(layers))), site, reduce, bool(raw["exclude_first_token"]))
