"""A circuit on SmolLM2 (indirect-object identification) and the components a steering vector acts through; writes
docs/circuits.md and its figures (docs/figures/circuits-*.png).

    OMP_NUM_THREADS=1 .venv/bin/python scripts/circuits.py                       # 35 min (1 thread, busy 2-core box)
    OMP_NUM_THREADS=1 .venv/bin/python scripts/circuits.py --small --out /tmp/c  # a quick look (~7 minutes)

1. IOI: the logit difference logit(IO) - logit(S) SmolLM2-135M-Instruct reaches on our IOI prompts
   (`steerlab.datasets.ioi_pairs`: 8 templates, one-token names), and on the ABC-corrupted ones.
2. The circuit on one template: activation patching of the residual stream per layer x position (from the repeated
   name S2 to the end), then of every attention head at the last position; attribution patching of the same cells
   and its error; the top heads patched together (sufficiency) or ablated together (necessity) beside random heads.
3. Steering through components: the sentiment vector (steerlab's 32 sentiment pairs) and the refusal CAA vector
   (datasets/caa), each against a random direction of the same norm: each later attention and MLP output's share of
   the effect (`steerlab.evaluate.mediation`), heads in the attention layers that carry most, and the effect when the
   steering acts only through the top nodes, or is removed only there (`patch_nodes`), beside as many random nodes.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from steerlab import Intervention, extract_vector, load_model, load_pairs, sentiment_pairs, steer  # noqa: E402
from steerlab.datasets import IOI_TEMPLATES, balance_ab, ioi_pairs  # noqa: E402
from steerlab.engines import apply_chat, encode, pad_batch, pad_id  # noqa: E402
from steerlab.evaluate import (  # noqa: E402
    activation_patching,
    attribution_patching,
    load_ab,
    logit_diff_metric,
    mediation,
    patch_nodes,
    patching_error,
)
from steerlab.evaluate.metrics import swap_choices  # noqa: E402
from steerlab.evaluate.plots import patching_heatmaps  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CAA = ROOT / "datasets" / "caa"
# Prompts whose next word is naturally an evaluation (we wrote them): the sentiment metric reads that word.
SLOT_PROMPTS = (
    "Overall, I would say my day was", "The food at the new restaurant was", "My week at the new job has been",
    "The weather this morning felt", "To be honest, the movie was", "Our trip to the coast turned out",
    "The service at the hotel was", "I finished the book last night, and it was", "The concert yesterday was",
    "Moving to this city has been", "The meeting this afternoon was", "My new phone is",
    "The party on Saturday was", "Learning to cook has been", "The neighbours next door are", "This winter has been",
)  # fmt: skip
POSITIVE = (" great", " good", " wonderful", " happy", " lovely")
NEGATIVE = (" terrible", " bad", " awful", " sad", " horrible")


def token_ids(tok, words) -> list[int]:
    ids = [tok(w, add_special_tokens=False)["input_ids"] for w in words]
    assert all(len(i) == 1 for i in ids), words  # our own word lists, checked once here
    return [i[0] for i in ids]


def mean_logit_diff(pos: list[int], neg: list[int]):
    def metric(logits: torch.Tensor) -> torch.Tensor:
        last = logits[:, -1]
        return last[:, pos].mean(-1) - last[:, neg].mean(-1)

    metric.__name__ = "mean logit(positive words) - mean logit(negative words)"
    return metric


def metric_values(model, tok, prompts, metric, interventions=None, batch_size=16) -> torch.Tensor:
    """The metric of every prompt (optionally steered), in batches."""
    out = []
    for start in range(0, len(prompts), batch_size):
        ids, mask = pad_batch(encode(tok, prompts[start : start + batch_size]), pad_id(tok), side="left")
        pairs = torch.arange(start, start + ids.shape[0])
        with torch.no_grad():
            if interventions is None:
                logits = model(input_ids=ids, attention_mask=mask).logits.float()
            else:
                with steer(model, interventions):
                    logits = model(input_ids=ids, attention_mask=mask).logits.float()
        out.append(metric(logits, pairs).double())
    return torch.cat(out)


def table_md(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---:|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# -- 1-2: IOI --------------------------------------------------------------------------------------------------


def ioi_section(model, tok, args, figures: Path) -> tuple[str, dict]:
    began = time.perf_counter()
    pairs = ioi_pairs(args.ioi_eval, tokenizer=tok, seed=0)
    metric = logit_diff_metric(tok, [p.correct for p in pairs], [p.wrong for p in pairs])
    clean = metric_values(model, tok, [p.clean for p in pairs], metric)
    corrupt = metric_values(model, tok, [p.corrupted for p in pairs], metric)
    rows = []
    for t, template in enumerate(IOI_TEMPLATES):
        c, r = clean[t :: len(IOI_TEMPLATES)], corrupt[t :: len(IOI_TEMPLATES)]
        rows.append([f"`{template}`", len(c), f"{c.mean():+.2f}", f"{(c > 0).double().mean():.2f}", f"{r.mean():+.2f}"])
    rows.append(["**all**", len(clean), f"**{clean.mean():+.2f}** (sd {clean.std():.2f})",
                 f"**{(clean > 0).double().mean():.2f}**", f"{corrupt.mean():+.2f}"])  # fmt: skip
    eval_table = table_md(["template", "n", "logit(IO) - logit(S), clean", "fraction > 0", "ABC-corrupted"], rows)

    # The circuit, on template 0 (all prompts of one length, so positions line up).
    circ = ioi_pairs(args.ioi_circuit, templates=IOI_TEMPLATES[:1], tokenizer=tok, seed=1)
    cm = logit_diff_metric(tok, [p.correct for p in circ], [p.wrong for p in circ])
    cl, co = [p.clean for p in circ], [p.corrupted for p in circ]
    first, first_corrupted = encode(tok, [cl[0], co[0]])
    length = len(first)
    s2 = next(i for i, (a, b) in enumerate(zip(first, first_corrupted, strict=True)) if a != b)
    spots = list(range(s2, length))
    layers = list(range(model.config.num_hidden_layers))
    resid = activation_patching(model, tok, cl, co, cm, layers=layers, positions=spots, batch_size=32)
    resid_attr = attribution_patching(model, tok, cl, co, cm, layers=layers, positions=spots)
    resid_error = patching_error(resid, resid_attr)
    for name, table in (("resid", resid), ("resid-attribution", resid_attr)):
        fig = patching_heatmaps(table)
        title = (f"IOI (template 0), resid_post, {table.meta['method']} patching; n = {len(circ)} pairs, "
                 f"layers 0-{layers[-1]},\npositions S2..end (before S2 nothing differs: 0)")  # fmt: skip
        fig.suptitle(title, fontsize=9)
        fig.savefig(figures / f"circuits-ioi-{name}.png", dpi=110)
        plt.close(fig)
    heads = activation_patching(model, tok, cl, co, cm, layers=layers, sites=["head"], positions=[-1], batch_size=32)
    heads_attr = attribution_patching(model, tok, cl, co, cm, layers=layers, sites=["head"], positions=[-1])
    heads_error = patching_error(heads, heads_attr)
    n_heads = len(heads.meta["heads"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 6))
    for ax, table in zip(axes, (heads, heads_attr), strict=True):
        grid = np.zeros((len(layers), n_heads))
        for r in table.records:
            grid[r["layer"], r["head"]] = r["recovery"]
        lim = max(0.05, float(np.abs(grid).max()))
        image = ax.imshow(grid, origin="lower", aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_title(f"{table.meta['method']} patching")
        fig.colorbar(image, ax=ax, label="recovery")
    fig.suptitle(f"IOI (template 0): each head's output at the last position, clean into ABC-corrupted; "
                 f"n = {len(circ)} pairs, layers 0-{layers[-1]}", fontsize=9)  # fmt: skip
    fig.tight_layout()
    fig.savefig(figures / "circuits-ioi-heads.png", dpi=110)
    plt.close(fig)

    ranked = sorted(heads.records, key=lambda r: -r["recovery"])

    def head_row(r: dict, note: str = "") -> list[str]:
        estimate = heads_attr.where(layer=r["layer"], head=r["head"])[0]["recovery"]
        return [f"{r['layer']}.{r['head']}{note}", f"{r['recovery']:+.3f}", f"{estimate:+.3f}"]

    top_rows = [head_row(r) for r in ranked[:10]]
    top_rows += [head_row(r, " (most negative)") for r in sorted(heads.records, key=lambda r: r["recovery"])[:3]]
    top_table = table_md(["head (layer.head)", "activation patching", "attribution patching"], top_rows)

    # Sufficiency and necessity of the top heads, beside random heads (several draws).
    everyone = [(r["layer"], "head", r["head"]) for r in heads.records]
    rng = random.Random(0)
    circuit_rows = []
    facts: dict = {"n": len(clean), "clean": float(clean.mean()), "right": float((clean > 0).double().mean()),
                   "corrupted": float(corrupt.mean()), "n_circuit": len(circ), "resid_error": resid_error,
                   "heads_error": heads_error, "top": [f"{r['layer']}.{r['head']}" for r in ranked[:3]],
                   "prompts": cl, "metric": cm}  # fmt: skip
    for k in args.ks:
        nodes = [(r["layer"], "head", r["head"]) for r in ranked[:k]]
        suff = patch_nodes(model, tok, cl, co, cm, nodes, batch_size=32)["recovery"]
        # Necessity: the corrupted values of the nodes written into the clean run (clean and corrupted exchanged):
        # the share of the clean-corrupted difference that goes with them.
        nec = patch_nodes(model, tok, co, cl, cm, nodes, batch_size=32)["recovery"]
        draws = [rng.sample(everyone, k) for _ in range(args.random_draws)]
        rs = [patch_nodes(model, tok, cl, co, cm, d, batch_size=32)["recovery"] for d in draws]
        rn = [patch_nodes(model, tok, co, cl, cm, d, batch_size=32)["recovery"] for d in draws]
        facts.update(k=k, nodes=nodes, suff=suff, nec=nec, suff_random=statistics.mean(rs),
                     nec_random=statistics.mean(rn))  # fmt: skip
        circuit_rows.append([k, f"{suff:+.3f}", f"{statistics.mean(rs):+.3f} (max {max(rs):+.3f})",
                             f"{nec:+.3f}", f"{statistics.mean(rn):+.3f} (max {max(rn):+.3f})"])  # fmt: skip
    circuit_table = table_md(
        ["k heads", "top-k patched in (sufficiency)", f"k random heads ({args.random_draws} draws: mean)",
         "top-k corrupted in clean run (necessity)", f"k random heads ({args.random_draws} draws: mean)"],
        circuit_rows,
    )  # fmt: skip
    minutes = (time.perf_counter() - began) / 60
    tokens = [tok.decode([i]) for i in encode(tok, [cl[0]])[0]]
    text = f"""## Indirect-object identification on SmolLM2

