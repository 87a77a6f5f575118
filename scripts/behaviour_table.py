"""The six CAA behaviours on the embedded model: mean_diff against optimised (BiPO) vectors, each calibrated beside
random directions, and the prompting baseline; writes docs/behaviours.md.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/behaviour_table.py       # ~100 min on 1 CPU thread, or in parts:
    OMP_NUM_THREADS=1 .venv/bin/python scripts/behaviour_table.py --behaviours refusal sycophancy \\
        --records /tmp/part1.jsonl --out /tmp/part1                       # each part on a core of its own, then
    .venv/bin/python scripts/behaviour_table.py --render /tmp/part1.jsonl /tmp/part2.jsonl   # writes docs/

Per behaviour: the first PAIRS contrast pairs of its generate set (each also with its choices swapped) give a
mean_diff vector and a BiPO vector (Cao et al. 2024, started from the mean_diff direction) at LAYER; each is swept
over relative strengths on the first QUESTIONS held-out A/B questions (both choice orders) beside 8 random directions
of its norm, and calibrated (a setting chosen on half the questions, reported on the other half, within the KL
budget). The prompting baseline asks for the behaviour in a system turn (steerlab.recipes.CAA_INSTRUCTIONS).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from statistics import median

import torch

from steerlab import extract_vector, load_model, load_pairs
from steerlab.datasets import balance_ab
from steerlab.errors import SteeringError
from steerlab.evaluate import (
    DEFAULT_KL_BUDGET,
    ABBehaviour,
    calibrate,
    load_ab,
    prompting_baseline,
    sweep,
)
from steerlab.optimize import optimize_vector
from steerlab.recipes import CAA_INSTRUCTIONS

ROOT = Path(__file__).resolve().parents[1]
CAA = ROOT / "datasets" / "caa"
BEHAVIOURS = ["coordinate-other-ais", "hallucination", "myopic-reward", "refusal", "survival-instinct", "sycophancy"]
# Positive strengths only: both vectors point toward the behaviour (mean_diff by construction, BiPO by its loss at
# +alpha), and calibrate picks the largest rise of p(matching).
ALPHAS = [0.05, 0.1, 0.2, 0.3]


def cell(rec: dict | None) -> str:
    """The calibrated setting's held-out effect [interval], the random directions there, its KL and verdict."""
    if rec is None:
        return "none within the KL budget | | | no"
    low, high = rec["interval"]
    verdict = "yes" if rec["found"] else "no"
    return (f"{rec['effect']:+.3f} [{low:+.3f}, {high:+.3f}] at {rec['alpha']:+g} | {rec['random_mean']:+.3f} "
            f"({rec['random_sd']:.3f}) | {rec['kl']:.3f} | {verdict}")  # fmt: skip


def clears(optimised: dict | None) -> bool:
    """The issue's bar: the optimised vector's held-out effect beats its random directions by >= 0.10, interval
    clear of 0, at a KL no larger than the budget (calibrate only picks settings within it)."""
    if optimised is None:
        return False
    return optimised["effect"] - optimised["random_mean"] >= 0.10 and optimised["interval"][0] > 0


def measure(model, tok, name: str, args: argparse.Namespace) -> dict:
    """One behaviour's record: both vectors calibrated, the prompting baseline, BiPO's time per step."""
    began = time.perf_counter()
    pairs = balance_ab(load_pairs(CAA / "generate" / name / "generate_dataset.json")[: args.pairs])
    questions = load_ab(CAA / "test" / name / "test_dataset_ab.json")[: args.questions]
    metric = ABBehaviour(tok, questions)
    mean_diff = extract_vector(model, tok, pairs, layers=[args.layer])
    bipo = optimize_vector(model, tok, pairs, layer=args.layer, objective="bipo", init=mean_diff,
                           steps=args.steps, progress=False)  # fmt: skip
    found: dict[str, dict | None] = {}
    for label, vec in (("mean_diff", mean_diff), ("bipo", bipo)):
        table = sweep(model, tok, vec, metric, layers=[args.layer], alphas=ALPHAS, random_seeds=range(8))
        try:
            found[label] = dataclasses.asdict(calibrate(table))
        except SteeringError:  # no strength within the KL budget: a result, reported as such
            found[label] = None
    prompting = prompting_baseline(model, tok, questions, CAA_INSTRUCTIONS[name])
    return {
        "behaviour": name,
        "unsteered": table.meta["unsteered"]["p_matching"],
        "found": found,
        "prompting": {k: prompting[k] for k in ("n", "effect", "effect_lo", "effect_hi")},
        "seconds_per_step": bipo.extra["seconds_per_step"],
        "minutes": (time.perf_counter() - began) / 60,
        "settings": {k: getattr(args, k) for k in ("pairs", "questions", "layer", "steps")},
    }


