"""Values that cross hook boundaries: sources, decisions, specs, registry entries.

Plain frozen dataclasses with documented fields, except :class:`Source`, which
is an abstract class because a source has behaviour (it fetches files).
This module imports nothing heavy: torch and transformers types appear only
under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import fnmatch
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from transformers import PretrainedConfig

    from modelport.options import LoadOptions

T = TypeVar("T")


@dataclass(frozen=True)
class Decision(Generic[T]):
    """A "choose one" hook's answer together with the reason for the trace.

    Any choose-one hook may return ``Decision(value, reason)`` instead of the
    bare value; the pipeline unwraps it and records ``reason`` in the trace.
    """

    value: T
    reason: str = ""


class Source(ABC):
    """Where a model's files live, and how to get them onto local disk.

    Every step after classification reads files only through a source, so it
    never needs to know whether the model is a local folder, a Hugging Face
    repository or something a plugin invented. Paths are relative POSIX paths
    inside the model (``"config.json"``, ``"sub/tokenizer.json"``).

    Attributes:
        kind: short name of the source type (``local``, ``hf``, ``modelscope``...).
        reference: what the user typed.
        revision: the pinned revision (a commit) for versioned sources, else ``None``.
        primary_file: for single-file references (a ``.gguf`` path), that file.
    """

    kind: str = "source"
    reference: str = ""
    revision: str | None = None
    primary_file: str | None = None

    @property
    @abstractmethod
    def location(self) -> str:
        """Human-readable place, used in messages (a path or ``hf:org/name@commit``)."""

    @abstractmethod
    def list_files(self) -> list[str]:
        """Every file of the model, as sorted relative paths."""

    def exists(self, path: str) -> bool:
        """Whether ``path`` is one of the model's files."""
        return path in self.list_files()

    @abstractmethod
    def fetch(self, path: str) -> Path:
        """Materialise one file locally (downloading if needed) and return its local path."""

    def fetch_many(self, paths: Iterable[str]) -> dict[str, Path]:
        """Materialise several files; returns ``{relative path: local path}``."""
        return {p: self.fetch(p) for p in paths}

    def match(self, allow_patterns: Sequence[str] = ("*",), ignore_patterns: Sequence[str] = ()) -> list[str]:
        """The files matching any of ``allow_patterns`` and none of ``ignore_patterns`` (fnmatch)."""
        return [
            p
            for p in self.list_files()
            if any(fnmatch.fnmatch(p, pat) for pat in allow_patterns)
            and not any(fnmatch.fnmatch(p, pat) for pat in ignore_patterns)
        ]

    def describe(self) -> dict[str, Any]:
        """JSON-friendly description for ``inspect`` and the trace."""
        return {"kind": self.kind, "location": self.location, "revision": self.revision}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.location}>"


class LocalSource(Source):
    """A folder on local disk (or, with ``primary_file``, one file in it)."""

    kind = "local"

    def __init__(self, root: Path, reference: str | None = None, primary_file: str | None = None) -> None:
        self.root = root.resolve()
        self.reference = reference if reference is not None else str(root)
        self.primary_file = primary_file
        self._files: list[str] | None = None

    @property
    def location(self) -> str:
        """The folder (or single file) path."""
        return str(self.root / self.primary_file) if self.primary_file else str(self.root)

    def list_files(self) -> list[str]:
        """Files under the folder, excluding hidden folders such as ``.git`` and ``.cache``."""
        if self._files is None:
            files = []
            for path in self.root.rglob("*"):
                rel = path.relative_to(self.root)
                if any(part.startswith(".") for part in rel.parts):
                    continue
                if path.is_file():
                    files.append(rel.as_posix())
            self._files = sorted(files)
        return list(self._files)

    def exists(self, path: str) -> bool:
        """Whether the file exists under the folder (a path climbing out of it never does)."""
        from modelport.containment import is_plain_relative

        return is_plain_relative(path) and (self.root / path).is_file()

    def fetch(self, path: str) -> Path:
        """The file itself; local files need no download.

        Raises:
            InvalidConfigError, WeightsMissingError: the file lies outside the folder (a ``..`` path, an
                absolute path, a link leading out); see :mod:`modelport.containment`.
        """
        from modelport.containment import contained_file

        # The file the user named (a .gguf path) is theirs to point anywhere; everything else stays inside.
        local = self.root / path if path == self.primary_file else contained_file(self.root, path, str(self.root))
        if not local.is_file():
            from modelport.errors import ReferenceNotFoundError

            raise ReferenceNotFoundError(self.reference, f"no file {path!r} in {self.root}")
        return local


