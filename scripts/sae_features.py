"""Train an SAE on SmolLM2's residual stream from the shipped text data, and read the sentiment and refusal vectors in
its features; writes docs/understand.md (the SAE section) and saves the SAE under saes/ (not committed).

    OMP_NUM_THREADS=1 .venv/bin/python scripts/sae_features.py                    # ~30 minutes on 1 CPU thread
    OMP_NUM_THREADS=1 .venv/bin/python scripts/sae_features.py --texts 600 --epochs 1 --out /tmp/check   # a quick look
    OMP_NUM_THREADS=1 .venv/bin/python scripts/sae_features.py --reuse     # the SAE saved by an earlier run (~15 min)

No SAE for SmolLM2 can be downloaded here, so one is trained with sae-lens's trainer (TopK) on the outputs of block
LAYER for: the refusal-direction training instructions, harmless and harmful, in the chat template (as the model reads
them when asked); the Geometry of Truth and RepE true/false statements; steerlab's neutral texts and sentiment
sentences. The sentiment vector (difference of means of steerlab's 32 sentiment pairs) and the refusal direction
(harmful minus harmless instructions, last prompt token) are then decomposed into the SAE's features by cosine, each
top feature shown with the shipped texts where it fires most. The SAE's quality is measured again on held-out texts
(the refusal validation splits and statements left out of training). Last, SAE-targeted steering (SAE-TS): the effect
of random pushes at an earlier layer on the SAE's features is fitted, a vector is solved for each of two features, and
each is compared at one strength with the feature's decoder row and a random direction, on texts the fit never saw.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import torch

from steerlab import ContrastPair, Intervention, SteeringVector, extract_vector, load_model, sentiment_pairs
from steerlab.datasets import load_instructions, load_statements
from steerlab.engines import apply_chat
from steerlab.evaluate import feature_effect, feature_effects, kl_from_unsteered, neutral_texts
from steerlab.evaluate.sae import SparseAutoencoder, train_sae

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "datasets"


def training_texts(tok, limit: int) -> dict[str, list[str]]:
    """The shipped texts by source, each source cut to ``limit`` (a seeded sample where it is larger)."""
    rng = random.Random(0)

    def sample(items: list[str]) -> list[str]:
        return rng.sample(items, limit) if len(items) > limit else items

    splits = DATA / "refusal-direction" / "splits"
    statements = [load_statements(path)[0] for path in (DATA / "geometry-of-truth").glob("*.csv")]
    statements.append(load_statements(DATA / "repe" / "facts" / "facts_true_false.csv")[0])
    sentences = [s for pair in sentiment_pairs() for s in (pair.positive, pair.negative)]
    harmless, harmful = (load_instructions(splits / f"{kind}_train.json") for kind in ("harmless", "harmful"))
    return {
        "harmless instructions (chat)": [apply_chat(tok, t) for t in sample(harmless)],
        "harmful instructions (chat)": [apply_chat(tok, t) for t in sample(harmful)],
        "true/false statements": sample([s for group in statements for s in group]),
        "neutral and sentiment sentences": neutral_texts() + sentences,
    }  # fmt: skip


def held_out_texts(tok, training: dict[str, list[str]], limit: int) -> dict[str, list[str]]:
    """Texts of the same kinds that training never saw: the refusal validation splits (in the chat template) and
    statements outside the training sample."""
    rng = random.Random(2)
    splits = DATA / "refusal-direction" / "splits"
    seen = set(training["true/false statements"])
    statements = [load_statements(path)[0] for path in (DATA / "geometry-of-truth").glob("*.csv")]
    statements.append(load_statements(DATA / "repe" / "facts" / "facts_true_false.csv")[0])
    unseen = sorted({s for group in statements for s in group} - seen)
    return {
        "harmless instructions, validation (chat)": [apply_chat(tok, t) for t in
                                                      load_instructions(splits / "harmless_val.json")[:limit]],
        "harmful instructions, validation (chat)": [apply_chat(tok, t) for t in
                                                     load_instructions(splits / "harmful_val.json")[:limit]],
        "statements not trained on": rng.sample(unseen, min(limit, len(unseen))),
    }  # fmt: skip


def targeting_rows(model, tok, sae, effects, features, fit_texts, test_texts, alpha):
    """Per targeted feature: the SAE-TS vector, the decoder row (at the targeting layer and at the SAE's own) and a
    random direction, each steered at ``alpha``: the target's change on ``test_texts``, the norm of every other
    feature's change, their ratio, and KL from the unsteered model on ``fit_texts`` (the neutral texts)."""
    layer = effects.layer
    rows = []
    for feature in features:
        targeted = effects.targeted_vector([feature])
        decoder = sae.directions()[feature]
        row_here = SteeringVector({layer: decoder / decoder.norm()}, model_id=sae.model_id,
                                  fingerprint=sae.fingerprint, method="sae_feature", normalized=True,
                                  resid_norm={layer: effects.resid_norm})  # fmt: skip
        arms = {
            f"SAE-TS, layer {layer}": (targeted, layer),
            f"decoder row, layer {layer}": (row_here, layer),
            f"decoder row, layer {sae.layer} (the SAE's)": (sae.feature_vector(feature), sae.layer),
            f"random direction, layer {layer}": (targeted.random_like(seed=feature), layer),
        }
        for name, (vector, at) in arms.items():
            effect = feature_effect(model, tok, sae, test_texts, Intervention(vector, alpha=alpha, layers=[at]))
            others = torch.cat([effect[:feature], effect[feature + 1 :]])
            kl = kl_from_unsteered(model, tok, vector, alpha, layer=at, texts=fit_texts)
            rows.append({"feature": feature, "arm": name, "target": float(effect[feature]),
                         "others": float(others.norm()), "ratio": float(effect[feature] / others.norm()),
                         "kl": float(kl)})  # fmt: skip
    return rows


def stats_table(stats: dict) -> str:
    header = "| tokens | width | k (L0 target) | L0 | explained variance | dead features | epochs | record | train |"
    row = (f"| {stats['tokens']} | {stats['width']} | {stats['k']} | {stats['l0']:.1f} | "
           f"{stats['explained_variance']:.3f} | {stats['dead_features']} | {stats['epochs']:g} | "
           f"{stats['record_seconds']:.0f} s | {stats['train_seconds']:.0f} s |")  # fmt: skip
    return "\n".join([header, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|", row])


def _cell(text: str) -> str:
    """Text on one line, safe inside a Markdown table."""
    return text.replace("\n", "⏎").replace("|", "\\|").replace("*", "\\*")


def _shown(top: dict) -> str:
    """The context before the token, then the token in bold (a whitespace token by its repr)."""
    token = top["token"]
    before = _cell(top["context"][: -len(token)] if token else top["context"])
    lead = " " if token[:1].isspace() and token.strip() else ""
    return f"…{before}{lead}**{_cell(token.strip()) or repr(token)}** ({top['activation']:.1f})"


def _distinct(tops: list[dict], k: int) -> list[dict]:
    """The first ``k`` with different contexts (the chat template's system turn repeats in every prompt)."""
    seen, kept = set(), []
    for top in tops:
        if top["context"] not in seen:
            seen.add(top["context"])
            kept.append(top)
    return kept[:k]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layer", type=int, default=12)
    parser.add_argument("--texts", type=int, default=1500, help="texts per source at most")
    parser.add_argument("--width", type=int, default=4608, help="features (8x the residual width)")
    parser.add_argument("--k", type=int, default=32, help="active features per token (TopK)")
    parser.add_argument("--epochs", type=float, default=6.0)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--top", type=int, default=5, help="features shown per vector")
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    parser.add_argument("--reuse", action="store_true", help="load the SAE an earlier run saved instead of training")
    parser.add_argument("--target-layer", type=int, default=8, help="where SAE-TS steers (below the SAE's layer)")
    parser.add_argument("--samples", type=int, default=768, help="random pushes measured for the SAE-TS fit")
    parser.add_argument("--alpha", type=float, default=0.2, help="strength of the pushes and of the compared arms")
    parser.add_argument("--held-out", type=int, default=500, help="held-out texts per source at most")
    args = parser.parse_args()
    torch.set_num_threads(1)
    began = time.perf_counter()
    model, tok = load_model()
    sources = training_texts(tok, args.texts)
    texts = [t for group in sources.values() for t in group]
    folder = ROOT / "saes" / f"smollm2-l{args.layer}"
    if args.reuse:
        sae = SparseAutoencoder.load(folder, model)
        if sae.stats.get("texts") != len(texts):
            raise SystemExit(f"{folder} was trained on {sae.stats.get('texts')} texts, not these {len(texts)}: "
                             "run without --reuse (or with the --texts it was trained with).")  # fmt: skip
    else:
        sae = train_sae(
            model, tok, texts, layer=args.layer, width=args.width, k=args.k, epochs=args.epochs, lr=args.lr,
            progress=True,
        )  # fmt: skip
        sae.save(folder)
    stats = sae.stats
    print(stats, flush=True)
    held_out = held_out_texts(tok, sources, args.held_out)
    quality = {name: sae.quality(model, tok, group) for name, group in held_out.items()}
    quality["all of them"] = sae.quality(model, tok, [t for group in held_out.values() for t in group])
    print(quality, flush=True)

    splits = DATA / "refusal-direction" / "splits"
    harmful = load_instructions(splits / "harmful_train.json")
    harmless = load_instructions(splits / "harmless_train.json", limit=len(harmful))
    vectors = {
        "sentiment (positive - negative)": extract_vector(model, tok, sentiment_pairs(), layers=[args.layer]),
        "refusal (harmful - harmless)": extract_vector(
            model, tok, [ContrastPair(a, b) for a, b in zip(harmful, harmless, strict=True)], layers=[args.layer],
            chat=True,
        ),
    }  # fmt: skip
    shown = random.Random(1).sample(texts, min(len(texts), 1500))
    shown_acts = sae.activations(model, tok, shown, progress=True)
    sections = []
    for name, vec in vectors.items():
        rows = sae.decompose(vec, top=args.top)
        lines = [f"### {name}", "", "| feature | cosine | where it fires most (shipped texts; the token in **bold**) |",
                 "|---:|---:|---|"]  # fmt: skip
        for row in rows:
            if row["sign"] == "-" and row["rank"] >= 2:
                continue  # the two most negative are enough to show the other end
            tops = _distinct(sae.top_activating(model, tok, shown, row["feature"], k=30, context=10,
                                                activations=shown_acts), 3)  # fmt: skip
            where = "; ".join(_shown(t) for t in tops) or "does not fire on these texts"
            lines.append(f"| {row['feature']} | {row['cosine']:+.3f} | {where} |")
        sections.append("\n".join(lines))
    # SAE-TS: the features the two vectors point along most, targeted from a lower layer.
    targets = [sae.decompose(vec, top=1)[0]["feature"] for vec in vectors.values()]
    fit_texts = neutral_texts()
    test_texts = random.Random(3).sample(held_out["statements not trained on"], 24)
    targeting_began = time.perf_counter()
    effects = feature_effects(model, tok, sae, fit_texts, layer=args.target_layer, alpha=args.alpha,
                              samples=args.samples, progress=True)  # fmt: skip
    fit_seconds = time.perf_counter() - targeting_began
    arms = targeting_rows(model, tok, sae, effects, targets, fit_texts, test_texts, args.alpha)
    print(arms, flush=True)
    targeting_table = "\n".join(
        ["| feature | steered along | target's change | other features' change (norm) | target / others | KL |",
         "|---:|---|---:|---:|---:|---:|"]
        + [f"| {r['feature']} | {r['arm']} | {r['target']:+.3f} | {r['others']:.3f} | {r['ratio']:+.3f} | "
           f"{r['kl']:.3f} |" for r in arms]
    )  # fmt: skip
    quality_table = "\n".join(
        ["| texts | tokens | L0 | explained variance | features that never fire |", "|---|---:|---:|---:|---:|"]
        + [f"| {name} | {q['tokens']} | {q['l0']:.1f} | {q['explained_variance']:.3f} | {q['dead_features']} |"
           for name, q in quality.items()]
    )  # fmt: skip
    held_list = ", ".join(f"{name} ({len(group)})" for name, group in held_out.items())
    minutes = (time.perf_counter() - began) / 60
    reused = ", reusing the SAE saved by an earlier run" if args.reuse else ""
    source_list = ", ".join(f"{name} ({len(group)})" for name, group in sources.items())
    page = f"""# Understanding a vector: SAE features (SmolLM2-135M-Instruct)

Generated by `scripts/sae_features.py` ({minutes:.0f} minutes on 1 CPU thread{reused}); rerun
it to regenerate this page (the SAE is written to `saes/smollm2-l{args.layer}/`, in sae-lens's format, and not
committed; `--reuse` loads it instead of training again).

## The SAE

No SAE for SmolLM2 can be downloaded here, so one was trained with sae-lens's own trainer (`TopKTrainingSAE`,
`SAETrainer`) through `steerlab.evaluate.sae.train_sae`, on the outputs of block {args.layer} (`resid_post`) for
{stats["texts"]} shipped texts: {source_list}. Every real token but each text's first (the attention sink) is a
sample.

{stats_table(stats)}

Explained variance and dead features above are measured on the training tokens. On texts it never saw
(`SparseAutoencoder.quality`; {held_list}; "never fire" counts features silent on those texts, which
is more than the dead features of training on fewer tokens):

{quality_table}

## Steering vectors in its features

Each vector at layer {args.layer}, decomposed by cosine with the SAE's decoder rows (`SparseAutoencoder.decompose`):
the {args.top} features it points along most, then the 2 it points against most, each with the 3 tokens of
{len(shown)} training texts (a seeded sample) where the feature fires most (`top_activating`; contexts that repeat,
such as the chat template's system turn, shown once; ⏎ is a line break). A cosine near 1 would
say the vector is one feature; small cosines say it is spread over many.

{chr(10).join(s + chr(10) for s in sections)}
## Targeting a feature (SAE-TS)

A decoder row is the direction the SAE writes its feature with, not the direction that makes the model produce
it. SAE-targeted steering (Chalnev et al. 2024; `evaluate.feature_effects`, `FeatureEffects.targeted_vector`)
measures instead: {effects.samples} random unit directions were added at block {effects.layer}'s output at
strength {args.alpha} (relative to its mean norm, {effects.resid_norm:.1f}), one per batch row, and the change of
every feature's mean activation at block {sae.layer} on the {len(fit_texts)} neutral texts was fitted by
`effect ~= M v + b` (ridge; held-out R^2 {effects.r2:.3f}; {fit_seconds / 60:.1f} min). The targeted vector solves
`min ||M v - t||^2 + ridge ||v||^2` for `t` one on the feature and zero elsewhere. The features targeted are the
ones the sentiment and the refusal vectors point along most (above). Each arm steers at strength {args.alpha};
the effects are measured on {len(test_texts)} held-out statements the fit never saw (tokens but each text's first),
KL (nats/token, next-token distributions) on the neutral texts. The random direction is the control of the same
norm at the same layer. Unlike the paper, effects are read in the same forward pass on fixed text rather than on
text generated under steering.

{targeting_table}
"""
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "understand.md").write_text(page)
    print(page)


if __name__ == "__main__":
    main()
