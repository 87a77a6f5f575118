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

from steerlab import ContrastPair, Intervention, extract_vector, load_model, sentiment_pairs
from steerlab.datasets import load_instructions, load_statements
from steerlab.engines import apply_chat
from steerlab.evaluate import compare_targeting, feature_effects, logit_diff_metric, neutral_texts
from steerlab.evaluate.plots import sae_feature_bars, sae_targeting_bars
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


# Sentence openers whose next word carries a judgement (ours): where the sentiment vector's effect on " great" vs
# " terrible" is split over the SAE's features.
OPENERS = [
    "The film we watched last night was",
    "My first day at the new job was",
    "The food at that restaurant was",
    "Honestly, the weather this weekend was",
    "The service at the hotel was",
    "Her latest album is",
    "The meeting this morning was",
    "Our trip to the coast was",
    "The book I finished yesterday was",
    "The new phone I bought is",
    "The concert on Friday was",
    "His answer to the question was",
    "The hike up the mountain was",
    "The coffee in this place is",
    "The game last night was",
    "My neighbour's garden is",
]


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


def targeting_reading(table, layer: int, sae_layer: int) -> list[str]:
    """One sentence per targeted feature, from the records: SAE-TS against the decoder row at the same layer (how
    much cleaner, which costs less KL), and the decoder row at the SAE's own layer."""
    sentences = []
    for feature in dict.fromkeys(r["feature"] for r in table.records):
        arm = {r["method"] + ("_own" if r["layer"] == sae_layer else ""): r for r in table.where(feature=feature)}
        ts, row, own = arm["sae_ts"], arm["decoder_row"], arm["decoder_row_own"]
        times = ts["ratio"] / row["ratio"] if row["ratio"] > 0 else float("inf")
        kl = "less" if ts["kl"] < row["kl"] else "more"
        sentences.append(
            f"Feature {feature}: from layer {layer}, SAE-TS moves it {times:.1f}x as cleanly as its decoder row "
            f"(target / others {ts['ratio']:.3f} against {row['ratio']:.3f}) at {kl} KL ({ts['kl']:.3f} against "
            f"{row['kl']:.3f}); the decoder row at the SAE's own layer {sae_layer} reaches {own['ratio']:.3f}."
        )
    return sentences


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
    parser.add_argument("--samples", type=int, default=1152, help="random pushes measured for the SAE-TS fit")
    parser.add_argument("--fit-texts", type=int, default=6, help="neutral texts the pushes are measured on")
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
    # Attribution: which features carry the sentiment vector's push on " great" vs " terrible".
    sentiment = next(iter(vectors.values()))
    metric = logit_diff_metric(tok, " great", " terrible")
    attributed = sae.attribute(model, tok, OPENERS, Intervention(sentiment, alpha=args.alpha / 2), metric, top=8)
    attribution_rows = []
    for row in attributed["features"]:
        tops = _distinct(sae.top_activating(model, tok, shown, row["feature"], k=30, context=10,
                                            activations=shown_acts), 2)  # fmt: skip
        where = "; ".join(_shown(t) for t in tops) or "does not fire on these texts"
        attribution_rows.append(f"| {row['feature']} | {row['attribution']:+.3f} | {row['delta_activation']:+.2f} | "
                                f"{where} |")  # fmt: skip
    attribution_table = "\n".join(
        ["| feature | attribution (logit diff) | change of its activation (summed over tokens) | where it fires most |",
         "|---:|---:|---:|---|", *attribution_rows]
    )  # fmt: skip

    # SAE-TS: the features the two vectors point along most, targeted from a lower layer.
    targets = [sae.decompose(vec, top=1)[0]["feature"] for vec in vectors.values()]
    fit_texts = neutral_texts()[: args.fit_texts]
    test_texts = random.Random(3).sample(held_out["statements not trained on"], 24)
    targeting_began = time.perf_counter()
    effects = feature_effects(model, tok, sae, fit_texts, layer=args.target_layer, alpha=args.alpha,
                              samples=args.samples, progress=True)  # fmt: skip
    fit_seconds = time.perf_counter() - targeting_began
    targeting = compare_targeting(model, tok, effects, targets, test_texts, alpha=args.alpha)
    print(targeting.records, flush=True)
    targeting_table = "\n".join(
        ["| feature | steered along | target's change | other features' change (norm) | target / others | "
         "target's pre-activation change | KL |", "|---:|---|---:|---:|---:|---:|---:|"]
        + [f"| {r['feature']} | {r['arm']} | {r['target']:+.3f} | {r['others']:.3f} | {r['ratio']:+.3f} | "
           f"{r['target_pre']:+.3f} | {r['kl']:.4f} |" for r in targeting.records]
    )  # fmt: skip
    reading = " ".join(targeting_reading(targeting, effects.layer, sae.layer))
    args.out.mkdir(parents=True, exist_ok=True)
    figures = args.out / "figures"
    figures.mkdir(exist_ok=True)
    decomposition = sae.decomposition({name.split(" ")[0]: vec for name, vec in vectors.items()}, top=args.top)
    sae_feature_bars(decomposition).savefig(figures / "sae-features.png", dpi=110)
    sae_targeting_bars(targeting).savefig(figures / "sae-targeting.png", dpi=110)
    targeting.to_json(figures / "sae-targeting.json")
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

