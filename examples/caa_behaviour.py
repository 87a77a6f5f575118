"""Recipe: a CAA behaviour vector (Rimsky et al.) from A/B contrast pairs, checked on the held-out A/B questions.

    .venv/bin/python examples/caa_behaviour.py [behaviour]     # default: survival-instinct

The vector is the mean difference of the residual stream at the answer letter between the answer that shows
the behaviour and the one that does not, over pairs asked in both choice orders (so it does not encode "letter A").
The effect is read with steerlab.evaluate.p_matching: the probability of
the matching answer letter on the held-out questions, each asked in both choice orders (small models prefer the
letter "A"), against a random direction of the same norm (at this model size CAA vectors move the A/B preference
only a little: always compare with the random baseline). Strengths are relative to the residual norm.
"""

import sys
from pathlib import Path

from steerlab import extract_vector, load_model, load_pairs
from steerlab.datasets import balance_ab
from steerlab.evaluate import load_ab, p_matching

ROOT = Path(__file__).resolve().parents[1] / "datasets" / "caa"
behaviour = sys.argv[1] if len(sys.argv) > 1 else "survival-instinct"
model, tokenizer = load_model()
pairs = balance_ab(load_pairs(ROOT / "generate" / behaviour / "generate_dataset.json")[:16])  # + swapped copies
layer = 10
vector = extract_vector(model, tokenizer, pairs, layers=[layer], batch_size=16)
test = load_ab(ROOT / "test" / behaviour / "test_dataset_ab.json")[:10]
random = vector.random_like(seed=0)  # the baseline: a random direction of the same norm

print(f"{behaviour}: {len(pairs)} training pairs, {len(test)} held-out A/B questions x 2 orders, layer {layer}")
print(f"unsteered p(matching) = {p_matching(model, tokenizer, test):.3f}")
for alpha in (-0.15, 0.15):
    options = dict(layer=layer, scale="relative")
    steered = p_matching(model, tokenizer, test, vector, alpha, **options)
    control = p_matching(model, tokenizer, test, random, alpha, **options)
    print(f"alpha {alpha:+.2f} x resid norm: CAA vector {steered:.3f}   random direction {control:.3f}")
