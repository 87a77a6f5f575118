"""Stock vLLM's OpenAI server (its own process, with worker processes: vLLM's default) steered through the plugin
from the official ``openai`` client: the steering list travels as a JSON string in ``vllm_xargs``, vectors are
named from ``$STEERLAB_VECTORS``, and a bad entry is a 400 with the library's message; and the vLLM throughput
benchmark runs. Runs in .venv-vllm."""

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


READER = """
import sys, torch
from vllm import LLM
from steerlab import extract_vector, record, sentiment_pairs

if __name__ == "__main__":
    folder, out = sys.argv[1], sys.argv[2]
    llm = LLM(model=folder, dtype="float32", enforce_eager=True, max_model_len=512, seed=0)
    tokenizer = llm.get_tokenizer()
    acts = record(llm, tokenizer, ["I love this film.", "Tell me about your day, please."], layers=[3, 12],
                  reduce="mean")
    torch.save(acts.values, out + "/acts.pt")
    extract_vector(llm, tokenizer, sentiment_pairs()[:8], layers=[12]).save(out + "/vector.safetensors")
"""


def test_reading_through_an_offline_engine_whose_workers_run_in_processes_of_their_own(smol, smol_cache, tmp_path):
    """record / extract_vector on a vllm.LLM with vLLM's default multiprocessing: the captures come back from the
    worker processes by name (no pickled functions) and equal the transformers model's."""
    import torch

    from steerlab import SteeringVector, record

    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
    command = [sys.executable, "-c", READER, str(smol_cache.folder), str(tmp_path)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    model, tokenizer = smol
    theirs = record(model, tokenizer, ["I love this film.", "Tell me about your day, please."], layers=[3, 12],
                    reduce="mean")  # fmt: skip
    ours = torch.load(tmp_path / "acts.pt")
    for layer in (3, 12):
        torch.testing.assert_close(ours[layer], theirs.values[layer], rtol=1e-4, atol=1e-4)
    vector = SteeringVector.load(tmp_path / "vector.safetensors")
    expected = extract_vector(model, tokenizer, sentiment_pairs()[:8], layers=[12])
    assert float(torch.cosine_similarity(vector.directions[12], expected.directions[12], dim=0)) > 0.9999
