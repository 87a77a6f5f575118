"""Vectors in other formats and places: llama.cpp GGUF control vectors (:mod:`steerlab.io.gguf`), folders for
the Hugging Face Hub (:mod:`steerlab.io.hub`), llama.cpp's runtime (:mod:`steerlab.io.llamacpp`), and condition
files (:mod:`steerlab.io.conditions`: named conditions and their rule, as JSON beside their vectors).

Everything here takes or returns a :class:`~steerlab.SteeringVector` (or conditions of them); the vector itself
knows only its own ``.safetensors`` format.

Example:
    >>> from steerlab.io import export_gguf, import_gguf
    >>> export_gguf(vec, "happy.gguf")
    >>> same = import_gguf("happy.gguf", model)
"""

from steerlab.io.conditions import CONDITIONS_FORMAT, load_conditions, save_conditions
from steerlab.io.gguf import export_gguf, import_gguf
from steerlab.io.hub import export_hub_folder
from steerlab.io.llamacpp import clear_control_vector, set_control_vector

__all__ = [
    "CONDITIONS_FORMAT",
    "clear_control_vector",
    "export_gguf",
    "export_hub_folder",
    "import_gguf",
    "load_conditions",
    "save_conditions",
    "set_control_vector",
]
