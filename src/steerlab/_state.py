"""What steerlab remembers about a model object, kept beside the model instead of written onto it.

One :class:`ModelState` per model object, in a :class:`weakref.WeakKeyDictionary`: the user's model gets no
``_steerlab_*`` attribute (which ``save_pretrained``, ``repr`` or the user's own code could meet), and the state
goes when the model is garbage collected. Nothing in a state may refer back to its model, or the model would
never be collected: the cached layout holds submodules (the block list, the final norm), never the model itself.

The state belongs to the object, not to its weights: ``copy.deepcopy(model)`` is a new model to steerlab, with no
architecture override, no name (:func:`steerlab._models.model_id` falls back to ``config.name_or_path``) and
its layout resolved again on first use.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ModelState", "peek", "state"]


@dataclass
class ModelState:
    """steerlab's per-model facts.

    Attributes:
        arch: the :class:`~steerlab.arch.ArchSpec` set by :func:`steerlab.arch.set_architecture` (wins over the
            registry), or ``None``.
        layout: the :class:`~steerlab.arch.ModelLayout` :func:`steerlab.arch.get_layout` resolved last, or ``None``.
        layout_key: what that layout was resolved from (model type, dimensions, the spec used); the layout is
            reused only while the model still gives the same key.
        model_id: the name the model was loaded under (:func:`steerlab.load_model`), or ``None``.
        baked: what :mod:`steerlab.bake` baked into this model's weights, in order (one dict per call).
    """

    # Typed Any: this module sits below arch/ in the import layers, so it cannot name ArchSpec or ModelLayout.
    arch: Any = None
    layout: Any = None
    layout_key: tuple[Any, ...] | None = None
    model_id: str | None = None
    baked: list[dict[str, Any]] = field(default_factory=list)


_STATES: weakref.WeakKeyDictionary[Any, ModelState] = weakref.WeakKeyDictionary()
# The server validates requests on one thread while its worker runs the model on another: without the lock two
# first calls could each create a state and one of them (with what was written to it) would be lost.
_LOCK = threading.Lock()


def state(model: Any) -> ModelState:
    """The state of ``model``, created empty on first use."""
    with _LOCK:
        found = _STATES.get(model)
        if found is None:
            found = _STATES[model] = ModelState()
        return found


def peek(model: Any) -> ModelState | None:
    """The state of ``model`` if steerlab has one, without creating it."""
    with _LOCK:
        return _STATES.get(model)
