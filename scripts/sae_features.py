"""Train an SAE on SmolLM2's residual stream from the shipped text data, and read the sentiment and refusal vectors in
its features; writes docs/understand.md (the SAE section) and saves the SAE under saes/ (not committed).

    OMP_NUM_THREADS=1 .venv/bin/python scripts/sae_features.py                    # ~30 minutes on 1 CPU thread
    OMP_NUM_THREADS=1 .venv/bin/python scripts/sae_features.py --texts 600 --epochs 1 --out /tmp/check   # a quick look

No SAE for SmolLM2 can be downloaded here, so one is trained with sae-lens's trainer (TopK) on the outputs of block
LAYER for: the refusal-direction training instructions, harmless and harmful, in the chat template (as the model reads
them when asked); the Geometry of Truth and RepE true/false statements; steerlab's neutral texts and sentiment
sentences. The sentiment vector (difference of means of steerlab's 32 sentiment pairs) and the refusal direction
(harmful minus harmless instructions, last prompt token) are then decomposed into the SAE's features by cosine, each
top feature shown with the shipped texts where it fires most.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import torch

from steerlab import ContrastPair, extract_vector, load_model, sentiment_pairs
from steerlab.datasets import load_instructions, load_statements
from steerlab.engines import apply_chat
from steerlab.evaluate import neutral_texts
from steerlab.evaluate.sae import train_sae

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
    args = parser.parse_args()
    torch.set_num_threads(1)
    began = time.perf_counter()
    model, tok = load_model()
    sources = training_texts(tok, args.texts)
    texts = [t for group in sources.values() for t in group]
    sae = train_sae(
        model, tok, texts, layer=args.layer, width=args.width, k=args.k, epochs=args.epochs, lr=args.lr, progress=True
    )
    sae.save(ROOT / "saes" / f"smollm2-l{args.layer}")
    stats = sae.stats
    print(stats, flush=True)

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
    minutes = (time.perf_counter() - began) / 60
    source_list = ", ".join(f"{name} ({len(group)})" for name, group in sources.items())
    page = f"""# Understanding a vector: SAE features (SmolLM2-135M-Instruct)

Generated by `scripts/sae_features.py` ({minutes:.0f} minutes on 1 CPU thread); rerun it to regenerate this page (the
SAE is written to `saes/smollm2-l{args.layer}/`, in sae-lens's format, and not committed).

Circuits (IOI found with activation and attribution patching, and the components the sentiment and refusal vectors act
through): [circuits.md](circuits.md), from `scripts/circuits.py`.

## The SAE

No SAE for SmolLM2 can be downloaded here, so one was trained with sae-lens's own trainer (`TopKTrainingSAE`,
`SAETrainer`) through `steerlab.evaluate.sae.train_sae`, on the outputs of block {args.layer} (`resid_post`) for
{stats["texts"]} shipped texts: {source_list}. Every real token but each text's first (the attention sink) is a
sample.

{stats_table(stats)}

Explained variance and dead features are measured on the training tokens themselves (no held-out set).

## Steering vectors in its features

Each vector at layer {args.layer}, decomposed by cosine with the SAE's decoder rows (`SparseAutoencoder.decompose`):
the {args.top} features it points along most, then the 2 it points against most, each with the 3 tokens of
{len(shown)} training texts (a seeded sample) where the feature fires most (`top_activating`; contexts that repeat,
such as the chat template's system turn, shown once; ⏎ is a line break). A cosine near 1 would
say the vector is one feature; small cosines say it is spread over many.

{chr(10).join(s + chr(10) for s in sections)}
"""
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "understand.md").write_text(page)
    print(page)


if __name__ == "__main__":
    main()
