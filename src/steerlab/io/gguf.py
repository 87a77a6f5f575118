"""llama.cpp control vectors (the files ``llama-cli --control-vector`` reads), written and read with ``gguf``.

Layout: ``general.architecture = "controlvector"``, ``controlvector.model_hint`` (the model type),
``controlvector.layer_count`` (how many direction tensors), and one float32 tensor ``direction.<k>`` per layer.

Layer numbering: llama.cpp adds ``direction.<k>`` to the output of its block ``k`` (0-based), which is
Hugging Face's ``model.layers[k]``, i.e. steerlab's layer ``k`` at site ``resid_post``. llama.cpp has no slot
for block 0 (its buffer starts at layer 1) and rejects a file holding ``direction.0``, so a vector with a
layer-0 direction cannot be exported. llama.cpp multiplies every direction by the ``--control-vector-scaled``
strength, the same as steerlab's ``alpha`` with ``scale="absolute"``.

steerlab also stores its own JSON header under ``steerlab.header`` (llama.cpp ignores unknown keys), so a
vector survives the round trip with its metadata. Files written by repeng's ``export_gguf`` have the same
layout without that header and import too.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import nn

from steerlab.errors import FormatError, VectorMismatchError

if TYPE_CHECKING:
    from steerlab._vector import SteeringVector

__all__ = ["export_gguf", "import_gguf"]

ARCH = "controlvector"
_HEADER_KEY = "steerlab.header"


def export_gguf(vector: SteeringVector, path: str | Path) -> Path:
    """Write ``vector`` as a llama.cpp control vector.

    Example:
        >>> export_gguf(vec, "happy.gguf")   # llama-cli -m model.gguf --control-vector happy.gguf
    """
    import gguf

    if vector.site != "resid_post":
        raise FormatError(
            f"llama.cpp applies control vectors to block outputs (site resid_post); this vector is for "
            f"site '{vector.site}' and cannot be exported."
        )
    if 0 in vector.directions:
        raise FormatError(
            "llama.cpp cannot load a direction for layer 0 (it rejects a file with direction.0); "
            f"export the other layers: vector.at_layers(...) or a vector without layer 0 "
            f"(this one has layers {vector.layers})."
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), ARCH)
    writer.add_string(f"{ARCH}.model_hint", vector.fingerprint.model_type)
    writer.add_uint32(f"{ARCH}.layer_count", len(vector.directions))
    writer.add_string(_HEADER_KEY, json.dumps(vector.header()))
    for layer in vector.layers:
        writer.add_tensor(f"direction.{layer}", vector.directions[layer].detach().float().cpu().numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _string_field(reader, key: str) -> str | None:
    field = reader.get_field(key)
    if field is None:
        return None
    try:
        return bytes(field.parts[field.data[0]]).decode("utf-8")
    except (IndexError, UnicodeDecodeError, TypeError):
        raise FormatError(f"GGUF key '{key}' is not a readable string.") from None


def import_gguf(
    path: str | Path,
    model: nn.Module,
    *,
    tokenizer: Any = None,
    norm_texts: Sequence[str] | None = None,
) -> SteeringVector:
    """Read a llama.cpp control vector (ours or repeng's) for ``model``, checking it fits.

    The model is needed because the file does not record the model's width and depth, only a type hint. A file
    written by another tool has no residual norms, so ``scale="relative"`` cannot be used with it; give
    ``tokenizer`` and ``norm_texts`` and the mean residual norm at each of its layers is measured on those texts
    (recorded in ``extra["resid_norm_measured_on"]``).

    Example:
        >>> vec = import_gguf("happy.gguf", model)
        >>> vec = import_gguf("repeng.gguf", model, tokenizer=tokenizer, norm_texts=neutral_texts())
    """
    import gguf

    from steerlab._models import fingerprint, model_id
    from steerlab._vector import SteeringVector

    path = Path(path)
    if not path.is_file():
        raise FormatError(f"GGUF file '{path}' does not exist.")
    try:
        reader = gguf.GGUFReader(str(path))
    except (ValueError, OSError, IndexError, KeyError) as err:
        raise FormatError(f"'{path}' is not a readable GGUF file ({err}).") from err
    arch = _string_field(reader, "general.architecture")
    if arch != ARCH:
        raise FormatError(
            f"'{path}' is a GGUF file of architecture '{arch}', not a control vector "
            f"('{ARCH}'); a model file cannot be imported as a vector."
        )
    fp = fingerprint(model)
    directions = {}
    for tensor in reader.tensors:
        prefix, _, index = tensor.name.partition(".")
        if prefix != "direction" or not index.isdigit():
            raise FormatError(
                f"'{path}': unexpected tensor '{tensor.name}'; a control vector holds only 'direction.<layer>' tensors."
            )
        layer = int(index)
        if layer == 0:
            raise FormatError(
                f"'{path}' holds direction.0, which llama.cpp rejects (it has no slot for layer 0); "
                "the file is inconsistent."
            )
        data = np.asarray(tensor.data, dtype=np.float32).reshape(-1)
        if data.shape[0] != fp.hidden_size:
            raise VectorMismatchError(
                f"'{path}': direction.{layer} has {data.shape[0]} values but the model's hidden "
                f"size is {fp.hidden_size}; the file is for another model."
            )
        if not np.isfinite(data).all():
            raise FormatError(f"'{path}': direction.{layer} contains NaN or inf.")
        if layer >= fp.num_layers:
            raise VectorMismatchError(
                f"'{path}': direction.{layer} is beyond the model's {fp.num_layers} layers "
                f"(0..{fp.num_layers - 1}); the file is for another model."
            )
        import torch

        directions[layer] = torch.from_numpy(data.copy())
    if not directions:
        raise FormatError(f"'{path}' holds no direction tensors.")
    hint = _string_field(reader, f"{ARCH}.model_hint")
    if hint is not None and hint != fp.model_type:
        warnings.warn(
            f"'{path}' says it is for model type '{hint}', the model is '{fp.model_type}'; the widths and "
            "layers fit, so it is loaded.",
            stacklevel=2,
        )
    raw = _string_field(reader, _HEADER_KEY)
    header = {}
    if raw is not None:
        try:
            header = json.loads(raw)
        except json.JSONDecodeError:
            raise FormatError(f"'{path}': the steerlab header is not valid JSON.") from None
    vector = SteeringVector(
        directions=directions,
        model_id=str(header.get("model_id", model_id(model))),
        fingerprint=fp,
        method=str(header.get("method", "gguf-import")),
        normalized=bool(header.get("normalized", False)),
        dataset_hash=header.get("dataset_hash"),
        resid_norm={int(k): float(v) for k, v in (header.get("resid_norm") or {}).items() if int(k) in directions},
        extra={**dict(header.get("extra") or {}), "imported_from": path.name},
    )
    missing = [layer for layer in vector.layers if layer not in vector.resid_norm]
    if missing and tokenizer is not None:
        if not norm_texts:
            raise FormatError("give the texts to measure the residual norms on (norm_texts=...), or no tokenizer.")
        from steerlab._record import record

        texts = list(norm_texts)
        acts = record(model, tokenizer, texts, layers=vector.layers, reduce="mean", site=vector.site)
        vector.resid_norm = {**acts.resid_norm, **vector.resid_norm}
        vector.extra["resid_norm_measured_on"] = f"{len(texts)} texts at import"
    return vector
