"""The exception tree of steerlab.

Every error a user can cause derives from :class:`SteerlabError`, so callers (and the CLI) can catch one
type. Messages follow one pattern: what was expected, what was found, and how to fix it.
"""

from __future__ import annotations

__all__ = [
    "SteerlabError",
    "ModelLoadError",
    "ArchitectureError",
    "DataError",
    "ExtractionError",
    "VectorMismatchError",
    "FormatError",
    "SteeringError",
    "StrengthWarning",
]


class SteerlabError(Exception):
    """Base class of every error steerlab raises on bad input."""


class ModelLoadError(SteerlabError):
    """A model spec names nothing loadable."""


class ArchitectureError(SteerlabError):
    """The decoder layers of a model could not be found or do not match its config."""


class DataError(SteerlabError):
    """A contrast data set is empty, unbalanced, duplicated or malformed."""


class ExtractionError(SteerlabError):
    """Activations cannot give a direction (too few pairs, NaN, shape mismatch)."""


class VectorMismatchError(SteerlabError):
    """A steering vector does not fit the model (width, layers, model fingerprint)."""


class FormatError(SteerlabError):
    """A file is not a valid steerlab vector (or is of a newer format version)."""


class SteeringError(SteerlabError):
    """A steering request is invalid (unknown position spec, layer not in the vector, NaN alpha)."""


class StrengthWarning(UserWarning):
    """An intervention pushes harder than the documented breakdown point
    (:data:`steerlab.types.BREAKDOWN_STRENGTH` of the residual norm): expect broken text. Silence it with
    ``warnings.simplefilter("ignore", StrengthWarning)`` when that is what you are measuring."""