Prompts from `steerlab.datasets.ioi_pairs` (8 templates and 34 one-token first names that we wrote; both name
orders): `When Mary and John went to the store, John gave a drink to` -> ` Mary`. The metric is
logit(IO) - logit(S) at the last position. ABC corruption replaces the repeated name (S2) by a third name, which
leaves the model no way to tell IO from S.

{eval_table}

SmolLM2-135M-Instruct does IOI: mean logit difference {clean.mean():+.2f} over n = {len(clean)} prompts, the
right name preferred on {(clean > 0).double().mean():.0%} of them; {corrupt.mean():+.2f} on the ABC-corrupted prompts.

### Where the answer lives: residual stream (n = {len(circ)} pairs of template 0, layers 0-{layers[-1]})

Activation patching of `resid_post`, one layer and position at a time, clean into ABC-corrupted, at positions
{s2} (S2, the repeated name `{tokens[s2]}`) to {length - 1} (the last token `{tokens[-1]}`); before S2 the two runs are
identical, so nothing there can recover anything (exactly 0). Recovery 1 = the clean logit difference
({resid.meta["clean_metric"]:+.2f}) restored from the corrupted one ({resid.meta["corrupted_metric"]:+.2f}).

![resid_post patching](figures/circuits-ioi-resid.png)

