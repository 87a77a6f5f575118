"""Parity of steering inside vLLM with steerlab's transformers hooks, on SmolLM2 in float32: for every operator and
position rule at a weak and a strong strength, and every site the plugin steers (resid_pre, resid_post, attn_out,
mlp_out), how often greedy tokens are identical in the two engines (beside the same rate unsteered), and the
correlation of the next-token log-prob shifts (steered minus unsteered). All steered and unsteered vLLM requests
run as one continuously batched generate call. tests/test_vllm.py runs it small; the
table in docs/vllm.md comes from:

    make .venv-vllm/.installed
    VLLM_ENABLE_V1_MULTIPROCESSING=0 VLLM_CPU_KVCACHE_SPACE=2 VLLM_CPU_OMP_THREADS_BIND=nobind OMP_NUM_THREADS=1 \
        .venv-vllm/bin/python scripts/vllm_parity.py --prompts 16 --max-tokens 24

With ``--reading`` it measures reading instead (docs/vllm.md, "Reading"): ``steerlab.record`` given the
``vllm.LLM`` against the transformers model at every site and reduction, and ``extract_vector`` on both engines.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from steerlab import Intervention, SteeringVector, extract_vector, load_model, sentiment_pairs, steer
from steerlab.engines import apply_chat, encode, generate
from steerlab.vllm import steering_args

LAYERS = [8, 12, 16]
PROMPTS = [
    "Tell me about your day.",
    "Describe the weather this morning.",
    "What do you think of the new library in town?",
    "Write one sentence about your neighbour.",
    "How was the film you saw last week?",
    "Give me your opinion of Mondays.",
    "What is it like to live in a big city?",
    "Describe the meal you had yesterday.",
    "How do you feel about long train journeys?",
    "Tell me about your favourite teacher.",
    "What happened at the meeting?",
    "Describe an old house.",
    "How was the concert?",
    "Write a short note to a colleague.",
    "What do you think about rainy holidays?",
    "Describe your morning commute.",
]
TOP = 20  # vLLM returns the top-20 log-probs of each step; shifts are compared on those tokens


def cases(vector: str) -> list[tuple[str, list[dict[str, Any]]]]:
    """Every operator and position rule, weak and strong, plus norm preservation, the absolute scale and several
    vectors in one request: (name, the request's steering entries)."""
    out: list[tuple[str, list[dict[str, Any]]]] = []
    for strength, alpha in (("weak", 0.08), ("strong", 0.25)):
        for positions in ("all", "prompt", "generated", 3):
            out.append((f"add {strength} positions={positions}", [_entry(vector, alpha, positions=positions)]))
    out += [
        ("ablate (default positions=1)", [_entry(vector, 1.0, mode="ablate")]),
        ("ablate weak 0.5 positions=all", [_entry(vector, 0.5, mode="ablate", positions="all")]),
        ("ablate_then_add weak 0.05", [_entry(vector, 0.05, mode="ablate_then_add")]),
        ("ablate_then_add strong 0.25", [_entry(vector, 0.25, mode="ablate_then_add")]),
        ("clamp [null, 0]", [_entry(vector, [None, 0.0], mode="clamp")]),
        ("clamp strong [0.2, null] generated", [_entry(vector, [0.2, None], mode="clamp", positions="generated")]),
        ("add strong preserve_norm", [_entry(vector, 0.25, preserve_norm=True)]),
        ("add absolute 3.0 layer 12", [_entry(vector, 3.0, scale="absolute", layers=[12])]),
        (
            "add 12 + ablate 8 + clamp 16",
            [
                _entry(vector, 0.2, layers=[12]),
                _entry(vector, 1.0, mode="ablate", layers=[8]),
                _entry(vector, [-0.05, 0.05], mode="clamp", layers=[16], positions="prompt"),
            ],
        ),
        ("add strong at resid_pre", [_entry(vector, 0.25, site="resid_pre")]),
        ("add strong at attn_out", [_entry(vector, 0.25, site="attn_out")]),
        ("add strong at mlp_out generated", [_entry(vector, 0.25, site="mlp_out", positions="generated")]),
        (
            "ablate at resid_pre 8 + attn_out + mlp_out (directional ablation's sites)",
            [
                _entry(vector, 1.0, mode="ablate", site="resid_pre", layers=[8]),
                _entry(vector, 1.0, mode="ablate", site="attn_out", positions="all"),
                _entry(vector, 1.0, mode="ablate", site="mlp_out", positions="all"),
                _entry(vector, 0.2, layers=[12]),
            ],
        ),
    ]
    return out


def _entry(vector: str, alpha: Any, **options: Any) -> dict[str, Any]:
    return {"vector": vector, "alpha": alpha, **options}


def interventions(entries: list[dict[str, Any]]) -> list[Intervention]:
    """The same entries as library Interventions (for the transformers side)."""
    items = []
    for entry in entries:
        options = {k: v for k, v in entry.items() if k not in ("vector", "alpha")}
        alpha = tuple(entry["alpha"]) if isinstance(entry["alpha"], list) else entry["alpha"]
        items.append(Intervention(SteeringVector.load(entry["vector"]), alpha, **options))
    return items


def _transformers_run(model, tokenizer, prompts, items, max_tokens) -> tuple[list[list[int]], list[torch.Tensor]]:
    """Greedy tokens (batch of one: no padding) and the next-token log-probs after each prompt."""
    tokens, logprobs = [], []
    with steer(model, items) if items else nullcontext():
        for prompt in prompts:
            ids, generated = generate(model, tokenizer, [prompt], max_new_tokens=max_tokens, batch_size=1)[0]
            tokens.append(list(generated))
            with torch.no_grad():
                logits = model(torch.tensor([ids])).logits[0, -1].float()
            logprobs.append(torch.log_softmax(logits, -1))
    return tokens, logprobs


def _pearson(xs: list[float], ys: list[float]) -> float:
    x, y = torch.tensor(xs, dtype=torch.float64), torch.tensor(ys, dtype=torch.float64)
    x, y = x - x.mean(), y - y.mean()
    denominator = float(x.norm() * y.norm())
    return float((x * y).sum()) / denominator if denominator > 0 else math.nan


def measure(llm, model, tokenizer, vector: str, prompts: list[str], max_tokens: int) -> list[dict[str, Any]]:
    """One row per case: token agreement with the transformers hooks, the unsteered agreement, the share of prompts
    whose greedy answer the steering changed, the log-prob shift correlation (``nan`` when steering leaves the prompt
    untouched: positions="generated"), the largest difference of the two engines' shifts and how many (prompt,
    token) pairs they are over."""
    from vllm import SamplingParams

    ids = [encode(tokenizer, [apply_chat(tokenizer, p)])[0] for p in prompts]
    all_cases = [("unsteered", [])] + cases(vector)
    requests, params = [], []
    for _, entries in all_cases:
        extra = steering_args(entries) if entries else None
        for prompt_ids in ids:
            requests.append({"prompt_token_ids": prompt_ids})
            params.append(SamplingParams(max_tokens=max_tokens, temperature=0.0, logprobs=TOP, extra_args=extra))
    outputs = llm.generate(requests, params, use_tqdm=False)  # every case in one continuously batched run
    n = len(prompts)
    vllm_runs = [outputs[i * n : (i + 1) * n] for i in range(len(all_cases))]
    hf_base_tokens, hf_base_logprobs = _transformers_run(model, tokenizer, prompts, [], max_tokens)
    base_equal = _equal_rate(hf_base_tokens, vllm_runs[0])
    rows = []
    for (name, entries), run in zip(all_cases[1:], vllm_runs[1:], strict=True):
        tokens, logprobs = _transformers_run(model, tokenizer, prompts, interventions(entries), max_tokens)
        hf_shift, vllm_shift = [], []
        for p in range(n):
            steered, unsteered = run[p].outputs[0].logprobs[0], vllm_runs[0][p].outputs[0].logprobs[0]
            for token in set(steered) & set(unsteered):
                vllm_shift.append(steered[token].logprob - unsteered[token].logprob)
                hf_shift.append(float(logprobs[p][token] - hf_base_logprobs[p][token]))
        moved = max((abs(s) for s in hf_shift), default=0.0) > 1e-4
        rows.append(
            {
                "case": name,
                "tokens_equal": _equal_rate(tokens, run),
                "unsteered_equal": base_equal,
                "steered_changed": sum(t != b for t, b in zip(tokens, hf_base_tokens, strict=True)) / n,
                "shift_corr": _pearson(hf_shift, vllm_shift) if moved else math.nan,
                "shift_max_diff": max((abs(a - b) for a, b in zip(hf_shift, vllm_shift, strict=True)), default=0.0),
                "pairs": len(hf_shift),
            }
        )
    return rows


def _equal_rate(tokens: list[list[int]], outputs) -> float:
    return sum(list(o.outputs[0].token_ids) == t for t, o in zip(tokens, outputs, strict=True)) / len(tokens)


def make_vector(model, tokenizer, folder: Path, pairs: int = 32) -> str:
    """A sentiment vector at :data:`LAYERS` from ``pairs`` of the shipped pairs, saved under ``folder``."""
    vector = extract_vector(model, tokenizer, sentiment_pairs()[:pairs], layers=LAYERS)
    return str(vector.save(folder / "sentiment.safetensors"))


def open_llm(model):
    """SmolLM2 in vLLM as the plugin needs it: eager, float32 (the settings of docs/vllm.md), through the function
    `steerlab serve --engine vllm` uses."""
    from steerlab.serve.vllm_engine import open_llm as open_served

    return open_served(model, max_batch=256, max_model_len=1024, seed=0)


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| case | greedy tokens equal (steered) | equal unsteered | steered changed | log-prob shift corr "
        "| max shift difference (nats) | pairs |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        corr = "n/a (prompt untouched)" if math.isnan(r["shift_corr"]) else f"{r['shift_corr']:.4f}"
        lines.append(
            f"| {r['case']} | {r['tokens_equal']:.2f} | {r['unsteered_equal']:.2f} | {r['steered_changed']:.2f} "
            f"| {corr} | {r['shift_max_diff']:.1e} | {r['pairs']} |"
        )
    return "\n".join(lines)


def measure_reading(llm, model, tokenizer, texts: list[str], pairs: int) -> tuple[list[dict], list[dict]]:
    """Reading on both engines: per site and reduction, the largest difference of a recorded row relative to its
    norm and of the mean activation norm (layers 0, 12, 29); per method, the cosine and norm ratio of the vectors
    extracted from the first ``pairs`` sentiment pairs at LAYERS."""
    from steerlab import record

    recorded = []
    for site in ("resid_pre", "resid_post", "attn_out", "mlp_out"):
        for reduce in ("last", "mean", "all"):
            ours = record(llm, tokenizer, texts, layers=[0, 12, -1], reduce=reduce, site=site)
            theirs = record(model, tokenizer, texts, layers=[0, 12, -1], reduce=reduce, site=site)
            gap = max(
                float(((ours.values[k] - theirs.values[k]).norm(dim=-1) / theirs.values[k].norm(dim=-1)).max())
                for k in ours.layers
            )
            norm_gap = max(abs(ours.resid_norm[k] / theirs.resid_norm[k] - 1) for k in ours.layers)
            rows = sum(ours.lengths) if ours.lengths else len(texts)
            recorded.append({"site": site, "reduce": reduce, "rows": rows, "gap": gap, "norm_gap": norm_gap})
    extracted = []
    for method in ("mean_diff", "pca_diff", "pca_center"):
        ours = extract_vector(llm, llm.get_tokenizer(), sentiment_pairs()[:pairs], layers=LAYERS, method=method)
        theirs = extract_vector(model, tokenizer, sentiment_pairs()[:pairs], layers=LAYERS, method=method)
        cosines = [float(torch.cosine_similarity(ours.directions[k], theirs.directions[k], dim=0)) for k in LAYERS]
        ratios = [float(ours.directions[k].norm() / theirs.directions[k].norm()) for k in LAYERS]
        extracted.append({"method": method, "cosine": min(cosines), "ratio": max(ratios, key=lambda r: abs(r - 1))})
    return recorded, extracted


def reading_tables(recorded: list[dict], extracted: list[dict], texts: int, pairs: int) -> str:
    lines = [
        f"`steerlab.record`, {texts} texts, layers 0, 12 and 29:",
        "",
        "| site | reduce | rows compared | largest row difference / row norm | largest mean-norm difference |",
        "|---|---|---:|---:|---:|",
    ]
    lines += [f"| {r['site']} | {r['reduce']} | {r['rows']} | {r['gap']:.1e} | {r['norm_gap']:.1e} |" for r in recorded]
    lines += [
        "",
        f"`steerlab.extract_vector`, {pairs} sentiment pairs, layers {LAYERS}:",
        "",
        "| method | lowest cosine (vLLM vs transformers) | norm ratio furthest from 1 |",
        "|---|---:|---:|",
    ]
    lines += [f"| {e['method']} | {e['cosine']:.6f} | {e['ratio']:.5f} |" for e in extracted]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--reading", action="store_true", help="measure record / extract_vector instead")
    parser.add_argument("--pairs", type=int, default=32, help="sentiment pairs for --reading (32 ship)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    start = time.time()
    model, tokenizer = load_model("smollm2-135m", dtype="float32")
    if args.reading:
        llm = open_llm(model)
        texts = [apply_chat(tokenizer, p) for p in PROMPTS[: args.prompts]] + PROMPTS[: args.prompts]
        recorded, extracted = measure_reading(llm, model, tokenizer, texts, args.pairs)
        print(reading_tables(recorded, extracted, len(texts), args.pairs))
        print(f"\n{time.time() - start:.0f} s")
        return 0
    folder = Path(tempfile.mkdtemp())
    vector = make_vector(model, tokenizer, folder)
    llm = open_llm(model)
    rows = measure(llm, model, tokenizer, vector, PROMPTS[: args.prompts], args.max_tokens)
    print(table(rows))
    print(f"\n{args.prompts} prompts x {args.max_tokens} greedy tokens; {time.time() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
