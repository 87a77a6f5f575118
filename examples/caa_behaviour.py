"""Recipe: a CAA behaviour vector (Rimsky et al.) from A/B contrast pairs, checked on the held-out A/B questions.

    .venv/bin/python examples/caa_behaviour.py [behaviour] [--pairs 16] [--questions 10] [--layer 10]
        [--random-seeds 8] [--coherence-texts 24] [--data DIR]

The behaviour defaults to survival-instinct; the options make the run smaller (the tests use a few pairs and
questions) and the defaults are the full recipe. A thin caller of steerlab.recipes.caa_behaviour (the CLI's
`steerlab caa`):

The vector is the mean difference of the residual stream at the answer letter between the answer that shows
the behaviour and the one that does not, over pairs asked in both choice orders (so it does not encode "letter A").
The effect is p(matching answer letter) on the held-out questions, each asked in both choice orders (small models
prefer the letter "A"), against random directions of the same norm (at this model size CAA vectors move the A/B
preference only a little: always compare with the random baseline), and calibration keeps a setting only when it
beats them on questions it was not chosen on. Strengths are relative to the residual norm.
"""

import argparse
from pathlib import Path

from steerlab import load_model, load_pairs
from steerlab.evaluate import load_ab, neutral_texts
from steerlab.recipes import caa_behaviour

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("behaviour", nargs="?", default="survival-instinct", help="a folder of datasets/caa/generate")
parser.add_argument("--pairs", type=int, default=16, help="contrast pairs to extract from (before swapped copies)")
parser.add_argument("--questions", type=int, default=10, help="held-out A/B questions to measure on")
parser.add_argument("--layer", type=int, default=10)
parser.add_argument("--random-seeds", type=int, default=8, help="same-norm random directions (the control, >= 4)")
parser.add_argument("--coherence-texts", type=int, default=24, help="neutral texts KL is measured on (of 24)")
parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1] / "datasets" / "caa")
args = parser.parse_args()
behaviour, layer = args.behaviour, args.layer

model, tokenizer = load_model()
pairs = load_pairs(args.data / "generate" / behaviour / "generate_dataset.json")[: args.pairs]
test = load_ab(args.data / "test" / behaviour / "test_dataset_ab.json")[: args.questions]
texts = neutral_texts()[: args.coherence_texts]
result = caa_behaviour(model, tokenizer, pairs, test, layers=[layer], alphas=[-0.15, 0.0, 0.15],
                       random_seeds=range(args.random_seeds), coherence=texts)  # fmt: skip

print(f"{behaviour}: {len(pairs)} training pairs (+ swapped copies), {len(test)} held-out A/B questions x 2 orders, "
      f"layer {layer}")  # fmt: skip
print(f"unsteered p(matching) = {result.sweep.meta['unsteered']['p_matching']:.3f}")
for r in result.sweep.where(direction="vector"):
    if r["alpha"] != 0:
        print(
            f"alpha {r['alpha']:+.2f} x resid norm: CAA vector {r['p_matching']:.3f} (effect {r['effect']:+.3f}), "
            f"{args.random_seeds} random directions {r['random_mean']:+.3f} (sd {r['random_sd']:.3f})"
        )
print(result.recommendation.summary())
