"""SteeringVector: one direction per layer, with the metadata that says where it came from.

On disk it is a ``.safetensors`` file: one float32 tensor ``layer.<i>`` per layer and a JSON header under
the metadata key ``steerlab`` (never pickle). Loading tolerates unknown header keys (newer minor versions)
and refuses a newer major format with a clear error.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import re
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from steerlab._models import ModelFingerprint, fingerprint, model_id
from steerlab._version import __version__
from steerlab.errors import FormatError, VectorMismatchError

__all__ = ["FORMAT_VERSION", "VECTOR_FILENAME", "SteeringVector", "resolve_vector_source"]

FORMAT_VERSION = 1
_HEADER_KEY = "steerlab"
VECTOR_FILENAME = "vector.safetensors"
"""The file name of a vector inside a shared folder or Hub repo."""
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass
class SteeringVector:
    """Per-layer steering directions plus metadata.

    Attributes:
        directions: ``layer -> (hidden,)`` float tensor; layers are 0-based block indices (Hugging Face
            numbering) and the vector acts on that block's output (site ``resid_post``).
        model_id: the model it was extracted from (alias, path or hub id).
        fingerprint: model_type, hidden size and layer count of that model; a model that differs is refused.
        method: how it was made (``mean_diff``, ``pca_diff``, ..., ``combination``).
        normalized: whether each direction was scaled to unit norm at extraction.
        dataset_hash: sha256 of the contrast pairs.
        resid_norm: ``layer -> mean residual-stream norm`` on the extraction data, so strengths can be
            given relative to the model's own activation scale (``steer(..., scale="relative")``).

    Vectors combine like arrays: ``0.8 * happy - 0.3 * lazy``, layer by layer, each term as it is stored. A
    ``mean_diff`` direction keeps its natural norm, which differs between concepts, so that sum is weighted by the
    norms as much as by the coefficients; ``0.8 * happy.normalized_copy() - 0.3 * lazy.normalized_copy()`` weighs
    by the coefficients alone (as repeng's unit PCA directions do).

    Example:
        >>> vec = SteeringVector.load("sentiment.safetensors")
        >>> vec.layers
        [12]
        >>> (2 * vec).directions[12].norm() == 2 * vec.directions[12].norm()
        tensor(True)
    """

    directions: dict[int, torch.Tensor]
    model_id: str
    fingerprint: ModelFingerprint
    site: str = "resid_post"
    method: str = "mean_diff"
    normalized: bool = False
    dataset_hash: str | None = None
    resid_norm: dict[int, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    library_version: str = __version__

    def __post_init__(self) -> None:
        if not self.directions:
            raise VectorMismatchError("a SteeringVector needs at least one layer direction; none were given.")
        widths = {int(t.shape[-1]) for t in self.directions.values()}
        for layer, tensor in self.directions.items():
            if tensor.dim() != 1:
                raise VectorMismatchError(
                    f"direction at layer {layer} has shape {tuple(tensor.shape)}; expected a 1-D (hidden,) tensor."
                )
            if not torch.isfinite(tensor).all():
                raise VectorMismatchError(f"direction at layer {layer} contains NaN or inf.")
        # At the "heads" site a direction is heads x head width wide (not always the residual width, e.g. Gemma);
        # it is checked against the model where it is applied.
        if self.site != "heads" and widths != {self.fingerprint.hidden_size}:
            raise VectorMismatchError(
                f"directions have widths {sorted(widths)}, but the fingerprint says "
                f"hidden_size={self.fingerprint.hidden_size}."
            )

    @property
    def layers(self) -> list[int]:
        return sorted(self.directions)

    # ----- checks -------------------------------------------------------------------------------------
    def check_fits(self, model: nn.Module, *, warn: bool = True) -> None:
        """Raise :class:`VectorMismatchError` if this vector cannot be applied to ``model``; warn (unless
        ``warn=False``: a check made early, ahead of the one where the vector is applied) when the shapes fit but
        the model id differs."""
        self.check_fingerprint(fingerprint(model), model_id(model), warn=warn, stacklevel=4)

    def check_fingerprint(
        self, theirs: ModelFingerprint, their_id: str, *, warn: bool = True, stacklevel: int = 3
    ) -> None:
        """:meth:`check_fits` for a model known only by its fingerprint and name (one served by another engine,
        such as vLLM, whose modules are not a transformers model).

        Example:
            >>> vec.check_fingerprint(ModelFingerprint("llama", 576, 30), "smollm2-135m")
        """
        mine = self.fingerprint
        problems = []
        if theirs.hidden_size != mine.hidden_size:
            problems.append(f"hidden size {mine.hidden_size} (vector) vs {theirs.hidden_size} (model)")
        if theirs.model_type != mine.model_type:
            problems.append(f"model_type '{mine.model_type}' (vector) vs '{theirs.model_type}' (model)")
        if theirs.num_layers != mine.num_layers:
            problems.append(f"{mine.num_layers} layers (vector's model) vs {theirs.num_layers} (model)")
        out_of_range = [layer for layer in self.layers if layer >= theirs.num_layers]
        if out_of_range:
            problems.append(f"layers {out_of_range} do not exist (model has 0..{theirs.num_layers - 1})")
        if problems:
            raise VectorMismatchError(
                f"the vector extracted from '{self.model_id}' does not fit the model '{their_id}': "
                + "; ".join(problems)
                + ". Extract a vector on this model (steerlab extract --model ...)."
            )
        if warn and self.model_id != their_id:
            warnings.warn(
                f"the vector was extracted from '{self.model_id}' but is applied to '{their_id}'; the "
                "shapes match, so it is allowed (e.g. base -> chat transfer), but check that this is meant.",
                stacklevel=stacklevel,
            )

    def _meta_for(self, directions: dict[int, torch.Tensor], method: str, **extra: Any) -> SteeringVector:
        return replace(
            self,
            directions=directions,
            method=method,
            normalized=False,
            extra={**_without_recommendation(self.extra), **extra},
            library_version=__version__,
        )

    # ----- algebra ------------------------------------------------------------------------------------
    def __mul__(self, factor: float) -> SteeringVector:
        if not isinstance(factor, numbers.Real) or not math.isfinite(float(factor)):
            return NotImplemented
        scaled = {k: v * float(factor) for k, v in self.directions.items()}
        extra = self.extra if float(factor) == 1.0 else _without_recommendation(self.extra)
        return replace(self, directions=scaled, normalized=self.normalized and float(factor) == 1.0, extra=extra)

    __rmul__ = __mul__

    def __truediv__(self, divisor: float) -> SteeringVector:
        return self * (1.0 / float(divisor))

    def __neg__(self) -> SteeringVector:
        return self * -1.0

    def __add__(self, other: SteeringVector) -> SteeringVector:
        if not isinstance(other, SteeringVector):
            return NotImplemented
        if other.fingerprint != self.fingerprint or other.site != self.site:
            raise VectorMismatchError(
                "cannot add vectors for different models or sites: "
                f"{self.fingerprint.as_dict()} @ {self.site} "
                f"vs {other.fingerprint.as_dict()} @ {other.site}."
            )
        out = {}
        for layer in sorted(set(self.directions) | set(other.directions)):
            # A layer missing from one vector counts as zero there.
            parts = [v.directions[layer] for v in (self, other) if layer in v.directions]
            out[layer] = parts[0] + parts[1] if len(parts) == 2 else parts[0].clone()
        norms = {**other.resid_norm, **self.resid_norm}
        combined = self._meta_for(out, "combination", terms=[self._describe(), other._describe()])
        return replace(combined, resid_norm=norms, dataset_hash=None)

    def __sub__(self, other: SteeringVector) -> SteeringVector:
        if not isinstance(other, SteeringVector):
            return NotImplemented
        return self + (-other)

    def _describe(self) -> dict[str, Any]:
        return {"method": self.method, "dataset_hash": self.dataset_hash, "layers": self.layers}

    def at_layers(self, layers: list[int] | range, source: int | None = None) -> SteeringVector:
        """A vector carrying the direction of layer ``source`` (default: the only layer) at every one of
        ``layers``; e.g. to ablate one refusal direction everywhere."""
        if source is None:
            if len(self.directions) != 1:
                raise VectorMismatchError(f"the vector has layers {self.layers}; say which one to copy (source=...).")
            source = self.layers[0]
        if source not in self.directions:
            raise VectorMismatchError(f"layer {source} is not in the vector, which has layers {self.layers}.")
        norm = self.resid_norm.get(source)
        copies = {int(layer): self.directions[source].clone() for layer in layers}
        return replace(
            self,
            directions=copies,
            resid_norm={} if norm is None else dict.fromkeys(copies, norm),
            extra={**_without_recommendation(self.extra), "copied_from_layer": source},
        )

    def random_like(self, seed: int = 0) -> SteeringVector:
        """A random direction per layer with the same norm as this vector's: the baseline every effect should be
        compared against (a random push of the same size also moves behaviour a little).

        Each layer's direction is drawn by its own generator, seeded from ``(seed, layer)``: a seed and a layer give
        the same direction whatever other layers the vector holds, so a baseline at layer 8 is the same for an
        11-layer vector and a 1-layer one.

        Example:
            >>> control = vec.random_like(seed=0)
            >>> torch.equal(control.directions[8], vec.at_layers([8], 8).random_like(seed=0).directions[8])
            True
        """
        directions = {}
        for layer in self.layers:
            gen = torch.Generator().manual_seed(_layer_seed(seed, layer))
            noise = torch.randn(self.directions[layer].shape[0], generator=gen)
            directions[layer] = noise / noise.norm() * self.directions[layer].norm()
        return replace(
            self,
            directions=directions,
            method="random",
            dataset_hash=None,
            extra={**_without_recommendation(self.extra), "random_seed": seed, "random_like": self.method},
        )

    def normalized_copy(self) -> SteeringVector:
        """A copy with every layer's direction scaled to unit norm."""
        unit = {k: v / v.norm().clamp_min(1e-12) for k, v in self.directions.items()}
        return replace(self, directions=unit, normalized=True)

    # ----- files --------------------------------------------------------------------------------------
    def header(self) -> dict[str, Any]:
        return {
            "format": "steerlab.vector",
            "format_version": FORMAT_VERSION,
            "library_version": self.library_version,
            "model_id": self.model_id,
            "fingerprint": self.fingerprint.as_dict(),
            "site": self.site,
            "method": self.method,
            "layers": self.layers,
            "normalized": self.normalized,
            "dataset_hash": self.dataset_hash,
            "resid_norm": {str(k): v for k, v in sorted(self.resid_norm.items())},
            "extra": self.extra,
        }

    def save(self, path: str | Path) -> Path:
        """Write the vector as ``.safetensors`` with its JSON header; returns the path."""
        from safetensors.torch import save_file

        path = Path(path)
        tensors = {f"layer.{k}": v.detach().float().cpu().contiguous() for k, v in self.directions.items()}
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(path), metadata={_HEADER_KEY: json.dumps(self.header())})
        return path

    @classmethod
    def load(
        cls,
        source: str | Path,
        *,
        model: nn.Module | None = None,
        filename: str | None = None,
        revision: str | None = None,
    ) -> SteeringVector:
        """Read a vector written by :meth:`save`, checking its header and tensors.

        ``source`` is a ``.safetensors`` file, a folder holding one (as written by ``steerlab export --format
        hub``), or a Hugging Face Hub repo id. With ``model``, the vector is also checked to fit it.

        Example:
            >>> vec = SteeringVector.load("sentiment.safetensors")
            >>> vec = SteeringVector.load("someone/happy-smollm2", model=model)
        """
        from safetensors import SafetensorError, safe_open

        path = resolve_vector_source(source, filename=filename, revision=revision)
        if not path.is_file():
            raise FormatError(f"vector file '{path}' does not exist.")
        try:
            with safe_open(str(path), framework="pt") as handle:
                meta = handle.metadata() or {}
                tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
        except (SafetensorError, OSError, ValueError) as err:
            raise FormatError(f"'{path}' is not a readable .safetensors file ({err}).") from err
        if _HEADER_KEY not in meta:
            raise FormatError(
                f"'{path}' is a safetensors file without a steerlab header (metadata keys: "
                f"{sorted(meta)}); it "
                "was not written by SteeringVector.save. GGUF control vectors are imported with "
                "`steerlab import`."
            )
        try:
            header = json.loads(meta[_HEADER_KEY])
            version = int(header.get("format_version", 0))
        except (json.JSONDecodeError, TypeError, ValueError) as err:
            raise FormatError(f"'{path}': the steerlab header is not valid JSON ({err}).") from err
        if version > FORMAT_VERSION:
            raise FormatError(
                f"'{path}' has vector format version {version}, newer than this steerlab reads "
                f"({FORMAT_VERSION}"
                f"); it was written by steerlab {header.get('library_version')}. Upgrade steerlab."
            )
        directions = {}
        for name, tensor in tensors.items():
            prefix, _, index = name.partition(".")
            if prefix != "layer" or not index.isdigit():
                raise FormatError(f"'{path}': unexpected tensor '{name}'; expected names 'layer.<index>'.")
            directions[int(index)] = tensor.float()
        try:
            fp = header["fingerprint"]
            fingerprint_ = ModelFingerprint(str(fp["model_type"]), int(fp["hidden_size"]), int(fp["num_layers"]))
            listed = sorted(int(x) for x in header["layers"])
        except (KeyError, TypeError, ValueError) as err:
            raise FormatError(f"'{path}': the steerlab header lacks a valid {err} entry.") from err
        if listed != sorted(directions):
            raise FormatError(f"'{path}': header lists layers {listed} but the file holds {sorted(directions)}.")
        try:
            vector = cls(
                directions=directions,
                model_id=str(header.get("model_id", "unknown")),
                fingerprint=fingerprint_,
                site=str(header.get("site", "resid_post")),
                method=str(header.get("method", "unknown")),
                normalized=bool(header.get("normalized", False)),
                dataset_hash=header.get("dataset_hash"),
                resid_norm={int(k): float(v) for k, v in (header.get("resid_norm") or {}).items()},
                extra=dict(header.get("extra") or {}),
                library_version=str(header.get("library_version", "unknown")),
            )
        except VectorMismatchError as err:
            raise FormatError(f"'{path}': {err}") from err
        if model is not None:
            vector.check_fits(model)
        return vector


