"""Recipe: a CAA behaviour vector (Rimsky et al.) from A/B contrast pairs, checked on the held-out A/B questions.

    .venv/bin/python examples/caa_behaviour.py [behaviour] [--pairs 16] [--questions 10] [--layer 10] [--data DIR]

The behaviour defaults to survival-instinct; the options make the run smaller (the tests use a few pairs and
questions) and the defaults are the full recipe.

The vector is the mean difference of the residual stream at the answer letter between the answer that shows
the behaviour and the one that does not, over pairs asked in both choice orders (so it does not encode "letter A").
The effect is read with steerlab.evaluate.p_matching: the probability of
the matching answer letter on the held-out questions, each asked in both choice orders (small models prefer the
letter "A"), against a random direction of the same norm (at this model size CAA vectors move the A/B preference
only a little: always compare with the random baseline). Strengths are relative to the residual norm.
"""

import argparse
from pathlib import Path

from steerlab import extract_vector, load_model, load_pairs
from steerlab.datasets import balance_ab
from steerlab.evaluate import load_ab, p_matching

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("behaviour", nargs="?", default="survival-instinct", help="a folder of datasets/caa/generate")
parser.add_argument("--pairs", type=int, default=16, help="contrast pairs to extract from (before swapped copies)")
parser.add_argument("--questions", type=int, default=10, help="held-out A/B questions to measure on")
parser.add_argument("--layer", type=int, default=10)
parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1] / "datasets" / "caa")
args = parser.parse_args()
behaviour, layer = args.behaviour, args.layer

model, tokenizer = load_model()
pairs = load_pairs(args.data / "generate" / behaviour / "generate_dataset.json")[: args.pairs]
pairs = balance_ab(pairs)  # + swapped copies
vector = extract_vector(model, tokenizer, pairs, layers=[layer], batch_size=16)
test = load_ab(args.data / "test" / behaviour / "test_dataset_ab.json")[: args.questions]
random = vector.random_like(seed=0)  # the baseline: a random direction of the same norm

print(f"{behaviour}: {len(pairs)} training pairs, {len(test)} held-out A/B questions x 2 orders, layer {layer}")
print(f"unsteered p(matching) = {p_matching(model, tokenizer, test):.3f}")
for alpha in (-0.15, 0.15):
    options = dict(layer=layer, scale="relative")
    steered = p_matching(model, tokenizer, test, vector, alpha, **options)
    control = p_matching(model, tokenizer, test, random, alpha, **options)
    print(f"alpha {alpha:+.2f} x resid norm: CAA vector {steered:.3f}   random direction {control:.3f}")
