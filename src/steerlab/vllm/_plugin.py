"""The vLLM plugin: stock vLLM loads :func:`register` through the ``vllm.general_plugins`` entry point, in the front
end and in every worker process, and from then on a request whose ``SamplingParams.extra_args`` carries
``steering`` is steered.

What it changes in vLLM (three methods, wrapped, never replaced):

- ``InputProcessor.process_inputs`` (the front end, where a request is admitted): the ``steering`` entry is parsed
  and checked against the served model with the library's own errors (raised to the caller as a
  ``VLLMValidationError``: a 400 over HTTP), and a request that steers prompt tokens gets a ``cache_salt`` of its
  steering, so its prompt never reuses KV blocks computed without it or under other steering. A request that reads
  activations (``steerlab_capture``) is checked the same way and salted by its own capture id, so every one of its
  prompt tokens is computed (and read), never taken from the cache.
- ``GPUModelRunner._prepare_inputs`` (every worker, every step; the CPU runner inherits it): reads which packed
  tokens belong to which steered request.
- ``GPUModelRunner._model_forward``: makes that plan live for exactly that forward pass.

It relies on internals of vLLM's V1 model runner, so :func:`check_layout` checks them when the plugin loads and
refuses (a ``RuntimeError`` that names what is missing) rather than steer wrong; versions it was tested with are
in :data:`TESTED_VLLM`. The V2 runner (vLLM's default for dense models) drops ``SamplingParams`` at admission, so
the plugin asks for the V1 runner (``VLLM_USE_V2_MODEL_RUNNER=0`` unless set) and refuses steered requests on an
engine that runs V2, or that compiles the model or captures CUDA graphs (a hook's per-step plan cannot live in a
captured graph): steered serving needs ``enforce_eager=True``.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import weakref
from typing import Any

from steerlab.errors import SteerlabError
from steerlab.vllm._capture import pack
from steerlab.vllm._runner import RunnerSteering, served_fingerprint
from steerlab.vllm._spec import CAPTURE_KEY, EXTRA_KEY, parse_capture, parse_steering

__all__ = ["DISABLE_ENV", "FETCH_METHOD", "TESTED_VLLM", "check_layout", "fetch_captures", "register"]

TESTED_VLLM = ("0.32.0",)
"""vLLM releases the plugin's tests ran on. Another release is accepted only when :func:`check_layout` passes."""
FETCH_METHOD = "steerlab_fetch_captures"
"""The method the plugin adds to vLLM's workers (``WorkerBase``): ``LLM.collective_rpc(FETCH_METHOD, args=(ids,))``
returns each worker's captures by id. Called by name, so it crosses vLLM's process boundaries without pickle."""
DISABLE_ENV = "STEERLAB_VLLM_DISABLE"
"""Set to 1 to keep the installed plugin from changing vLLM (steering requests are then not recognised)."""

_log = logging.getLogger("steerlab.vllm")
_WRAPPED = "__steerlab_wrapped__"
_STATES: weakref.WeakKeyDictionary[Any, RunnerSteering] = weakref.WeakKeyDictionary()


def _vllm_version() -> str:
    import vllm

    return str(getattr(vllm, "__version__", "unknown"))


def check_layout() -> list[str]:
    """What the plugin needs of vLLM's internals and does not find (empty: all there).

    Example:
        >>> check_layout()
        []
    """
    problems: list[str] = []
    try:
        from vllm.v1.engine import EngineCoreRequest
        from vllm.v1.engine.input_processor import InputProcessor
        from vllm.v1.worker.gpu_input_batch import CachedRequestState, InputBatch
        from vllm.v1.worker.gpu_model_runner import GPUModelRunner
        from vllm.v1.worker.worker_base import WorkerBase
    except ImportError as err:
        return [f"a module is missing ({err})"]

    def expect(owner: Any, name: str, params: tuple[str, ...]) -> None:
        method = getattr(owner, name, None)
        if method is None:
            problems.append(f"{owner.__name__}.{name} is missing")
            return
        found = tuple(inspect.signature(method).parameters)[1 : 1 + len(params)]
        if found != params:
            problems.append(f"{owner.__name__}.{name} takes {found}, expected {params}")

    expect(InputProcessor, "process_inputs", ("request_id", "prompt", "params"))
    expect(GPUModelRunner, "_prepare_inputs", ("scheduler_output", "num_scheduled_tokens"))
    expect(GPUModelRunner, "_model_forward", ("input_ids", "positions"))
    fields = {
        CachedRequestState: ("sampling_params", "prompt_token_ids"),
        EngineCoreRequest: ("cache_salt", "sampling_params"),
    }
    for owner, names in fields.items():
        known = set(getattr(owner, "__dataclass_fields__", {})) | set(getattr(owner, "__struct_fields__", ()))
        problems += [f"{owner.__name__}.{name} is missing" for name in names if name not in known]
    problems += [f"InputBatch.{name} is missing" for name in ("req_ids", "num_reqs") if not hasattr(InputBatch, name)]
    if getattr(WorkerBase, FETCH_METHOD, fetch_captures) is not fetch_captures:
        problems.append(f"WorkerBase already has a method {FETCH_METHOD}")
    try:  # the CPU runner must inherit the two wrapped methods (a platform's own version would bypass them)
        from vllm.v1.worker.cpu_model_runner import CPUModelRunner
    except Exception:  # not a CPU build: nothing to check
        CPUModelRunner = None
    for name in ("_prepare_inputs", "_model_forward"):
        if CPUModelRunner is not None and name in vars(CPUModelRunner):
            problems.append(f"CPUModelRunner overrides {name}")
    return problems


