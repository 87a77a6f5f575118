"""Where generation runs. Today: the built-in transformers engine (:mod:`steerlab.engines.transformers`).

Steering is installed around an engine's forward passes by :func:`steerlab.steer`; an engine only turns prompts
into tokens and tokens into text. Prompt preparation (chat template, tokenising, padding) is exported here too,
since every engine and every caller that builds its own batches needs the same rules.

Example:
    >>> from steerlab.engines import apply_chat, encode, pad_batch, pad_id
    >>> ids = encode(tokenizer, [apply_chat(tokenizer, "Tell me about your weekend.")])
    >>> input_ids, mask = pad_batch(ids, pad_id(tokenizer), side="left")
"""

from steerlab._text import apply_chat, apply_messages, encode, has_chat_template, pad_batch, pad_id
from steerlab.engines.transformers import eos_ids, generate, generate_batch, generated_nll

__all__ = [
    "apply_chat",
    "apply_messages",
    "encode",
    "eos_ids",
    "generate",
    "generate_batch",
    "generated_nll",
    "has_chat_template",
    "pad_batch",
    "pad_id",
]