def _layer_seed(seed: int, layer: int) -> int:
    """A generator seed for one (seed, layer) pair: a 64-bit hash, so neighbouring seeds and layers give unrelated
    directions and no other layer of the vector takes part."""
    digest = hashlib.sha256(f"steerlab.random_like:{int(seed)}:{int(layer)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1  # torch seeds are below 2**64; keep it positive and < 2**63


def _without_recommendation(extra: dict[str, Any]) -> dict[str, Any]:
    """``extra`` less ``"recommended"``: a calibration holds for the direction it measured, not for a scaled, summed,
    copied or random one made from it."""
    return {k: v for k, v in extra.items() if k != "recommended"}


def resolve_vector_source(source: str | Path, *, filename: str | None = None, revision: str | None = None) -> Path:
    """The local path of a vector given as a file, a folder, or a Hugging Face Hub repo id."""
    path = Path(source).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        if filename is not None:
            return path / filename
        if (path / VECTOR_FILENAME).is_file():
            return path / VECTOR_FILENAME
        found = sorted(path.glob("*.safetensors"))
        if len(found) != 1:
            raise FormatError(
                f"folder '{path}' holds {len(found)} .safetensors files and no {VECTOR_FILENAME}; "
                "name the file (filename=...)."
            )
        return found[0]
    text = str(source)
    if _REPO_ID.match(text) and not text.endswith(".safetensors"):
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

        try:
            return Path(hf_hub_download(text, filename or VECTOR_FILENAME, revision=revision))
        except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as err:
            raise FormatError(
                f"cannot get '{filename or VECTOR_FILENAME}' from the Hugging Face Hub repo '{text}' "
                f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). Check the "
                "repo id, your network, or give a local file."
            ) from err
    raise FormatError(f"vector file '{source}' does not exist (nor is it a folder or a Hub repo id 'org/name').")
