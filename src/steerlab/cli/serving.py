"""Commands that serve a model: serve (the HTTP API and playground) and chat (a terminal conversation)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal

import typer

from steerlab.cli._common import (
    DEVICE_OPT,
    DTYPE_OPT,
    MODEL_OPT,
    _load,
    app,
    err,
    parse_ints,
    user_errors,
)
from steerlab.errors import SteerlabError
from steerlab.types import DEFAULT_SCALE, Scale


@app.command()
@user_errors
def serve(
    model: str = MODEL_OPT,
    vectors: Path | None = typer.Option(
        None, "--vectors", help="Folder of .safetensors vectors (uploads go there too; default: a temporary folder)."
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (loopback by default)."),
    port: int = typer.Option(8000, "--port"),
    batch_window_ms: float = typer.Option(15.0, "--batch-window-ms", help="How long to wait for requests to batch."),
    max_batch: int = typer.Option(16, "--max-batch", help="Most requests decoded together."),
    device: str | None = DEVICE_OPT,
    dtype: str | None = DTYPE_OPT,
    api_key: str | None = typer.Option(
        None,
        "--api-key",
        envvar="STEERLAB_API_KEY",
        help="Require 'Authorization: Bearer KEY' (the OpenAI client's api_key) on the API; default $STEERLAB_API_KEY.",
        show_envvar=False,
    ),
    engine: Literal["transformers", "vllm"] = typer.Option(
        "transformers", "--engine", help="Where generation runs: transformers (built in) or vllm (needs vLLM)."
    ),
) -> None:
    """Serve the model over an OpenAI-compatible API with per-request steering, and a playground at /."""
    from steerlab.serve import serve as run_server

    run_server(
        model,
        vectors=vectors,
        host=host,
        port=port,
        device=device,
        dtype=dtype,
        batch_window=batch_window_ms / 1000,
        max_batch=max_batch,
        api_key=api_key,
        engine=engine,
    )


@app.command()
@user_errors
def chat(
    url: str | None = typer.Option(None, "--url", help="A running `steerlab serve`, e.g. http://127.0.0.1:8000."),
    model: str | None = typer.Option(None, "--model", help="Or load this model here (alias, folder, .gguf, hub id)."),
    vector: str | None = typer.Option(
        None, "--vector", help="With --url: a vector name in the server's library; with --model: a .safetensors path."
    ),
    alpha: float | None = typer.Option(
        None,
        "--alpha",
        help="Strength (a fraction of the residual norm with --scale relative). Default: the vector's calibrated "
        "setting (steerlab calibrate) when it carries one, else 0.15.",
    ),
    layers: str | None = typer.Option(None, "--layers", help="Subset of the vector's layers (default: all)."),
    mode: Literal["add", "ablate", "ablate_then_add"] = typer.Option("add", "--mode", help="The operator."),
    scale: Scale = typer.Option(DEFAULT_SCALE, "--scale", help="relative (to the residual norm) or absolute."),
    system: str | None = typer.Option(None, "--system", help="A system prompt."),
    max_tokens: int = typer.Option(128, "--max-tokens"),
    temperature: float = typer.Option(0.0, "--temperature", help="0 = greedy."),
    device: str | None = DEVICE_OPT,
    dtype: str | None = DTYPE_OPT,
) -> None:
    """Chat in the terminal with a steered model (type /quit or end the input to leave)."""
    from steerlab.serve.chat import Conversation, local_backend, remote_backend

    if (url is None) == (model is None):
        raise SteerlabError("give exactly one of --url (a running server) or --model (load it here).")
    layer_list = parse_ints(layers, "--layers") if layers else None
    options = dict(
        alpha=alpha, layers=layer_list, mode=mode, scale=scale, max_tokens=max_tokens, temperature=temperature
    )
    stop = None
    if url is not None:
        backend = remote_backend(url, vector=vector, **options)  # type: ignore[arg-type]
    else:
        from steerlab._vector import SteeringVector

        vec = SteeringVector.load(vector) if vector else None
        lm, tokenizer = _load(model or "", device, dtype)
        backend, stop = local_backend(lm, tokenizer, vector=vec, **options)  # type: ignore[arg-type]
    talk = Conversation(backend, system=system)
    strength = "its calibrated setting, or 0.15 without one" if alpha is None else f"{alpha:g} ({mode}, {scale})"
    steering = f"{vector} x {strength}" if vector else "unsteered"
    err.print(f"chatting with {url or model}, {steering}; /quit to leave.")
    try:
        while True:
            try:
                line = input("you> ")
            except EOFError:
                break
            if line.strip() in ("/quit", "/exit"):
                break
            if not line.strip():
                continue
            sys.stdout.write("model> ")
            for piece in talk.say(line):
                sys.stdout.write(piece)
                sys.stdout.flush()
            sys.stdout.write("\n")
    finally:
        if stop is not None:
            stop()
