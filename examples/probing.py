"""Recipe: read truth out of the residual stream with linear probes (Marks & Tegmark, Geometry of Truth).

    .venv/bin/python examples/probing.py [--layers 4,8,12,16,20] [--statements 600] [--transfer 200] [--data DIR]

Both statement sets are recorded once at every layer (steerlab.evaluate.record_labelled). For each layer: a
difference-of-means ("mass-mean") probe and a logistic-regression probe trained on 3/4 of the true/false city
statements and tested on the rest (fit_probes), then probes trained on all city statements and tested on all
Spanish-English translation statements (transfer_matrix), accuracy and AUROC. At SmolLM2's size the probes reach
~0.8 in domain and fall towards chance across topics. The options make the
run smaller (the tests use two layers and a few statements); the defaults are the full recipe.
"""

import argparse
from pathlib import Path

from steerlab import load_model
from steerlab.datasets import load_statements
from steerlab.evaluate import fit_probes, record_labelled, transfer_matrix

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--layers", default="4,8,12,16,20", help="layers to probe, comma-separated")
parser.add_argument("--statements", type=int, default=600, help="city statements to train and test on")
parser.add_argument("--transfer", type=int, default=200, help="translation statements to test transfer on")
parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1] / "datasets" / "geometry-of-truth")
args = parser.parse_args()
LAYERS = [int(x) for x in args.layers.split(",")]

model, tokenizer = load_model()
sets = {
    "cities": load_statements(args.data / "cities.csv", limit=args.statements),
    "sp_en_trans": load_statements(args.data / "sp_en_trans.csv", limit=args.transfer),
}
recorded = record_labelled(model, tokenizer, sets, layers=LAYERS)  # one pass per set, every layer
run = fit_probes(recorded["cities"])
transfer = transfer_matrix(recorded, methods=["mass_mean", "logistic"])
print("held-out accuracy on cities; logistic probe trained on all cities, tested on all sp_en_trans")
print("layer  mass-mean  logistic  |  transfer accuracy  AUROC")
for layer in LAYERS:
    acc = {r["method"]: r["test_accuracy"] for r in run.table.where(layer=layer)}
    across = transfer.where(train="cities", test="sp_en_trans", layer=layer, method="logistic")[0]
    print(
        f"{layer:5d}  {acc['mass_mean']:9.3f}  {acc['logistic']:8.3f}  |  {across['accuracy']:17.3f}  "
        f"{across['auroc']:5.3f}"
    )

best = run.best("logistic")
print(f"best logistic probe on cities: layer {best.layer} ({best.test_accuracy:.3f} held out); transfers best at "
      f"layer {transfer.meta['best_layer']}")  # fmt: skip
truth = best.to_vector(model)  # the probe's direction as a SteeringVector (steer with scale="relative")
print(f"the probe as a steering vector: {truth.method} at layer {truth.layers[0]} (unit norm)")
