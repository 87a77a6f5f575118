"""ITI on SmolLM2 (issue 16, part 4): head probes on TruthfulQA A/B, then p(correct) on held-out questions; writes
docs/iti.md.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/iti_check.py [--probe 400] [--test 100] [--k 16]

Probes: ``recipes.head_probes`` on the first ``--probe`` questions of ``datasets/caa/test/truthfulqa`` (each with the
correct and the incorrect answer letter after the chat template, both choice orders: ``balance_ab``), last token,
3/4 to fit and 1/4 to rank heads. Test: the next ``--test`` questions in both choice orders, p(correct letter),
beside the unsteered model, ``k`` random heads shifted the same way (3 seeds) and the whole-residual mean_diff vector
of the same pairs at one layer. KL on the shipped neutral texts at every setting. A measurement, not a tuned result:
k and the strengths are fixed here, not chosen by ``calibrate``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
import warnings
from pathlib import Path

import torch

from steerlab import ContrastPair, extract_vector, load_model
from steerlab.datasets import balance_ab, pair_texts
from steerlab.errors import StrengthWarning
from steerlab.evaluate import ABQuestion, kl_from_unsteered
from steerlab.evaluate.metrics import ab_probabilities
from steerlab.recipes import head_probes

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "datasets" / "caa" / "test" / "truthfulqa" / "truthful_qa.json"

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--probe", type=int, default=400, help="questions for the head probes")
parser.add_argument("--test", type=int, default=100, help="held-out questions (each in both choice orders)")
parser.add_argument("--k", type=int, default=16, help="heads shifted")
parser.add_argument("--layer", type=int, default=13, help="layer of the whole-residual mean_diff baseline")
parser.add_argument("--out", default=str(ROOT / "docs" / "iti.md"))
args = parser.parse_args()
torch.set_num_threads(1)
warnings.simplefilter("ignore", StrengthWarning)  # strengths past the breakdown point are part of the grid
start = time.perf_counter()

model, tok = load_model()
records = json.loads(DATA.read_text())
probe_records = records[: args.probe]
test_records = records[args.probe : args.probe + args.test]

# CAA's convention: the text ends at the answer letter, "(A" or "(B", where the model commits to its answer.
pairs = balance_ab([ContrastPair(r["correct"][:2], r["incorrect"][:2], r["prompt"]) for r in probe_records])
correct, incorrect = pair_texts(pairs, tok)
probes = head_probes(model, tok, correct + incorrect, [1] * len(correct) + [0] * len(incorrect))
print(f"head probes: best held-out accuracy {float(probes.accuracy.max()):.3f} at {probes.top(1)}", flush=True)
iti = probes.vector(args.k)
controls = [probes.random_vector(args.k, seed=s) for s in range(3)]
mean_diff = extract_vector(model, tok, pairs, layers=[args.layer])

questions = [ABQuestion(r["prompt"], r["correct"].strip("() ")) for r in test_records]


def measure(vector, alpha, **options) -> tuple[list[float], float]:
    rows = ab_probabilities(model, tok, questions, vector, alpha, **options)
    kl = 0.0 if vector is None else kl_from_unsteered(model, tok, vector, alpha, **options)
    return [r["p_matching"] for r in rows], kl


def interval(diffs: list[float]) -> str:
    n = len(diffs)
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    half = 1.96 * sd / math.sqrt(n)
    return f"{mean:+.4f} [{mean - half:+.4f}, {mean + half:+.4f}]"


base, _ = measure(None, 0.0)
n = len(base)
rows = [("unsteered", "-", sum(base) / n, "-", 0.0)]
print(f"unsteered p(correct) {sum(base) / n:.4f} on {n} prompts", flush=True)
for alpha in (2.0, 5.0, 10.0):
    p, kl = measure(iti, alpha, scale="absolute")
    change = interval([a - b for a, b in zip(p, base, strict=True)])
    rows.append((f"ITI, top {args.k} heads", f"{alpha:g} sd", sum(p) / n, change, kl))
    print(rows[-1], flush=True)
    shifts, kls = [], []
    for control in controls:
        p, kl = measure(control, alpha, scale="absolute")
        shifts.append([a - b for a, b in zip(p, base, strict=True)])
        kls.append(kl)
    per_prompt = [sum(s[i] for s in shifts) / len(shifts) for i in range(n)]
    rows.append((f"{args.k} random heads (3 seeds)", f"{alpha:g} sd", sum(base) / n + sum(per_prompt) / n,
                 interval(per_prompt), sum(kls) / len(kls)))  # fmt: skip
    print(rows[-1], flush=True)
for alpha in (0.05, 0.1, 0.2):
    p, kl = measure(mean_diff, alpha, layer=args.layer, scale="relative")
    rows.append((f"mean_diff, layer {args.layer}", f"{alpha:g} x resid", sum(p) / n,
                 interval([a - b for a, b in zip(p, base, strict=True)]), kl))  # fmt: skip
    print(rows[-1], flush=True)

best = probes.top(args.k)
minutes = (time.perf_counter() - start) / 60
lines = [
    "# ITI on SmolLM2-135M-Instruct: TruthfulQA A/B",
    "",
    f"Generated by `scripts/iti_check.py` in {minutes:.1f} min on 1 CPU thread; regenerate with "
    "`OMP_NUM_THREADS=1 .venv/bin/python scripts/iti_check.py`. How ITI is built: "
    "[measure.md](measure.md#iti-shifting-the-heads-that-know-steerlabrecipesiti).",
    "",
    f"Probes: `recipes.head_probes` on the first {args.probe} questions of `datasets/caa/test/truthfulqa` (correct "
    f"vs incorrect answer letter after the chat template, both choice orders: {len(correct)} texts of each label), "
    f"last token, {probes.n_train} to fit and {probes.n_held_out} to rank the {probes.accuracy.numel()} heads "
    f"({len(probes.layers)} layers x {probes.num_heads}). Best held-out accuracy "
    f"{float(probes.accuracy.max()):.3f}; the top {args.k} (layer, head): {best}.",
    "",
    f"Test: the next {len(test_records)} questions, each in both choice orders (n = {n} prompts); p(correct) is the "
    "probability of the correct letter among A and B. Change = mean per-prompt change against unsteered, with a "
    "95% normal interval. ITI's strength is in standard deviations along each head's direction (absolute scale); "
    f"*random heads*: {args.k} heads drawn at random, each shifted the same way (mean of 3 seeds); *mean_diff*: the "
    f"whole residual stream at layer {args.layer} (the same pairs), relative strength. KL: nats/token on the "
    "shipped neutral texts. k and the strengths are fixed here, not calibrated.",
    "",
    "| intervention | strength | p(correct) | change [95% interval] | KL |",
    "|---|---|---:|---:|---:|",
]
for name, strength, p, change, kl in rows:
    lines.append(f"| {name} | {strength} | {p:.4f} | {change} | {kl:.3f} |")
lines.append("")
Path(args.out).write_text("\n".join(lines))
print(f"wrote {args.out} in {minutes:.1f} min")
