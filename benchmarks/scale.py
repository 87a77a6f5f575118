"""Target 6: what extraction and steered generation cost for a 7B and a 70B model, by arithmetic from the shape.

No model is run: FLOPs and bytes follow from each model's published shape (the ``SHAPES`` below, from their
config.json). SmolLM2-135M is in the table too, so the arithmetic can be checked against what the other
benchmarks measure here. GPU time assumes the stated peak bf16 throughput at 40% utilisation (a typical
figure for batched inference of this kind); read the times as orders of magnitude, not promises.

    .venv-bench/bin/python benchmarks/scale.py
"""

from __future__ import annotations

from dataclasses import dataclass

from _common import finish, parse_args, table


@dataclass(frozen=True)
class Shape:
    name: str
    layers: int
    width: int
    heads: int
    kv_heads: int
    ffn: int
    vocab: int
    tied: bool

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @property
    def block_params(self) -> int:
        attention = self.width * self.width * 2 + 2 * self.width * self.kv_heads * self.head_dim
        return attention + 3 * self.width * self.ffn  # gated MLP: gate, up, down

    @property
    def head_params(self) -> int:
        return self.vocab * self.width

    @property
    def params(self) -> int:
        return self.layers * self.block_params + self.head_params * (1 if self.tied else 2)


SHAPES = [
    Shape("SmolLM2-135M", 30, 576, 9, 3, 1536, 49152, tied=True),
    Shape("Llama-2-7B", 32, 4096, 32, 32, 11008, 32000, tied=False),
    Shape("Llama-3-70B", 80, 8192, 64, 8, 28672, 128256, tied=False),
]
GPU = {"name": "A100 80GB", "bf16_flops": 312e12, "memory": 80e9, "bandwidth": 2.0e12, "utilisation": 0.4}
PAIRS, TOKENS, NEW_TOKENS, BATCH = 1000, 64, 128, 16


def gib(n: float) -> str:
    return f"{n / 2**30:.1f}"


def seconds(flops: float) -> str:
    # Layers split over GPUs (device_map) run one after another: more GPUs add memory, not speed, for one batch.
    return f"{flops / (GPU['bf16_flops'] * GPU['utilisation']):.2g}"


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    rows_model, rows_extract, rows_steer = [], [], []
    for shape in SHAPES:
        weights = shape.params * 2  # bf16
        gpus = max(1, -(-int(weights * 1.2) // int(GPU["memory"])))  # 20% headroom for activations and cache
        rows_model.append([shape.name, f"{shape.params / 1e9:.2f}B", shape.layers, shape.width, gib(weights), gpus])
        middle = shape.layers // 2
        tokens = 2 * PAIRS * TOKENS
        ours = 2 * (middle + 1) * shape.block_params * tokens
        full = 2 * (shape.layers * shape.block_params + shape.head_params) * tokens
        mean_bytes = shape.layers * shape.width * 8
        pca_bytes = PAIRS * shape.width * 4
        rows_extract.append(
            [
                shape.name,
                f"{ours / 1e12:.1f}",
                seconds(ours),
                f"{full / 1e12:.1f}",
                f"{full / ours:.2f}x",
                f"{mean_bytes / 2**20:.2f} MiB (all layers)",
                f"{pca_bytes / 2**20:.1f} MiB per layer",
            ]
        )
        per_token = 2 * shape.params
        steer_flops = 2 * shape.width  # one multiply-add of the vector per steered layer and token
        kv_per_token = 2 * shape.layers * shape.kv_heads * shape.head_dim * 2
        rows_steer.append(
            [
                shape.name,
                f"{per_token / 1e9:.2f}",
                f"{steer_flops / per_token:.1e}",
                f"{BATCH * shape.width * 2 / 2**10:.0f} KiB",
                gib(kv_per_token * BATCH * (TOKENS + NEW_TOKENS)),
                seconds(per_token * BATCH * NEW_TOKENS),
                # Each new token reads every weight once; GPUs holding successive layers read one after another.
                f"{weights * NEW_TOKENS / GPU['bandwidth']:.2g}",
            ]
        )
    gpu_note = f"{GPU['name']}, {GPU['bf16_flops'] / 1e12:.0f} TFLOP/s bf16 peak at {GPU['utilisation']:.0%}"
    markdown = "\n\n".join(
        [
            "Models (bf16 weights; GPUs needed with 20% headroom, each " + GPU["name"] + ")",
            table(["model", "parameters", "layers", "width", "weights GiB", "GPUs (device_map)"], rows_model),
            f"Extraction: {PAIRS} pairs x 2 texts x {TOKENS} tokens, read at the middle layer. steerlab stops after "
            "that layer; a full pass (what the peers run) also computes every later block and the output head.",
            table(
                [
                    "model",
                    "steerlab TFLOP",
                    f"steerlab s ({gpu_note})",
                    "full-pass TFLOP",
                    "full / steerlab",
                    "mean_diff statistics",
                    "pca statistics",
                ],
                rows_extract,
            ),
            f"Steered generation: batch {BATCH}, {TOKENS}-token prompts, {NEW_TOKENS} new tokens.",
            table(
                [
                    "model",
                    "GFLOP per token",
                    "steering FLOPs / model FLOPs (one layer)",
                    f"per-row deltas (batch {BATCH}, one hook point)",
                    "KV cache GiB",
                    "compute-bound s",
                    f"weight-reading s ({GPU['bandwidth'] / 1e12:.0f} TB/s)",
                ],
                rows_steer,
            ),
        ]
    )
    finish(args, "scale", {"shapes": [s.__dict__ for s in SHAPES], "gpu": GPU}, markdown)


if __name__ == "__main__":
    main()
