"""Reading activations inside a vLLM worker: what one request asked to keep (:class:`~steerlab.vllm._spec.CaptureSpec`)
and what its prompt's tokens wrote there, step by step.

A prompt may run in several steps (chunked prefill) and, after a preemption, again: rows are written by token
position, so a recomputed token overwrites its row instead of counting twice. When the caller fetches a capture,
it is reduced exactly as :class:`steerlab._record.ActivationReader` reduces a transformers batch (the last prompt
token, or the mean / all of its tokens with the attention sink left out, and the mean activation norm over the
tokens kept), so the two engines' results can be compared number for number. Nothing here imports vLLM.
"""

from __future__ import annotations

from typing import Any

import torch

from steerlab.vllm._spec import CaptureSpec

__all__ = ["Capture", "pack", "unpack"]


class Capture:
    """One request's prompt activations on this worker, per layer, by position."""

    def __init__(self, spec: CaptureSpec, prompt_length: int) -> None:
        self.spec = spec
        self.prompt_length = prompt_length
        self._norms: dict[int, torch.Tensor] = {}  # layer -> (prompt_length,) norms of every position
        self._seen: dict[int, torch.Tensor] = {}  # layer -> (prompt_length,) which positions were written
        self._rows: dict[int, torch.Tensor] = {}  # layer -> (prompt_length, width); "last" keeps one row

    def write(self, layer: int, values: torch.Tensor, positions: torch.Tensor) -> None:
        """Keep ``values`` (``[tokens, width]``) of the prompt tokens at ``positions`` (generated tokens are
        ignored)."""
        keep = positions < self.prompt_length
        if not bool(keep.all()):
            values, positions = values[keep], positions[keep]
        if positions.numel() == 0:
            return
        values = values.float()
        length = self.prompt_length
        if layer not in self._norms:
            self._norms[layer] = torch.zeros(length, device=values.device)
            self._seen[layer] = torch.zeros(length, dtype=torch.bool, device=values.device)
            rows = 1 if self.spec.reduce == "last" else length
            self._rows[layer] = torch.zeros(rows, values.shape[-1], device=values.device)
        self._norms[layer][positions] = values.norm(dim=-1)
        self._seen[layer][positions] = True
        if self.spec.reduce == "last":
            last = positions == length - 1
            if bool(last.any()):
                self._rows[layer][0] = values[last][-1]
        else:
            self._rows[layer][positions] = values

    def result(self) -> dict[int, dict[str, Any]]:
        """Per layer read on this worker: ``value`` (``(width,)`` for last / mean, ``(tokens, width)`` for all, on
        the CPU), ``norm_sum`` and ``norm_count`` over the tokens kept, and ``single`` (a one-token prompt, whose
        sink was kept). Refuses a layer whose prompt was not read whole."""
        out = {}
        length = self.prompt_length
        for layer, seen in self._seen.items():
            if not bool(seen.all()):
                missing = (~seen).nonzero().flatten().tolist()
                raise RuntimeError(
                    f"capture {self.spec.id}: positions {missing[:8]} of the {length}-token prompt were never "
                    f"computed at layer {layer} (its KV came from a cache); nothing is returned for it."
                )
            keep = torch.ones(length, dtype=torch.bool, device=seen.device)
            single = length == 1
            if self.spec.exclude_first_token and not single:
                keep[0] = False
            norms = self._norms[layer][keep]
            rows = self._rows[layer]
            if self.spec.reduce == "last":
                value = rows[0]
            elif self.spec.reduce == "mean":
                value = rows[keep].mean(0)
            else:
                value = rows[keep]
            out[layer] = {
                "value": value.cpu(),
                "norm_sum": float(norms.sum()),
                "norm_count": int(keep.sum()),
                "single": single,
            }
        return out


def pack(results: dict[str, dict[int, dict[str, Any]]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Captures' results in the plain types vLLM carries between its processes without pickle (string keys, bytes
    for a tensor's float32 values): what a worker sends back through ``collective_rpc``."""
    return {
        capture_id: {
            str(layer): {
                **{k: v for k, v in result.items() if k != "value"},
                "value": result["value"].float().contiguous().numpy().tobytes(),
                "shape": list(result["value"].shape),
            }
            for layer, result in layers.items()
        }
        for capture_id, layers in results.items()
    }


def unpack(packed: dict[str, dict[str, dict[str, Any]]]) -> dict[str, dict[int, dict[str, Any]]]:
    """:func:`pack`'s inverse, in the caller's process."""
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for capture_id, layers in packed.items():
        out[capture_id] = {}
        for layer, result in layers.items():
            value = torch.frombuffer(bytearray(result["value"]), dtype=torch.float32).reshape(result["shape"])
            out[capture_id][int(layer)] = {**result, "value": value}
    return out
