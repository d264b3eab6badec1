"""Containment: a source hands out only files that lie inside its own folder.

A model folder is untrusted input: its shard index may name ``../../x`` or
``/etc/passwd``, and any of its files may be a symbolic link leading anywhere.
Every path a :class:`~modelport.types.LocalSource` answers for is checked
here: it must be a plain relative path (no ``..``, not absolute) and its real
path, links followed, must lie inside the folder. The Hugging Face cache's own
links are allowed: a snapshot folder (``.../models--org--name/snapshots/{commit}``)
holds links into the repository's ``blobs`` folder, so when the folder is such
a snapshot, that ``blobs`` folder counts as inside too.
"""

from __future__ import annotations

from pathlib import Path, PureWindowsPath

from modelport.errors import InvalidConfigError, WeightsMissingError

#: Suffixes of weight files: a refused entry with one is a :class:`WeightsMissingError`, anything else a config error.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".ckpt", ".h5", ".msgpack", ".npz")
#: Prefixes of repository folders in the Hugging Face cache (``models--org--name``...).
HF_CACHE_REPO_PREFIXES = ("models--", "datasets--", "spaces--")


def is_plain_relative(path: str) -> bool:
    """Whether ``path`` is a relative path that cannot climb out of its folder (no ``..``, no root, no drive)."""
    if not isinstance(path, str) or not path or "\0" in path:
        return False
    parts = path.replace("\\", "/").split("/")
    climbs = ".." in parts or "" in parts
    return not climbs and not path.startswith(("/", "\\")) and not PureWindowsPath(path).drive


def allowed_roots(root: Path) -> tuple[Path, ...]:
    """The folders whose files count as inside ``root`` (``root``, and its blobs for a Hugging Face snapshot)."""
    snapshots = root.parent
    if snapshots.name == "snapshots" and snapshots.parent.name.startswith(HF_CACHE_REPO_PREFIXES):
        return (root, snapshots.parent / "blobs")
    return (root,)


def refusal(location: str, path: str, detail: str) -> InvalidConfigError | WeightsMissingError:
    """The error for entry ``path`` that a source refuses to hand out: weights missing, or a bad config."""
    if path.lower().endswith(WEIGHT_SUFFIXES):
        return WeightsMissingError(location, f"{path!r} {detail}")
    return InvalidConfigError(location, f"{path!r} {detail}", field=None)


def contained_file(root: Path, path: str, location: str) -> Path:
    """``root / path`` when it lies inside ``root`` (links followed), else a typed error naming the entry.

    ``root`` must be resolved already (no links in it).

    Raises:
        WeightsMissingError: a weight file (by its suffix) that is outside the folder.
        InvalidConfigError: any other file outside the folder.
    """
    if not is_plain_relative(path):
        raise refusal(location, str(path), "is not a relative path inside the model folder; it is not read")
    local = root / path
    try:
        real = local.resolve()
    except (OSError, RuntimeError) as exc:  # a link loop
        raise refusal(location, path, f"cannot be resolved ({type(exc).__name__}: {exc})") from exc
    if not any(real.is_relative_to(inside) for inside in allowed_roots(root)):
        raise refusal(
            location,
            path,
            f"is a link leading outside the model folder (to {real}); modelport reads only files inside "
            "the folder it was given (copy the file in, or load the folder it lives in)",
        )
    return local


__all__ = ["HF_CACHE_REPO_PREFIXES", "WEIGHT_SUFFIXES", "allowed_roots", "contained_file", "is_plain_relative"]
