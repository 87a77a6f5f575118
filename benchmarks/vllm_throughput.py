"""Throughput of steering inside vLLM (the steerlab plugin) on SmolLM2-135M in float32, CPU, eager: tokens/s at 1, 4,
16 and 64 concurrent requests for vLLM unsteered and vLLM with mixed per-request vectors at 3 layers, measured in
interleaved rounds in one process (medians); and, for scale, steerlab's built-in server (`steerlab serve`, HTTP,
the same number of clients) from benchmarks/serve_throughput.py.

vLLM's "concurrent requests" are one ``LLM.generate`` call with that many requests, continuously batched, each
greedy with exactly ``--max-tokens`` new tokens (EOS ignored, so every contender produces the same tokens count).
The steered load gives every request its own vector (sentiment or its random control), sign and strength at layers
8, 12 and 16, so every step mixes interventions. Runs in .venv-vllm:

    make .venv-vllm/.installed
    VLLM_ENABLE_V1_MULTIPROCESSING=0 VLLM_CPU_KVCACHE_SPACE=2 VLLM_CPU_OMP_THREADS_BIND=nobind OMP_NUM_THREADS=1 \
        .venv-vllm/bin/python benchmarks/vllm_throughput.py --json benchmarks/results/vllm_throughput.json
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

for _name, _value in {
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "VLLM_CPU_KVCACHE_SPACE": "2",
    "VLLM_CPU_OMP_THREADS_BIND": "nobind",
}.items():
    os.environ.setdefault(_name, _value)

from _common import finish, interleaved, median, parse_args, table  # noqa: E402
from steerlab import extract_vector, load_model, sentiment_pairs  # noqa: E402
from steerlab.datasets import NEUTRAL_PROMPTS  # noqa: E402
from steerlab.engines import apply_chat, encode  # noqa: E402
from steerlab.vllm import steering_args  # noqa: E402

LAYERS = [8, 12, 16]


def steering_for(request: int, folder: Path | None = None) -> list[dict]:
    """Request ``request``'s steering: its own vector, sign and strength at every layer of the vector. The vector is
    named (the built-in server's library) or, with ``folder``, a file path (vLLM)."""
    vector = "sentiment" if request % 2 == 0 else "random"
    sign = 1 if request % 4 < 2 else -1
    source = vector if folder is None else str(folder / f"{vector}.safetensors")
    return [{"vector": source, "alpha": sign * (0.05 + 0.005 * (request % 10))}]


def main() -> None:
    args = parse_args(
        __doc__.split("\n\n")[0],
        clients="1,4,16,64",
        server_clients="1,4,16",
        max_tokens=32,
        repeats=3,
        requests_per_client=2,
        port=8766,
    )
    from vllm import LLM, SamplingParams

    model, tokenizer = load_model(args.model, dtype="float32")
    folder = Path(tempfile.mkdtemp(prefix="steerlab-vllm-bench-"))
    layers = [layer for layer in LAYERS if layer < model.config.num_hidden_layers] or [0]
    vector = extract_vector(model, tokenizer, sentiment_pairs()[:32], layers=layers)
    vector.save(folder / "sentiment.safetensors")
    vector.random_like(seed=0).save(folder / "random.safetensors")
    served = str(model.config.name_or_path)
    del model
    llm = LLM(model=served, dtype="float32", enforce_eager=True, max_model_len=1024, seed=0)

    def load(clients: int, steered: bool):
        texts = [apply_chat(tokenizer, NEUTRAL_PROMPTS[i % len(NEUTRAL_PROMPTS)]) for i in range(clients)]
        prompts = [{"prompt_token_ids": ids} for ids in encode(tokenizer, texts)]
        params = [
            SamplingParams(
                max_tokens=args.max_tokens,
                temperature=0.0,
                ignore_eos=True,
                extra_args=steering_args(steering_for(i, folder)) if steered else None,
            )
            for i in range(clients)
        ]
        return lambda: llm.generate(prompts, params, use_tqdm=False)

    rows, result = [], {"clients": {}, "max_tokens": args.max_tokens, "layers": layers}
    for clients in (int(c) for c in args.clients.split(",")):
        times = interleaved({"unsteered": load(clients, False), "steered": load(clients, True)}, args.repeats)
        tokens = clients * args.max_tokens
        plain, steered = tokens / median(times["unsteered"]), tokens / median(times["steered"])
        result["clients"][str(clients)] = {"vllm": plain, "vllm_steered": steered, "ratio": steered / plain}
        rows.append([clients, f"{plain:.1f}", f"{steered:.1f}", f"{steered / plain:.3f}"])

    server = {}
    if args.server_clients:
        import httpx

        import serve_throughput
        from serve_throughput import run_load, start_server

        serve_throughput.steering_for = steering_for  # the same mixed steering as the vLLM load, by name

        process = start_server(folder, args.port, None)
        url = f"http://127.0.0.1:{args.port}"
        try:
            name = httpx.get(url + "/v1/models").json()["data"][0]["id"]
            for clients in (int(c) for c in args.server_clients.split(",")):
                load_result = run_load(url, name, clients, args.requests_per_client, True, args.max_tokens)
                server[str(clients)] = load_result["tokens_per_s"]
        finally:
            process.terminate()
            process.wait(30)
    result["server_steered"] = server
    for row in rows:
        built_in = server.get(str(row[0]))
        row += [f"{built_in:.1f}" if built_in else "-", f"{float(row[2]) / built_in:.2f}x" if built_in else "-"]
    header = [
        "concurrent requests",
        "vLLM unsteered (tok/s)",
        "vLLM steered, mixed vectors at 3 layers (tok/s)",
        "steered / unsteered",
        "built-in server, steered (tok/s)",
        "vLLM steered / built-in",
    ]
    markdown = (
        f"SmolLM2-135M-Instruct, float32, CPU; {args.max_tokens} greedy tokens per request; medians of "
        f"{args.repeats} interleaved rounds; {time.strftime('%Y-%m-%d')}.\n\n" + table(header, rows)
    )
    finish(args, "vllm_throughput", result, markdown)


if __name__ == "__main__":
    sys.exit(main())
