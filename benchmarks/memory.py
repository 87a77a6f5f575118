"""Target 5: extraction streams statistics, so 10x more pairs costs at most 1.2x the peak memory.

Each measurement runs in its own process: load the model, warm up, reset the kernel's peak-RSS counter
(``/proc/self/clear_refs``), extract at every layer, read the peak (``VmHWM``). Pairs are Geometry of Truth
cities statements, the true and the false one about the same city (``datasets/geometry-of-truth``). Quoted: the
peak RSS of the process and the working memory above what the loaded model already held.

    .venv-bench/bin/python benchmarks/memory.py
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys

from _common import ROOT, finish, parse_args, proc_bytes, reset_peak, table

CITIES = ROOT / "datasets" / "geometry-of-truth" / "cities.csv"
CONTENDERS = ("steerlab mean_diff", "steerlab pca_diff", "steering-vectors mean", "repeng pca_diff")


def city_pairs(n: int) -> list[tuple[str, str]]:
    with CITIES.open() as handle:
        rows = list(csv.DictReader(handle))
    by_city: dict[str, dict[str, str]] = {}
    for row in rows:
        by_city.setdefault(row["city"], {})["true" if row["label"] == "1" else "false"] = row["statement"]
    pairs = [(c["true"], c["false"]) for c in by_city.values() if "true" in c and "false" in c]
    if len(pairs) < n:
        sys.exit(f"only {len(pairs)} city pairs in {CITIES}, asked for {n}")
    return pairs[:n]


def child(contender: str, n: int, model_spec: str, threads: int) -> dict[str, float]:
    import torch

    torch.set_num_threads(threads)
    from steerlab import ContrastPair, extract_vector, get_layout, load_model

    model, tokenizer = load_model(model_spec)
    layers = list(range(get_layout(model).num_layers))
    pairs = city_pairs(n)

    def run(chosen: list[tuple[str, str]]) -> None:
        if contender.startswith("steerlab"):
            method = contender.split()[1]
            extract_vector(
                model,
                tokenizer,
                [ContrastPair(p, q) for p, q in chosen],
                layers=layers,
                method=method,
                chat=False,
                batch_size=32,
                progress=False,
            )
        elif contender == "steering-vectors mean":
            import steering_vectors

            steering_vectors.train_steering_vector(model, tokenizer, chosen, layers=layers, batch_size=32)
        else:
            import repeng

            data = [repeng.DatasetEntry(positive=p, negative=q) for p, q in chosen]
            repeng.ControlVector.train(model, tokenizer, data, hidden_layers=layers, batch_size=32)

    run(pairs[:4])  # warm-up: lazy allocations and imports happen before the peak is reset
    reset_peak()
    baseline = proc_bytes("VmRSS")
    run(pairs)
    peak = proc_bytes("VmHWM")
    return {"peak_bytes": peak, "working_bytes": peak - baseline}


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], pairs=50, factor=10, child="", only="")
    if args.child:
        contender, n = args.child.rsplit(":", 1)
        print(json.dumps(child(contender, int(n), args.model, args.threads)))
        return
    contenders = [c for c in CONTENDERS if c.startswith("steerlab") or not args.no_peers]
    if args.only:  # e.g. --only "steerlab mean_diff"
        contenders = [c for c in contenders if c == args.only]
    sizes = [args.pairs, args.pairs * args.factor]
    results: dict[str, dict[str, dict[str, float]]] = {}
    for contender in contenders:
        for n in sizes:
            command = [sys.executable, __file__, "--model", args.model, "--threads", str(args.threads)]
            done = subprocess.run(
                [*command, "--child", f"{contender}:{n}"], capture_output=True, text=True, check=False
            )
            if done.returncode != 0:
                sys.exit(f"{contender} with {n} pairs failed:\n{done.stderr[-2000:]}")
            results.setdefault(contender, {})[str(n)] = json.loads(done.stdout.strip().splitlines()[-1])
    mib = 1024 * 1024
    rows = []
    ratios = {}
    for contender, by_n in results.items():
        small, large = by_n[str(sizes[0])], by_n[str(sizes[1])]
        ratio = large["peak_bytes"] / small["peak_bytes"]
        ratios[contender] = ratio
        rows.append(
            [
                contender,
                f"{small['peak_bytes'] / mib:.0f}",
                f"{large['peak_bytes'] / mib:.0f}",
                f"{ratio:.3f}x",
                f"{small['working_bytes'] / mib:.1f}",
                f"{large['working_bytes'] / mib:.1f}",
            ]
        )
    markdown = (
        f"extraction at all layers, last token, Geometry of Truth city pairs, {sizes[0]} vs {sizes[1]} pairs\n\n"
        + table(
            [
                "contender",
                f"peak RSS MiB, {sizes[0]} pairs",
                f"peak RSS MiB, {sizes[1]} pairs",
                "ratio",
                f"working MiB, {sizes[0]}",
                f"working MiB, {sizes[1]}",
            ],
            rows,
        )
    )
    finish(args, "memory", {"sizes": sizes, "results": results, "peak_ratio": ratios, "target": 1.2}, markdown)


if __name__ == "__main__":
    main()
