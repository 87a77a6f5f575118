"""A quick check of optimised vectors (issue 15, part 1) on SmolLM2: BiPO on CAA pairs, then p(matching) on held-out
A/B questions at +-1 beside a random direction of the same norm. Not the issue's results table (that needs every
behaviour, intervals, calibration and the prompting baseline); a smoke measurement with its numbers printed.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/optimize_check.py [--behaviour refusal] [--pairs 64] [--steps 10]
        [--layer 10] [--questions 25]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from steerlab import load_model, load_pairs
from steerlab.datasets import balance_ab
from steerlab.evaluate import load_ab, p_matching
from steerlab.optimize import optimize_vector

CAA = Path(__file__).resolve().parents[1] / "datasets" / "caa"

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--behaviour", default="refusal")
parser.add_argument("--pairs", type=int, default=64, help="CAA pairs (each also with its choices swapped)")
parser.add_argument("--steps", type=int, default=10)
parser.add_argument("--layer", type=int, default=10)
parser.add_argument("--questions", type=int, default=25, help="held-out A/B questions (each in both orders)")
args = parser.parse_args()
torch.set_num_threads(1)

model, tok = load_model()
pairs = balance_ab(load_pairs(CAA / "generate" / args.behaviour / "generate_dataset.json")[: args.pairs])
start = time.perf_counter()
vec = optimize_vector(model, tok, pairs, layer=args.layer, objective="bipo", steps=args.steps, progress=False)
extra = vec.extra
relative = float(vec.directions[args.layer].norm()) / vec.resid_norm[args.layer]
print(f"bipo on {len(pairs)} pairs at layer {args.layer}: {extra['steps']} steps, "
      f"{extra['seconds_per_step']:.1f} s per step, loss {extra['losses'][0]:.3f} -> {extra['best_loss']:.3f}, "
      f"|v| = {relative:.3f} x the residual norm, {time.perf_counter() - start:.0f} s in all")  # fmt: skip
questions = load_ab(CAA / "test" / args.behaviour / "test_dataset_ab.json")[: args.questions]
control = vec.random_like(seed=0)
base = p_matching(model, tok, questions)
print(f"unsteered p(matching) {base:.3f} on {len(questions)} questions x 2 orders")
for alpha in (-1.0, 1.0):
    steered = p_matching(model, tok, questions, vec, alpha, layer=args.layer, scale="absolute") - base
    random = p_matching(model, tok, questions, control, alpha, layer=args.layer, scale="absolute") - base
    print(f"alpha {alpha:+.0f}: change {steered:+.4f} (random direction of the same norm {random:+.4f})")
