"""Target 4: 10 strengths at layer 15 of 30 cost at most 0.65x of 10 full forward passes, same numbers out.

``steerlab.evaluate.logits_over_alphas`` runs blocks 0-14 once and replays blocks 15-29 and the head for each
further strength; the baseline is the same call with ``reuse_prefix=False`` (a full steered forward pass per
strength). Measured for full-sequence logits (what a KL-on-neutral-text metric needs) and for the last
position only (what an A/B next-token metric needs). The peers have no sweep primitive.

    .venv-bench/bin/python benchmarks/sweep_reuse.py --repeats 5
"""

from __future__ import annotations

import torch

from _common import chat_batch, finish, interleaved, load, median, middle_layer, parse_args, table


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], alphas=10)
    from steerlab import Intervention, extract_vector, get_layout, sentiment_pairs
    from steerlab.datasets import NEUTRAL_PROMPTS
    from steerlab.evaluate import logits_over_alphas

    model, tokenizer = load(args.model)
    layer = middle_layer(model)
    depth = get_layout(model).num_layers
    vec = extract_vector(model, tokenizer, sentiment_pairs(), layers=[layer], progress=False)
    template = Intervention(vec, scale="relative")
    alphas = [round(-0.3 + 0.6 * i / (args.alphas - 1), 4) for i in range(args.alphas)]
    input_ids, mask = chat_batch(tokenizer, list(NEUTRAL_PROMPTS))
    rows, results = [], {}
    for last_only in (False, True):
        out: dict[bool, list[torch.Tensor]] = {}

        def run(reuse: bool, last_only=last_only, out=out):
            def call():
                out[reuse] = [
                    logits
                    for _, logits in logits_over_alphas(
                        model, input_ids, mask, template, alphas, last_only=last_only, reuse_prefix=reuse
                    )
                ]

            return call

        times = interleaved({"reuse": run(True), "full": run(False)}, args.repeats)
        ratio = median(times["reuse"]) / median(times["full"])
        diff = max(float((a - b).abs().max()) for a, b in zip(out[True], out[False], strict=True))
        scale = max(float(b.abs().max()) for b in out[False])
        what = "last position" if last_only else "every position"
        results[what] = {
            "reuse_s": median(times["reuse"]),
            "full_s": median(times["full"]),
            "ratio": ratio,
            "max_abs_diff": diff,
            "max_abs_logit": scale,
        }
        rows.append(
            [what, median(times["full"]), median(times["reuse"]), f"{ratio:.3f}x", f"{diff:.2e} (of {scale:.1f})"]
        )
    markdown = (
        f"{len(alphas)} strengths ({alphas[0]} .. {alphas[-1]} of the residual norm) at layer {layer} of {depth}, "
        f"{input_ids.shape[0]} chat prompts of {input_ids.shape[1]} tokens, {args.threads} thread(s)\n\n"
        + table(
            ["logits at", "10 full passes, s", "prefix reused, s", "ratio", "max |difference| of logits"],
            rows,
        )
    )
    finish(
        args,
        "sweep_reuse",
        {"layer": layer, "depth": depth, "alphas": alphas, "results": results, "target": 0.65},
        markdown,
    )


if __name__ == "__main__":
    main()
