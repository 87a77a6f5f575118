"""Throughput and latency of `steerlab serve` on SmolLM2-135M (CPU, torch on 1 thread), with and without steering.

For 1, 4 and 16 concurrent clients, each client sends requests one after another (streamed chat completions,
greedy, ``--max-tokens`` new tokens). The steered load gives every client its own vector and strength
(sentiment or its random control, different alphas and layers), so every batch mixes interventions; the
unsteered load is the same requests without ``steering``. Prints a markdown table: tokens/s over the whole
load, the median and 95th percentile time to the full answer and to the first token, and the mean batch size.

    PYTHONPATH=src OMP_NUM_THREADS=1 .venv/bin/python benchmarks/serve_throughput.py

Installs nothing; the server is `steerlab serve` in its own process on 127.0.0.1 (``--port``, default 8765), and
the clients are threads of this process.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import torch

from steerlab import extract_vector, load_model, sentiment_pairs
from steerlab.datasets import NEUTRAL_PROMPTS


def steering_for(client: int) -> list[dict]:
    vector = "sentiment" if client % 2 == 0 else "random"
    sign = 1 if client % 4 < 2 else -1
    return [{"vector": vector, "alpha": sign * (0.1 + 0.01 * client), "layers": [[8], [10], [12]][client % 3]}]


def one_request(
    http: httpx.Client, url: str, model: str, prompt: str, steering: list[dict] | None, max_tokens: int
) -> dict:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if steering:
        body["steering"] = steering
    start = time.perf_counter()
    first = None
    tokens = 0
    with http.stream("POST", url + "/v1/chat/completions", json=body, timeout=600) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data:") or line.endswith("[DONE]"):
                continue
            chunk = json.loads(line[5:])
            if first is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                first = time.perf_counter() - start
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return {"latency": time.perf_counter() - start, "ttft": first or 0.0, "tokens": tokens}


def run_load(url: str, model: str, clients: int, per_client: int, steered: bool, max_tokens: int) -> dict:
    results: list[dict] = []
    lock = threading.Lock()

    def client(index: int, http: httpx.Client) -> None:
        for k in range(per_client):
            prompt = NEUTRAL_PROMPTS[(index + k) % len(NEUTRAL_PROMPTS)]
            result = one_request(http, url, model, prompt, steering_for(index) if steered else None, max_tokens)
            with lock:
                results.append(result)

    before = httpx.get(url + "/metrics").json()
    start = time.perf_counter()
    # One connection per client, kept open like an OpenAI client's pool (a new client per request costs ~50 ms).
    https = [httpx.Client() for _ in range(clients)]
    threads = [threading.Thread(target=client, args=(i, h)) for i, h in enumerate(https)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - start
    for http in https:
        http.close()
    after = httpx.get(url + "/metrics").json()
    latencies = sorted(r["latency"] for r in results)
    ttfts = sorted(r["ttft"] for r in results)
    batches = after["batches_total"] - before["batches_total"]
    rows = after["rows_batched_total"] - before["rows_batched_total"]
    p95 = latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))]
    return {
        "clients": clients,
        "steering": "mixed vectors" if steered else "none",
        "requests": len(results),
        "tokens": sum(r["tokens"] for r in results),
        "tokens_per_s": sum(r["tokens"] for r in results) / seconds,
        "median": statistics.median(latencies),
        "p95": p95,
        "ttft": statistics.median(ttfts),
        "batch": rows / batches if batches else 0.0,
    }


def start_server(folder: Path, port: int, window_ms: float | None) -> subprocess.Popen:
    """`steerlab serve` in its own process, as a user runs it (clients here do not share its GIL)."""
    command = [sys.executable, "-m", "steerlab.cli", "serve", "--vectors", str(folder), "--port", str(port)]
    if window_ms is not None:
        command += ["--batch-window-ms", str(window_ms)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while True:
        try:
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
            return process
        except httpx.TransportError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("steerlab serve did not start") from None
            time.sleep(0.3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument("--requests-per-client", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--batch-window-ms", type=float, default=None, help="the server's (default: its own)")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    torch.set_num_threads(1)

    model, tokenizer = load_model("smollm2-135m")
    folder = Path(tempfile.mkdtemp(prefix="steerlab-bench-"))
    vec = extract_vector(model, tokenizer, sentiment_pairs(), layers=[8, 10, 12])
    vec.save(folder / "sentiment.safetensors")
    vec.random_like(seed=0).save(folder / "random.safetensors")
    del model
    server = start_server(folder, args.port, args.batch_window_ms)
    url = f"http://127.0.0.1:{args.port}"
    rows = []
    try:
        name = httpx.get(url + "/v1/models").json()["data"][0]["id"]
        with httpx.Client() as http:
            one_request(http, url, name, "Hello", None, 4)  # warm-up
        for clients in (int(c) for c in args.clients.split(",")):
            for steered in (False, True):
                rows.append(run_load(url, name, clients, args.requests_per_client, steered, args.max_tokens))
    finally:
        server.terminate()
        server.wait(30)
    window = "the default" if args.batch_window_ms is None else f"{args.batch_window_ms:g} ms"
    print(
        f"SmolLM2-135M-Instruct, CPU, torch on 1 thread; {args.requests_per_client} requests per client, "
        f"greedy, max_tokens={args.max_tokens}, streamed; batch window {window}; "
        f"torch {torch.__version__}.\n"
    )
    print(
        "| clients | steering | requests | tokens | tokens/s | median latency (s) | p95 latency (s) "
        "| median first token (s) | mean batch |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['clients']} | {r['steering']} | {r['requests']} | {r['tokens']} | {r['tokens_per_s']:.1f} "
            f"| {r['median']:.2f} | {r['p95']:.2f} | {r['ttft']:.2f} | {r['batch']:.1f} |"
        )


if __name__ == "__main__":
    main()
