"""Issue 18: a calibration sweep (layers x strengths, vector + random directions, A/B behaviour + KL on the neutral
texts) at least 4x faster than the cell-by-cell path, with the same numbers.

``steerlab.evaluate.sweep`` records one unsteered pass per metric at every swept layer and replays each
(direction, strength) from it, runs the two orders of each A/B question packed (their shared beginning once),
and scores KL and entropy on the real tokens from one normalisation. The
baseline is the path it replaced, rebuilt here from public parts: for every (layer, direction) cell one
``logits_over_alphas`` call per metric (whose first strength runs a whole pass) and KL / entropy normalised over
every position, padding included. Both produce p_matching, KL and entropy per (layer, direction, strength); the
table gives the largest difference (float rounding: packed rows run other matrix shapes).

    .venv/bin/python benchmarks/sweep_speed.py                    # 8 questions, 2 layers, 1 random seed, 3 rounds
    .venv/bin/python benchmarks/sweep_speed.py --questions 50 --layers 4,8,12,14,16,18,20,24   # issue 18's
    .venv/bin/python benchmarks/sweep_speed.py --data sycophancy                    # longer shared stems
    .venv/bin/python benchmarks/sweep_speed.py --texts 4       # KL on the first 4 neutral texts (default: all 24)
"""

from __future__ import annotations

import warnings

import torch

from _common import ROOT, finish, interleaved, load, median, parse_args, table


def cell_by_cell(model, tokenizer, vector, behaviour, coherence, layers, alphas, seeds, batch_size):
    """The sweep's numbers as they were computed before: every cell on its own, KL over all positions."""
    from steerlab import Intervention
    from steerlab.errors import StrengthWarning
    from steerlab.evaluate import logits_over_alphas

    logits = torch.cat(
        [out for _, out in logits_over_alphas(model, coherence.input_ids, coherence.attention_mask, None, [None])]
    )
    reference = torch.log_softmax(logits.double(), -1).float()
    real = coherence.attention_mask.bool()

    def kl_and_entropy(out):
        logp = torch.log_softmax(out.double(), -1)
        kl = (logp.exp() * (logp - reference.double())).sum(-1)[real]
        entropy = -(logp.exp() * logp).sum(-1)[real]
        return float(kl.mean().clamp_min(0.0)), float(entropy.mean())

    directions = {None: vector, **{seed: vector.random_like(seed=seed) for seed in seeds}}
    values = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StrengthWarning)
        for layer in layers:
            for seed, direction in directions.items():
                template = Intervention(direction, layers=[layer], scale="relative")
                moving = [a for a in alphas if a != 0]
                behaviours = logits_over_alphas(
                    model, behaviour.input_ids, behaviour.attention_mask, template, moving, last_only=True,
                    batch_size=batch_size,
                )  # fmt: skip
                kls = logits_over_alphas(
                    model, coherence.input_ids, coherence.attention_mask, template, moving, batch_size=batch_size
                )
                for (alpha, b), (_, k) in zip(behaviours, kls, strict=True):
                    values[(layer, seed, alpha)] = (behaviour.score(b)["p_matching"], *kl_and_entropy(k))
    return values


def main() -> None:
    args = parse_args(
        __doc__.splitlines()[0],
        questions=8,
        layers="8,20",
        seeds=1,
        alphas="",
        data="refusal",
        pairs=32,
        texts=0,
        repeats=3,
    )
    from steerlab import extract_vector
    from steerlab.datasets import balance_ab, load_pairs
    from steerlab.evaluate import ABBehaviour, NeutralKL, load_ab, neutral_texts, sweep
    from steerlab.evaluate.sweeps import DEFAULT_ALPHAS

    model, tokenizer = load(args.model)
    layers = [int(x) for x in args.layers.split(",")]
    seeds = list(range(args.seeds))
    alphas = [float(x) for x in args.alphas.split(",")] if args.alphas else list(DEFAULT_ALPHAS)
    questions = load_ab(ROOT / "datasets" / "caa" / "test" / args.data / "test_dataset_ab.json")[: args.questions]
    pairs = balance_ab(
        load_pairs(ROOT / "datasets" / "caa" / "generate" / args.data / "generate_dataset.json")[: args.pairs]
    )
    vector = extract_vector(model, tokenizer, pairs, layers=layers, progress=False)
    behaviour = ABBehaviour(tokenizer, questions)
    texts = neutral_texts()[: args.texts or None]  # --texts N: the first N neutral texts (0: all)
    out: dict[str, object] = {}

    def before() -> None:
        out["old"] = cell_by_cell(
            model, tokenizer, vector, behaviour, NeutralKL(tokenizer, texts), layers, alphas, seeds, 16
        )

    def after() -> None:
        out["new"] = sweep(model, tokenizer, vector, behaviour, layers=layers, alphas=alphas, random_seeds=seeds,
                           coherence=NeutralKL(tokenizer, texts), progress=False)  # fmt: skip

    # Interleaved rounds (before, after, before, after, ...): a slow spell of the machine hits both alike.
    times = interleaved({"cell by cell": before, "sweep": after}, args.repeats, warmup=0)
    old, result = out["old"], out["new"]
    new = {
        (r["layer"], r["seed"], r["alpha"]): (r["p_matching"], r["kl"], r["entropy"])
        for r in result.records
        if r["alpha"] != 0
    }
    assert new.keys() == old.keys(), "the two paths measured different cells"
    diffs = [max(abs(a - b) for a, b in zip(new[k], old[k], strict=True)) for k in new]
    before, after = median(times["cell by cell"]), median(times["sweep"])
    rows = [
        ["cell by cell (before)", before, "1.00x"],
        ["sweep (recorded pass, packed questions)", after, f"{before / after:.2f}x"],
    ]
    markdown = (
        f"{len(layers)} layers ({args.layers}) x {len(alphas)} strengths, vector + {len(seeds)} random "
        f"direction(s), {len(questions)} CAA '{args.data}' questions asked in both orders "
        f"({behaviour.input_ids.shape[0]} prompts), KL on the {len(texts)} neutral texts, "
        f"{args.threads} thread(s), median of {args.repeats} interleaved rounds\n\n"
        + table(["path", "seconds", "speed-up"], rows)
        + f"\n\nlargest difference of p_matching, KL or entropy between the paths over {len(diffs)} steered cells: "
        f"{max(diffs):.2e}"
    )
    finish(
        args,
        "sweep_speed",
        {
            "layers": layers,
            "questions": len(questions),
            "seeds": seeds,
            "before_s": before,
            "after_s": after,
            "speedup": before / after,
            "max_abs_diff": max(diffs),
            "target": 4.0,
        },  # fmt: skip
        markdown,
    )


if __name__ == "__main__":
    main()
