"""Condition files: named conditions and the rule that combines them, as a JSON file beside the conditions'
vectors, so a gate found once (``steerlab condition find``) is applied anywhere (``steerlab generate --condition``,
:func:`load_conditions` in Python).

The JSON mirrors a server request's ``conditions`` and a steering entry's ``condition`` (docs/serving.md): each
condition names its vector (a ``.safetensors`` path, relative to the JSON file) and the options of
:class:`steerlab.Condition`; options left out come from the point ``find_condition_point`` recorded in the vector,
else the library's defaults. ``rule`` is a condition's name or ``{"any": [...]}`` / ``{"all": [...]}`` /
``{"not": ...}`` of names (optional with one condition). Other top-level keys (``search``: what the search found)
are kept for people and ignored on load::

    {"format": "steerlab-conditions", "version": 1, "steerlab_version": "0.9.0",
     "conditions": {"cooking": {"vector": "cooking.cooking.safetensors", "threshold": 0.21, "layers": [6],
                                "comparison": "cosine", "side": "greater", "reduce": "mean"}},
     "rule": "cooking"}
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from steerlab._conditions import Condition, Gate, Rule
from steerlab._vector import SteeringVector
from steerlab._version import __version__
from steerlab.errors import FormatError, SteerlabError

__all__ = ["CONDITIONS_FORMAT", "load_conditions", "save_conditions"]

CONDITIONS_FORMAT = "steerlab-conditions"
"""The ``format`` field of a condition file."""

_VERSION = 1
_OPTIONS = ("threshold", "layers", "comparison", "side", "reduce")
_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def save_conditions(
    path: str | Path,
    conditions: Condition | Mapping[str, Condition],
    rule: str | Mapping[str, Any] | None = None,
    *,
    info: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``conditions`` (one, or a mapping name -> condition) and the ``rule`` that combines them to the JSON
    file ``path``; each condition's vector is written beside it as ``<stem>.<name>.safetensors``. ``info``: free
    facts kept under ``search`` (e.g. the held-out F1). Returns ``path``.

    Example:
        >>> save_conditions("cooking.json", {"cooking": search.condition}, info={"held_out_f1": 0.95})
        >>> save_conditions("gate.json", {"a": cond_a, "b": cond_b}, {"all": ["a", {"not": "b"}]})
    """
    path = Path(path)
    named = {"condition": conditions} if isinstance(conditions, Condition) else dict(conditions)
    if not named:
        raise SteerlabError("save_conditions needs at least one condition; got none.")
    for name, condition in named.items():
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise SteerlabError(f"a condition's name becomes part of a file name: use letters, digits, '_', '.' or "
                                f"'-' only; got {name!r}.")  # fmt: skip
        if not isinstance(condition, Condition):
            raise SteerlabError(f"condition '{name}' is a {type(condition).__name__}, not a Condition; a rule of "
                                "several goes in rule=, naming them.")  # fmt: skip
    rule = _default_rule(named, rule)
    Rule.parse(rule, named)  # refuse a rule that cannot be loaded back, before writing anything
    entries = {}
    for name, condition in named.items():
        vector_path = path.with_name(f"{path.stem}.{name}.safetensors")
        path.parent.mkdir(parents=True, exist_ok=True)
        condition.vector.save(vector_path)
        entries[name] = {
            "vector": vector_path.name,
            "threshold": condition.threshold,
            "layers": list(condition.layers or ()),
            "comparison": condition.comparison,
            "side": condition.side,
            "reduce": condition.reduce,
        }
    body: dict[str, Any] = {
        "format": CONDITIONS_FORMAT,
        "version": _VERSION,
        "steerlab_version": __version__,
        "conditions": entries,
        "rule": rule,
    }
    if info:
        body["search"] = dict(info)
    path.write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")
    return path


def load_conditions(path: str | Path) -> Gate:
    """The gate a condition file describes: its one condition, or its rule over the named conditions. Every problem
    (a missing vector file, an unknown option, a NaN threshold, a rule naming an unknown condition) raises a
    :class:`~steerlab.SteerlabError` that names the file and the condition. Whether the vectors fit a model is
    checked where the gate is used (:func:`steerlab.steer`).

    Example:
        >>> gate = load_conditions("cooking.json")
        >>> with steer(model, Intervention(happy, alpha=0.2, layers=[10], condition=gate)):
        ...     ...
    """
    path = Path(path)
    if not path.is_file():
        raise FormatError(f"condition file '{path}' does not exist; write one with `steerlab condition find` or "
                          "steerlab.io.save_conditions.")  # fmt: skip
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise FormatError(
            f"condition file '{path}' is not JSON ({err}); expected an object with 'conditions'."
        ) from None
    if not isinstance(body, dict) or not isinstance(body.get("conditions"), dict) or not body["conditions"]:
        raise FormatError(
            f"condition file '{path}' has no 'conditions' object; expected "
            '{"conditions": {"name": {"vector": "file.safetensors", "threshold": 0.1}}, "rule": "name"}.'
        )
    if body.get("format", CONDITIONS_FORMAT) != CONDITIONS_FORMAT:
        raise FormatError(f"'{path}' is a '{body['format']}' file, not a condition file ('{CONDITIONS_FORMAT}').")
    version = body.get("version", _VERSION)
    if not isinstance(version, int) or version > _VERSION:
        raise FormatError(f"condition file '{path}' has format version {version!r}; this steerlab "
                          f"({__version__}) reads version {_VERSION}: upgrade steerlab.")  # fmt: skip
    named = {name: _condition(path, name, entry) for name, entry in body["conditions"].items()}
    try:
        return Rule.parse(_default_rule(named, body.get("rule")), named)
    except SteerlabError as err:
        raise type(err)(f"condition file '{path}', rule: {err}") from None


def _default_rule(named: Mapping[str, Condition], rule: Any) -> Any:
    if rule is not None:
        return rule
    if len(named) == 1:
        return next(iter(named))
    raise SteerlabError(f"{len(named)} conditions ({sorted(named)}) need a rule that combines them, e.g. "
                        f'{{"all": {json.dumps(sorted(named))}}}.')  # fmt: skip


def _condition(path: Path, name: str, entry: Any) -> Condition:
    where = f"condition file '{path}', condition '{name}'"
    if not isinstance(entry, dict) or not isinstance(entry.get("vector"), str):
        raise FormatError(f"{where}: expected an object with 'vector' (a .safetensors path relative to the file) and "
                          f"options {list(_OPTIONS)}; got {entry!r}.")  # fmt: skip
    unknown = sorted(set(entry) - {"vector", *_OPTIONS})
    if unknown:  # a misspelt option would otherwise fall back to a default silently
        raise FormatError(f"{where}: unknown keys {unknown}; expected 'vector' and some of {list(_OPTIONS)}.")
    vector_path = path.parent / entry["vector"]
    if not vector_path.is_file():
        raise FormatError(f"{where}: its vector '{vector_path}' does not exist; paths are relative to the file.")
    given = {key: entry[key] for key in _OPTIONS if entry.get(key) is not None}
    try:
        vector = SteeringVector.load(vector_path)
        return Condition.recorded(vector, **given)
    except SteerlabError as err:
        raise type(err)(f"{where}: {err}") from None