@dataclass(frozen=True)
class TokenizerSpec:
    """What tokenizer will be loaded, decided without loading it.

    Attributes:
        mode: the tokenizer mode that answered (``hf``, ``slow``, ``mistral``...).
        source: where its files are.
        files: the tokenizer files that will be read.
        reason: why these.
    """

    mode: str
    source: Source
    files: tuple[str, ...] = ()
    reason: str = ""

    def describe(self) -> dict[str, Any]:
        """JSON-friendly description."""
        return {"mode": self.mode, "location": self.source.location, "files": list(self.files)}


@dataclass(frozen=True)
class WeightFiles:
    """Which weight files a load format will read, decided without reading tensors.

    Attributes:
        load_format: the format that answered (``safetensors``, ``pt``, ``dummy``...).
        source: where the files are.
        files: relative paths of the files, in read order (empty for ``dummy``).
        index_file: the shard index that named ``files``, if any.
        reason: why these.
    """

    load_format: str
    source: Source
    files: tuple[str, ...] = ()
    index_file: str | None = None
    reason: str = ""

    def describe(self) -> dict[str, Any]:
        """JSON-friendly description."""
        return {"load_format": self.load_format, "files": list(self.files), "index_file": self.index_file}


@dataclass(frozen=True)
class ArchitectureChoice:
    """The implementation class picked for a config.

    Attributes:
        name: the architecture name (``LlamaForCausalLM``).
        impl: ``native`` or ``transformers`` (or a plugin's own kind).
        target: ``"module:Class"`` of the implementation, imported on first use.
        plugin: the plugin that registered it.
        reason: why this one.
    """

    name: str
    impl: str
    target: str
    plugin: str = ""
    reason: str = ""


class PatchPhase(IntEnum):
    """Order of post-load config patches. Lower runs first.

    ``hf_overrides`` are applied before every phase (see the pipeline docs),
    so that overridden values are normalised like any others.
    """

    LEGACY_ROPE = 100
    ATTRIBUTE_REMAP = 200
    FORMAT_METADATA = 300
    ARCHITECTURE_FIXUP = 400


@dataclass(frozen=True)
class PatchContext:
    """What a config patch may read besides the config.

    Attributes:
        source: where the model's files are.
        config_format: the detected or requested format.
        options: the load options.
    """

    source: Source
    config_format: str
    options: LoadOptions


@dataclass(frozen=True)
class ConfigPatch:
    """A post-load config patch, registered with ``modelport_register_config_patches``.

    Attributes:
        name: unique name, shown in the trace.
        phase: when it runs (:class:`PatchPhase`); ties keep registration order.
        apply: ``apply(config, context) -> config``; may mutate and return the
            same object or return a new one.
        description: one line for ``modelport plugins``.
        architectures: run only for configs whose ``architectures`` include one
            of these (per-architecture fix-ups); empty means every config.
    """

    name: str
    phase: int
    apply: Callable[[PretrainedConfig, PatchContext], PretrainedConfig | None]
    description: str = ""
    architectures: tuple[str, ...] = ()

    def applies_to(self, hf_config: Any) -> bool:
        """Whether this patch runs for ``hf_config`` (see ``architectures``)."""
        if not self.architectures:
            return True
        names = getattr(hf_config, "architectures", None) or ()
        return any(name in self.architectures for name in names)


@dataclass(frozen=True)
class RegistryEntry:
    """One thing a plugin registered (a format, an architecture, a load format...).

    Attributes:
        kind: the registry (``config_format``, ``config_class``, ``architecture``,
            ``load_format``, ``tokenizer_mode``, ``executor``, ``config_patch``).
        name: the key (a format name, a ``model_type``, an architecture name...).
        plugin: the registering plugin's name.
        target: ``"module:Class"`` where the entry names code, else ``None``.
        description: one line for listings.
        extra: further fields (an architecture's ``impl``, a patch's ``phase``).
    """

    kind: str
    name: str
    plugin: str
    target: str | None = None
    description: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)
