"""Measure what steering does on SmolLM2-135M-Instruct and write docs/results.md (+ figures in docs/figures/).

    OMP_NUM_THREADS=1 .venv/bin/python scripts/results.py        # ~15 minutes on 1 CPU thread

1. CAA behaviours: a mean_diff vector per behaviour from the first N_TRAIN pairs of its generate set; p(matching
   behaviour) on the first N_TEST held-out A/B questions (each asked in both choice orders) at CAA multipliers
   -1, 0, +1 at layer CAA_LAYER, beside a random direction of the same norm; then a small calibration sweep
   (layers CAL_LAYERS x relative strengths CAL_ALPHAS) and the best cell within the default KL budget.
2. Linear probes on true/false statements (Geometry of Truth, RepE facts): held-out accuracy by layer and a
   transfer matrix at the best layer.
3. Breakdown of large coefficients: KL, entropy, generation perplexity and norm growth as the added norm grows.

Section 1 ends with the optimised (BiPO) vectors and the prompting baseline from docs/behaviours.jsonl, which
scripts/behaviour_table.py measures (~100 min) and refreshes here on its own.
"""

from __future__ import annotations

import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "scripts"))

from behaviour_table import results_section  # noqa: E402

from steerlab import Intervention, extract_vector, load_model, load_pairs  # noqa: E402
from steerlab.datasets import balance_ab, load_statements  # noqa: E402
from steerlab.evaluate import (  # noqa: E402
    DEFAULT_KL_BUDGET,
    ABBehaviour,
    breakdown,
    calibrate,
    fit_probes,
    load_ab,
    logits_over_alphas,
    record_labelled,
    sweep,
    transfer_matrix,
)
from steerlab.evaluate.breakdown_point import DEFAULT_COLLAPSE_KL  # noqa: E402
from steerlab.evaluate.plots import breakdown_curves, probe_accuracy, sweep_heatmaps, transfer_heatmap  # noqa: E402

torch.set_num_threads(1)

BEHAVIOURS = ["coordinate-other-ais", "hallucination", "myopic-reward", "refusal", "survival-instinct", "sycophancy"]
N_TRAIN, N_TEST = 32, 12
CAA_LAYER = 13
CAL_LAYERS = [8, 13]
CAL_ALPHAS = [-0.2, -0.1, 0.0, 0.1, 0.2]
PROBE_SETS = {
    "cities": ROOT / "datasets/geometry-of-truth/cities.csv",
    "neg_cities": ROOT / "datasets/geometry-of-truth/neg_cities.csv",
    "sp_en_trans": ROOT / "datasets/geometry-of-truth/sp_en_trans.csv",
    "facts (RepE)": ROOT / "datasets/repe/facts/facts_true_false.csv",
}
N_PROBE = 400
PROBE_LAYERS = list(range(2, 30, 3))
BREAK_LAYERS = [4, 8, 13, 18, 24]
BREAK_ALPHAS = [0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 4.0]
FIGURES = ROOT / "docs" / "figures"

started = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - started:6.0f} s] {msg}", flush=True)


def save(fig, name: str) -> str:
    import matplotlib.pyplot as plt

    FIGURES.mkdir(parents=True, exist_ok=True)
    fig.savefig(FIGURES / name, dpi=90)
    plt.close(fig)
    return f"figures/{name}"


model, tokenizer = load_model("smollm2-135m")
lines: list[str] = []

# ----- 1. CAA behaviours ------------------------------------------------------------------------------------
caa_rows, cal_rows, sweeps = [], [], {}
for name in BEHAVIOURS:
    pairs = balance_ab(load_pairs(ROOT / "datasets/caa/generate" / name / "generate_dataset.json")[:N_TRAIN])
    vec = extract_vector(model, tokenizer, pairs, layers=sorted({CAA_LAYER, *CAL_LAYERS}))
    questions = load_ab(ROOT / "datasets/caa/test" / name / "test_dataset_ab.json")[:N_TEST]
    metric = ABBehaviour(tokenizer, questions)
    ids, mask = metric.input_ids, metric.attention_mask
    scores = {}
    for label, direction, alphas in (
        ("vector", vec, [-1.0, 0.0, 1.0]),
        ("random", vec.random_like(seed=0), [-1.0, 1.0]),
    ):
        template = Intervention(direction, layers=[CAA_LAYER], scale="absolute")
        for alpha, logits in logits_over_alphas(model, ids, mask, template, alphas, last_only=True, batch_size=16):
            scores[label, alpha] = metric.score(logits)
    ratio = float(vec.directions[CAA_LAYER].norm()) / vec.resid_norm[CAA_LAYER]
    caa_rows.append((name, ratio, scores))
    log(f"{name}: multipliers done (|v|/resid = {ratio:.3f})")

    table = sweep(model, tokenizer, vec, metric, layers=CAL_LAYERS, alphas=CAL_ALPHAS)  # 8 random seeds
    sweeps[name] = table
    try:
        rec = calibrate(table)
    except Exception as error:  # noqa: BLE001 - a behaviour with no cell in budget is a result, not a crash
        rec = None
        log(f"{name}: no calibrated cell ({error})")
    cal_rows.append((name, table.meta["unsteered"]["p_matching"], rec))
    log(f"{name}: calibration sweep done")

