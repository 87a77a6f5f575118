"""Stock vLLM's OpenAI server (its own process, with worker processes: vLLM's default) steered through the plugin
from the official ``openai`` client: the steering list travels as a JSON string in ``vllm_xargs``, vectors are
named from ``$STEERLAB_VECTORS``, and a bad entry is a 400 with the library's message; and the vLLM throughput
benchmark runs; tensor parallelism (TP=2 on CPU) steers and reads as one model. Runs in .venv-vllm."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from steerlab import extract_vector, sentiment_pairs
from steerlab.vllm import steering_args


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(smol, smol_cache, tmp_path_factory):
    model, tokenizer = smol
    folder = tmp_path_factory.mktemp("vectors")
    extract_vector(model, tokenizer, sentiment_pairs()[:16], layers=[12]).save(folder / "sentiment.safetensors")
    port = _free_port()
    env = {**os.environ, "STEERLAB_VECTORS": str(folder), "VLLM_CPU_KVCACHE_SPACE": "1"}
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)  # vLLM's default: the engine core in a process of its own
    # `vllm serve` itself fails in vllm-cpu 0.32 (its CLI asks for the metadata of a package named "vllm"); the
    # module it runs is the same server.
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(smol_cache.folder)]
    command += ["--served-model-name", "smol", "--dtype", "float32", "--enforce-eager", "--max-model-len", "1024"]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    log = open(folder / "server.log", "w")  # noqa: SIM115 (closed at teardown)
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 300
        while True:
            assert process.poll() is None, (folder / "server.log").read_text()[-3000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.time() < deadline, "vLLM did not start in 300 s: " + (folder / "server.log").read_text()[-3000:]
            time.sleep(1)
        yield openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused")
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def test_stock_vllm_serve_steers_per_request_from_the_openai_client(server):
    messages = [{"role": "user", "content": "Tell me about your day."}]

    def ask(entries=None):
        extra = {"vllm_xargs": steering_args(entries)} if entries else None
        reply = server.chat.completions.create(
            model="smol", messages=messages, max_tokens=12, temperature=0, extra_body=extra
        )
        return reply.choices[0].message.content

    plain, steered = ask(), ask([{"vector": "sentiment", "alpha": 0.25}])
    assert steered != plain
    assert ask() == plain  # the next unsteered request is unsteered
    assert ask([{"vector": "sentiment", "alpha": 0.25}]) == steered
    with pytest.raises(openai.BadRequestError, match="unknown mode 'bogus'"):
        ask([{"vector": "sentiment", "alpha": 0.25, "mode": "bogus"}])


def test_the_vllm_throughput_benchmark_runs(tmp_path):
    """benchmarks/vllm_throughput.py end to end at the smallest size (its numbers come from a full run only)."""
    out = tmp_path / "vllm_throughput.json"
    bench = Path(__file__).resolve().parents[1] / "benchmarks"
    command = [sys.executable, str(bench / "vllm_throughput.py"), "--clients", "1,2", "--server-clients", "1"]
    command += ["--max-tokens", "2", "--repeats", "1", "--requests-per-client", "1", "--json", str(out)]
    done = subprocess.run(command, cwd=bench, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert set(result["clients"]) == {"1", "2"} and set(result["server_steered"]) == {"1"}
    assert all(row["vllm_steered"] > 0 for row in result["clients"].values())


TENSOR_PARALLEL = """
import json, sys, torch
from vllm import LLM, SamplingParams
from steerlab import record
from steerlab.vllm import steering_args

if __name__ == "__main__":
    folder, cases, prompts, out = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4]
    llm = LLM(model=folder, dtype="float32", enforce_eager=True, max_model_len=256, seed=0, tensor_parallel_size=2,
              distributed_executor_backend="mp")
    tokenizer = llm.get_tokenizer()
    ids = [{"prompt_token_ids": tokenizer(p)["input_ids"]} for p in prompts]
    first = {}
    for name, entries in cases.items():  # each case as one batch, every prompt steered alike
        extra = steering_args(entries) if entries else None
        params = SamplingParams(max_tokens=3, temperature=0.0, logprobs=5, extra_args=extra)
        outputs = llm.generate(ids, params, use_tqdm=False)
        first[name] = [{int(t): lp.logprob for t, lp in o.outputs[0].logprobs[0].items()} for o in outputs]
    acts = record(llm, tokenizer, prompts, layers=[1, 3], reduce="mean")
    torch.save({"first": first, "acts": acts.values, "norms": acts.resid_norm}, out)
"""


def test_tensor_parallel_ranks_steer_and_read_as_one_model(smol_cache, tmp_path):
    """TP=2 on CPU, one worker process per rank (SmolLM2's 9 heads do not split, so a random Llama with 4 heads and
    2 KV heads): steered next-token log-probs, for a folded addition and an operator on prompt positions, and
    recorded activations equal steerlab's transformers hooks on the same weights; the captures come back from the
    worker processes by name, without pickle."""
    import shutil
    from contextlib import nullcontext

    import torch
    import transformers as tf

    from steerlab import Intervention, SteeringVector, record, steer

    folder = tmp_path / "tiny"
    torch.manual_seed(0)
    config = tf.LlamaConfig(vocab_size=49152, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                            tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)  # fmt: skip
    model = tf.LlamaForCausalLM(config).float().eval()
    model.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):  # SmolLM2's tokenizer, for the same token ids
        shutil.copy(smol_cache.folder / name, folder / name)
    tokenizer = tf.AutoTokenizer.from_pretrained(folder)
    vector = str(extract_vector(model, tokenizer, sentiment_pairs()[:8], layers=[1, 2]).save(tmp_path / "v"))
    cases = {
        "plain": [],
        "add": [{"vector": vector, "alpha": 0.5}],
        "ablate_then_add on the prompt": [{"vector": vector, "alpha": 0.5, "mode": "ablate_then_add",
                                           "positions": "prompt"}],
    }  # fmt: skip
    prompts = ["Tell me about your day.", "Describe the weather this morning, please.", "Hello"]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
    out = tmp_path / "tp.pt"
    command = [sys.executable, "-c", TENSOR_PARALLEL, str(folder), json.dumps(cases), json.dumps(prompts), str(out)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    ours = torch.load(out)
    for name, entries in cases.items():
        items = [Intervention(SteeringVector.load(e["vector"]), e["alpha"], **{k: v for k, v in e.items()
                              if k not in ("vector", "alpha")}) for e in entries]  # fmt: skip
        for prompt, vllm_first in zip(prompts, ours["first"][name], strict=True):
            with steer(model, items) if items else nullcontext(), torch.no_grad():
                logits = model(torch.tensor([tokenizer(prompt)["input_ids"]])).logits[0, -1]
            expected = torch.log_softmax(logits.float(), -1)
            for token, logprob in vllm_first.items():
                assert logprob == pytest.approx(float(expected[token]), abs=1e-4), (name, prompt)
    changed = [abs(next(iter(a.values())) - next(iter(b.values()))) for a, b in zip(ours["first"]["add"],
               ours["first"]["plain"], strict=True)]  # fmt: skip
    assert max(changed) > 1e-2  # the steering is seen
    theirs = record(model, tokenizer, prompts, layers=[1, 3], reduce="mean")
    for layer in (1, 3):
        torch.testing.assert_close(ours["acts"][layer], theirs.values[layer], rtol=1e-4, atol=1e-5)
        assert ours["norms"][layer] == pytest.approx(theirs.resid_norm[layer], rel=1e-4)
