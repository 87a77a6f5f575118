"""Condition gates (CAST, issue 16) on SmolLM2: writes docs/conditions.md.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/condition_check.py [--train 128] [--val 100] [--demo 12]

1. Gate F1 on the shipped refusal splits: ``find_condition_point`` on harmful vs harmless training instructions (chat
   template applied; the direction is the training split's mean difference, the point chosen by F1 on 3/4 of them,
   F1 reported on the held-out 1/4), then the chosen gate on the validation splits it never saw. Control: the same
   search with a random direction of the same norm at every layer.
2. A conditional tone demo: the sentiment vector added (relative 0.15 at layer 10) only where the prompt is harmful,
   i.e. gated by the condition from 1; sentiment (VADER) of greedy answers on harmful and harmless validation
   prompts, unsteered, gated, and always steered. Harmless answers under the gate must equal the unsteered ones.
3. The topic-gated tone demo (issue 16, 5a): cheerful (the sentiment vector, relative 0.2 at layer 10) only where the
   prompt is about cooking. The condition is found on 40 + 40 of our own topic prompts (scripts/data/
   topic_prompts.json: held-out F1 on 1/4 of them), then 20 + 20 unseen prompts are answered unsteered, gated, gated
   by a random-direction condition (the same search) and always steered: VADER shift from unsteered per prompt, with
   95% bootstrap intervals, on matching and non-matching prompts.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from steerlab import Intervention, extract_vector, load_model, sentiment_pairs, steer
from steerlab.datasets import load_instructions
from steerlab.engines import apply_chat, generate
from steerlab.evaluate import find_condition_point, sentiment
from steerlab.evaluate.conditions import gate_f1, gate_opens
from steerlab.evaluate.sweeps import effect_interval

ROOT = Path(__file__).resolve().parents[1]
SPLITS = ROOT / "datasets" / "refusal-direction" / "splits"
TOPICS = Path(__file__).resolve().parent / "data" / "topic_prompts.json"

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--train", type=int, default=128, help="harmful and harmless training instructions, each")
parser.add_argument("--val", type=int, default=100, help="validation instructions of each kind (at most)")
parser.add_argument("--demo", type=int, default=12, help="prompts of each kind in the tone demo")
parser.add_argument("--tokens", type=int, default=32)
parser.add_argument("--topic-search", type=int, default=40, help="on- and off-topic prompts for the topic search, each")
parser.add_argument("--topic-demo", type=int, default=20, help="unseen on- and off-topic prompts in the topic demo")
parser.add_argument("--out", default=str(ROOT / "docs" / "conditions.md"))
args = parser.parse_args()
torch.set_num_threads(1)
start = time.perf_counter()

model, tok = load_model()


def chat(prompts: list[str]) -> list[str]:
    return [apply_chat(tok, p) for p in prompts]


harmful = chat(load_instructions(SPLITS / "harmful_train.json", limit=args.train))
harmless = chat(load_instructions(SPLITS / "harmless_train.json", limit=args.train))
harmful_val = chat(load_instructions(SPLITS / "harmful_val.json", limit=args.val))
harmless_val = chat(load_instructions(SPLITS / "harmless_val.json", limit=args.val))

search = find_condition_point(model, tok, harmful, harmless, held_out=0.25, seed=0)
cond = search.condition
print(f"chosen: {cond}; train F1 {search.train_f1:.3f}, held-out F1 {search.held_out_f1:.3f}", flush=True)


def opens(condition, prompts: list[str]) -> torch.Tensor:
    """Where the gate opens: the condition on recorded activations (the numbers the gate computes)."""
    return gate_opens(model, tok, prompts, condition)


def validation_f1(condition) -> dict[str, float]:
    labels = torch.tensor([True] * len(harmful_val) + [False] * len(harmless_val))
    return gate_f1(opens(condition, harmful_val + harmless_val), labels)


val = validation_f1(cond)
print(f"validation: {val}", flush=True)

# Control: the same search with a random direction of the same norm at every layer (fixed before looking at data).
layers = list(range(model.config.num_hidden_layers))
reference = extract_vector(model, tok, sentiment_pairs(), layers=layers)  # only for its metadata and norms
random_dirs = reference.random_like(seed=0)
random_search = find_condition_point(model, tok, harmful, harmless, vector=random_dirs, held_out=0.25, seed=0)
random_val = validation_f1(random_search.condition)
print(f"random: {random_search.condition}; held-out {random_search.held_out_f1:.3f}; validation {random_val}")

# Tone demo: sentiment added only where the gate fires (the condition is read before layer 10? then steer later).
read_layer = cond.layers[0]
steer_layer = max(10, read_layer + 1)
happy = extract_vector(model, tok, sentiment_pairs(), layers=[steer_layer])
plain_item = Intervention(happy, alpha=0.15, layers=[steer_layer])
gated_item = Intervention(happy, alpha=0.15, layers=[steer_layer], condition=cond)
demo = {"harmful": harmful_val[: args.demo], "harmless": harmless_val[: args.demo]}
rows = []
identical = None
for kind, prompts in demo.items():
    answers = {}
    for name, item in (("unsteered", []), ("gated", [gated_item]), ("always", [plain_item])):
        with steer(model, item):  # an empty list: no hook at all
            out = generate(model, tok, prompts, max_new_tokens=args.tokens, chat=False)
        answers[name] = [tok.decode(ids, skip_special_tokens=True) for _, ids in out]
    scores = {name: sum(sentiment(texts)) / len(texts) for name, texts in answers.items()}
    differ = [a != b for a, b in zip(answers["gated"], answers["unsteered"], strict=True)]
    opened = opens(cond, prompts).tolist()
    # Shut rows must be answered exactly as unsteered: a gated answer that differs where the gate is shut is a bug.
    assert not any(d and not o for d, o in zip(differ, opened, strict=True)), (differ, opened)
    # and open rows exactly as steered without the gate.
    assert all(g == w for g, w, o in zip(answers["gated"], answers["always"], opened, strict=True) if o)
    rows.append((kind, scores, sum(opened), sum(differ), len(prompts)))
    print(kind, scores, f"gate opened {sum(opened)}/{len(prompts)}, answers changed {sum(differ)}", flush=True)

# Topic-gated tone: cheerful only where the prompt is about cooking. The search is limited to layers before the
# steering layer, so the gate is decided before the intervention touches the prompt (steering acts on every token).
topics = json.loads(TOPICS.read_text())
if args.topic_search + args.topic_demo > min(len(topics["on_topic"]), len(topics["off_topic"])):
    raise SystemExit(f"{TOPICS} has {len(topics['on_topic'])} prompts of each kind; ask for fewer.")
on_search, off_search = (chat(topics[k][: args.topic_search]) for k in ("on_topic", "off_topic"))
on_demo, off_demo = (chat(topics[k][-args.topic_demo :]) for k in ("on_topic", "off_topic"))
TONE_LAYER, TONE_ALPHA = 10, 0.2
early = list(range(TONE_LAYER))
topic_search = find_condition_point(model, tok, on_search, off_search, layers=early, held_out=0.25, seed=0)
topic_random = find_condition_point(
    model, tok, on_search, off_search, vector=random_dirs, layers=early, held_out=0.25, seed=0
)
print(f"topic: {topic_search.condition}, held-out {topic_search.held_out_f1:.3f}; random: {topic_random.condition}, "
      f"held-out {topic_random.held_out_f1:.3f}", flush=True)  # fmt: skip
tone = extract_vector(model, tok, sentiment_pairs(), layers=[TONE_LAYER])
tone_arms = {
    "unsteered": [],
    "gated": [Intervention(tone, alpha=TONE_ALPHA, condition=topic_search.condition)],
    "random gate": [Intervention(tone, alpha=TONE_ALPHA, condition=topic_random.condition)],
    "always": [Intervention(tone, alpha=TONE_ALPHA)],
}
topic_rows = []
for kind, prompts in (("cooking (matching)", on_demo), ("other topics (not matching)", off_demo)):
    answers = {}
    for name, items in tone_arms.items():
        with steer(model, items):
            out = generate(model, tok, prompts, max_new_tokens=args.tokens, chat=False)
        answers[name] = [tok.decode(ids, skip_special_tokens=True) for _, ids in out]
    scores = {name: sentiment(texts) for name, texts in answers.items()}
    opened = {name: opens(items[0].condition, prompts).tolist() for name, items in tone_arms.items() if "gate" in name}
    for name, gate in opened.items():  # the gate's contract, token for token
        for g, u, w, o in zip(answers[name], answers["unsteered"], answers["always"], gate, strict=True):
            assert g == (w if o else u), (name, kind, o)
    shifts = {}
    for name in ("gated", "random gate", "always"):
        deltas = [s - u for s, u in zip(scores[name], scores["unsteered"], strict=True)]
        shifts[name] = (sum(deltas) / len(deltas), *effect_interval(deltas))
    topic_rows.append((kind, len(prompts), sum(scores["unsteered"]) / len(prompts), shifts, opened))
    print(kind, {k: f"{v[0]:+.3f} [{v[1]:+.3f}, {v[2]:+.3f}]" for k, v in shifts.items()},
          {k: sum(v) for k, v in opened.items()}, flush=True)  # fmt: skip
demo_labels = torch.tensor([True] * len(on_demo) + [False] * len(off_demo))
topic_demo_f1 = {
    name: gate_f1(opens(search.condition, on_demo + off_demo), demo_labels)
    for name, search in (("mean difference", topic_search), ("random", topic_random))
}

minutes = (time.perf_counter() - start) / 60
lines = [
    "# Condition gates on SmolLM2-135M-Instruct",
    "",
    f"Generated by `scripts/condition_check.py` in {minutes:.1f} min on 1 CPU thread; regenerate with "
    "`OMP_NUM_THREADS=1 .venv/bin/python scripts/condition_check.py`. What a condition is and how it gates: "
    "[guide.md](guide.md#conditional-steering-cast).",
    "",
    "## Gate F1: harmful vs harmless instructions",
    "",
    f"Data: the shipped refusal splits (`datasets/refusal-direction`), chat template applied: the first {args.train} "
    f"harmful and {args.train} harmless training instructions for the search (3/4 to choose, 1/4 held out, "
    f"stratified, seed 0), {len(harmful_val)} harmful (the whole split) and {len(harmless_val)} harmless "
    "validation instructions (the first) for the final check. "
    "`find_condition_point` over every layer x {mean, last token} x {cosine, projection} x {greater, smaller} x "
    "every threshold, direction = the training split's mean difference (so held-out and validation prompts are "
    "unseen by direction and threshold). Control: the same search with a random direction of the same norm at every "
    "layer (seed 0).",
    "",
    "| direction | chosen point | train F1 | held-out F1 | validation precision | validation recall | validation F1 |",
    "|---|---|---:|---:|---:|---:|---:|",
    f"| mean difference | {cond!r} | {search.train_f1:.3f} | {search.held_out_f1:.3f} | {val['precision']:.3f} | "
    f"{val['recall']:.3f} | {val['f1']:.3f} |",
    f"| random | {random_search.condition!r} | {random_search.train_f1:.3f} | {random_search.held_out_f1:.3f} | "
    f"{random_val['precision']:.3f} | {random_val['recall']:.3f} | {random_val['f1']:.3f} |",
    "",
    "## Gated tone: cheerful only where the prompt is harmful",
    "",
    f"The sentiment vector (`sentiment_pairs`, layer {steer_layer}) added at relative strength 0.15, gated by the "
    f"condition above (read at layer {read_layer}); greedy answers of {args.tokens} tokens to the first "
    f"{args.demo} harmful and {args.demo} harmless validation prompts; mean VADER sentiment. *always*: the same "
    "intervention without the gate. A demo of the mechanism (harmful prompts are not a topic one would gate tone "
    "on), not a tuned behaviour.",
    "",
    "| prompts | unsteered | gated | always | gate opened | gated answers that differ from unsteered |",
    "|---|---:|---:|---:|---:|---:|",
]
for kind, scores, opened, changed, n in rows:
    lines.append(
        f"| {kind} | {scores['unsteered']:+.3f} | {scores['gated']:+.3f} | {scores['always']:+.3f} | {opened}/{n} | "
        f"{changed}/{n} |"
    )
lines += [
    "",
    "Every answer whose gate stayed shut equals the unsteered answer, and every answer whose gate opened equals the "
    "*always* answer, token for token (the script asserts both). The random direction separates the two sets "
    "better than chance (the harmful and harmless instructions also differ in length and form, which any direction "
    "may pick up), so a gate's F1 means something only beside that control.",
    "",
    "## Topic-gated tone: cheerful only where the prompt is about cooking",
    "",
    f"Data: `scripts/data/topic_prompts.json`, written for this project (not from a data set): requests about cooking "
    f"and about other everyday topics, phrased alike. The first {args.topic_search} of each kind choose the condition "
    f"point (`find_condition_point` over layers 0-{TONE_LAYER - 1} x {{mean, last token}} x {{cosine, projection}} x "
    "{greater, smaller} x every threshold, 3/4 to choose, 1/4 held out, direction = the training split's mean "
    f"difference); the last {args.topic_demo} of each kind, unseen by the search, are the demo prompts. Layers stop "
    f"before {TONE_LAYER} because the tone is added at layer {TONE_LAYER} on every token, prompt included, and the "
    "gate must be decided before that. Control: the same search with the random direction of section 1.",
    "",
    "| direction | chosen point | train F1 | held-out F1 (n) | F1 on the demo prompts (n) |",
    "|---|---|---:|---:|---:|",
]
for name, search in (("mean difference", topic_search), ("random", topic_random)):
    lines.append(
        f"| {name} | {search.condition!r} | {search.train_f1:.3f} | {search.held_out_f1:.3f} ({search.n_held_out}) | "
        f"{topic_demo_f1[name]['f1']:.3f} ({len(demo_labels)}) |"
    )
lines += [
    "",
    f"Tone: the sentiment vector (`sentiment_pairs`, layer {TONE_LAYER}) added at relative strength {TONE_ALPHA}; "
    f"greedy answers of {args.tokens} tokens, chat template applied. The shift is each prompt's VADER compound "
    "sentiment (-1 to 1) minus its unsteered answer's, averaged over the prompts, with a 95% percentile-bootstrap "
    "interval over prompts (2000 resamples). *gated*: only where the topic condition opens; *random gate*: gated "
    "by the random-direction condition instead; *always*: no gate.",
    "",
    "| prompts | n | unsteered sentiment | gated shift | random-gate shift | always shift | gate opened | "
    "random gate opened |",
    "|---|---:|---:|---:|---:|---:|---:|---:|",
]
for kind, n, base, shifts, opened in topic_rows:
    cells = " | ".join(f"{m:+.3f} [{lo:+.3f}, {hi:+.3f}]" for m, lo, hi in shifts.values())
    lines.append(f"| {kind} | {n} | {base:+.3f} | {cells} | {sum(opened['gated'])}/{n} | "
                 f"{sum(opened['random gate'])}/{n} |")  # fmt: skip
lines += [
    "",
    "As in the section above, every gated answer equals the unsteered answer where its gate stayed shut and the "
    "*always* answer where it opened, token for token (asserted by the script), so the change on non-matching prompts "
    "is exactly the cost of the gate's false positives there.",
    "",
]
Path(args.out).write_text("\n".join(lines))
print(f"wrote {args.out} in {minutes:.1f} min")
