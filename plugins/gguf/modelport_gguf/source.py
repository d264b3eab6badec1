"""GGUF references: a ``.gguf`` file, a folder of GGUF files, ``org/repo:QUANT`` and ``org/repo/file.gguf``.

Whatever the reference, the result is an ordinary source (a
:class:`~modelport.types.LocalSource`, or modelport-hf's ``HubSource``) whose
``primary_file`` is the chosen GGUF file: the only one of a single-file
model, or the first part (``*-00001-of-0000N.gguf``) of a split one, whose
other parts :func:`gguf_parts` finds beside it. Every later step reads that
file through the source, so for a Hub repository only the chosen file (or
parts) is ever downloaded.

Local files are recognised by their magic (``GGUF``), never by their name. A
quantisation (``:Q4_K_M``, any case) picks among several files by the name
each carries, as the Hub's GGUF repositories name them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from modelport.errors import ReferenceNotFoundError, WeightsMissingError
from modelport.options import LoadOptions
from modelport.types import Decision, LocalSource, Source
from modelport_gguf.header import has_gguf_magic

#: ``stem-00001-of-00003.gguf``: the parts of a model split by llama.cpp's gguf-split.
SPLIT_PATTERN = re.compile(r"^(?P<stem>.*)-(?P<part>\d{5})-of-(?P<count>\d{5})\.gguf$", re.IGNORECASE)
#: A quantisation name as the Hub's GGUF repositories spell it in file names.
QUANT_PATTERN = re.compile(
    r"(?<![A-Za-z0-9])(I?Q\d_(?:K_[SMLX]{1,2}|K|NL|XXS|XS|S|M|L|\d|0_4_[48]|0_8_8)|TQ\d_\d|MXFP4|BF16|F16|F32|FP16)"
    r"(?![A-Za-z0-9])",
    re.IGNORECASE,
)
#: What a quantisation suffix of a reference looks like (``:Q4_K_M``, ``:q8_0``, ``:bf16``).
QUANT_SUFFIX = re.compile(r"^[A-Za-z0-9_]{2,16}$")
_HUB_FILE = re.compile(r"^(?P<repo>[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+)/(?P<file>[^:]+\.gguf)$", re.IGNORECASE)


def gguf_parts(source: Source) -> tuple[str, ...]:
    """The files of the model in ``source.primary_file``: itself, or every part of a split model, in order.

    Raises:
        WeightsMissingError: a part of a split model is absent.
    """
    primary = source.primary_file
    if primary is None:
        return ()
    path = PurePosixPath(primary)
    match = SPLIT_PATTERN.match(path.name)
    if match is None:
        return (primary,)
    count = int(match["count"])
    stem = match["stem"]
    parent = "" if str(path.parent) == "." else f"{path.parent}/"
    parts = tuple(f"{parent}{stem}-{i:05d}-of-{count:05d}.gguf" for i in range(1, count + 1))
    listed = set(source.list_files())
    missing = [p for p in parts if p not in listed]
    if missing:
        raise WeightsMissingError(source.location, f"split GGUF model lacks part(s): {', '.join(missing)}")
    return parts


def quant_of(name: str) -> str | None:
    """The quantisation a file name carries (``Q4_K_M``), upper-cased, or ``None``."""
    found = QUANT_PATTERN.findall(PurePosixPath(name).as_posix())
    return found[-1].upper() if found else None


def _model_sets(files: Iterable[str]) -> dict[str, list[str]]:
    """Group GGUF files into models: a single file, or the parts of one split model (keyed by the first part)."""
    models: dict[str, list[str]] = {}
    for f in sorted(files):
        name = PurePosixPath(f).name
        if name.lower().startswith("mmproj"):
            continue  # vision projectors ship beside the language model; they are not a model of their own
        match = SPLIT_PATTERN.match(name)
        if match is None:
            models[f] = [f]
            continue
        first = f[: len(f) - len(name)] + f"{match['stem']}-00001-of-{match['count']}.gguf"
        models.setdefault(first, []).append(f)
    return models


def choose_file(files: Iterable[str], quant: str | None, where: str) -> str:
    """The primary file among GGUF ``files`` for ``quant`` (any case), or the only model when ``quant`` is ``None``.

    Raises:
        ReferenceNotFoundError: no file, no file of that quantisation, or several models to choose from
            (the message lists the quantisations present).
    """
    models = _model_sets(files)
    available = sorted({q for q in (quant_of(f) for f in models) if q})
    if not models:
        raise ReferenceNotFoundError(where, "it holds no GGUF file")
    if quant is None:
        if len(models) == 1:
            return next(iter(models))
        raise ReferenceNotFoundError(
            where,
            f"it holds {len(models)} GGUF models ({', '.join(available) or ', '.join(models)}); "
            "choose one with ':QUANT' (for example ':" + (available[0] if available else "Q4_K_M") + "')",
        )
    wanted = quant.upper()
    chosen = [f for f in models if quant_of(f) == wanted]
    if len(chosen) == 1:
        return chosen[0]
    if not chosen:
        raise ReferenceNotFoundError(
            where, f"no GGUF file of quantisation {wanted!r}; available: {', '.join(available) or '(none named)'}"
        )
    raise ReferenceNotFoundError(where, f"several GGUF files of quantisation {wanted!r}: {', '.join(chosen)}")


def _local_gguf_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_file() and has_gguf_magic(p))


def classify(reference: str, options: LoadOptions) -> Decision[Source] | None:
    """A source for a GGUF reference, or ``None`` when ``reference`` is not one (see the module docstring)."""
    path = Path(reference).expanduser()
    if path.is_file():
        if not has_gguf_magic(path):
            return None
        source = LocalSource(path.parent, reference, primary_file=path.name)
        return Decision(source, "a local file with the GGUF magic")
    if path.is_dir():
        if (path / "config.json").is_file():
            return None  # a Hugging Face folder (GGUF files beside config.json are not chosen implicitly)
        files = _local_gguf_files(path)
        if not files:
            return None
        chosen = choose_file(files, None, reference)
        return Decision(
            LocalSource(path, reference, primary_file=chosen), f"the only GGUF model in the folder: {chosen}"
        )
    base, sep, quant = reference.rpartition(":")
    if sep and base and QUANT_SUFFIX.match(quant):
        folder = Path(base).expanduser()
        if folder.is_dir():
            chosen = choose_file(_local_gguf_files(folder), quant, base)
            return Decision(
                LocalSource(folder, reference, primary_file=chosen), f"quantisation {quant.upper()}: {chosen}"
            )
        if _looks_like_repo(base) and options.effective_hub == "hf":  # ModelScope ids: modelport-modelscope's
            return _hub(
                reference, base, options, lambda files: choose_file(files, quant, base), f"quantisation {quant.upper()}"
            )
        return None
    match = _HUB_FILE.match(reference)
    if match and not path.exists() and options.effective_hub == "hf":
        name = match["file"]
        return _hub(reference, match["repo"], options, lambda files: _named(files, name, reference), "the file named")
    return None


def _named(files: list[str], name: str, reference: str) -> str:
    if name not in files:
        raise ReferenceNotFoundError(reference, f"the repository has no file {name!r}")
    return name


def _looks_like_repo(base: str) -> bool:
    try:
        from modelport_hf.hub import looks_like_repo_id
    except ImportError:  # pragma: no cover - modelport-hf is a dependency
        return False
    return looks_like_repo_id(base) and "/" in base


def _hub(reference: str, repo_id: str, options: LoadOptions, pick: object, how: str) -> Decision[Source] | None:
    if getattr(options, "effective_hub", "hf") != "hf":
        return None  # repository ids go to the hub chosen (modelport-modelscope picks the GGUF file itself)
    from modelport_hf.hub import HubSource

    source = HubSource.from_options(repo_id, options)
    files = [f for f in source.list_files() if f.lower().endswith(".gguf")]
    chosen = pick(files)  # type: ignore[operator]
    source.primary_file = chosen
    source.reference = reference
    return Decision(source, f"a Hub GGUF repository; {how}: {chosen}; {source.pinned_by}")
