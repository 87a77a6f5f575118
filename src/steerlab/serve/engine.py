"""The generation engine: one worker thread owns the model and serves every request through dynamic batching.

Requests go into a queue. The worker takes the first one, waits a short window (``batch_window``, 15 ms by
default) for others, up to ``max_batch``, left-pads them into one batch and runs
:func:`steerlab.engines.transformers.generate_batch` under :func:`steerlab.steer_rows`, so each row gets its own
interventions (or none) and no request's steering reaches another. After every decoding step a stopping
criterion hands each row's new token to that request's own event sink (streaming) and retires rows that hit
EOS, their ``max_tokens``, a stop string, or were cancelled. A batch with no steering at all runs with no hook,
exactly like :func:`steerlab.generate`; a greedy request served alone gives its tokens bit for bit.

Sampling is per request: each row draws from its own ``torch.Generator`` seeded by the request, so a sampled
answer does not depend on which other requests shared its batch.

Requests are validated (:func:`steerlab._steer.check_interventions`) before they are queued, so a bad request
fails alone; an error inside a batch is reported to that batch's requests and the worker keeps serving.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from steerlab._forward import input_device
from steerlab._steer import Intervention, check_interventions, steer_rows
from steerlab._text import pad_batch, pad_id
from steerlab.engines.transformers import eos_ids, generate_batch, generated_nll
from steerlab.errors import SteerlabError

__all__ = ["Engine", "EngineBusy", "Event", "Job", "QueuedWorker"]

log = logging.getLogger("steerlab.serve")


class EngineBusy(SteerlabError):
    """The request queue is full; the client should retry later (HTTP 503)."""


@dataclass
class Event:
    """What the worker tells a request: ``kind`` is ``"text"`` (a new piece of the answer), ``"done"`` (with
    ``finish_reason`` and the token counts) or ``"error"`` (with ``error``)."""

    kind: str
    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: BaseException | None = None


@dataclass(eq=False)
class Job:
    """One generation request as the engine sees it.

    Attributes:
        prompt_ids: the prompt's token ids (already in the chat template when it is a chat).
        interventions: this request's steering (empty: the unsteered model).
        max_tokens: at most this many new tokens.
        temperature: 0 for greedy decoding, else sampling at this temperature.
        top_p: nucleus sampling mass (with ``temperature > 0``).
        seed: the sampling seed (``None``: a random one).
        stop: strings that end the answer (not included in it).
        sink: called from the worker thread with every :class:`Event` of this request (``None``: dropped).
    """

    prompt_ids: list[int]
    interventions: list[Intervention] = field(default_factory=list)
    max_tokens: int = 16
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: Sequence[str] = ()
    sink: Callable[[Event], None] | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    tokens: list[int] = field(default_factory=list)
    sent: str = ""
    finished: bool = False

    def cancel(self) -> None:
        """Stop generating for this request (the client went away); its row retires at the next step."""
        self.cancelled.set()

    def _emit(self, event: Event) -> None:
        if self.sink is not None:
            self.sink(event)

    def _finish(self, reason: str) -> None:
        self.finished = True
        self._emit(
            Event("done", finish_reason=reason, prompt_tokens=len(self.prompt_ids), completion_tokens=len(self.tokens))
        )

    def _fail(self, error: BaseException) -> None:
        self.finished = True
        self._emit(Event("error", error=error))

    def _add(self, token: int, tokenizer: Any) -> bool:
        """Record a new token and send the new text; True when a stop string ended the answer."""
        self.tokens.append(token)
        text = tokenizer.decode(self.tokens, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return False  # half of a multi-byte character: wait for the rest
        cut = None
        for stop in self.stop:
            at = text.find(stop, max(0, len(self.sent) - len(stop)))
            if at != -1 and (cut is None or at < cut):
                cut = at
        if cut is not None:
            text = text[:cut]
        if len(text) > len(self.sent) and text.startswith(self.sent):
            self._emit(Event("text", text=text[len(self.sent) :]))
            self.sent = text
        return cut is not None


class _Rows(StoppingCriteria):
    """Called by ``generate`` after every step: streams each live row's new token and retires finished rows."""

    def __init__(self, jobs: list[Job], tokenizer: Any, eos: set[int], on_token: Callable[[int], None]) -> None:
        self.jobs, self.tokenizer, self.eos, self.on_token = jobs, tokenizer, eos, on_token
        self.done = [False] * len(jobs)
        self.held: list[tuple[int, str]] = []

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        new = input_ids[:, -1].tolist()
        count = 0
        for i, job in enumerate(self.jobs):
            if self.done[i]:
                continue
            if job.cancelled.is_set():
                self.held.append((i, "cancelled"))
            elif new[i] in self.eos:
                self.held.append((i, "stop"))
            else:
                count += 1
                if job._add(new[i], self.tokenizer):
                    self.held.append((i, "stop"))
                elif len(job.tokens) >= job.max_tokens:
                    self.held.append((i, "length"))
            if self.held and self.held[-1][0] == i:
                self.done[i] = True
        self.on_token(count)
        if not all(self.done):
            self.release()  # the batch goes on: these requests are answered now
        # else: the last rows are answered once the batch's hooks are removed, so a client that got its answer
        # never finds a steering hook still on the model.
        return torch.tensor(self.done, dtype=torch.bool, device=input_ids.device)

    def release(self) -> None:
        """Send the held ``done`` events."""
        held, self.held = self.held, []
        for i, reason in held:
            self.jobs[i]._finish(reason)

    def finish_rest(self, reason: str) -> None:
        for i, job in enumerate(self.jobs):
            if not self.done[i] and not job.finished:
                self.done[i] = True
                job._finish(reason)