RESULTS_PAGE = ROOT / "docs" / "results.md"
# docs/results.md holds this table's summary between these lines: scripts/results.py writes them (with the summary
# of docs/behaviours.jsonl) and --render / a full run here refresh what is between them.
SECTION_BEGIN = "<!-- behaviour_table.py: begin -->"
SECTION_END = "<!-- behaviour_table.py: end -->"


def table_lines(records: list[dict]) -> list[str]:
    """The table (one row per behaviour) and how it stands against the issue's targets."""
    settings = records[0]["settings"]
    per_step = [r["seconds_per_step"] for r in records]
    lines = [
        "| behaviour | n | unsteered | mean_diff: held-out effect [95%] at alpha | random (sd) | KL | found | "
        "BiPO: held-out effect [95%] at alpha | random (sd) | KL | found | prompting: effect [95%] |",
        "|---|---:|---:|---|---:|---:|---|---|---:|---:|---|---|",
    ]
    for r in records:
        p = r["prompting"]
        lines.append(
            f"| {r['behaviour']} | {p['n']} | {r['unsteered']:.3f} | {cell(r['found']['mean_diff'])} | "
            f"{cell(r['found']['bipo'])} | {p['effect']:+.3f} [{p['effect_lo']:+.3f}, {p['effect_hi']:+.3f}] |"
        )
    beats = [r["behaviour"] for r in records if clears(r["found"]["bipo"])]
    lines += [
        "",
        f"**Against the issue's targets.** BiPO's held-out effect minus its random directions' mean is >= 0.10 with "
        f"an interval clear of 0 on {len(beats)} of {len(records)} behaviours ({', '.join(beats) or 'none'}; the "
        f"target is 3 of 6). One BiPO vector ({settings['steps']} steps on {2 * settings['pairs']} pairs) took a "
        f"median {median(per_step) * settings['steps']:.0f} s ({median(per_step):.1f} s per step; range "
        f"{min(per_step):.1f}-{max(per_step):.1f} s per step, which is how much a busy machine slows it; the target "
        "is 5 minutes).",
    ]
    return lines


def read_records(*paths: Path) -> list[dict]:
    """The behaviours' records from JSON-lines files, in the page's order."""
    records = [json.loads(line) for path in paths for line in path.read_text().splitlines() if line]
    return sorted(records, key=lambda r: BEHAVIOURS.index(r["behaviour"]))


def results_section(records_file: Path = ROOT / "docs" / "behaviours.jsonl") -> list[str]:
    """docs/results.md's section on optimised vectors: the table from this script's records, between markers."""
    lines = [SECTION_BEGIN, "### Optimised (BiPO) vectors and prompting, beside mean_diff", ""]
    if records_file.exists():
        records = read_records(records_file)
        settings = records[0]["settings"]
        lines += [
            f"From [behaviours.md](behaviours.md) (`scripts/behaviour_table.py`; its set-up there): layer "
            f"{settings['layer']}, n = {settings['questions']} held-out questions per behaviour in both orders, each "
            "vector calibrated within the KL budget beside 8 random directions of its norm; prompting = a system "
            "instruction asking for the behaviour.",
            "",
            *table_lines(records),
        ]
    else:
        lines.append("Not measured yet: run `scripts/behaviour_table.py`.")
    return [*lines, SECTION_END]


def refresh_results_page() -> None:
    """Replace docs/results.md's section with the current records (the rest of the page is scripts/results.py's)."""
    page = RESULTS_PAGE.read_text()
    if SECTION_BEGIN not in page or SECTION_END not in page:
        raise SystemExit(f"{RESULTS_PAGE} has no {SECTION_BEGIN} ... {SECTION_END} section: run scripts/results.py")
    head, rest = page.split(SECTION_BEGIN, 1)
    tail = rest.split(SECTION_END, 1)[1]
    RESULTS_PAGE.write_text(head + "\n".join(results_section()) + tail)


