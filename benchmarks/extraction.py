"""Target 1: extraction at least 3x faster than the faster peer in its best batched setting, same vector.

Same model, texts, layer and token (the last one) for all: steerlab's mean_diff against steering-vectors' mean
aggregator (its default batch size 1 and its best, 32), steerlab's pca_diff against repeng's pca_diff (its
default batch size 32). Cosines are between the vectors themselves, sign included.

    make bench                                   # all benchmarks, in .venv-bench with the peers
    .venv-bench/bin/python benchmarks/extraction.py --repeats 7
"""

from __future__ import annotations

import torch

from _common import finish, interleaved, load, median, middle_layer, parse_args, peers, table


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], layer=-1, batch_size=32)
    from steerlab import extract_vector, sentiment_pairs
    from steerlab.data import pair_texts

    model, tokenizer = load(args.model)
    layer = args.layer if args.layer >= 0 else middle_layer(model)
    pairs = sentiment_pairs()
    pos, neg = pair_texts(pairs, tokenizer, chat=False)
    found = peers(args.no_peers)
    out: dict[str, torch.Tensor] = {}

    def ours(method: str, batch_size: int):
        def run():
            vec = extract_vector(
                model,
                tokenizer,
                pairs,
                layers=[layer],
                method=method,
                chat=False,
                batch_size=batch_size,
                progress=False,
            )
            out[f"steerlab {method}"] = vec.directions[layer]

        return run

    contenders = {
        f"steerlab mean_diff (batch {args.batch_size})": ours("mean_diff", args.batch_size),
        f"steerlab pca_diff (batch {args.batch_size})": ours("pca_diff", args.batch_size),
    }
    if "steering_vectors" in found:
        sv = found["steering_vectors"]

        def steering_vectors(batch_size: int):
            def run():
                vec = sv.train_steering_vector(
                    model, tokenizer, list(zip(pos, neg, strict=True)), layers=[layer], batch_size=batch_size
                )
                out["steering-vectors mean"] = vec.layer_activations[layer].float()

            return run

        contenders["steering-vectors (batch 1, its default)"] = steering_vectors(1)
        contenders["steering-vectors (batch 32)"] = steering_vectors(32)
    if "repeng" in found:
        rp = found["repeng"]
        dataset = [rp.DatasetEntry(positive=p, negative=n) for p, n in zip(pos, neg, strict=True)]

        def repeng():
            vec = rp.ControlVector.train(model, tokenizer, dataset, hidden_layers=[layer], batch_size=32)
            out["repeng pca_diff"] = torch.from_numpy(vec.directions[layer]).float()

        contenders["repeng (batch 32, its default)"] = repeng

    times = interleaved(contenders, args.repeats)
    medians = {name: median(t) for name, t in times.items()}
    best_peer = min(
        (v for k, v in medians.items() if not k.startswith("steerlab") and "batch 1," not in k), default=None
    )
    fastest_ours = min(v for k, v in medians.items() if k.startswith("steerlab"))
    rows = []
    for name, seconds in medians.items():
        speedup = best_peer / seconds if best_peer else None
        rows.append([name, seconds, "-" if speedup is None else f"{speedup:.2f}x"])

    def cos(a: str, b: str) -> float | None:
        if a not in out or b not in out:
            return None
        return float(torch.nn.functional.cosine_similarity(out[a], out[b], dim=0))

    agreement = {
        "steerlab mean_diff vs steering-vectors mean": cos("steerlab mean_diff", "steering-vectors mean"),
        "steerlab pca_diff vs repeng pca_diff": cos("steerlab pca_diff", "repeng pca_diff"),
    }
    header = (
        f"{len(pairs)} sentiment pairs ({2 * len(pairs)} texts), layer {layer}, last token, {args.threads} thread(s)"
    )
    markdown = "\n\n".join(
        [
            header,
            table(["extraction", "median s", "speed vs the best batched peer"], rows),
            table(
                ["same vector?", "cosine (sign included)"],
                [[k, "-" if v is None else f"{v:.6f}"] for k, v in agreement.items()],
            ),
        ]
    )
    speedup_vs_best = None if best_peer is None else best_peer / fastest_ours
    slowest_ours = max(v for k, v in medians.items() if k.startswith("steerlab"))
    finish(
        args,
        "extraction",
        {
            "layer": layer,
            "n_pairs": len(pairs),
            "medians_s": medians,
            "times_s": times,
            "cosines": agreement,
            "speedup_vs_best_peer": speedup_vs_best,
            "speedup_vs_best_peer_slowest_method": None if best_peer is None else best_peer / slowest_ours,
            "target": 3.0,
        },
        markdown,
    )


if __name__ == "__main__":
    main()
