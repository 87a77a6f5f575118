"""Apply a GGUF control vector inside llama-cpp-python, which has llama.cpp's control-vector API
(``llama_set_adapter_cvec``) but not the file loader behind ``llama-cli --control-vector``.

:func:`control_vector_buffer` does what that loader (llama.cpp ``common``) does: every ``direction.<k>``
tensor, times the strength, summed into one float buffer at offset ``(k - 1) * n_embd`` (llama.cpp has no slot
for layer 0); :func:`set_control_vector` hands it to a ``llama_cpp.Llama`` for layers 1..n_layer-1.
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any

import numpy as np

from steerlab.errors import FormatError

__all__ = ["clear_control_vector", "control_vector_buffer", "set_control_vector"]


def control_vector_buffer(path: str | Path, strength: float, n_embd: int) -> np.ndarray:
    """The buffer llama.cpp builds from a control-vector file scaled by ``strength``."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    data = np.zeros(0, dtype=np.float32)
    for tensor in reader.tensors:
        prefix, _, index = tensor.name.partition(".")
        if prefix != "direction" or not index.isdigit():
            continue  # llama.cpp skips other tensors too
        layer = int(index)
        if layer == 0:
            raise FormatError(f"'{path}' holds direction.0, which llama.cpp rejects.")
        values = np.asarray(tensor.data, dtype=np.float32).reshape(-1)
        if values.shape[0] != n_embd:
            raise FormatError(
                f"'{path}': direction.{layer} has {values.shape[0]} values, the model has n_embd={n_embd}."
            )
        if data.shape[0] < layer * n_embd:
            data = np.concatenate([data, np.zeros(layer * n_embd - data.shape[0], dtype=np.float32)])
        data[(layer - 1) * n_embd : layer * n_embd] += strength * values
    return data


def set_control_vector(llm: Any, path: str | Path, strength: float) -> None:
    """Steer a ``llama_cpp.Llama`` with a control-vector file (the same as ``--control-vector-scaled``).

    Example:
        >>> llm = llama_cpp.Llama(model_path="SmolLM2-135M-Instruct.Q4_1.gguf")
        >>> set_control_vector(llm, "happy.gguf", 8.0)
    """
    import llama_cpp

    n_embd = llm.n_embd()
    n_layer = llama_cpp.llama_model_n_layer(llm._model.model)
    data = control_vector_buffer(path, strength, n_embd)
    buffer = (ctypes.c_float * data.shape[0]).from_buffer_copy(data.tobytes())
    if llama_cpp.llama_set_adapter_cvec(llm._ctx.ctx, buffer, data.shape[0], n_embd, 1, n_layer - 1) != 0:
        raise FormatError(f"llama.cpp refused the control vector '{path}' (n_embd={n_embd}, layers 1..{n_layer - 1}).")


def clear_control_vector(llm: Any) -> None:
    """Remove any control vector from a ``llama_cpp.Llama``."""
    import llama_cpp

    llama_cpp.llama_set_adapter_cvec(llm._ctx.ctx, None, 0, llm.n_embd(), -1, -1)