def write_page(records: list[dict], out: Path, expected: int) -> str:
    """Render behaviours.md from the behaviours' records (rewritten after each, so a stopped run keeps what it
    measured)."""
    settings = records[0]["settings"]
    if any(r["settings"] != settings for r in records):
        raise SystemExit(f"the records were measured with different settings: {[r['settings'] for r in records]}")
    minutes = sum(r["minutes"] for r in records)
    lines = [
        "# Six CAA behaviours: mean_diff, optimised (BiPO) and prompting (SmolLM2-135M-Instruct)",
        "",
        f"Generated by `scripts/behaviour_table.py` ({minutes:.0f} minutes of 1 CPU thread in all); rerun it to "
        "regenerate this page, its records (`behaviours.jsonl`, one JSON line per behaviour: both calibrations "
        "in full, the prompting baseline, BiPO's seconds per step) and the summary in results.md.",
        "",
        f"**Set-up.** Per behaviour: the first {settings['pairs']} contrast pairs of its `generate_dataset.json`, each "
        f"also with its choices swapped, give the `mean_diff` vector and the BiPO vector ({settings['steps']} steps "
        f"of batch 8, started from the mean_diff direction) at layer {settings['layer']}. Each is swept over "
        f"relative strengths {ALPHAS} (fractions of the layer's residual norm) on the first {settings['questions']} "
        "questions of its `test_dataset_ab.json`, each asked in both choice orders (n below counts questions), "
        "beside 8 random directions of the vector's norm; `calibrate` chooses the strength with the largest rise "
        f"of p(matching) within the KL budget ({DEFAULT_KL_BUDGET} nats/token on the 24 shipped neutral texts) on "
        "half of the questions and reports it on the other half, with a 95% bootstrap interval; *random* = the 8 "
        "random directions at that strength on the held-out half (mean, sd); *found* = the held-out interval clears "
        "0 and the random directions' bound (docs/measure.md). *Prompting* asks for the behaviour in a system turn "
        "(`steerlab.recipes.CAA_INSTRUCTIONS`) on all the questions: p(matching) change from unsteered, 95% "
        "bootstrap interval.",
        "",
        *table_lines(records),
    ]
    if len(records) < expected:
        lines += ["", f"*Partial: {len(records)} of {expected} behaviours measured when this was written.*"]
    out.mkdir(parents=True, exist_ok=True)
    (out / "behaviours.md").write_text("\n".join(lines) + "\n")
    (out / "behaviours.jsonl").write_text("".join(json.dumps(r, default=float) + "\n" for r in records))
    if out.resolve() == RESULTS_PAGE.parent.resolve():
        refresh_results_page()
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--behaviours", nargs="+", default=BEHAVIOURS, choices=BEHAVIOURS)
    parser.add_argument("--pairs", type=int, default=32, help="contrast pairs per behaviour (x2: both orders)")
    parser.add_argument("--questions", type=int, default=40, help="held-out A/B questions (each in both orders)")
    parser.add_argument("--layer", type=int, default=13)
    parser.add_argument("--steps", type=int, default=30, help="BiPO steps")
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    parser.add_argument("--records", type=Path, help="append each behaviour's record to this JSON-lines file")
    parser.add_argument("--render", type=Path, nargs="+", help="only write the page from these records files")
    args = parser.parse_args()
    if args.render:
        records = read_records(*args.render)
        print(write_page(records, args.out, len(BEHAVIOURS)))
        return
    torch.set_num_threads(1)
    model, tok = load_model()
    records = []
    for name in args.behaviours:
        records.append(measure(model, tok, name, args))
        if args.records:
            with args.records.open("a") as f:
                f.write(json.dumps(records[-1], default=float) + "\n")
        page = write_page(records, args.out, len(args.behaviours))
        print(f"{name}: mean_diff {cell(records[-1]['found']['mean_diff'])}; bipo {cell(records[-1]['found']['bipo'])}",
              flush=True)  # fmt: skip
    print(page)


if __name__ == "__main__":
    main()
