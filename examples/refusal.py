"""Recipe: the refusal direction (Arditi et al.): extract, add it to harmless prompts, ablate it everywhere, bake
the ablation into the weights. The full measurement with judges is scripts/refusal_direction.py.

    .venv/bin/python examples/refusal.py [--pairs 128] [--layer 20] [--max-new-tokens 40] [--data DIR]

The options make the run smaller (the tests use a few pairs and tokens); the defaults are the full recipe.
"""

import argparse
import json
from pathlib import Path

from steerlab import ContrastPair, directional_ablation, extract_vector, generate, load_model, steer
from steerlab.bake import orthogonalize

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--pairs", type=int, default=128, help="harmful/harmless training pairs")
parser.add_argument("--layer", type=int, default=20)
parser.add_argument("--max-new-tokens", type=int, default=40)
parser.add_argument(
    "--data", type=Path, default=Path(__file__).resolve().parents[1] / "datasets" / "refusal-direction" / "splits"
)
args = parser.parse_args()


def instructions(name: str) -> list[str]:
    return [row["instruction"] for row in json.loads((args.data / f"{name}.json").read_text())]


model, tokenizer = load_model()
n = args.pairs
pairs = [
    ContrastPair(h, s)
    for h, s in zip(instructions("harmful_train")[:n], instructions("harmless_train")[:n], strict=True)
]
# chat=True: each instruction is a user turn; the activation is read at the last prompt token.
refusal = extract_vector(model, tokenizer, pairs, layers=[args.layer], chat=True, batch_size=32)
prompt = [instructions("harmless_val")[0]]


def show(label: str, lm=model) -> None:
    ((_, ids),) = generate(lm, tokenizer, prompt, max_new_tokens=args.max_new_tokens)
    print(f"{label}: {tokenizer.decode(ids, skip_special_tokens=True)!r}")


show("unsteered")
with steer(model, refusal, alpha=1.0, scale="absolute"):  # the mean difference as it is (Arditi et al.)
    show(f"refusal direction added at layer {args.layer}")
with steer(model, directional_ablation(model, refusal)):
    show("refusal direction ablated everywhere")
ablated = orthogonalize(model, refusal)  # the same ablation, now in the weights of a copy: no hooks
show("orthogonalised weights", ablated)