Attribution patching of the same {resid_error["cells"]} cells (one forward and backward pass):
mean |error| {resid_error["mean_abs"]:.3f}, max {resid_error["max_abs"]:.3f}, correlation
{resid_error["correlation"]:.3f} with activation patching.

![resid_post attribution patching](figures/circuits-ioi-resid-attribution.png)

### Which heads (n = {len(circ)} pairs, layers 0-{layers[-1]}, {n_heads} heads each)

Every head's output (the input of the attention output projection, its slice) at the last position, patched alone.

![heads](figures/circuits-ioi-heads.png)

{top_table}

Attribution vs activation patching over these {heads_error["cells"]} head cells: mean |error|
{heads_error["mean_abs"]:.3f}, max {heads_error["max_abs"]:.3f}, correlation {heads_error["correlation"]:.3f}.

The top k heads by activation patching, patched together (`patch_nodes`, every position of each head), beside k
heads drawn at random from all {len(everyone)} (the control). Sufficiency: clean head outputs into the corrupted run
(share of the logit difference restored). Necessity: corrupted head outputs into the clean run (share lost).

{circuit_table}

(section: {minutes:.1f} minutes)
"""
    return text, facts


# -- 3: steering through components ---------------------------------------------------------------------------


def steering_section(model, tok, args, figures: Path, ioi: dict) -> tuple[str, list[dict]]:
    began = time.perf_counter()
    n_layers = model.config.num_hidden_layers
    sent_metric = mean_logit_diff(token_ids(tok, POSITIVE), token_ids(tok, NEGATIVE))
    sent_vec = extract_vector(model, tok, sentiment_pairs(), layers=[args.sentiment_layer])
    questions = load_ab(CAA / "test" / "refusal" / "test_dataset_ab.json")[: args.caa_questions]
    asked = [q for orig in questions for q in (orig, swap_choices(orig))]
    caa_prompts = [apply_chat(tok, q.question) + "(" for q in asked]
    caa_metric = logit_diff_metric(tok, [q.matching for q in asked], [q.not_matching for q in asked])
    caa_pairs = balance_ab(load_pairs(CAA / "generate" / "refusal" / "generate_dataset.json")[: args.caa_pairs])
    caa_vec = extract_vector(model, tok, caa_pairs, layers=[args.caa_layer])
    cases = [
        ("sentiment", sent_vec, args.sentiment_layer, args.sentiment_alpha, list(SLOT_PROMPTS[: args.steer_prompts]),
         sent_metric, "mean logit of 5 positive minus 5 negative words, next token", args.steer_batch),
        ("refusal (CAA)", caa_vec, args.caa_layer, args.caa_alpha, caa_prompts, caa_metric,
         "logit of the refusal answer's letter minus the other's (A/B, both orders)", args.caa_batch),
    ]  # fmt: skip
    parts, found = [], []
    for name, vec, layer, alpha, prompts, metric, metric_text, batch in cases:
        steering = Intervention(vec, alpha=alpha, layers=[layer])
        control = Intervention(vec.random_like(seed=0), alpha=alpha, layers=[layer])
        later = list(range(layer + 1, n_layers))
        med = mediation(model, tok, prompts, steering, metric, layers=later, batch_size=batch)
        med_random = mediation(model, tok, prompts, control, metric, layers=later, batch_size=batch)
        total = med.meta["clean_metric"] - med.meta["corrupted_metric"]
        total_random = med_random.meta["clean_metric"] - med_random.meta["corrupted_metric"]
        slug = name.split()[0]
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
        panels = (
            (axes[0], med, "the vector", total),
            (axes[1], med_random, "random direction, same norm", total_random),
        )
        for ax, table, label, effect in panels:
            for offset, site in ((-0.2, "attn_out"), (0.2, "mlp_out")):
                rows = table.where(site=site)
                ax.bar([r["layer"] + offset for r in rows], [r["recovery"] * effect for r in rows], width=0.4,
                       label=site)  # fmt: skip
            ax.axhline(effect, ls="--", c="k", lw=0.8, label="whole effect")
            ax.set_xlabel("layer")
            ax.set_title(f"{label}: whole effect {effect:+.2f}", fontsize=9)
        axes[0].set_ylabel("effect carried (metric units)")
        axes[0].legend(fontsize=8)
        title = (f"{name} steering at layer {layer}, alpha {alpha:g} (relative): each later attention / MLP "
                 f"output's steered value patched into the unsteered run; n = {len(prompts)} prompts")  # fmt: skip
        fig.suptitle(title, fontsize=9)
        fig.tight_layout()
        fig.savefig(figures / f"circuits-mediation-{slug}.png", dpi=110)
        plt.close(fig)

        ranked = sorted(med.records, key=lambda r: -r["recovery"])
        attn_layers = [r["layer"] for r in sorted(med.where(site="attn_out"), key=lambda r: -r["recovery"])]
        head_layers = sorted(attn_layers[: args.head_layers])
        heads = mediation(model, tok, prompts, steering, metric, layers=head_layers, sites=["head"], batch_size=batch)
        head_rank = sorted(heads.records, key=lambda r: -r["recovery"])
        top_rows = [[f"{r['layer']} {r['site']}", f"{r['recovery']:+.3f}",
                     f"{med_random.where(layer=r['layer'], site=r['site'])[0]['recovery'] * total_random:+.3f}"]
                    for r in ranked[:8]]  # fmt: skip
        head_rows = [[f"{r['layer']}.{r['head']}", f"{r['recovery']:+.3f}"] for r in head_rank[:6]]

        nodes_all = [(r["layer"], r["site"]) for r in med.records]
        rng = random.Random(1)
        node_rows = []
        for k in args.ks:
            top = [(r["layer"], r["site"]) for r in ranked[:k]]
            only = patch_nodes(model, tok, prompts, prompts, metric, top, clean_steering=steering, batch_size=batch)
            gone = patch_nodes(model, tok, prompts, prompts, metric, top, corrupted_steering=steering,
                               batch_size=batch)  # fmt: skip
            ctrl = patch_nodes(model, tok, prompts, prompts, metric, top, clean_steering=control, batch_size=batch)
            draws = [rng.sample(nodes_all, k) for _ in range(args.random_draws)]
            r_only = [patch_nodes(model, tok, prompts, prompts, metric, d, clean_steering=steering,
                                  batch_size=batch)["recovery"] for d in draws]  # fmt: skip
            r_gone = [patch_nodes(model, tok, prompts, prompts, metric, d, corrupted_steering=steering,
                                  batch_size=batch)["recovery"] for d in draws]  # fmt: skip
            node_rows.append([
                k, ", ".join(f"{a}{'a' if s == 'attn_out' else 'm'}" for a, s in top),
                f"{only['recovery']:+.3f} ({only['patched_metric'] - only['corrupted_metric']:+.2f})",
                f"{statistics.mean(r_only):+.3f}",
                f"{gone['recovery']:+.3f}", f"{statistics.mean(r_gone):+.3f}",
                f"{ctrl['patched_metric'] - ctrl['corrupted_metric']:+.2f}",
            ])  # fmt: skip
        node_table = table_md(
            ["k", "top-k nodes (layer, a = attention, m = MLP)", "steer only through them: share (effect)",
             f"k random nodes ({args.random_draws} draws: mean share)", "steering removed only there: share removed",
             "k random nodes: share removed", "random direction through the top-k: effect"],
            node_rows,
        )  # fmt: skip
        # The IOI circuit's heads (those after the steered layer) as the only route, beside as many random heads of
        # the same layers; and what the steering does to IOI itself (the circuit's own metric), beside the control.
        circuit = [node for node in ioi["nodes"] if node[0] > layer]
        n_heads = model.config.num_attention_heads
        later_heads = [(a, "head", h) for a in later for h in range(n_heads)]
        via = patch_nodes(model, tok, prompts, prompts, metric, circuit, clean_steering=steering,
                          batch_size=batch)["recovery"] if circuit else float("nan")  # fmt: skip
        via_random = [patch_nodes(model, tok, prompts, prompts, metric, rng.sample(later_heads, len(circuit)),
                                  clean_steering=steering, batch_size=batch)["recovery"]
                      for _ in range(args.random_draws)] if circuit else [float("nan")]  # fmt: skip
        ioi_plain = float(metric_values(model, tok, ioi["prompts"], ioi["metric"]).mean())
        ioi_steered = float(metric_values(model, tok, ioi["prompts"], ioi["metric"], steering).mean())
        ioi_control = float(metric_values(model, tok, ioi["prompts"], ioi["metric"], control).mean())
        ioi_table = table_md(
            ["IOI circuit heads after layer " + str(layer), "steer only through them: share",
             f"as many random heads of layers {later[0]}-{later[-1]} ({args.random_draws} draws: mean)",
             "IOI logit diff: unsteered", "steered everywhere", "random direction"],
            [[", ".join(f"{a}.{h}" for a, _, h in circuit) or "none", f"{via:+.3f}",
              f"{statistics.mean(via_random):+.3f}", f"{ioi_plain:+.2f}", f"{ioi_steered:+.2f}",
              f"{ioi_control:+.2f}"]],
        )  # fmt: skip
        found.append({"name": name, "layer": layer, "alpha": alpha, "n": len(prompts), "total": total,
                      "total_random": total_random, "top": [f"{a} {s}" for a, s in top], "only": only["recovery"],
                      "only_random": statistics.mean(r_only), "gone": gone["recovery"],
                      "gone_random": statistics.mean(r_gone), "k": k, "via": via,
                      "via_random": statistics.mean(via_random), "ioi": (ioi_plain, ioi_steered, ioi_control),
                      "heads": [f"{r['layer']}.{r['head']}" for r in head_rank[:3]]})  # fmt: skip
        shares_attn = sum(r["recovery"] for r in med.where(site="attn_out"))
        shares_mlp = sum(r["recovery"] for r in med.where(site="mlp_out"))
        parts.append(f"""### {name}: steering at layer {layer}, alpha {alpha:g} (n = {len(prompts)} prompts)

