"""Target 2: steered greedy generation at most 1.03x the time of unsteered generation, at batch 1 and 8.

One vector (sentiment, mean_diff, the middle layer, 0.15 of the residual norm) added at every position by
steerlab's hook, by steering-vectors' ``SteeringVector.apply`` and by repeng's ``ControlModel`` (which wraps the
decoder block and is unwrapped after each run). Every contender generates exactly the same number of tokens
with the model's own ``generate``; the ratio is against unsteered generation in the same rounds.

    .venv-bench/bin/python benchmarks/steering_overhead.py --repeats 7
"""

from __future__ import annotations

import torch

from _common import chat_batch, finish, greedy, interleaved, load, median, middle_layer, parse_args, peers, table


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], new_tokens=32, strength=0.15)
    from steerlab import Intervention, extract_vector, sentiment_pairs, steer
    from steerlab.datasets import NEUTRAL_PROMPTS

    model, tokenizer = load(args.model)
    layer = middle_layer(model)
    vec = extract_vector(model, tokenizer, sentiment_pairs(), layers=[layer], progress=False)
    intervention = Intervention(vec, alpha=args.strength, scale="relative")
    delta = intervention.deltas()[layer] * args.strength  # the vector every contender adds
    found = peers(args.no_peers)
    results: dict[str, dict[str, float]] = {}
    same_tokens: dict[str, bool] = {}
    rows = []
    for batch_size in (1, 8):
        batch = chat_batch(tokenizer, list(NEUTRAL_PROMPTS[:batch_size]))
        outputs: dict[str, torch.Tensor] = {}

        def run(name, context_factory, batch=batch, outputs=outputs):
            def call():
                with context_factory():
                    outputs[name] = greedy(model, tokenizer, batch, args.new_tokens)

            return call

        from contextlib import contextmanager, nullcontext

        contenders = {
            "unsteered": run("unsteered", nullcontext),
            "steerlab": run("steerlab", lambda: steer(model, [intervention])),
        }
        if "steering_vectors" in found:
            sv_vec = found["steering_vectors"].SteeringVector({layer: delta}, "decoder_block")
            contenders["steering-vectors"] = run("steering-vectors", lambda sv_vec=sv_vec: sv_vec.apply(model))
        if "repeng" in found:
            rp = found["repeng"]
            control = rp.ControlVector(model.config.model_type, {layer: delta.numpy()})

            @contextmanager
            def repeng_controlled(control=control, rp=rp):
                wrapped = rp.ControlModel(model, [layer])  # replaces the block with a wrapper ...
                try:
                    wrapped.set_control(control, 1.0)
                    yield
                finally:
                    wrapped.unwrap()  # ... and puts it back

            contenders["repeng"] = run("repeng", repeng_controlled)
        times = interleaved(contenders, args.repeats)
        base = median(times["unsteered"])
        for name, seconds in times.items():
            ratio = median(seconds) / base
            results[f"{name} @ batch {batch_size}"] = {"median_s": median(seconds), "ratio": ratio}
            agrees = "-" if name in ("unsteered", "steerlab") else torch.equal(outputs[name], outputs["steerlab"])
            if agrees != "-":
                same_tokens[f"{name} @ batch {batch_size}"] = agrees
            rows.append([batch_size, name, median(seconds), f"{ratio:.3f}x", agrees])
    header = (
        f"greedy generation, {args.new_tokens} new tokens per row, layer {layer}, {args.threads} thread(s); "
        "ratio = median time / median unsteered time in the same rounds"
    )
    markdown = (
        header + "\n\n" + table(["batch", "contender", "median s", "vs unsteered", "same tokens as steerlab"], rows)
    )
    worst = max(v["ratio"] for k, v in results.items() if k.startswith("steerlab"))
    finish(
        args,
        "steering_overhead",
        {"layer": layer, "results": results, "same_tokens": same_tokens, "worst_steerlab_ratio": worst, "target": 1.03},
        markdown,
    )


if __name__ == "__main__":
    main()
