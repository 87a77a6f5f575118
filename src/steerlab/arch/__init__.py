"""Where the decoder layers of a model live, for every architecture we know and a guess for the rest."""

from steerlab.arch.registry import (
    SITES,
    ArchSpec,
    ModelLayout,
    get_layout,
    register_architecture,
    registered_architectures,
    set_architecture,
)

__all__ = [
    "SITES",
    "ArchSpec",
    "ModelLayout",
    "get_layout",
    "register_architecture",
    "registered_architectures",
    "set_architecture",
]
