"""Steer inside stock vLLM: per request, in one continuously batched run, with steerlab's own operators and vector
files (docs/vllm.md).

Installing steerlab next to vLLM registers :func:`register` as a ``vllm.general_plugins`` entry point, so every
vLLM process (the front end and each worker) loads it. A request is steered by ``SamplingParams.extra_args``:

Example:
    >>> from vllm import LLM, SamplingParams
    >>> from steerlab.vllm import steering_args
    >>> llm = LLM(model=folder, dtype="float32", enforce_eager=True)
    >>> happy = steering_args([{"vector": "happy.safetensors", "alpha": 0.15}])
    >>> happy = SamplingParams(max_tokens=32, extra_args=happy)
    >>> plain = SamplingParams(max_tokens=32)
    >>> steered, unsteered = llm.generate(["Tell me about your day."] * 2, [happy, plain])

Over HTTP (``vllm serve <folder> --enforce-eager``) the same list travels as a JSON string in ``vllm_xargs``:
``client.chat.completions.create(..., extra_body={"vllm_xargs": steering_args([...])})``.

Reading goes through the same plugin: :func:`steerlab.record` and :func:`steerlab.extract_vector` take a
``vllm.LLM`` where they take a transformers model (:class:`VLLMReader`), so a vector is computed where it is served:

    >>> vec = steerlab.extract_vector(llm, llm.get_tokenizer(), pairs, layers=[12])
"""

from steerlab.vllm._plugin import DISABLE_ENV, TESTED_VLLM, check_layout, register
from steerlab.vllm._reading import VLLMReader
from steerlab.vllm._spec import EXTRA_KEY, VECTORS_ENV, steering_args

__all__ = [
    "DISABLE_ENV",
    "EXTRA_KEY",
    "TESTED_VLLM",
    "VECTORS_ENV",
    "VLLMReader",
    "check_layout",
    "register",
    "steering_args",
]
