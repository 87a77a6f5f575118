"""File formats beyond steerlab's own ``.safetensors``: llama.cpp's GGUF control vectors."""

from steerlab.io.gguf import export_gguf, import_gguf

__all__ = ["export_gguf", "import_gguf"]