def register() -> None:
    """The ``vllm.general_plugins`` entry point: check vLLM's layout, then wrap the three methods (once per
    process; vLLM may call a plugin several times)."""
    if os.environ.get(DISABLE_ENV, "") not in ("", "0"):
        return
    os.environ.setdefault("VLLM_USE_V2_MODEL_RUNNER", "0")
    from vllm.v1.engine.input_processor import InputProcessor
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    if getattr(GPUModelRunner._model_forward, _WRAPPED, False):
        return
    version = _vllm_version()
    problems = check_layout()
    if problems:
        raise RuntimeError(
            f"the steerlab vLLM plugin was tested with vLLM {', '.join(TESTED_VLLM)} and does not fit vLLM {version}: "
            + "; ".join(problems)
            + f". Install a tested vLLM (pip install 'vllm=={TESTED_VLLM[-1]}'), or set {DISABLE_ENV}=1 to run "
            "vLLM without steering."
        )
    if version not in TESTED_VLLM:
        _log.warning("steerlab: vLLM %s is untested (tested: %s); its layout checks out.", version, TESTED_VLLM)
    _wrap(InputProcessor, "process_inputs", _process_inputs)
    _wrap(GPUModelRunner, "_prepare_inputs", _prepare_inputs)
    _wrap(GPUModelRunner, "_model_forward", _model_forward)
    from vllm.v1.worker.worker_base import WorkerBase

    setattr(WorkerBase, FETCH_METHOD, fetch_captures)  # a new method, called by name: nothing of vLLM's is replaced


def _wrap(owner: type, name: str, wrapper: Any) -> None:
    original = getattr(owner, name)

    @functools.wraps(original)
    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        return wrapper(original, self, *args, **kwargs)

    setattr(method, _WRAPPED, True)
    setattr(owner, name, method)


# ----- the front end ----------------------------------------------------------------------------------------------
def _engine_problem(vllm_config: Any) -> str | None:
    """Why this engine cannot steer (``None``: it can)."""
    from vllm.config import CompilationMode, CUDAGraphMode

    if vllm_config.use_v2_model_runner:
        return (
            "the engine runs vLLM's V2 model runner, which the steerlab plugin cannot steer; start it with "
            "VLLM_USE_V2_MODEL_RUNNER=0 (the plugin sets it when it loads first)"
        )
    compilation = vllm_config.compilation_config
    if compilation.mode != CompilationMode.NONE or compilation.cudagraph_mode != CUDAGraphMode.NONE:
        return (
            "the engine compiles the model or captures CUDA graphs, where per-request steering hooks cannot run; "
            "start it with enforce_eager=True (vllm serve --enforce-eager)"
        )
    return None


def _process_inputs(original: Any, self: Any, request_id: str, prompt: Any, params: Any, *args: Any, **kwargs: Any):
    from vllm.exceptions import VLLMValidationError

    request = original(self, request_id, prompt, params, *args, **kwargs)
    sampling = request.sampling_params
    extra = {} if sampling is None else (sampling.extra_args or {})
    raw, capture = extra.get(EXTRA_KEY), extra.get(CAPTURE_KEY)
    if raw is None and capture is None:
        return request
    key = EXTRA_KEY if raw is not None else CAPTURE_KEY
    problem = _engine_problem(self.vllm_config)
    if problem is not None:
        raise VLLMValidationError(f"{key}: {problem}.", parameter=key)
    model_config = self.vllm_config.model_config
    fingerprint = served_fingerprint(model_config)
    try:
        steering = parse_steering(raw, fingerprint, str(model_config.model), salt=request.cache_salt)
    except SteerlabError as err:
        raise VLLMValidationError(str(err), parameter=EXTRA_KEY) from None
    if steering is not None and steering.salt is not None:
        request.cache_salt = steering.salt
    try:
        spec = parse_capture(capture, fingerprint)
    except SteerlabError as err:
        raise VLLMValidationError(str(err), parameter=CAPTURE_KEY) from None
    if spec is not None:  # its own salt: no prompt block comes from the cache, so every token is read
        request.cache_salt = f"{request.cache_salt or ''}steerlab-capture-{spec.id}"
    return request


# ----- the workers ------------------------------------------------------------------------------------------------
def _state(runner: Any) -> RunnerSteering:
    state = _STATES.get(runner)
    if state is None:
        state = _STATES[runner] = RunnerSteering(runner)
    return state


def _prepare_inputs(original: Any, self: Any, scheduler_output: Any, num_scheduled_tokens: Any, *args, **kwargs):
    _state(self).prepare(self, num_scheduled_tokens)
    return original(self, scheduler_output, num_scheduled_tokens, *args, **kwargs)


def _model_forward(original: Any, self: Any, *args: Any, **kwargs: Any):
    state = _STATES.get(self)
    if state is None:  # no batch prepared yet on this runner: nothing can be steered
        return original(self, *args, **kwargs)
    positions = kwargs.get("positions", args[1] if len(args) > 1 else None)
    with state.step(positions):
        return original(self, *args, **kwargs)


def fetch_captures(worker: Any, ids: list[str]) -> dict[str, Any]:
    """:data:`FETCH_METHOD` on every worker: the reduced activations of the captures ``ids`` read there, packed
    (:func:`steerlab.vllm._capture.pack`; ``{}`` on a worker that has not run a batch). Under pipeline parallelism
    each rank answers for its own layers."""
    runner = getattr(worker, "model_runner", None)
    state = None if runner is None else _STATES.get(runner)
    return {} if state is None else pack(state.fetch(list(ids)))
