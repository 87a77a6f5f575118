"""Recipe: the refusal direction (Arditi et al.): extract, add it to harmless prompts, ablate it everywhere, bake
the ablation into the weights. The full measurement with judges is scripts/refusal_direction.py.

    .venv/bin/python examples/refusal.py
"""

import json
from pathlib import Path

from steerlab import ContrastPair, directional_ablation, extract_vector, generate, load_model, steer
from steerlab.bake import orthogonalize

SPLITS = Path(__file__).resolve().parents[1] / "datasets" / "refusal-direction" / "splits"


def instructions(name: str) -> list[str]:
    return [row["instruction"] for row in json.loads((SPLITS / f"{name}.json").read_text())]


model, tokenizer = load_model()
pairs = [
    ContrastPair(h, s)
    for h, s in zip(instructions("harmful_train")[:128], instructions("harmless_train")[:128], strict=True)
]
# chat=True: each instruction is a user turn; the activation is read at the last prompt token.
refusal = extract_vector(model, tokenizer, pairs, layers=[20], chat=True, batch_size=32)
prompt = [instructions("harmless_val")[0]]


def show(label: str, lm=model) -> None:
    ((_, ids),) = generate(lm, tokenizer, prompt, max_new_tokens=40)
    print(f"{label}: {tokenizer.decode(ids, skip_special_tokens=True)!r}")


show("unsteered")
with steer(model, refusal, alpha=1.0, scale="absolute"):  # the mean difference as it is (Arditi et al.)
    show("refusal direction added at layer 20")
with steer(model, directional_ablation(model, refusal)):
    show("refusal direction ablated everywhere")
ablated = orthogonalize(model, refusal)  # the same ablation, now in the weights of a copy: no hooks
show("orthogonalised weights", ablated)
