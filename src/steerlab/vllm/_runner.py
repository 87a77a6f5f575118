"""Steering inside a vLLM worker: one forward hook per decoder layer, and the per-step plan that says which
packed tokens belong to which steered request.

vLLM packs the tokens of every scheduled request into one ``[tokens, width]`` batch, in the order of the runner's
``input_batch.req_ids``, each request with ``num_scheduled_tokens`` tokens. Before a step's forward pass the
runner prepares its inputs; :meth:`RunnerSteering.prepare` reads the same batch then (request ids, tokens per
request, each request's prompt length and ``SamplingParams.extra_args``) and keeps the ranges of the steered
requests. :meth:`RunnerSteering.step` makes that plan live for exactly the one forward pass it was made for: warm-up
and profiling runs call the model directly and see no plan, so they are never steered.

A decoder layer returns ``(hidden, residual)`` with the residual not yet added (the next layer's fused add-norm
adds it). The block output that steerlab's transformers hooks steer (``resid_post``) is their sum, so a steered
token gets ``hidden = op(hidden + residual)`` and ``residual = 0``: the next layer's add then sees exactly the
steered sum. A layer's input (``resid_pre``) is steered the same way by a pre-hook on its ``(positions, hidden,
residual)`` arguments (the first layer's residual is ``None``: its input is the embeddings alone). ``attn_out`` and
``mlp_out`` are the outputs of the modules steerlab's architecture registry names for the served model type
(``self_attn`` and ``mlp`` in the Llama family), plain ``[tokens, width]`` tensors steered row by row. Tokens of
requests without steering keep every tensor as it was, bit for bit, and a step with no steered request runs no
steering code at all. The operators are the library's own
(:func:`steerlab._interventions.apply_operator`), applied to each request's tokens as a batch of one row; plain
additions (every position, no norm preservation: the common case) are folded per request as steerlab's hooks fold
them and applied to every such request's tokens at once, so a step costs a few tensor operations per layer whatever
the number of requests.

The same hooks read activations for :func:`steerlab.record` / :func:`steerlab.extract_vector` on a ``vllm.LLM``: a
request whose ``extra_args`` carries ``steerlab_capture`` has its prompt tokens' values at the asked sites written
into a :class:`~steerlab.vllm._capture.Capture` (after any steering of the same site, as a transformers reader
inside ``steer()`` sees them), kept on the worker until the caller fetches them with :func:`fetch_captures`.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from steerlab._hooks import HookSet
from steerlab._interventions import apply_operator
from steerlab._models import ModelFingerprint
from steerlab.vllm._capture import Capture
from steerlab.vllm._spec import (
    CAPTURE_KEY,
    EXTRA_KEY,
    Plan,
    RequestSteering,
    parse_capture,
    parse_steering,
    sublayer_path,
)

__all__ = ["MAX_UNFETCHED", "RunnerSteering", "decoder_layers", "served_fingerprint"]

MAX_UNFETCHED = 65536
"""Finished captures a worker keeps for their caller; beyond it the oldest are dropped (their fetch then fails
loudly), so a caller that never fetches cannot fill the worker's memory."""


def served_fingerprint(model_config: Any) -> ModelFingerprint:
    """The fingerprint a vector must match, from vLLM's ``ModelConfig`` (its Hugging Face config)."""
    text = model_config.hf_text_config
    model_type = getattr(text, "model_type", None) or getattr(model_config.hf_config, "model_type", "?")
    return ModelFingerprint(model_type, int(text.hidden_size), int(text.num_hidden_layers))


def decoder_layers(model: nn.Module, num_layers: int) -> nn.ModuleList:
    """The decoder layers of a vLLM model: ``model.model.layers`` for the Llama family and most others, else the
    one ``ModuleList`` named ``layers`` that holds ``num_layers`` modules. Refuses when none or several fit."""
    inner = getattr(model, "model", None)
    found = getattr(inner, "layers", None)
    if isinstance(found, nn.ModuleList) and len(found) == num_layers:
        return found
    candidates = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and name.split(".")[-1] == "layers" and len(module) == num_layers
    ]
    if len(candidates) != 1:
        raise RuntimeError(
            f"steerlab cannot find the decoder layers of {type(model).__name__}: expected one ModuleList named "
            f"'layers' with {num_layers} modules, found {[name for name, _ in candidates] or 'none'}. This "
            "architecture is not supported by the steerlab vLLM plugin; serve it without steering."
        )
    return candidates[0][1]


def _plain_add(plan: Plan) -> bool:
    return plan.mode == "add" and plan.positions == "all" and not plan.preserve_norm


Key = tuple[int, str]  # (layer, site): where a hook steers


