"""Recipes from the literature as functions: data paths in, a vector and its measured effect out, each beside a
same-norm random direction (the control every steering claim needs). The CLI's recipe commands and the scripts
that write docs/ call these.

Example:
    >>> from steerlab.recipes import refusal_direction
    >>> result = refusal_direction(model, tok, harmful_train=..., harmless_train=..., harmful_val=...,
    ...                            harmless_val=..., judge=RefusalClassifier.train(caa_refusal_path))
    >>> result.layer, result.table.where(stage="evaluation")
"""

from steerlab.recipes.caa import CAA_INSTRUCTIONS, CAABehaviour, caa_behaviour
from steerlab.recipes.finetuning import SteeredFinetuning, steered_finetuning
from steerlab.recipes.iti import HeadProbes, head_probes
from steerlab.recipes.refusal import RefusalDirection, refusal_direction

__all__ = [
    "CAA_INSTRUCTIONS",
    "CAABehaviour",
    "HeadProbes",
    "RefusalDirection",
    "SteeredFinetuning",
    "caa_behaviour",
    "head_probes",
    "refusal_direction",
    "steered_finetuning",
]