lines += [
    "## CAA behaviours: p(matching behaviour)",
    "",
    f"Vector: `mean_diff` of the residual stream at the answer letter over the first {N_TRAIN} contrast pairs of "
    "each behaviour's `generate_dataset.json` (two-choice ones only), each also with its choices swapped "
    "(`balance_ab`: the answer letters are balanced, so the vector is not partly 'letter A'). "
    f"Test: the first {N_TEST} two-choice questions of its "
    f"`test_dataset_ab.json`, each asked in both choice orders (n = {2 * N_TEST} prompts), p(matching) = "
    "probability of the matching letter among A and B after `(` in the assistant turn. Multipliers are CAA's: "
    f"alpha times the raw vector, added at every token after block {CAA_LAYER}. *random* = a random direction of "
    "the same norm at the same layer (seed 0). `|v|/resid` = the vector's norm over the layer's mean residual norm.",
    "",
    "| behaviour | \\|v\\|/resid | p(A) unsteered | p(match) -1 | p(match) 0 | p(match) +1 | random -1 | random +1 |",
    "|---|---:|---:|---:|---:|---:|---:|---:|",
]
for name, ratio, s in caa_rows:
    lines.append(
        f"| {name} | {ratio:.3f} | {s['vector', 0.0]['p_a']:.3f} | {s['vector', -1.0]['p_matching']:.3f} | "
        f"{s['vector', 0.0]['p_matching']:.3f} | {s['vector', 1.0]['p_matching']:.3f} | "
        f"{s['random', -1.0]['p_matching']:.3f} | {s['random', 1.0]['p_matching']:.3f} |"
    )
lines += [
    "",
    f"### Best calibrated setting (KL budget {DEFAULT_KL_BUDGET} nats/token)",
    "",
    f"`sweep` over layers {CAL_LAYERS} x relative strengths {CAL_ALPHAS} (fractions of the layer's residual norm), "
    f"same {2 * N_TEST} prompts, 8 random directions; KL on the 24 shipped neutral texts. `calibrate` chooses the "
    "largest increase of p(matching) within the budget on half of the questions and reports it on the other half "
    "(95% bootstrap interval); *random* = the 8 random directions at that cell (mean, sd); *found* = the held-out "
    "interval clears 0 and the random bounds (docs/measure.md).",
    "",
    "| behaviour | unsteered | layer | alpha (x resid) | held-out effect | 95% interval | random (sd) | KL | found |",
    "|---|---:|---:|---:|---:|---:|---:|---:|---|",
]
for name, base, rec in cal_rows:
    if rec is None:
        lines.append(f"| {name} | {base:.3f} | - | - | - | - | - | none within budget | no |")
        continue
    lines.append(
        f"| {name} | {base:.3f} | {rec.layer} | {rec.alpha:+g} | {rec.effect:+.3f} | "
        f"[{rec.interval[0]:+.3f}, {rec.interval[1]:+.3f}] | {rec.random_mean:+.3f} ({rec.random_sd:.3f}) | "
        f"{rec.kl:.3f} | {'yes' if rec.found else 'no setting found'} |"
    )
first = BEHAVIOURS[BEHAVIOURS.index("refusal")]
lines += ["", f"![sweep heatmaps, {first}]({save(sweep_heatmaps(sweeps[first]), 'results-sweep-refusal.png')})", ""]
lines += [*results_section(), ""]  # optimised vectors: the summary of behaviour_table.py's records

# ----- 2. Probes ---------------------------------------------------------------------------------------------
log("probes")
sets = {name: load_statements(path, limit=N_PROBE, seed=0) for name, path in PROBE_SETS.items()}
recorded = record_labelled(model, tokenizer, sets, layers=PROBE_LAYERS)  # each set once, every layer
runs = {name: fit_probes(data) for name, data in recorded.items()}
lines += [
    "## Linear probes for truth",
    "",
    f"Last token of each statement; {N_PROBE} statements per set (seeded subset), 3/4 to train and 1/4 held out "
    "(stratified, seed 0). Held-out accuracy, mass-mean / logistic:",
    "",
    "| layer | " + " | ".join(sets) + " |",
    "|---:|" + "---:|" * len(sets),
]
for layer in PROBE_LAYERS:
    cells = []
    for name in sets:
        acc = {r["method"]: r["test_accuracy"] for r in runs[name].table.where(layer=layer)}
        cells.append(f"{acc['mass_mean']:.2f} / {acc['logistic']:.2f}")
    lines.append(f"| {layer} | " + " | ".join(cells) + " |")