class _RowSampler(LogitsProcessor):
    """Per-row sampling inside a greedy ``generate``: a sampled row's scores become one-hot on the token drawn
    from that request's own generator, so the argmax picks it; greedy rows are left untouched."""

    def __init__(self, jobs: list[Job]) -> None:
        self.rows = []
        for i, job in enumerate(jobs):
            if job.temperature > 0:
                seed = job.seed if job.seed is not None else random.getrandbits(63)
                self.rows.append((i, job, torch.Generator().manual_seed(int(seed))))

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores = scores.clone()
        for i, job, generator in self.rows:
            probs = torch.softmax(scores[i].float().cpu() / job.temperature, dim=-1)
            if job.top_p < 1.0:
                ordered, order = probs.sort(descending=True)
                keep = ordered.cumsum(0) - ordered < job.top_p  # the smallest set whose mass reaches top_p
                probs = torch.zeros_like(probs).scatter(0, order[keep], ordered[keep])
            token = int(torch.multinomial(probs, 1, generator=generator))
            scores[i] = float("-inf")
            scores[i, token] = 0.0
        return scores


@dataclass
class _Call:
    fn: Callable[[], Any]
    future: Future


class QueuedWorker:
    """What every engine of the server shares: one worker thread fed by a queue of :class:`Job` s and calls, the
    checks at submission, ``run`` (events of one job), ``call`` (a function in the worker thread between batches),
    counters and the generation rate. A subclass gives ``_work`` (the thread's loop), ``_check(job)`` (its own
    refusals beside the library's) and the counters it keeps.
    """

    _thread_name = "steerlab-engine"

    def __init__(self, model: nn.Module, tokenizer: Any, *, max_queue: int, stats: dict[str, int]) -> None:
        self.model, self.tokenizer, self.max_queue = model, tokenizer, max_queue
        self._queue: queue.Queue[Job | _Call | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._eos = eos_ids(model, tokenizer)
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._recent: deque[tuple[float, int]] = deque()  # (time, tokens) per step, for tokens/s
        self.stats = {"requests_total": 0, "requests_failed": 0, "tokens_generated_total": 0, **stats}

    # ----- life cycle -------------------------------------------------------------------------------------
    def start(self) -> QueuedWorker:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name=self._thread_name, daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the running batch, fail what is still queued, and end the worker."""
        if self._thread is not None:
            for job in self._drain():
                if isinstance(job, Job):
                    job._fail(EngineBusy("the server is shutting down."))
            self._queue.put(None)
            self._thread.join(timeout)
            self._thread = None

    def alive(self) -> bool:
        """Whether the worker thread is running."""
        return self._thread is not None and self._thread.is_alive()

    # ----- submitting -------------------------------------------------------------------------------------
    def submit(self, job: Job) -> Job:
        """Validate ``job``'s steering against the model and queue it; events then go to ``job.sink``.

        Raises the steering's :class:`~steerlab.errors.SteerlabError` at once if it is invalid, and
        :class:`EngineBusy` when ``max_queue`` requests are already waiting.
        """
        if self._thread is None:
            raise EngineBusy("the engine is not running.")
        if job.interventions:
            check_interventions(self.model, job.interventions)  # no hook: safe beside the running batch
            self._check(job)
        if self._queue.qsize() >= self.max_queue:
            raise EngineBusy(f"{self.max_queue} requests are already waiting; retry in a moment.")
        with self._lock:
            self.stats["requests_total"] += 1
        self._queue.put(job)
        return job

    def _check(self, job: Job) -> None:
        """The engine's own refusals of a job's steering (after the library's checks)."""

    def run(self, job: Job) -> Iterator[Event]:
        """Submit ``job`` and yield its events as they come, ending with ``done`` (or raising its error)."""
        events: queue.Queue[Event] = queue.Queue()
        job.sink = events.put
        self.submit(job)
        try:
            while True:
                event = events.get()
                if event.kind == "error":
                    raise event.error  # type: ignore[misc]
                yield event
                if event.kind == "done":
                    return
        finally:
            job.cancel()

    def call(self, fn: Callable[[], Any]) -> Future:
        """Run ``fn()`` in the worker thread between batches (so it may use the model unsteered); returns a
        future with its result."""
        future: Future = Future()
        self._queue.put(_Call(fn, future))
        return future

    def nll(self, pairs: Sequence[tuple[list[int], list[int]]]) -> Future:
        """A future of the mean negative log-likelihood (nats/token) of each ``(prompt ids, continuation ids)``
        continuation under the unsteered model (``nan`` for an empty one): the sweep route's coherence. Here, the
        model in the worker thread between batches; an engine that holds the weights elsewhere scores there."""
        return self.call(lambda: generated_nll(self.model, pairs))

    def queue_length(self) -> int:
        return self._queue.qsize()

    def metrics(self) -> dict[str, Any]:
        """Counters, the queue length and the generation rate over the last 60 s."""
        now = time.monotonic()
        with self._lock:
            while self._recent and self._recent[0][0] < now - 60:
                self._recent.popleft()
            recent = sum(n for _, n in self._recent)
            stats = dict(self.stats)
        span = min(60.0, max(now - self._started, 1e-9))
        return {
            **stats,
            "queue_length": self.queue_length(),
            "tokens_per_second": round(recent / span, 3),
            "uptime_seconds": round(now - self._started, 1),
        }

    # ----- helpers of the worker ---------------------------------------------------------------------------
    def _work(self) -> None:  # pragma: no cover - every engine has its own loop
        raise NotImplementedError

    def _drain(self) -> list[Job | _Call | None]:
        items = []
        while True:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                return items

    def _call(self, item: _Call) -> None:
        if item.future.set_running_or_notify_cancel():
            try:
                item.future.set_result(item.fn())
            except BaseException as error:  # noqa: BLE001 - handed to the caller
                item.future.set_exception(error)

    def _count(self, tokens: int) -> None:
        with self._lock:
            self.stats["tokens_generated_total"] += tokens
            self._recent.append((time.monotonic(), tokens))


class Engine(QueuedWorker):
    """Serves generation requests for one model from one worker thread, batching concurrent ones.

    Example:
        >>> engine = Engine(model, tokenizer).start()
        >>> job = Job(prompt_ids=encode(tokenizer, ["Hello"])[0], max_tokens=20)
        >>> "".join(event.text for event in engine.run(job))
        >>> engine.stop()
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        *,
        batch_window: float = 0.015,
        max_batch: int = 16,
        max_queue: int = 256,
    ) -> None:
        stats = {"batches_total": 0, "rows_batched_total": 0, "largest_batch": 0, "active_rows": 0}
        super().__init__(model, tokenizer, max_queue=max_queue, stats=stats)
        self.batch_window, self.max_batch = batch_window, max_batch
        self._pad = pad_id(tokenizer)

    def metrics(self) -> dict[str, Any]:
        """Counters, the queue length, the generation rate over the last 60 s and the mean batch size."""
        found = super().metrics()
        batches = found["batches_total"]
        found["mean_batch_size"] = round(found["rows_batched_total"] / batches, 3) if batches else 0.0
        return found

    # ----- the worker -------------------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if isinstance(item, _Call):
                self._call(item)
                continue
            batch, later = [item], []
            deadline = time.monotonic() + self.batch_window
            while len(batch) < self.max_batch:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    nxt = self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
                if nxt is None:
                    later.append(nxt)
                    break
                (batch if isinstance(nxt, Job) else later).append(nxt)
            self._run_batch([job for job in batch if not self._skip(job)])
            for nxt in later:
                if nxt is None:
                    return
                self._call(nxt)

    def _skip(self, job: Job) -> bool:
        if job.cancelled.is_set():
            job._finish("cancelled")
            return True
        return False

    def _run_batch(self, jobs: list[Job]) -> None:
        if not jobs:
            return
        with self._lock:
            self.stats["batches_total"] += 1
            self.stats["rows_batched_total"] += len(jobs)
            self.stats["largest_batch"] = max(self.stats["largest_batch"], len(jobs))
            self.stats["active_rows"] = len(jobs)
        rows: _Rows | None = None
        try:
            device = input_device(self.model)  # the embeddings' device (under a device_map, not the first weight's)
            input_ids, mask = pad_batch([job.prompt_ids for job in jobs], self._pad, side="left")
            rows = _Rows(jobs, self.tokenizer, self._eos, self._count)
            extra: dict[str, Any] = {"stopping_criteria": StoppingCriteriaList([rows])}
            if any(job.temperature > 0 for job in jobs):
                extra["logits_processor"] = LogitsProcessorList([_RowSampler(jobs)])
            with steer_rows(self.model, [job.interventions or None for job in jobs]):
                generate_batch(
                    self.model,
                    input_ids.to(device),
                    mask.to(device),
                    max_new_tokens=max(job.max_tokens for job in jobs),
                    pad_token_id=self._pad,
                    **extra,
                )
        except Exception as error:  # noqa: BLE001 - reported to this batch's requests; the worker goes on
            log.exception("a batch of %d failed", len(jobs))
            if rows is not None:
                rows.held.clear()
            for job in jobs:
                if not job.finished:
                    with self._lock:
                        self.stats["requests_failed"] += 1
                    job._fail(error)
        finally:
            with self._lock:
                self.stats["active_rows"] = 0
        if rows is not None:
            rows.release()
            rows.finish_rest("length")  # generate ended on its own length limit
