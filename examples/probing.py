"""Recipe: read truth out of the residual stream with linear probes (Marks & Tegmark, Geometry of Truth).

    .venv/bin/python examples/probing.py [--layers 4,8,12,16,20] [--statements 600] [--transfer 200] [--data DIR]

For each layer: a difference-of-means ("mass-mean") probe and a logistic-regression probe trained on 3/4 of the
true/false city statements and tested on the rest (steerlab.evaluate.probe_layers), then the logistic probe at the
best layer tested on another topic (Spanish-English translations) with steerlab.evaluate.transfer_matrix.
At SmolLM2's size the probes reach ~0.8 in domain and fall towards chance across topics. The options make the
run smaller (the tests use two layers and a few statements); the defaults are the full recipe.
"""

import argparse
from pathlib import Path

from steerlab import load_model
from steerlab.datasets import load_statements
from steerlab.evaluate import probe_layers, transfer_matrix

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--layers", default="4,8,12,16,20", help="layers to probe, comma-separated")
parser.add_argument("--statements", type=int, default=600, help="city statements to train and test on")
parser.add_argument("--transfer", type=int, default=200, help="translation statements to test transfer on")
parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1] / "datasets" / "geometry-of-truth")
args = parser.parse_args()
LAYERS = [int(x) for x in args.layers.split(",")]

model, tokenizer = load_model()
cities = load_statements(args.data / "cities.csv", limit=args.statements)
translations = load_statements(args.data / "sp_en_trans.csv", limit=args.transfer)
run = probe_layers(model, tokenizer, *cities, layers=LAYERS, name="cities")
print("layer  mass-mean  logistic   (held-out accuracy on cities)")
for layer in LAYERS:
    acc = {r["method"]: r["test_accuracy"] for r in run.table.where(layer=layer)}
    print(f"{layer:5d}  {acc['mass_mean']:9.3f}  {acc['logistic']:8.3f}")

best = run.best("logistic")
table = transfer_matrix(model, tokenizer, {"cities": cities, "sp_en_trans": translations}, layer=best.layer,
                        method="logistic")  # fmt: skip
transfer = table.where(train="cities", test="sp_en_trans")[0]["accuracy"]
print(f"layer {best.layer}: logistic on cities {best.test_accuracy:.3f}, logistic on sp_en_trans {transfer:.3f}")
truth = best.to_vector(model)  # the probe's direction as a SteeringVector (steer with scale="relative")
print(f"the probe as a steering vector: {truth.method} at layer {truth.layers[0]} (unit norm)")
