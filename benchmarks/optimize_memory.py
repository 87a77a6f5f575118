"""Learning a vector keeps no graph for the weights: peak memory and time of BiPO steps, weights frozen or not.

`optimize_vector` turns the model's ``requires_grad`` off while it learns (``steerlab._forward.frozen_weights``):
the gradient goes to the vector alone, so autograd need not keep the activations of every layer for weight
gradients nobody takes. The baseline is the same function with that context replaced by a no-op, which is what a
hand-written loop over a model loaded for training does. Each contender runs in its own process: load the model,
reset the peak-RSS counter, ``--steps`` BiPO steps (batch ``--batch``) on CAA refusal pairs
(balanced A/B) at the middle layer; the peak is read from ``VmHWM``.

    .venv/bin/python benchmarks/optimize_memory.py --json benchmarks/results/optimize_memory.json
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys

from _common import ROOT, finish, middle_layer, parse_args, proc_bytes, reset_peak, table

PAIRS = ROOT / "datasets" / "caa" / "generate" / "refusal" / "generate_dataset.json"
CONTENDERS = ("weights frozen (steerlab)", "weights requiring grad (baseline)")


def child(contender: str, args) -> dict[str, float]:
    from steerlab import load_model, load_pairs
    from steerlab import optimize as optimize_module
    from steerlab.datasets import balance_ab

    model, tokenizer = load_model(args.model)
    if contender == CONTENDERS[1]:
        optimize_module.frozen_weights = lambda model: contextlib.nullcontext()
    pairs = balance_ab(load_pairs(PAIRS)[: args.pairs])
    options = dict(layer=middle_layer(model), objective="bipo", batch_size=args.batch, progress=False)
    # No warm-up: the allocator keeps what a first step took, which would hide the peak from the counter.
    reset_peak()
    baseline = proc_bytes("VmRSS")
    learned = optimize_module.optimize_vector(model, tokenizer, pairs, steps=args.steps, **options)
    peak = proc_bytes("VmHWM")
    return {"working_bytes": peak - baseline, "peak_bytes": peak, "seconds_per_step": learned.extra["seconds_per_step"]}


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], pairs=32, steps=3, batch=16, child="")
    if args.child:
        print(json.dumps(child(args.child, args)))
        return
    results = {}
    for contender in CONTENDERS:
        command = [sys.executable, __file__, "--model", args.model, "--threads", str(args.threads)]
        command += ["--child", contender, "--pairs", str(args.pairs), "--steps", str(args.steps)]
        command += ["--batch", str(args.batch)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            sys.exit(f"{contender} failed:\n{done.stderr[-2000:]}")
        results[contender] = json.loads(done.stdout.strip().splitlines()[-1])
    mine, base = (results[c] for c in CONTENDERS)
    ratio = base["working_bytes"] / mine["working_bytes"]
    mib = 1024 * 1024
    rows = [
        [c, f"{r['working_bytes'] / mib:.0f}", f"{r['peak_bytes'] / mib:.0f}", f"{r['seconds_per_step']:.2f}"]
        for c, r in results.items()
    ]
    markdown = (
        f"BiPO, {2 * args.pairs} balanced CAA refusal pairs, batch {args.batch}, {args.steps} steps at the middle "
        f"layer: the baseline needs {ratio:.2f}x the working memory; time per step "
        f"{base['seconds_per_step'] / mine['seconds_per_step']:.2f}x\n\n"
        + table(["contender", "working MiB (peak over the loaded model)", "peak RSS MiB", "s per step"], rows)
    )
    finish(args, "optimize_memory", {"results": results, "working_ratio": ratio}, markdown)


if __name__ == "__main__":
    main()
