"""Reading activations through a vLLM engine: :func:`steerlab.record` and :func:`steerlab.extract_vector` given a
``vllm.LLM`` instead of a transformers model.

Each text goes in as its token ids (the library's own tokenisation, so both engines read the same tokens) with
``max_tokens=1`` and a ``steerlab_capture`` entry in ``SamplingParams.extra_args``; the plugin's layer hooks keep
its prompt's values at the chosen site and layers on each worker (:mod:`steerlab.vllm._capture`), and
``LLM.collective_rpc`` fetches them by name (:data:`~steerlab.vllm._plugin.FETCH_METHOD`) once the batch is done
(under pipeline parallelism each rank answers for the layers it holds). A capture is salted by its own id, so no
prompt token is taken from the prefix cache unread. vLLM batches the texts itself (continuously, without padding);
:data:`CHUNK` texts go in per call, so the workers hold at most that many captures at once.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from steerlab._progress import track
from steerlab._record import Reader, check_layers, register_engine_reader
from steerlab.errors import ArchitectureError
from steerlab.vllm._capture import unpack
from steerlab.vllm._plugin import FETCH_METHOD, _engine_problem
from steerlab.vllm._runner import served_fingerprint
from steerlab.vllm._spec import CAPTURE_KEY, SITES, sublayer_path

__all__ = ["CHUNK", "VLLMReader", "is_vllm_engine"]

CHUNK = 256
"""Texts per ``LLM.generate`` call when reading."""


def is_vllm_engine(model: Any) -> bool:
    """Whether ``model`` is an offline vLLM engine (``vllm.LLM``), told without importing vLLM."""
    return type(model).__module__.split(".")[0] == "vllm" and hasattr(model, "collective_rpc")


class VLLMReader(Reader):
    """:class:`steerlab._record.Reader` over a ``vllm.LLM``: the same layers, sites and reductions as
    :class:`~steerlab._record.ActivationReader`, with the same numbers up to the engines' float rounding.

    Example:
        >>> acts = steerlab.record(llm, llm.get_tokenizer(), ["I love it", "I hate it"], layers=[12])
        >>> vec = steerlab.extract_vector(llm, llm.get_tokenizer(), pairs, layers=[12])
    """

    def __init__(
        self,
        llm: Any,
        *,
        layers: Sequence[int] | int | None,
        reduce: str = "last",
        site: str = "resid_post",
        exclude_first_token: bool = True,
        padding_side: str = "left",  # noqa: ARG002 - vLLM packs tokens without padding
        pad_id: int = 0,  # noqa: ARG002
    ) -> None:
        model_config = llm.llm_engine.model_config
        fingerprint = served_fingerprint(model_config)
        if site not in SITES:
            raise ArchitectureError(
                f"site {site!r} is not read through vLLM; expected one of {list(SITES)}. Read attention heads with "
                "transformers."
            )
        if site in ("attn_out", "mlp_out") and sublayer_path(fingerprint, site) is None:
            raise ArchitectureError(
                f"site {site!r} is not known for model type {fingerprint.model_type!r}; read resid_pre or resid_post."
            )
        problem = _engine_problem(llm.llm_engine.vllm_config)
        if problem is not None:
            raise ArchitectureError(f"this vLLM engine cannot be read: {problem}.")
        super().__init__(check_layers(layers, fingerprint.num_layers), reduce, site, exclude_first_token)
        self.llm = llm
        self.width = fingerprint.hidden_size
        self.model_id = str(model_config.model)
        self.fingerprint = fingerprint

    def _capture(self) -> dict[str, Any]:
        return {
            "id": uuid.uuid4().hex,
            "layers": list(self.layers),
            "site": self.site,
            "reduce": self.reduce,
            "exclude_first_token": self.exclude_first_token,
        }

    def run(
        self, token_ids: Sequence[Sequence[int]], batches: Sequence[Sequence[int]], *, progress: bool = False
    ) -> Iterator[tuple[list[int], dict[int, Any]]]:
        """Yield ``(indices, layer -> values)`` like :meth:`ActivationReader.run`, :data:`CHUNK` texts at a time
        (the batches' grouping is for padding, which vLLM does not need)."""
        from vllm import SamplingParams

        order = [i for batch in batches for i in batch]
        chunks = [order[k : k + CHUNK] for k in range(0, len(order), CHUNK)]
        for rows in track(chunks, "recording", show=progress):
            captures = [self._capture() for _ in rows]
            prompts = [{"prompt_token_ids": list(token_ids[i])} for i in rows]
            params = [
                SamplingParams(max_tokens=1, temperature=0.0, extra_args={CAPTURE_KEY: capture}) for capture in captures
            ]
            self.llm.generate(prompts, params, use_tqdm=False)
            ids = [capture["id"] for capture in captures]
            found: dict[str, dict[int, dict[str, Any]]] = {i: {} for i in ids}
            for answer in self.llm.collective_rpc(FETCH_METHOD, args=(ids,)):
                for capture_id, layers in unpack(answer).items():
                    for layer, result in layers.items():
                        found[capture_id].setdefault(layer, result)  # tensor-parallel ranks read the same values
            yield rows, self._values(found, ids)

    def _values(self, found: dict[str, dict[int, dict[str, Any]]], ids: list[str]) -> dict[int, Any]:
        values: dict[int, Any] = {}
        for layer in self.layers:
            results = []
            for capture_id in ids:
                result = found[capture_id].get(layer)
                if result is None:
                    raise ArchitectureError(
                        f"no worker returned layer {layer} of capture {capture_id} (the request did not reach it, "
                        "or its capture was dropped unfetched); nothing was recorded."
                    )
                results.append(result)
                self._norm_sum[layer] += result["norm_sum"]
                self._norm_count[layer] += result["norm_count"]
                self.single_token_seen |= result["single"]
            items = [result["value"] for result in results]
            values[layer] = items if self.reduce == "all" else torch.stack(items)
        return values


def _reader_for(model: Any, **options: Any) -> VLLMReader | None:
    return VLLMReader(model, **options) if is_vllm_engine(model) else None


register_engine_reader(_reader_for)
