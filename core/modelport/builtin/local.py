"""Built-in plugin: references that name a local folder or file."""

from __future__ import annotations

import os
from pathlib import Path

from modelport.errors import ReferenceNotFoundError
from modelport.hookspecs import hookimpl
from modelport.options import LoadOptions
from modelport.types import Decision, LocalSource, Source


def _looks_like_path(reference: str) -> bool:
    return (
        reference.startswith(("/", "./", "../", "~", ".\\", "..\\"))
        or reference in (".", "..")
        or (os.sep != "/" and os.sep in reference)
    )


@hookimpl(tryfirst=True)
def modelport_classify_reference(reference: str, options: LoadOptions) -> Decision[Source] | None:
    """An existing path is a local source (checked before any remote id, as vLLM does).

    A reference that is plainly a path (``/``, ``./``, ``~``...) but does not
    exist raises :class:`~modelport.errors.ReferenceNotFoundError` at once,
    rather than being tried as a remote repository id.
    """
    path = Path(reference).expanduser()
    if path.is_dir():
        return Decision(LocalSource(path, reference), "an existing local folder")
    if path.is_file():
        return Decision(LocalSource(path.parent, reference, primary_file=path.name), "an existing local file")
    if _looks_like_path(reference):
        raise ReferenceNotFoundError(reference, f"no such file or folder: {path.resolve()}")
    return None
