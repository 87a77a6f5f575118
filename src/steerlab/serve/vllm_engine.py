"""The server's engine on vLLM (``steerlab serve --engine vllm``): the same routes, playground, vector library and
request checks as the built-in engine, with generation in vLLM's continuously batched engine, steered per request
by steerlab's vLLM plugin (:mod:`steerlab.vllm`).

One worker thread owns a ``vllm.LLM``'s engine: it admits queued requests between steps (each with its own
``SamplingParams``: ``max_tokens``, temperature, top-p, seed, and its steering as the plugin's ``extra_args``),
runs ``step()`` while any request is live, and hands every new token to its request through the same
:class:`~steerlab.serve.engine.Job` the built-in engine uses, so stop strings, streaming and token counts behave
the same; a request that a stop string ends or whose client went away is aborted in vLLM. Greedy answers equal the
built-in engine's (the plugin's parity with steerlab's hooks, docs/vllm.md); sampled ones follow vLLM's sampler.

A request's steering travels as the plugin's entries: each :class:`~steerlab.Intervention` becomes an entry whose
``vector`` is a file written once per vector content into a private folder (vLLM's workers read it, in this
process or another). What the plugin cannot do is refused when the request is checked (400): condition gates and
attention heads.

Requests are checked against a transformers model of the same config, as in the built-in engine; it needs no
weights (``steerlab serve --engine vllm`` loads it with ``device="meta"``), so vLLM alone holds the model in memory.
The sweep route's coherence (:meth:`VLLMEngine.nll`) is scored by vLLM too, from the prompt log-probs of
unsteered requests.

Example:
    >>> from vllm import LLM
    >>> llm = LLM(model=folder, dtype="float32", enforce_eager=True)
    >>> engine = VLLMEngine(llm, model, tokenizer)
    >>> app = create_app(model, tokenizer, library, engine=engine)
"""

from __future__ import annotations

import logging
import math
import queue
import tempfile
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from steerlab._steer import Intervention
from steerlab.errors import SteeringError
from steerlab.serve.engine import Job, QueuedWorker, _Call
from steerlab.vllm._spec import vector_digest

__all__ = ["VLLMEngine", "open_llm"]

log = logging.getLogger("steerlab.serve")


@dataclass
class _Scoring:
    """Continuations to score under the unsteered model, one vLLM request each (prompt log-probs of prompt +
    continuation); the future gets every NLL once the last request is done."""

    pairs: list[tuple[list[int], list[int]]]
    future: Future
    nlls: list[float] = field(default_factory=list)
    waiting: int = 0


def open_llm(model: nn.Module, *, max_batch: int = 16, max_model_len: int | None = None, **options: Any) -> Any:
    """A ``vllm.LLM`` of the same model as the transformers ``model`` (its folder or hub id, its dtype), eager (the
    plugin steers eager runs), with at most ``max_batch`` sequences per step; ``options`` go to ``vllm.LLM``.

    Example:
        >>> engine = VLLMEngine(open_llm(model), model, tokenizer)
    """
    try:
        from vllm import LLM
    except ImportError as err:
        raise SteeringError(
            f"the vLLM engine needs vLLM ({err}); install it next to steerlab (docs/vllm.md: pip install "
            "'steerlab[vllm]', or make .venv-vllm/.installed here)."
        ) from None
    source = str(model.config.name_or_path)
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    options = {"max_num_seqs": max_batch, **options}
    if max_model_len is not None:
        options["max_model_len"] = max_model_len
    return LLM(model=source, dtype=dtype, enforce_eager=True, **options)