Metric: {metric_text}. Unsteered {med.meta["corrupted_metric"]:+.3f}, steered {med.meta["clean_metric"]:+.3f}:
whole effect **{total:+.3f}**; a random direction of the same norm at the same layer and alpha (the control):
**{total_random:+.3f}**. Shares summed over layers {later[0]}-{later[-1]}: attention {shares_attn:+.2f}, MLPs
{shares_mlp:+.2f} (each alone, so they need not add up to 1; the rest goes directly through the residual stream or in
interactions).

![mediation, {name}](figures/circuits-mediation-{slug}.png)

Components that carry most (share of the vector's effect; beside it, what the same component carries of the random
direction's effect, in metric units):

{table_md(["component", "share of the effect", "random direction: effect carried"], top_rows)}

Heads of the attention layers that carry most (layers {head_layers}), each head alone:

{table_md(["head (layer.head)", "share of the effect"], head_rows)}

Steering at the top nodes only vs everywhere (everywhere = share 1):

{node_table}

The IOI circuit's top {ioi["k"]} heads (above) as the steering's only route, and the steering's effect on IOI
(n = {len(ioi["prompts"])} IOI prompts of template 0):

{ioi_table}
""")
    minutes = (time.perf_counter() - began) / 60
    return (
        found,
        f"""## Steering through components

The sentiment vector (difference of means of steerlab's 32 sentiment pairs) on {args.steer_prompts} prompts we
wrote whose next word is an evaluation (`The food at the new restaurant was`), and the refusal CAA vector (difference
of means over {args.caa_pairs} A/B pairs of datasets/caa/generate/refusal, answer letters balanced) on
{args.caa_questions} refusal A/B test questions asked in both orders. For each component after the steered layer,
`mediation` runs the prompts unsteered with that component's output (every position) replaced by its steered value:
its share of the effect. The control everywhere is a random direction of the same norm (`random_like(seed=0)`) at the
same layer and strength, and, for node sets, as many nodes drawn at random from the same components.

{chr(10).join(parts)}
(section: {minutes:.1f} minutes)
""",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ioi-eval", type=int, default=96, help="IOI prompts for the logit difference")
    parser.add_argument("--ioi-circuit", type=int, default=12, help="pairs of template 0 for the circuit")
    parser.add_argument("--ks", type=int, nargs="+", default=[3, 6], help="node counts for circuit / node steering")
    parser.add_argument("--random-draws", type=int, default=3)
    parser.add_argument("--sentiment-layer", type=int, default=10)
    parser.add_argument("--sentiment-alpha", type=float, default=0.15)
    parser.add_argument("--steer-prompts", type=int, default=12)
    parser.add_argument("--steer-batch", type=int, default=32)
    parser.add_argument("--caa-layer", type=int, default=13)
    parser.add_argument("--caa-alpha", type=float, default=0.2)
    parser.add_argument("--caa-pairs", type=int, default=32)
    parser.add_argument("--caa-questions", type=int, default=4)
    parser.add_argument("--caa-batch", type=int, default=12)
    parser.add_argument("--head-layers", type=int, default=2, help="attention layers whose heads are split")
    parser.add_argument("--small", action="store_true", help="a quick look: few prompts and layers")
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    args = parser.parse_args()
    if args.small:
        args.ioi_eval, args.ioi_circuit, args.ks, args.random_draws = 16, 4, [3], 1
        args.steer_prompts, args.caa_questions, args.caa_pairs, args.head_layers = 4, 2, 8, 1
    torch.set_num_threads(1)
    began = time.perf_counter()
    model, tok = load_model()
    figures = args.out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    ioi_text, ioi = ioi_section(model, tok, args, figures)
    print(ioi_text, flush=True)
    found, steer_text = steering_section(model, tok, args, figures, ioi)
    print(steer_text, flush=True)
    summary = [
        f"- SmolLM2-135M-Instruct does IOI: logit(IO) - logit(S) {ioi['clean']:+.2f} on average over n = {ioi['n']} "
        f"prompts of 8 templates, the right name preferred on {ioi['right']:.0%}; {ioi['corrupted']:+.2f} when the "
        "repeated name is replaced (ABC).",
        f"- Its circuit (n = {ioi['n_circuit']} pairs): the heads whose output at the last position restores most "
        f"are {', '.join(ioi['top'])}; the top {ioi['k']} heads together restore {ioi['suff']:+.2f} of the logit "
        f"difference (random heads: {ioi['suff_random']:+.2f}) and take away {ioi['nec']:+.2f} of it when corrupted "
        f"(random heads: {ioi['nec_random']:+.2f}).",
        f"- Attribution patching vs activation patching: resid_post cells correlation "
        f"{ioi['resid_error']['correlation']:.2f} (mean |error| {ioi['resid_error']['mean_abs']:.3f}, max "
        f"{ioi['resid_error']['max_abs']:.2f}); head cells at the last position correlation "
        f"{ioi['heads_error']['correlation']:.3f} (mean |error| {ioi['heads_error']['mean_abs']:.3f}, max "
        f"{ioi['heads_error']['max_abs']:.2f}).",
    ]
    for f in found:
        summary.append(
            f"- {f['name']} (layer {f['layer']}, alpha {f['alpha']:g}, n = {f['n']}): whole effect {f['total']:+.2f} "
            f"(random direction of the same norm: {f['total_random']:+.2f}). Its top {f['k']} nodes "
            f"({', '.join(f['top'])}) alone carry {f['only']:+.2f} of it ({f['k']} random nodes: "
            f"{f['only_random']:+.2f}); removing the steering only there removes {f['gone']:+.2f} (random nodes: "
            f"{f['gone_random']:+.2f}). Top heads of the split layers: {', '.join(f['heads'])}. Through the IOI "
            f"circuit's heads only: {f['via']:+.2f} (as many random later heads: {f['via_random']:+.2f}); IOI logit "
            f"difference unsteered {f['ioi'][0]:+.2f}, steered {f['ioi'][1]:+.2f}, random direction {f['ioi'][2]:+.2f}."
        )
    minutes = (time.perf_counter() - began) / 60
    page = f"""# Circuits: IOI on SmolLM2 and the components a steering vector acts through

Generated by `scripts/circuits.py` ({minutes:.0f} minutes on 1 CPU thread, SmolLM2-135M-Instruct, float32); rerun
it to regenerate this page and its figures. Tools: `steerlab.evaluate.activation_patching`,
`attribution_patching`, `patching_error`, `mediation`, `patch_nodes` (docs/measure.md), and `steerlab patch` on the
command line. Every number is a mean over the n prompts stated; recovery and share are ratios of those means.

## Summary

{chr(10).join(summary)}

{ioi_text}
{steer_text}"""
    (args.out / "circuits.md").write_text(page)


if __name__ == "__main__":
    main()
