"""Recipe: a CAA behaviour vector (Rimsky et al.) from A/B contrast pairs, checked on the held-out A/B questions.

    .venv/bin/python examples/caa_behaviour.py [behaviour]     # default: survival-instinct

The vector is the mean difference of the residual stream at the answer letter between the answer that shows
the behaviour and the one that does not. The effect is read as the probability of the matching answer letter
on the held-out questions, against a random direction of the same norm (at this model size, CAA vectors move
the A/B preference only a little: always compare with the random baseline).
"""

import sys
from pathlib import Path

import torch

from steerlab import extract_vector, load_model, load_pairs, steer
from steerlab.text import apply_chat, encode, forward_kwargs, pad_batch, pad_id

ROOT = Path(__file__).resolve().parents[1] / "datasets" / "caa"
behaviour = sys.argv[1] if len(sys.argv) > 1 else "survival-instinct"
model, tokenizer = load_model()
pairs = load_pairs(ROOT / "generate" / behaviour / "generate_dataset.json")[:32]
layer = 10
vector = extract_vector(model, tokenizer, pairs, layers=[layer], batch_size=16)
test = load_pairs(ROOT / "test" / behaviour / "test_dataset_ab.json")[:20]
random = vector.random_like(seed=0)  # the baseline: a random direction of the same norm


prompts = [apply_chat(tokenizer, pair.prompt) + "(" for pair in test]
input_ids, mask = pad_batch(encode(tokenizer, prompts), pad_id(tokenizer), side="left")
letters = torch.tensor(
    [
        [
            tokenizer(p.positive[1:], add_special_tokens=False)["input_ids"][0],
            tokenizer(p.negative[1:], add_special_tokens=False)["input_ids"][0],
        ]
        for p in test
    ]
)


def p_matching(vec=None, alpha=0.0) -> float:
    """Mean probability of the matching letter among the two letters, after "(" in the assistant turn."""
    with torch.no_grad():
        if vec is None:
            logits = model(**forward_kwargs(model, input_ids, mask)).logits[:, -1]
        else:
            with steer(model, vec, alpha):
                logits = model(**forward_kwargs(model, input_ids, mask)).logits[:, -1]
    pair_logits = logits.gather(1, letters)
    return float(torch.softmax(pair_logits, -1)[:, 0].mean())


print(f"{behaviour}: {len(pairs)} training pairs, {len(test)} held-out A/B questions, layer {layer}")
print(f"unsteered p(matching) = {p_matching():.3f}")
for alpha in (-8.0, 8.0):
    steered, control = p_matching(vector, alpha), p_matching(random, alpha)
    print(f"alpha {alpha:+.0f}: CAA vector {steered:.3f}   random direction {control:.3f}")
