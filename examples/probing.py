"""Recipe: read truth out of the residual stream with linear probes (Marks & Tegmark, Geometry of Truth).

    .venv/bin/python examples/probing.py

For each layer: a difference-of-means ("mass-mean") probe and a logistic-regression probe trained on 3/4 of the
true/false city statements and tested on the rest, then tested on another topic (Spanish-English translations).
At SmolLM2's size the probes reach ~0.8 in domain and fall towards chance across topics.
"""

import csv
import random
from pathlib import Path

import torch
from sklearn.linear_model import LogisticRegression

from steerlab import load_model, record

DATA = Path(__file__).resolve().parents[1] / "datasets" / "geometry-of-truth"
LAYERS = [4, 8, 12, 16, 20]


def statements(name: str, n: int) -> tuple[list[str], torch.Tensor]:
    rows = list(csv.DictReader((DATA / name).open()))
    random.Random(0).shuffle(rows)
    rows = rows[:n]
    return [r["statement"] for r in rows], torch.tensor([int(r["label"]) for r in rows])


model, tokenizer = load_model()
texts, labels = statements("cities.csv", 600)
other_texts, other_labels = statements("sp_en_trans.csv", 200)
acts = record(model, tokenizer, texts, layers=LAYERS, batch_size=32)  # last token of each statement
other = record(model, tokenizer, other_texts, layers=LAYERS, batch_size=32)
cut = 450
print("layer  mass-mean  logistic  logistic on sp_en_trans")
for layer in LAYERS:
    x, y = acts.values[layer], labels
    direction = x[:cut][y[:cut] == 1].mean(0) - x[:cut][y[:cut] == 0].mean(0)
    midpoint = (x[:cut] @ direction).median()
    mass_mean = float((((x[cut:] @ direction) > midpoint).long() == y[cut:]).float().mean())
    probe = LogisticRegression(max_iter=2000, C=0.1).fit(x[:cut].numpy(), y[:cut].numpy())
    logistic = probe.score(x[cut:].numpy(), y[cut:].numpy())
    transfer = probe.score(other.values[layer].numpy(), other_labels.numpy())
    print(f"{layer:5d}  {mass_mean:9.3f}  {logistic:8.3f}  {transfer:8.3f}")