best = runs["cities"].best()
transfer = transfer_matrix(recorded, methods=[best.method])
lines += [
    "",
    f"Transfer at layer {best.layer} ({best.method}, the best probe on cities): rows trained on all statements of "
    "their set, columns tested on all statements of theirs (the diagonal: trained on 3/4, tested on the held-out "
    "1/4). AUROC / accuracy: AUROC does not depend on the probe's threshold, which rarely carries over between "
    f"topics. Over all probed layers, transfer (mean AUROC off the diagonal) is best at layer "
    f"{transfer.meta['best_layer']}.",
    "",
    "| trained on \\ tested on | " + " | ".join(sets) + " |",
    "|---|" + "---:|" * len(sets),
]
for src in sets:
    cells = {r["test"]: f"{r['auroc']:.2f} / {r['accuracy']:.2f}" for r in transfer.where(train=src, layer=best.layer)}
    lines.append(f"| {src} | " + " | ".join(cells[t] for t in sets) + " |")
lines += [
    "",
    f"![probe accuracy, cities]({save(probe_accuracy(runs['cities'].table), 'results-probes-cities.png')})",
    f"![probe transfer]({save(transfer_heatmap(transfer), 'results-probe-transfer.png')})",
    "",
]
log("probes done")

# ----- 3. Breakdown ------------------------------------------------------------------------------------------
pairs = balance_ab(load_pairs(ROOT / "datasets/caa/generate/refusal/generate_dataset.json")[:N_TRAIN])
vec = extract_vector(model, tokenizer, pairs, layers=BREAK_LAYERS)
table = breakdown(model, tokenizer, vec, alphas=BREAK_ALPHAS, max_new_tokens=24)
meta = table.meta
lines += [
    "## Why large coefficients break the model",
    "",
    f"The refusal CAA vector ({N_TRAIN} pairs, A/B balanced), scaled so the added norm is alpha x the layer's "
    f"natural residual norm (mean over the real tokens of the {meta['n_texts']} neutral texts, first token left "
    "out). KL and "
    f"entropy on those texts; perplexity of {meta['max_new_tokens']}-token greedy generations for "
    f"{meta['n_prompts']} neutral prompts under the unsteered model (unsteered: "
    f"{meta['unsteered_perplexity']:.2f}; unsteered entropy {meta['unsteered_entropy']:.2f} nats). Collapse = the "
    f"smallest alpha with KL > {DEFAULT_COLLAPSE_KL} nats/token.",
    "",
    "| layer | natural norm | \\|v\\|/norm | collapse at alpha | "
    + " | ".join(f"KL @ {a:g}" for a in BREAK_ALPHAS)
    + " |",
    "|---:|---:|---:|---:|" + "---:|" * len(BREAK_ALPHAS),
]
for layer in BREAK_LAYERS:
    rows = table.where(layer=layer)
    collapse = meta["collapse"][str(layer)]
    lines.append(
        f"| {layer} | {rows[0]['natural_norm']:.0f} | {rows[0]['vector_ratio']:.3f} | "
        f"{'not reached' if collapse is None else f'{collapse:g}'} | "
        + " | ".join(f"{r['kl']:.2f}" for r in rows)
        + " |"
    )
lines += [
    "",
    "Perplexity of the generations, and the residual norm at the last block's output (before the final norm) at "
    f"alpha {BREAK_ALPHAS[-1]:g}, steered / unsteered:",
    "",
    "| layer | " + " | ".join(f"ppl @ {a:g}" for a in BREAK_ALPHAS) + " | last-block norm x @ max |",
    "|---:|" + "---:|" * (len(BREAK_ALPHAS) + 1),
]
for layer in BREAK_LAYERS:
    rows = table.where(layer=layer)
    lines.append(
        f"| {layer} | "
        + " | ".join(f"{r['perplexity']:.1f}" for r in rows)
        + f" | {rows[-1]['final_norm_ratio']:.2f} |"
    )
lines += ["", f"![breakdown curves]({save(breakdown_curves(table), 'results-breakdown.png')})", ""]
log("breakdown done")

minutes = (time.perf_counter() - started) / 60
head = [
    "# Results: what steering does on SmolLM2-135M-Instruct",
    "",
    f"Generated by `scripts/results.py` in {minutes:.1f} min on {torch.get_num_threads()} CPU thread "
    f"(torch {torch.__version__}, Python {platform.python_version()}); model `smollm2-135m` (30 layers, width 576). "
    "Regenerate with `OMP_NUM_THREADS=1 .venv/bin/python scripts/results.py`. How to run such measurements yourself: "
    "[measure.md](measure.md).",
    "",
]
(ROOT / "docs" / "results.md").write_text("\n".join(head + lines) + "\n", encoding="utf-8")
log(f"wrote docs/results.md in {minutes:.1f} min")
