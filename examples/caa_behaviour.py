"""Recipe: a CAA behaviour vector (Rimsky et al.) from A/B contrast pairs, checked on the held-out A/B questions.

    .venv/bin/python examples/caa_behaviour.py [behaviour]     # default: sycophancy

The vector is the mean difference of the residual stream at the answer letter between the answer that shows
the behaviour and the one that does not. The effect is read as the probability of the matching answer letter
on the held-out questions, against a random direction of the same norm (at this model size, CAA vectors move
the A/B preference only a little: always compare with the random baseline).
"""

import sys
from pathlib import Path

import torch

from steerlab import SteeringVector, extract_vector, load_model, load_pairs, steer
from steerlab.text import apply_chat

ROOT = Path(__file__).resolve().parents[1] / "datasets" / "caa"
behaviour = sys.argv[1] if len(sys.argv) > 1 else "sycophancy"
model, tokenizer = load_model()
pairs = load_pairs(ROOT / "generate" / behaviour / "generate_dataset.json")[:200]
layer = 10
vector = extract_vector(model, tokenizer, pairs, layers=[layer], batch_size=16)
test = load_pairs(ROOT / "test" / behaviour / "test_dataset_ab.json")
noise = torch.randn(vector.fingerprint.hidden_size, generator=torch.Generator().manual_seed(0))
random = SteeringVector(
    {layer: noise / noise.norm() * vector.directions[layer].norm()},
    model_id=vector.model_id,
    fingerprint=vector.fingerprint,
)


def p_matching(vec=None, alpha=0.0) -> float:
    """Mean probability of the matching letter among the two letters, after "(" in the assistant turn."""
    total = 0.0
    for pair in test:
        ids = tokenizer(apply_chat(tokenizer, pair.prompt) + "(", return_tensors="pt", add_special_tokens=False)
        letters = [
            tokenizer(pair.positive[1:], add_special_tokens=False)["input_ids"][0],
            tokenizer(pair.negative[1:], add_special_tokens=False)["input_ids"][0],
        ]
        with torch.no_grad():
            if vec is None:
                logits = model(**ids).logits[0, -1]
            else:
                with steer(model, vec, alpha):
                    logits = model(**ids).logits[0, -1]
        total += float(torch.softmax(logits[letters], -1)[0])
    return total / len(test)


print(f"{behaviour}: {len(pairs)} training pairs, {len(test)} held-out A/B questions, layer {layer}")
print(f"unsteered p(matching) = {p_matching():.3f}")
for alpha in (-8.0, 8.0):
    steered, control = p_matching(vector, alpha), p_matching(random, alpha)
    print(f"alpha {alpha:+.0f}: CAA vector {steered:.3f}   random direction {control:.3f}")