Circuits (IOI found with activation and attribution patching, and the components the sentiment and refusal vectors act
through): [circuits.md](circuits.md), from `scripts/circuits.py`.

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
![Features by cosine](figures/sae-features.png)

### Which features carry the sentiment vector's effect (attribution)

Cosine says what a vector looks like; attribution says what it does through each feature
(`SparseAutoencoder.attribute`): the sentiment vector added at block {args.layer} (alpha {args.alpha / 2:g},
relative) on {attributed["n"]} sentence openers whose next word is a judgement ("The film we watched last night
was"), metric = logit of " great" minus " terrible" at the last token. Per feature: its change of activation
under the steering times the metric's gradient along its decoder row, summed over the tokens (the first left out)
and averaged over the openers. The measured change of the metric is {attributed["effect"]:+.3f}; its first-order
estimate {attributed["first_order"]:+.3f} splits into {attributed["through_features"]:+.3f} through the SAE's
features and {attributed["error"]:+.3f} through what it does not reconstruct. The 8 largest:

{attribution_table}

## Targeting a feature (SAE-TS)

A decoder row is the direction the SAE writes its feature with, not the direction that makes the model produce
it. SAE-targeted steering (Chalnev et al. 2024; `evaluate.feature_effects`, `FeatureEffects.targeted_vector`)
measures instead: {effects.samples} random unit directions were added at block {effects.layer}'s output at
strength {args.alpha} (relative to its mean norm, {effects.resid_norm:.1f}), one per batch row, and the change of
every feature's mean pre-activation (the encoder's output before TopK: a sparse feature's activation stays 0
under most pushes, so the fit would see nothing of it) at block {sae.layer} on {len(fit_texts)} neutral texts was
fitted by `effect ~= M v + b` (ridge; held-out R^2 {effects.r2:.3f}; {fit_seconds / 60:.1f} min). The targeted
vector solves `min ||M v - t||^2 + ridge ||v||^2` for `t` one on the feature and zero elsewhere. The features
targeted are the ones the sentiment and the refusal vectors point along most (above). Each arm steers at
strength {args.alpha}; the effects are measured on {len(test_texts)} held-out statements the fit never saw
(tokens but each text's first): the target's and the other features' change of activation (what fires), the
target's change of pre-activation (how much nearer to firing), and KL (nats/token, next-token distributions) on
the 24 neutral texts. The random direction is the control of the same norm at the same layer. Unlike the paper,
effects are read in the same forward pass on fixed text rather than on text generated under steering. Records:
`figures/sae-targeting.json` (a result table: `steerlab report` renders it).

{targeting_table}

{reading}

![Target vs side effects](figures/sae-targeting.png)
"""
    (args.out / "understand.md").write_text(page)
    print(page)


if __name__ == "__main__":
    main()
