"""Proof in llama.cpp itself: our exported GGUF control vector moves llama.cpp's next-token distribution the way
steerlab's hook moves transformers', at the same layer numbering.

llama.cpp runs the quantized SmolLM2 GGUF (Q4_1) and transformers the dequantized weights, so their logits differ
a little before any steering; we compare the *shifts* that steering causes in the log-probabilities of the
tokens either model ranks highest, which the quantisation barely touches when the vector is strong (a vector of
norm ~8 is drowned by quantisation noise, so the test uses one of about half the residual norm).
The Python bindings lack llama.cpp's control-vector file loader; `steerlab.io.llamacpp.set_control_vector` does
what its C++ loader does (common.cpp) and hands the buffer to llama.cpp's own `llama_set_adapter_cvec`.
"""

import llama_cpp  # the llamacpp extra: `make test` installs it (built for these CPUs; see the Makefile)
import numpy as np
import pytest
import torch

from steerlab import extract_vector, sentiment_pairs, steer
from steerlab._models import resolve_alias
from steerlab.engines import apply_chat
from steerlab.io import export_gguf
from steerlab.io.llamacpp import clear_control_vector, set_control_vector

pytestmark = pytest.mark.llamacpp
PROMPT = "Describe the city you live in."
LAYER = 16  # where neighbouring layers respond most differently (docs/llama-cpp.md), a sharp numbering check


@pytest.fixture(scope="module")
def llm():
    model = llama_cpp.Llama(
        model_path=str(resolve_alias("smollm2-135m")), n_ctx=256, logits_all=True, n_threads=1, verbose=False, seed=0
    )
    yield model
    model.close()


def llama_logprobs(llm, tokens, path=None, strength=0.0) -> np.ndarray:
    if path is None:
        clear_control_vector(llm)
    else:
        set_control_vector(llm, path, strength)
    llm.reset()
    llm.eval(tokens)
    logits = np.asarray(llm.scores[len(tokens) - 1], dtype=np.float64)
    return logits - np.logaddexp.reduce(logits)


def hf_logprobs(model, ids, vec=None, alpha=0.0, layer=None) -> np.ndarray:
    with torch.no_grad():
        if vec is None:
            logits = model(input_ids=ids).logits[0, -1]
        else:
            with steer(model, vec.at_layers([layer], source=LAYER), alpha, scale="absolute"):
                logits = model(input_ids=ids).logits[0, -1]
    return torch.log_softmax(logits.double(), -1).numpy()


def test_exported_vector_moves_llama_cpp_like_the_hook(smol, llm, tmp_path):
    model, tokenizer = smol
    vec = extract_vector(model, tokenizer, sentiment_pairs(), layers=[LAYER]).normalized_copy()
    strength = 0.5 * vec.resid_norm[LAYER]  # ~70 in residual units: far above the quantisation noise
    path = export_gguf(vec, tmp_path / "sentiment.gguf")

    text = apply_chat(tokenizer, PROMPT)
    ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
    tokens = llm.tokenize(text.encode(), add_bos=False, special=True)
    assert tokens == ids[0].tolist()  # the same prompt tokens on both sides

    for sign in (1.0, -1.0):
        base_cpp = llama_logprobs(llm, tokens)
        moved_cpp = llama_logprobs(llm, tokens, path, sign * strength)
        base_hf = hf_logprobs(model, ids)
        top = np.union1d(np.argsort(-base_cpp)[:40], np.argsort(-moved_cpp)[:40])
        shift_cpp = (moved_cpp - base_cpp)[top]
        corr = {}
        for layer in (LAYER - 1, LAYER, LAYER + 1):
            shift_hf = (hf_logprobs(model, ids, vec, sign * strength, layer) - base_hf)[top]
            corr[layer] = float(np.corrcoef(shift_cpp, shift_hf)[0, 1])
        assert np.abs(shift_cpp).max() > 1.0, "the steering must visibly move llama.cpp's distribution"
        assert corr[LAYER] > 0.9, corr  # same direction, same layer: the shifts agree
        assert corr[LAYER] > max(corr[LAYER - 1], corr[LAYER + 1]) + 0.05, corr  # and the numbering is not off by one
    clear_control_vector(llm)
