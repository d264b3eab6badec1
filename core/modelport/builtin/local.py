"""Built-in plugin: references that name a local folder or file."""

from __future__ import annotations

import os
from pathlib import Path

from modelport import DEFAULT_MODEL, DEFAULT_REFERENCE
from modelport.errors import ReferenceNotFoundError
from modelport.hookspecs import hookimpl
from modelport.options import LoadOptions
from modelport.types import Decision, LocalSource, Source

#: Suffixes of model files: a reference ending in one names a file, never a repository id.
_FILE_SUFFIXES = (".gguf", ".safetensors", ".bin", ".pt", ".pth", ".json", ".toml")


def _looks_like_path(reference: str) -> bool:
    return (
        reference.startswith(("/", "./", "../", "~", ".\\", "..\\"))
        or reference in (".", "..")
        # ``my-model/`` names a folder: no repository id ends in a slash.
        or reference.endswith("/")
        or (os.sep != "/" and os.sep in reference)
        # Repository ids have one slash at most (``org/name``): ``models/llama/7b`` is a relative path.
        or reference.count("/") > 1
        or reference.lower().endswith(_FILE_SUFFIXES)
    )


@hookimpl(tryfirst=True)
def modelport_classify_reference(reference: str, options: LoadOptions) -> Decision[Source] | None:
    """An existing path is a local source (checked before any remote id, as vLLM does).

    ``"default"`` (:data:`modelport.DEFAULT_REFERENCE`) names the model shipped in
    the package, unless a path of that name exists. A reference that is plainly a
    path (``/``, ``./``, ``~``, a trailing ``/``, two slashes or more, a model file's suffix such as
    ``.gguf``...) but does not exist raises :class:`~modelport.errors.ReferenceNotFoundError` at once,
    rather than being tried as a remote repository id.
    """
    path = Path(reference).expanduser()
    if reference == DEFAULT_REFERENCE and not path.exists():
        # Only when no path of that name exists: a folder called ``default`` here is the user's.
        return Decision(LocalSource(Path(DEFAULT_MODEL), reference), "the model shipped with modelport")
    if path.is_dir():
        return Decision(LocalSource(path, reference), "an existing local folder")
    if path.is_file():
        return Decision(LocalSource(path.parent, reference, primary_file=path.name), "an existing local file")
    if _looks_like_path(reference):
        raise ReferenceNotFoundError(reference, f"no such file or folder: {path.resolve()}")
    return None