class VLLMEngine(QueuedWorker):
    """Serves generation requests through a ``vllm.LLM``, steered per request by steerlab's vLLM plugin; the same
    interface as :class:`~steerlab.serve.engine.Engine` (``start``, ``stop``, ``submit``, ``run``, ``call``,
    ``metrics``, ``alive``).

    Args:
        llm: a ``vllm.LLM`` of the same model, started with ``enforce_eager=True`` (the plugin steers eager runs).
        model: a transformers model of the same config, for checking requests; it may have no weights (loaded with
            ``device="meta"``), as everything that needs them runs in vLLM. :meth:`call` runs a function with it.
        tokenizer: its tokenizer (decoding, stop strings).
        max_queue: requests waiting to be admitted before :class:`~steerlab.serve.engine.EngineBusy`.

    Example:
        >>> engine = VLLMEngine(llm, model, tokenizer).start()
        >>> "".join(e.text for e in engine.run(Job(prompt_ids=ids, max_tokens=20)))
        >>> engine.stop()
    """

    _thread_name = "steerlab-vllm-engine"

    def __init__(self, llm: Any, model: nn.Module, tokenizer: Any, *, max_queue: int = 256) -> None:
        super().__init__(model, tokenizer, max_queue=max_queue,
                         stats={"steps_total": 0, "largest_batch": 0, "active_rows": 0})  # fmt: skip
        self.llm = llm
        self._engine = llm.llm_engine
        self._folder = Path(tempfile.mkdtemp(prefix="steerlab-vllm-vectors-"))
        self._files: dict[int, tuple[Any, str]] = {}  # id(vector) -> (vector, file): the vector kept alive with it
        self._live: dict[str, Job] = {}
        self._scoring: dict[str, tuple[_Scoring, int, int]] = {}  # request id -> (scoring, index, prompt length)
        self._ids = 0

    def nll(self, pairs: Sequence[tuple[list[int], list[int]]]) -> Future:
        """Like :meth:`Engine.nll <steerlab.serve.engine.QueuedWorker.nll>`, scored in vLLM: each prompt +
        continuation as one unsteered request whose prompt log-probs give the continuation's tokens."""
        future: Future = Future()
        self._queue.put(_Scoring([(list(p), list(g)) for p, g in pairs], future))  # type: ignore[arg-type]
        return future

    def _check(self, job: Job) -> None:
        """Refuse what the plugin cannot apply (condition gates, attention heads) before the job is queued."""
        self._entries(job.interventions)

    def metrics(self) -> dict[str, Any]:
        """Counters, the queue length and the generation rate over the last 60 s; ``engine`` says ``vllm``."""
        return {**super().metrics(), "engine": "vllm"}

    # ----- steering as the plugin's entries -----------------------------------------------------------------
    def _entries(self, items: list[Intervention]) -> list[dict[str, Any]]:
        entries = []
        for i, item in enumerate(items):
            if item.condition is not None:
                raise SteeringError(
                    f"steering[{i}]: condition gates are not applied by the vLLM engine; serve with the built-in "
                    "engine (steerlab serve without --engine vllm) to gate steering."
                )
            if item.heads is not None:
                raise SteeringError(
                    f"steering[{i}]: attention heads are not steered by the vLLM engine; serve with the built-in "
                    "engine for the heads site."
                )
            alpha = list(item.alpha) if isinstance(item.alpha, tuple) else item.alpha
            entries.append({"vector": self._file(item.vector), "alpha": alpha, "mode": item.mode,
                            "layers": list(item.layers) if item.layers is not None else None,
                            "positions": item.positions, "site": item.site, "scale": item.scale,
                            "preserve_norm": item.preserve_norm})  # fmt: skip
        return [{k: v for k, v in entry.items() if v is not None} for entry in entries]

    def _file(self, vector: Any) -> str:
        """A file holding ``vector``, written once per vector object (named by its content, so a rewritten
        library vector is a new file and vLLM's prefix-cache salt follows it)."""
        with self._lock:
            known = self._files.get(id(vector))
            if known is not None and known[0] is vector:
                return known[1]
        path = self._folder / f"{vector_digest(vector)[:32]}.safetensors"
        if not path.exists():
            vector.save(path)
        with self._lock:
            self._files[id(vector)] = (vector, str(path))
        return str(path)

    def _params(self, job: Job) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        from steerlab.vllm import steering_args

        extra = steering_args(self._entries(job.interventions)) if job.interventions else None
        return SamplingParams(
            max_tokens=job.max_tokens, temperature=job.temperature, top_p=job.top_p, seed=job.seed,
            output_kind=RequestOutputKind.DELTA, extra_args=extra,
        )  # fmt: skip

    # ----- the worker -------------------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            items = self._take()
            for item in items:
                if item is None:
                    self._cancel_all("cancelled")
                    return
                if isinstance(item, _Call):
                    self._call(item)
                    continue
                if isinstance(item, _Scoring):
                    self._score(item)
                    continue
                self._admit(item)
            if self._live or self._scoring:
                self._step()

    def _take(self) -> list[Any]:
        """Everything queued; waits for the first item only when nothing is running."""
        items: list[Any] = []
        if not self._live and not self._scoring:
            items.append(self._queue.get())
        while True:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                return items

    def _admit(self, job: Job) -> None:
        if job.cancelled.is_set():
            job._finish("cancelled")
            return
        try:
            self._ids += 1
            # Outputs and aborts use the id given here (add_request returns vLLM's internal one, with a suffix).
            request_id = f"steerlab-{self._ids}"
            self._engine.add_request(request_id, {"prompt_token_ids": list(job.prompt_ids)}, self._params(job))
        except Exception as error:  # noqa: BLE001 - this request alone fails
            log.exception("vLLM refused a request")
            with self._lock:
                self.stats["requests_failed"] += 1
            job._fail(error)
            return
        self._live[request_id] = job

    def _score(self, scoring: _Scoring) -> None:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        scoring.nlls = [math.nan] * len(scoring.pairs)
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0,
                                output_kind=RequestOutputKind.FINAL_ONLY)  # fmt: skip
        try:
            for index, (prompt, generated) in enumerate(scoring.pairs):
                if not generated:
                    continue
                self._ids += 1
                request_id = f"steerlab-score-{self._ids}"
                self._engine.add_request(request_id, {"prompt_token_ids": prompt + generated}, params)
                self._scoring[request_id] = (scoring, index, len(prompt))
                scoring.waiting += 1
        except Exception as error:  # noqa: BLE001 - this scoring alone fails
            self._drop_scoring(scoring, error)
            return
        if scoring.waiting == 0:
            scoring.future.set_result(scoring.nlls)

    def _scored(self, output: Any) -> None:
        scoring, index, start = self._scoring.pop(output.request_id)
        tokens = output.prompt_token_ids
        logprobs = [output.prompt_logprobs[j][tokens[j]].logprob for j in range(start, len(tokens))]
        scoring.nlls[index] = -sum(logprobs) / len(logprobs)
        scoring.waiting -= 1
        if scoring.waiting == 0:
            scoring.future.set_result(scoring.nlls)

    def _drop_scoring(self, scoring: _Scoring, error: BaseException) -> None:
        ids = [request_id for request_id, (s, _, _) in self._scoring.items() if s is scoring]
        if ids:
            self._engine.abort_request(ids)
        for request_id in ids:
            del self._scoring[request_id]
        if not scoring.future.done():
            scoring.future.set_exception(error)

    def _step(self) -> None:
        gone = [request_id for request_id, job in self._live.items() if job.cancelled.is_set()]
        if gone:  # clients that went away: their requests leave vLLM now, not at their next token
            self._engine.abort_request(gone)
            for request_id in gone:
                self._live.pop(request_id)._finish("cancelled")
            if not self._live and not self._scoring:
                return
        with self._lock:
            self.stats["steps_total"] += 1
            self.stats["active_rows"] = len(self._live)
            self.stats["largest_batch"] = max(self.stats["largest_batch"], len(self._live))
        try:
            outputs = self._engine.step()
        except Exception as error:  # noqa: BLE001 - every live request learns of it; the worker goes on
            log.exception("a vLLM step failed")
            for request_id, job in list(self._live.items()):
                with self._lock:
                    self.stats["requests_failed"] += 1
                job._fail(error)
                self._live.pop(request_id, None)
            for scoring in {s for s, _, _ in self._scoring.values()}:
                self._drop_scoring(scoring, error)
            return
        finished: list[str] = []
        tokens = 0
        for output in outputs:
            if output.request_id in self._scoring:
                if output.finished:
                    self._scored(output)
                continue
            job = self._live.get(output.request_id)
            if job is None:
                continue
            reason = None
            for token in output.outputs[0].token_ids:
                if job.cancelled.is_set():
                    reason = "cancelled"
                elif token in self._eos:
                    reason = "stop"
                else:
                    tokens += 1
                    if job._add(int(token), self.tokenizer):
                        reason = "stop"
                    elif len(job.tokens) >= job.max_tokens:
                        reason = "length"
                if reason is not None:
                    break
            if reason is None and job.cancelled.is_set():
                reason = "cancelled"
            if reason is None and output.finished:
                reason = "length" if output.outputs[0].finish_reason == "length" else "stop"
            if reason is not None:
                if not output.finished:
                    finished.append(output.request_id)
                del self._live[output.request_id]
                job._finish(reason)
        if finished:
            self._engine.abort_request(finished)
        self._count(tokens)
        with self._lock:
            self.stats["active_rows"] = len(self._live)

    def _cancel_all(self, reason: str) -> None:
        for scoring in {s for s, _, _ in self._scoring.values()}:
            self._drop_scoring(scoring, RuntimeError(f"the engine stopped ({reason})."))
        if self._live:
            self._engine.abort_request(list(self._live))
        for job in self._live.values():
            job._finish(reason)
        self._live.clear()
