"""Coherence scoring: the NLL of generated continuations under the unsteered model (compare's and the server's
coherence figure), with each prompt run once for all its continuations, against scoring every (prompt,
continuation) row whole.

A comparison generates one continuation per strength for each prompt; `steerlab.engines.generated_nll` runs each
distinct prompt once and scores its continuations on the prompt's repeated KV cache, where scoring whole rows runs
the prompt again for every strength. Both give the same numbers (checked: the largest difference is printed).

    .venv/bin/python benchmarks/coherence_scoring.py --repeats 5 --json benchmarks/results/coherence_scoring.json
"""

from __future__ import annotations

import torch

from _common import finish, interleaved, load, median, middle_layer, parse_args, table


def whole_rows(model, pairs, batch_size: int) -> list[float]:
    """The baseline: every (prompt, continuation) as one right-padded row, the continuation's tokens scored."""
    from steerlab.engines import pad_batch

    out = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        ids, mask = pad_batch([p + g for p, g in chunk], 0, side="right")
        with torch.inference_mode():
            logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), -1)
        for row, (p, g) in enumerate(chunk):
            positions = torch.arange(len(p) - 1, len(p) - 1 + len(g))
            out.append(float(-logp[row, positions, torch.tensor(g)].mean()))
    return out


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], new_tokens=32, prompts=8, strengths=8)
    from steerlab import Intervention, extract_vector, sentiment_pairs, steer
    from steerlab.datasets import NEUTRAL_PROMPTS
    from steerlab.engines import generate, generated_nll

    model, tokenizer = load(args.model)
    layer = middle_layer(model)
    vec = extract_vector(model, tokenizer, sentiment_pairs(), layers=[layer], progress=False)
    prompts = list(NEUTRAL_PROMPTS[: args.prompts])
    strengths = torch.linspace(-0.2, 0.2, args.strengths).tolist()
    pairs = []
    for alpha in strengths:  # one continuation per prompt and strength, as a comparison makes them
        with steer(model, Intervention(vec, alpha=alpha, layers=[layer])):
            pairs += generate(model, tokenizer, prompts, max_new_tokens=args.new_tokens, batch_size=len(prompts))
    out: dict[str, list[float]] = {}

    def shared():
        out["shared"] = generated_nll(model, pairs, batch_size=8)

    def whole():
        out["whole"] = whole_rows(model, pairs, batch_size=8)

    times = interleaved({"each prompt once (generated_nll)": shared, "whole rows": whole}, args.repeats)
    med = {k: median(v) for k, v in times.items()}
    speedup = med["whole rows"] / med["each prompt once (generated_nll)"]
    diff = max(abs(a - b) for a, b in zip(out["shared"], out["whole"], strict=True))
    tokens = sum(len(g) for _, g in pairs)
    markdown = "\n\n".join([
        f"{len(prompts)} prompts x {len(strengths)} strengths x up to {args.new_tokens} generated tokens "
        f"({tokens} scored tokens), layer {layer}, {args.threads} thread(s)",
        table(["scoring", "median s"], [[name, seconds] for name, seconds in med.items()]),
        table(["measure", "value"], [["speedup, whole rows / each prompt once", f"{speedup:.2f}x"],
                                     ["largest difference of a mean NLL (nats/token)", f"{diff:.1e}"]]),
    ])  # fmt: skip
    finish(args, "coherence_scoring", {"medians_s": med, "times_s": times, "speedup": speedup,
                                       "max_abs_diff": diff, "scored_tokens": tokens}, markdown)  # fmt: skip


if __name__ == "__main__":
    main()
