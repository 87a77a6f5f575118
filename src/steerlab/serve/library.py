"""The server's vector library: a folder of ``.safetensors`` steering vectors, each checked to fit the served model.

A vector's name is its file name without ``.safetensors``. Files are read with safetensors only (never
unpickled); uploads are size-limited, parsed and checked before they are moved into the folder in one atomic
rename, so a half-written or invalid file is never visible to requests.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any

from torch import nn

from steerlab._vector import SteeringVector
from steerlab.errors import FormatError, SteerlabError

__all__ = ["NAME_PATTERN", "VectorLibrary"]

log = logging.getLogger("steerlab.serve")

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
"""Vector names: letters, digits, ``_ . -``, at most 64 characters, starting with a letter or digit."""

_SUFFIX = ".safetensors"


class VectorLibrary:
    """Named steering vectors for one model, backed by a folder.

    Example:
        >>> library = VectorLibrary("vectors/", model)
        >>> library.names()
        ['sentiment']
        >>> library.add("happy", Path("happy.safetensors").read_bytes())
    """

    def __init__(self, folder: str | os.PathLike, model: nn.Module, *, max_bytes: int = 16 * 2**20) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.model = model
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._vectors: dict[str, SteeringVector] = {}
        self.skipped: dict[str, str] = {}
        for path in sorted(self.folder.glob(f"*{_SUFFIX}")):
            name = path.name[: -len(_SUFFIX)]
            try:
                self._vectors[self.check_name(name)] = self._load(path)
            except SteerlabError as error:
                # One bad file must not stop the server; it is reported in the log and in /v1/vectors, which
                # names the file only: a client has no business learning the server's folders.
                self.skipped[path.name] = (
                    str(error).replace(str(path.resolve()), path.name).replace(str(path), path.name)
                )
                log.warning("skipped vector %s: %s", path, error)

    @staticmethod
    def check_name(name: str) -> str:
        """Return ``name`` if it is a valid vector name, else raise :class:`FormatError`."""
        if not isinstance(name, str) or not NAME_PATTERN.match(name) or name.endswith(_SUFFIX):
            raise FormatError(
                f"vector name {name!r} is not valid: use 1-64 letters, digits, '_', '.' or '-', starting with a "
                "letter or digit, without the .safetensors suffix (e.g. 'happy-l10')."
            )
        return name

    def _load(self, path: Path) -> SteeringVector:
        with warnings.catch_warnings():
            # A different model id with the same shape is allowed (base -> chat transfer); the header shows it.
            warnings.simplefilter("ignore", UserWarning)
            return SteeringVector.load(path, model=self.model)

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._vectors)

    def get(self, name: str) -> SteeringVector:
        """The vector called ``name``; :class:`KeyError` if there is none."""
        with self._lock:
            return self._vectors[name]

    def __contains__(self, name: object) -> bool:
        with self._lock:
            return name in self._vectors

    def describe(self, name: str) -> dict[str, Any]:
        """Name and metadata of one vector, as ``GET /v1/vectors`` lists it."""
        vec = self.get(name)
        header = vec.header()
        return {
            "id": name,
            "object": "steering_vector",
            "layers": vec.layers,
            "site": vec.site,
            "method": vec.method,
            "model_id": vec.model_id,
            "fingerprint": header["fingerprint"],
            "relative_scale": all(layer in vec.resid_norm for layer in vec.layers),
            "norms": {str(k): round(float(v.norm()), 4) for k, v in sorted(vec.directions.items())},
            "resid_norm": header["resid_norm"],
            "extra": vec.extra,
        }

    def add(self, name: str, data: bytes, *, overwrite: bool = False) -> SteeringVector:
        """Check ``data`` (the bytes of a ``.safetensors`` vector) and store it as ``name``.

        Raises :class:`FormatError` (bad name, too large, not a steerlab vector), :class:`VectorMismatchError`
        (made for another model) or :class:`FileExistsError` (the name is taken and ``overwrite`` is false).
        Messages call the file "the upload", never by a path on the server.
        """
        self.check_name(name)
        if len(data) > self.max_bytes:
            raise FormatError(f"the vector file has {len(data)} bytes; this server accepts at most {self.max_bytes}.")
        if not data:
            raise FormatError("the upload is empty; send the bytes of a .safetensors vector as the request body.")
        target = self.folder / f"{name}{_SUFFIX}"
        fd, tmp = tempfile.mkstemp(prefix=".upload-", suffix=_SUFFIX, dir=self.folder)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            try:  # safetensors parse + header + fingerprint check against the served model
                vec = self._load(Path(tmp))
            except SteerlabError as error:
                # The message names the temporary file, a path on the server that means nothing to the uploader
                # and shows the server's folder layout: name the upload instead (same error type, same text).
                message = str(error).replace(f"'{tmp}'", "the upload").replace(tmp, "the upload")
                raise type(error)(message) from None
            with self._lock:
                if name in self._vectors and not overwrite:
                    raise FileExistsError(name)
                os.replace(tmp, target)  # atomic: readers see the old file or the new one, never half of one
                self._vectors[name] = vec
            return vec
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def remove(self, name: str) -> None:
        """Delete the vector ``name`` (file and entry); :class:`KeyError` if there is none."""
        with self._lock:
            if name not in self._vectors:
                raise KeyError(name)
            del self._vectors[name]
            (self.folder / f"{name}{_SUFFIX}").unlink(missing_ok=True)
