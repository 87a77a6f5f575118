"""What every benchmark shares: arguments, threads, the model, interleaved timing, tables and result files.

Timing: the machines are noisy, so each benchmark runs its contenders in interleaved rounds (A B C, A B C, ...)
in one process and quotes medians and ratios of medians; a slow spell then hits every contender alike.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Before anything imports tqdm: the peers' progress bars would interleave with the tables.
os.environ.setdefault("TQDM_DISABLE", "1")

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def parse_args(description: str, **extra: Any) -> argparse.Namespace:
    """Common options: --model, --threads, --repeats, --json; ``extra`` adds ``--name default`` options."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", default="smollm2-135m", help="steerlab model spec (alias, folder or hub id)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: quiet and comparable)")
    repeats = extra.pop("repeats", 5)
    parser.add_argument("--repeats", type=int, default=repeats, help="timed rounds; medians are quoted")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--no-peers", action="store_true", help="skip steering-vectors and repeng")
    for name, default in extra.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    return args


def proc_bytes(field: str) -> int:
    """A memory figure of this process from /proc/self/status (``VmRSS``: now, ``VmHWM``: peak since reset)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak() -> None:
    """Reset the kernel's peak-RSS counter (``VmHWM``) to the current RSS."""
    Path("/proc/self/clear_refs").write_text("5")


def load(spec: str):
    from steerlab import load_model

    model, tokenizer = load_model(spec)
    model.eval()
    return model, tokenizer


def peers(skip: bool) -> dict[str, Any]:
    """The peer libraries that are importable (``make bench`` installs both); empty when skipped."""
    found: dict[str, Any] = {}
    if skip:
        return found
    for name in ("steering_vectors", "repeng"):
        try:
            found[name] = __import__(name)
        except ImportError as err:
            sys.exit(f"{name} is not importable ({err}); run the benchmarks with `make bench` or pass --no-peers.")
    return found


def middle_layer(model) -> int:
    from steerlab import get_layout

    return get_layout(model).num_layers // 2


def interleaved(contenders: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per call of each contender over ``repeats`` interleaved rounds, after ``warmup`` rounds."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for round_ in range(warmup + repeats):
        for name, fn in contenders.items():
            start = time.perf_counter()
            fn()
            elapsed = time.perf_counter() - start
            if round_ >= warmup:
                times[name].append(elapsed)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def table(header: list[str], rows: list[list[Any]]) -> str:
    """A markdown table; floats printed with 3 significant digits."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.3g}"
        return str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def finish(args: argparse.Namespace, name: str, result: dict[str, Any], markdown: str) -> None:
    """Print the table and write the JSON result (``--json``) with the settings it was measured under."""
    import platform

    import torch
    import transformers

    result = {
        "benchmark": name,
        "model": args.model,
        "threads": args.threads,
        "repeats": args.repeats,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        **result,
        "markdown": markdown,
    }
    print(markdown)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


def chat_batch(tokenizer, prompts: list[str]):
    """The prompts in the chat template (when there is one), left-padded: ``(input_ids, attention_mask)``."""
    from steerlab.engines import apply_chat, encode, pad_batch, pad_id

    texts = [apply_chat(tokenizer, p) for p in prompts]
    return pad_batch(encode(tokenizer, texts), pad_id(tokenizer), side="left")


def greedy(model, tokenizer, batch, new_tokens: int):
    """Exactly ``new_tokens`` greedy tokens per row with steerlab's decode loop (the model's own ``generate``;
    no early stop, so every contender does the same work); returns the generated ids."""
    from steerlab.engines import generate_batch, pad_id

    input_ids, mask = batch
    return generate_batch(
        model, input_ids, mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=pad_id(tokenizer)
    )