@dataclass(eq=False)
class _Prepared:
    """A request's steering on this worker's device and dtype, per (layer, site): one folded addition where every
    entry is a plain addition (every position, no norm preservation), as steerlab's hooks fold them (``0 + a1 v1 +
    a2 v2``, in order); else the entries in order. Made once per request."""

    adds: dict[Key, torch.Tensor]
    plans: dict[Key, list[Plan]]

    @classmethod
    def of(cls, steering: RequestSteering, device: torch.device, dtype: torch.dtype) -> _Prepared:
        per_key: dict[Key, list[Plan]] = {}
        for plan in steering.plans:
            cast = replace(plan, direction=plan.direction.to(device=device, dtype=dtype))
            per_key.setdefault((plan.layer, plan.site), []).append(cast)
        adds, plans = {}, {}
        for key, items in per_key.items():
            if all(_plain_add(plan) for plan in items):
                total = torch.zeros_like(items[0].direction)
                for plan in items:
                    total += plan.alpha * plan.direction
                adds[key] = total
            else:
                plans[key] = items
        return cls(adds, plans)


@dataclass(eq=False)
class _Request:
    """A steered request's tokens in this step's packed batch."""

    index: int
    start: int
    end: int
    prompt_length: int
    steering: _Prepared


@dataclass(eq=False)
class _Step:
    """The plan of one forward pass: per layer, the tokens that get a folded addition (all requests together) and
    the requests whose entries apply one by one."""

    requests: list[_Request]
    captures: list[tuple[int, int, Capture]] = field(default_factory=list)  # (start, end, capture)
    masks: dict[tuple[int, Any], torch.Tensor | None] = field(default_factory=dict)
    keys: set[Key] = field(default_factory=set)  # where some request is steered
    reads: dict[Key, list[tuple[int, int, Capture]]] = field(default_factory=dict)  # where some request is read
    _adds: dict[Key, tuple[torch.Tensor, torch.Tensor] | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for request in self.requests:
            self.keys |= set(request.steering.adds) | set(request.steering.plans)
        for item in self.captures:
            spec = item[2].spec
            for layer in spec.layers:
                self.reads.setdefault((layer, spec.site), []).append(item)

    def hooked(self, key: Key) -> bool:
        return key in self.keys or key in self.reads

    def read(self, key: Key, hidden: torch.Tensor, residual: torch.Tensor | None, positions: torch.Tensor) -> None:
        """Write the residual stream (``hidden + residual``) of each reading request's tokens into its capture."""
        for start, end, capture in self.reads.get(key, ()):
            values = hidden[start:end] if residual is None else hidden[start:end] + residual[start:end]
            capture.write(key[0], values, positions[start:end])

    def additions(self, key: Key, device: torch.device) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(rows, delta)``: the packed token rows of the requests with a folded addition at ``key`` and what
        each row gets added (built once per key and step: a few tensor operations whatever the request count)."""
        if key not in self._adds:
            plain = [r for r in self.requests if key in r.steering.adds]
            if not plain:
                self._adds[key] = None
            else:
                rows = np.concatenate([np.arange(r.start, r.end) for r in plain])
                which = np.repeat(np.arange(len(plain)), [r.end - r.start for r in plain])
                vectors = torch.stack([r.steering.adds[key] for r in plain])
                index = torch.from_numpy(which).to(device)
                self._adds[key] = (torch.from_numpy(rows).to(device), vectors[index])
        return self._adds[key]

    def select(self, request: _Request, rule: Any, positions: torch.Tensor) -> torch.Tensor | None:
        """The ``(1, tokens)`` mask of ``request``'s current tokens that a position rule selects (``None``: all).
        vLLM's positions are absolute token indices: with no padding they are steerlab's real-token indices."""
        if rule == "all":
            return None
        key = (request.index, rule)
        if key not in self.masks:
            pos = positions[request.start : request.end]
            if rule == "prompt":
                mask = pos < request.prompt_length
            elif rule == "generated":
                mask = pos >= request.prompt_length
            else:
                mask = pos >= int(rule)
            self.masks[key] = mask[None]
        return self.masks[key]


class RunnerSteering:
    """The steering state of one vLLM model runner: its layer hooks, each live request's parsed steering, and the
    plan of the step about to run.

    The hooks are added through :class:`~steerlab._hooks.HookSet` when the runner first prepares a batch and are
    removed when the runner is collected (or :meth:`close` is called).
    """

    def __init__(self, runner: Any) -> None:
        model_config = runner.vllm_config.model_config
        self.fingerprint = served_fingerprint(model_config)
        self.model_name = str(model_config.model)
        self._requests: dict[str, _Prepared | None] = {}
        self._reading: dict[str, Capture | None] = {}  # live request -> its capture
        self._captured: OrderedDict[str, Capture] = OrderedDict()  # capture id -> capture, until fetched
        self._pending: _Step | None = None
        self._active: _Step | None = None
        self._positions: torch.Tensor | None = None
        self._device, self._dtype = runner.device, model_config.dtype
        self._hooks = HookSet().__enter__()
        self._finalizer = weakref.finalize(runner, self._hooks.close)
        # A model whose layers are not found still serves unsteered requests: only a steered one is refused (below).
        self._unsupported: str | None = None
        self._missing: dict[str, str] = {}  # site -> why this model cannot be steered there
        try:
            layers = decoder_layers(runner.get_model(), self.fingerprint.num_layers)
        except RuntimeError as err:
            self._unsupported = str(err)
            return
        for index, layer in enumerate(layers):
            self._hooks.pre_forward(layer, self._input_hook(index), with_kwargs=True)
            self._hooks.forward(layer, self._hook((index, "resid_post")))
            for site in ("attn_out", "mlp_out"):
                module = _sublayer(layer, sublayer_path(self.fingerprint, site))
                if module is None:
                    self._missing[site] = (
                        f"{type(layer).__name__} has no module {sublayer_path(self.fingerprint, site)!r} for {site}"
                    )
                else:
                    self._hooks.forward(module, self._hook((index, site)))

    def close(self) -> None:
        """Remove the hooks (also done when the runner is collected)."""
        self._finalizer()

    # ----- the batch of a step ------------------------------------------------------------------------------------
    def prepare(self, runner: Any, num_scheduled_tokens: Any) -> None:
        """Read the batch the runner is about to run (called where the runner prepares its inputs)."""
        batch = runner.input_batch
        live = runner.requests
        for req_id in [r for r in self._requests if r not in live]:  # finished or preempted-and-dropped
            del self._requests[req_id]
        for req_id in [r for r in self._reading if r not in live]:
            del self._reading[req_id]
        steered, captures, start = [], [], 0
        for i, req_id in enumerate(batch.req_ids[: batch.num_reqs]):
            count = int(num_scheduled_tokens[i])
            steering = self._steering_of(req_id, live[req_id])
            if steering is not None and self._unsupported is not None:
                why = self._unsupported
                raise RuntimeError(f"request {req_id} asks for steering, which this model cannot take: {why}")
            for site in {key[1] for key in (*steering.adds, *steering.plans)} if steering is not None else ():
                if site in self._missing:
                    raise RuntimeError(f"request {req_id} steers {site}, which this model cannot take: "
                                       f"{self._missing[site]}")  # fmt: skip
            if steering is not None and count > 0:
                prompt_length = int(live[req_id].num_prompt_tokens)
                steered.append(_Request(len(steered), start, start + count, prompt_length, steering))
            capture = self._capture_of(req_id, live[req_id])
            if capture is not None and count > 0:
                if self._unsupported is not None:
                    raise RuntimeError(f"request {req_id} reads activations, which this model cannot give: "
                                       f"{self._unsupported}")  # fmt: skip
                if capture.spec.site in self._missing:
                    raise RuntimeError(f"request {req_id} reads {capture.spec.site}, which this model cannot give: "
                                       f"{self._missing[capture.spec.site]}")  # fmt: skip
                captures.append((start, start + count, capture))
            start += count
        self._pending = _Step(steered, captures) if steered or captures else None

    def _capture_of(self, req_id: str, state: Any) -> Capture | None:
        if req_id not in self._reading:
            params = state.sampling_params
            raw = (params.extra_args or {}).get(CAPTURE_KEY) if params is not None else None
            spec = parse_capture(raw, self.fingerprint)
            capture = None if spec is None else Capture(spec, int(state.num_prompt_tokens))
            if capture is not None:
                self._captured[spec.id] = capture
                while len(self._captured) > MAX_UNFETCHED:
                    self._captured.popitem(last=False)
            self._reading[req_id] = capture
        return self._reading[req_id]

    def fetch(self, ids: list[str]) -> dict[str, Any]:
        """The reduced results of the captures ``ids`` read on this worker (each removed once fetched; an id this
        worker never saw, e.g. dropped past :data:`MAX_UNFETCHED`, is absent)."""
        return {i: self._captured.pop(i).result() for i in ids if i in self._captured}

    def _steering_of(self, req_id: str, state: Any) -> _Prepared | None:
        if req_id not in self._requests:
            params = state.sampling_params
            raw = (params.extra_args or {}).get(EXTRA_KEY) if params is not None else None
            # The front end checked this entry before the request was queued; a failure here (a vector file
            # changed since) raises rather than run the request unsteered.
            steering = parse_steering(raw, self.fingerprint, self.model_name)
            prepared = None if steering is None else _Prepared.of(steering, self._device, self._dtype)
            self._requests[req_id] = prepared
        return self._requests[req_id]

    @contextmanager
    def step(self, positions: torch.Tensor | None) -> Iterator[None]:
        """Make the prepared plan live for one forward pass of the model."""
        plan, self._pending = self._pending, None
        if plan is not None and (positions is None or positions.dim() != 1):
            raise RuntimeError(
                "steerlab steers models with 1-D token positions only (found "
                f"{None if positions is None else tuple(positions.shape)}: M-RoPE models are not supported)."
            )
        self._active, self._positions = plan, positions
        try:
            yield
        finally:
            self._active = self._positions = None

    # ----- the hooks ----------------------------------------------------------------------------------------------
    def _apply(self, key: Key, total: torch.Tensor, new: torch.Tensor) -> list[_Request]:
        """Write the steered rows of ``total`` (this site's ``[tokens, width]`` value) into ``new``; returns the
        requests whose rows were written by their own entries (the folded additions' rows are written too)."""
        step = self._active
        adds = step.additions(key, total.device)
        if adds is not None:
            rows, delta = adds
            new[rows] = total[rows] + delta
        done = []
        for request in step.requests:
            plans = request.steering.plans.get(key)
            if not plans:
                continue
            segment = total[request.start : request.end][None]
            for plan in plans:
                mask = step.select(request, plan.positions, self._positions)
                segment = apply_operator(plan.mode, segment, plan.direction, plan.alpha, mask, plan.preserve_norm)
            new[request.start : request.end] = segment[0]
            done.append(request)
        return done

    def _steered_rows(self, key: Key) -> list[tuple[int, int]]:
        """The packed token ranges that steering at ``key`` writes (to zero their residual)."""
        step = self._active
        return [(r.start, r.end) for r in step.requests if key in r.steering.adds or key in r.steering.plans]

    def _hook(self, key: Key):
        layer, site = key

        def steer_output(module: nn.Module, args: tuple, output: Any) -> Any:
            step = self._active
            if step is None or not step.hooked(key):
                return None
            split = isinstance(output, tuple) and len(output) == 2 and output[1] is not None
            if site != "resid_post" and not isinstance(output, torch.Tensor):
                raise RuntimeError(
                    f"steerlab cannot steer {site} of layer {layer}: {type(module).__name__} returned "
                    f"{type(output).__name__}, not a [tokens, width] tensor (this architecture's vLLM module differs "
                    "from its transformers one); steer resid_pre or resid_post."
                )
            hidden, residual = output if split else (output, None)
            if key not in step.keys:  # read only
                step.read(key, hidden, residual, self._positions)
                return None
            total = hidden + residual if split else hidden
            new_hidden = hidden.clone()
            self._apply(key, total, new_hidden)
            if not split:
                step.read(key, new_hidden, None, self._positions)
                return new_hidden
            new_residual = residual.clone()
            for start, end in self._steered_rows(key):
                new_residual[start:end] = 0
            step.read(key, new_hidden, new_residual, self._positions)
            return new_hidden, new_residual

        return steer_output

    def _input_hook(self, layer: int):
        key = (layer, "resid_pre")

        def steer_input(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> Any:
            step = self._active
            if step is None or not step.hooked(key):
                return None
            if len(args) < 2 or not isinstance(args[1], torch.Tensor):
                raise RuntimeError(
                    f"steerlab cannot steer resid_pre of layer {layer}: {type(module).__name__} was not called as "
                    "(positions, hidden_states, residual); steer resid_post of the layer before."
                )
            hidden = args[1]
            residual = args[2] if len(args) > 2 else kwargs.get("residual")
            if key not in step.keys:  # read only
                step.read(key, hidden, residual, self._positions)
                return None
            total = hidden + residual if residual is not None else hidden
            new_hidden = hidden.clone()
            self._apply(key, total, new_hidden)
            if residual is None:
                step.read(key, new_hidden, None, self._positions)
                return (args[0], new_hidden, *args[2:]), kwargs
            new_residual = residual.clone()
            for start, end in self._steered_rows(key):
                new_residual[start:end] = 0
            step.read(key, new_hidden, new_residual, self._positions)
            if len(args) > 2:
                return (args[0], new_hidden, new_residual, *args[3:]), kwargs
            return (args[0], new_hidden, *args[2:]), {**kwargs, "residual": new_residual}

        return steer_input


def _sublayer(layer: nn.Module, path: str | None) -> nn.Module | None:
    """The module at ``path`` (dotted) inside a decoder layer, or ``None``."""
    if path is None:
        return None
    module: Any = layer
    for part in path.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module if isinstance(module, nn.Module) else None
