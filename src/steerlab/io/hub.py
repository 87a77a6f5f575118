"""Share vectors: a folder ready to upload to the Hugging Face Hub, and loading a vector from a repo id.

A shared vector is a folder (or Hub repo) holding ``vector.safetensors`` and a ``README.md`` model card written
from the vector's metadata. :meth:`SteeringVector.load` accepts such a folder or a repo id (downloaded through
``huggingface_hub``, which honours ``HF_HUB_OFFLINE`` and the local cache) as well as a file.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

from steerlab.errors import FormatError

if TYPE_CHECKING:
    from steerlab.vector import SteeringVector

__all__ = ["VECTOR_FILENAME", "export_hub_folder", "resolve_vector_source"]

VECTOR_FILENAME = "vector.safetensors"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_vector_source(source: str | Path, *, filename: str | None = None, revision: str | None = None) -> Path:
    """The local path of a vector given as a file, a folder, or a Hugging Face Hub repo id."""
    path = Path(source).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        if filename is not None:
            return path / filename
        if (path / VECTOR_FILENAME).is_file():
            return path / VECTOR_FILENAME
        found = sorted(path.glob("*.safetensors"))
        if len(found) != 1:
            raise FormatError(
                f"folder '{path}' holds {len(found)} .safetensors files and no {VECTOR_FILENAME}; "
                "name the file (filename=...)."
            )
        return found[0]
    text = str(source)
    if _REPO_ID.match(text) and not text.endswith(".safetensors"):
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

        try:
            return Path(hf_hub_download(text, filename or VECTOR_FILENAME, revision=revision))
        except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as err:
            raise FormatError(
                f"cannot get '{filename or VECTOR_FILENAME}' from the Hugging Face Hub repo '{text}' "
                f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). Check the "
                "repo id, your network, or give a local file."
            ) from err
    raise FormatError(f"vector file '{source}' does not exist (nor is it a folder or a Hub repo id 'org/name').")


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
        f"with steer(model, vector, alpha=1.0, layers=[{layer}]):",
        "    ...  # model.generate(...)",
        "```",
        "",
        'Or from the command line: `steerlab generate --vector vector.safetensors --prompt "..." --alphas -8,0,8`.',
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
