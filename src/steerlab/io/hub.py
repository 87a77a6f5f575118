"""Share vectors: a folder ready to upload to the Hugging Face Hub, and loading a vector from a repo id.

A shared vector is a folder (or Hub repo) holding ``vector.safetensors`` and a ``README.md`` model card written
from the vector's metadata. :meth:`SteeringVector.load` accepts such a folder or a repo id (downloaded through
``huggingface_hub``, which honours ``HF_HUB_OFFLINE`` and the local cache) as well as a file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from steerlab._vector import _REPO_ID, VECTOR_FILENAME
from steerlab.errors import FormatError

if TYPE_CHECKING:
    from steerlab._vector import SteeringVector

__all__ = ["VECTOR_FILENAME", "export_hub_folder"]


def _model_card(vector: SteeringVector) -> str:
    header = vector.header()
    base = vector.model_id if _REPO_ID.match(vector.model_id) else None
    front = ["---", "library_name: steerlab", "tags:", "- steering-vector", "- activation-steering"]
    if base:
        front.append(f"base_model: {base}")
    front.append("---")
    fp = vector.fingerprint
    rows = [
        ("model", f"`{vector.model_id}` ({fp.model_type}, {fp.num_layers} layers, width {fp.hidden_size})"),
        ("method", vector.method),
        ("site", vector.site),
        ("layers", ", ".join(map(str, vector.layers))),
        ("normalized", str(vector.normalized)),
        ("data set sha256", f"`{vector.dataset_hash}`" if vector.dataset_hash else "-"),
        ("steerlab", vector.library_version),
    ]
    norms = ", ".join(f"{k}: {float(v.norm()):.3g}" for k, v in sorted(vector.directions.items()))
    layer = vector.layers[len(vector.layers) // 2]
    body = [
        f"# Steering vector for {vector.model_id}",
        "",
        "An activation-steering vector made with steerlab: one direction per layer, added to "
        "(or removed from) the residual stream at run time; no fine-tuning.",
        "",
        "| | |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in rows],
        "",
        f"Direction norms per layer: {norms}.",
        "",
        "## Use",
        "",
        "```python",
        "from steerlab import SteeringVector, load_model, steer",
        f'model, tokenizer = load_model("{vector.model_id}")',
        'vector = SteeringVector.load("<this repo id>", model=model)   # checks that it fits the model',
        f"with steer(model, vector, alpha=0.15, layers=[{layer}]):   # 15% of the layer's residual norm",
        "    ...  # model.generate(...)",
        "```",
        "",
        "Or from the command line: "
        '`steerlab generate --vector vector.safetensors --prompt "..." --alphas -0.15,0,0.15`.',
        "",
        "## Metadata",
        "",
        "```json",
        json.dumps(header, indent=2),
        "```",
        "",
    ]
    return "\n".join(front + [""] + body)


def export_hub_folder(vector: SteeringVector, folder: str | Path) -> Path:
    """Write ``folder/vector.safetensors`` and ``folder/README.md`` (a model card), ready to upload.

    Example:
        >>> export_hub_folder(vec, "happy-smollm2")   # then: huggingface-cli upload me/happy-smollm2 happy-smollm2
    """
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise FormatError(f"'{folder}' exists and is not empty; choose a new folder.")
    folder.mkdir(parents=True, exist_ok=True)
    vector.save(folder / VECTOR_FILENAME)
    (folder / "README.md").write_text(_model_card(vector), encoding="utf-8")
    return folder
