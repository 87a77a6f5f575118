"""Target 1: extraction at least 3x faster than the faster peer in its best batched setting, same vector.

Same model, texts, layer and token (the last one) for all: steerlab's mean_diff against steering-vectors' mean
aggregator (its default batch size 1 and its best, 32), steerlab's pca_diff against repeng's pca_diff (its
default batch size 32). Cosines are between the vectors themselves, sign included. Two data sets: the 32
sentiment pairs of the target (short texts, little in common), and CAA refusal A/B pairs in the chat template
(long texts that differ only in the answer letter), where steerlab runs each pair's common beginning once.

    make bench                                   # all benchmarks, in .venv-bench with the peers
    .venv-bench/bin/python benchmarks/extraction.py --repeats 7
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from _common import ROOT, finish, interleaved, load, median, middle_layer, parse_args, peers, table


def measure(
    model, tokenizer, pairs, chat: bool, layer: int, found: dict[str, Any], repeats: int, slow_default: bool
) -> dict[str, Any]:
    from steerlab import extract_vector
    from steerlab.datasets import pair_texts

    pos, neg = pair_texts(pairs, tokenizer, chat=chat)
    out: dict[str, torch.Tensor] = {}

    def ours(method: str) -> Callable[[], None]:
        def run():
            vec = extract_vector(
                model, tokenizer, pairs, layers=[layer], method=method, chat=chat, batch_size=32, progress=False
            )
            out[f"steerlab {method}"] = vec.directions[layer]

        return run

    contenders = {"steerlab mean_diff (batch 32)": ours("mean_diff"), "steerlab pca_diff (batch 32)": ours("pca_diff")}
    if "steering_vectors" in found:
        sv = found["steering_vectors"]

        def steering_vectors(batch_size: int) -> Callable[[], None]:
            def run():
                samples = list(zip(pos, neg, strict=True))
                vec = sv.train_steering_vector(model, tokenizer, samples, layers=[layer], batch_size=batch_size)
                out["steering-vectors mean"] = vec.layer_activations[layer].float()

            return run

        if slow_default:
            contenders["steering-vectors (batch 1, its default)"] = steering_vectors(1)
        contenders["steering-vectors (batch 32)"] = steering_vectors(32)
    if "repeng" in found:
        rp = found["repeng"]
        dataset = [rp.DatasetEntry(positive=p, negative=n) for p, n in zip(pos, neg, strict=True)]

        def repeng():
            vec = rp.ControlVector.train(model, tokenizer, dataset, hidden_layers=[layer], batch_size=32)
            out["repeng pca_diff"] = torch.from_numpy(vec.directions[layer]).float()

        contenders["repeng (batch 32, its default)"] = repeng
    times = interleaved(contenders, repeats)
    medians = {name: median(t) for name, t in times.items()}
    batched_peers = [v for k, v in medians.items() if not k.startswith("steerlab") and "batch 1," not in k]
    best_peer = min(batched_peers, default=None)

    def cos(a: str, b: str) -> float | None:
        if a not in out or b not in out:
            return None
        return float(torch.nn.functional.cosine_similarity(out[a], out[b], dim=0))

    ours_s = [v for k, v in medians.items() if k.startswith("steerlab")]
    return {
        "n_pairs": len(pairs),
        "tokens": sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in pos + neg),
        "medians_s": medians,
        "times_s": times,
        "best_peer_s": best_peer,
        "speedup_vs_best_peer": None if best_peer is None else best_peer / min(ours_s),
        "speedup_vs_best_peer_slowest_method": None if best_peer is None else best_peer / max(ours_s),
        "cosines": {
            "steerlab mean_diff vs steering-vectors mean": cos("steerlab mean_diff", "steering-vectors mean"),
            "steerlab pca_diff vs repeng pca_diff": cos("steerlab pca_diff", "repeng pca_diff"),
        },
    }


def section(title: str, result: dict[str, Any]) -> str:
    best = result["best_peer_s"]
    rows = [
        [name, seconds, "-" if best is None else f"{best / seconds:.2f}x"]
        for name, seconds in result["medians_s"].items()
    ]
    cosines = [[k, "-" if v is None else f"{v:.6f}"] for k, v in result["cosines"].items()]
    return "\n\n".join(
        [
            f"{title}: {result['n_pairs']} pairs, {result['tokens']} tokens",
            table(["extraction", "median s", "speed vs the best batched peer"], rows),
            table(["same vector?", "cosine (sign included)"], cosines),
        ]
    )


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], layer=-1, caa_pairs=16)
    from steerlab import load_pairs, sentiment_pairs

    model, tokenizer = load(args.model)
    layer = args.layer if args.layer >= 0 else middle_layer(model)
    found = peers(args.no_peers)
    sentiment = measure(model, tokenizer, sentiment_pairs(), False, layer, found, args.repeats, slow_default=True)
    caa_file = ROOT / "datasets" / "caa" / "generate" / "refusal" / "generate_dataset.json"
    caa_pairs = load_pairs(caa_file)[: args.caa_pairs]
    chat = bool(getattr(tokenizer, "chat_template", None))
    caa = measure(model, tokenizer, caa_pairs, chat, layer, found, max(2, args.repeats // 2), slow_default=False)
    markdown = "\n\n".join(
        [
            f"Layer {layer}, last token, {args.threads} thread(s).",
            section("Sentiment pairs (the target)", sentiment),
            section("CAA refusal A/B pairs" + (" in the chat template" if chat else ""), caa),
        ]
    )
    finish(
        args,
        "extraction",
        {
            "layer": layer,
            **sentiment,  # the target is stated on the sentiment pairs
            "caa": caa,
            "target": 3.0,
        },
        markdown,
    )


if __name__ == "__main__":
    main()
