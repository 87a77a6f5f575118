"""Write examples/demo.ipynb (outputs stripped) from the cells below: the notebook is generated, not hand-edited.

.venv/bin/python scripts/make_demo_notebook.py
"""

import nbformat as nbf

nb = nbf.v4.new_notebook()
md, code = nbf.v4.new_markdown_cell, nbf.v4.new_code_cell


def params(source: str):
    """The parameters cell, tagged as papermill looks for it."""
    return code(source, metadata={"tags": ["parameters"]})


nb.cells = [
    md("""# steerlab: the classic steering walk-through

On the embedded model (SmolLM2-135M-Instruct, shipped on PyPI): build a sentiment vector from contrast pairs,
steer generation with it, compare against the unsteered model, and sweep the layer and the strength.
This notebook runs in CI (`tests/test_notebook.py`); the same recipe as a script is `examples/sentiment.py`."""),
    params("""# Parameters: the sizes of the walk-through, full size here. tests/test_notebook.py runs it smaller
# with a cell added after this one, as papermill does after a cell tagged "parameters".
layers = [4, 7, 10, 13, 16]  # where the vector is extracted and swept (keep 10: section 2 steers there)
n_prompts = 3  # neutral prompts per cell of the sweep
compare_tokens = 30  # tokens generated in section 2
sweep_tokens = 20  # tokens generated per cell of the sweep"""),
    code("""import torch
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from steerlab import compare, extract_vector, load_model, sentiment_pairs
from steerlab.datasets import NEUTRAL_PROMPTS

model, tokenizer = load_model()          # "smollm2-135m": 30 layers, width 576
model.config.num_hidden_layers, model.config.hidden_size"""),
    md("""## 1. A vector from contrast pairs
32 pairs that differ in sentiment (`"I love this..."` / `"I hate this..."`). The direction at each layer is the mean
difference of the residual stream at the last token (`mean_diff`, as in CAA)."""),
    code("""pairs = sentiment_pairs()
print(pairs[0])
vector = extract_vector(model, tokenizer, pairs, layers=layers, method="mean_diff")
{layer: (round(float(v.norm()), 1), round(vector.resid_norm[layer])) for layer, v in vector.directions.items()}"""),
    md("""The vector is small against the residual stream (second number: its mean norm at that layer), so strengths are
easiest to read relative to it: `scale="relative"`, `alpha=0.15` adds 15% of a typical residual norm."""),
    md("## 2. Steer and compare"),
    code("""for row in compare(model, tokenizer, ["Tell me about your weekend."], vector, alphas=[-0.15, 0.0, 0.15],
                   layers=[10], scale="relative", max_new_tokens=compare_tokens):
    for g in row.generations:
        print(f"{g.alpha:+.2f}  nll={g.nll:.2f}  {g.text}")"""),
    md("""`nll` is the mean negative log-likelihood of the text under the unsteered model: the coherence cost.

## 3. Sweep layer x strength
Sentiment of the generations (VADER compound, -1..1) and coherence cost, for every layer and strength."""),
    code("""analyzer = SentimentIntensityAnalyzer()
prompts = list(NEUTRAL_PROMPTS[:n_prompts])
alphas = [-0.3, -0.15, 0.0, 0.15, 0.3]
sentiment = torch.zeros(len(vector.layers), len(alphas))
nll = torch.zeros_like(sentiment)
for i, layer in enumerate(vector.layers):
    rows = compare(model, tokenizer, prompts, vector, alphas=alphas, layers=[layer], scale="relative",
                   max_new_tokens=sweep_tokens)
    for j, alpha in enumerate(alphas):
        gens = [g for row in rows for g in row.generations if g.alpha == alpha]
        sentiment[i, j] = sum(analyzer.polarity_scores(g.text)["compound"] for g in gens) / len(gens)
        nll[i, j] = sum(g.nll for g in gens) / len(gens)
sentiment"""),
    code("""import matplotlib.pyplot as plt

fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
panels = ((axes[0], sentiment, "sentiment (VADER)", "RdYlGn"), (axes[1], nll, "coherence cost (NLL)", "viridis"))
for ax, values, title, cmap in panels:
    im = ax.imshow(values, cmap=cmap, aspect="auto")
    ax.set_xticks(range(len(alphas)), [f"{a:+.2f}" for a in alphas])
    ax.set_yticks(range(len(vector.layers)), vector.layers)
    ax.set_xlabel("alpha (fraction of the residual norm)")
    ax.set_ylabel("layer")
    ax.set_title(title)
    fig.colorbar(im, ax=ax)
fig.tight_layout()
plt.show()"""),
    md("""Middle layers move sentiment most for the least coherence cost; strengths past about 0.3 of the residual norm
break the text. `steerlab generate --vector ... --layers 10 --scale relative --alphas -0.15,0,0.15` does step 2
from the command line."""),
]
nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
nbf.write(nb, "examples/demo.ipynb")
