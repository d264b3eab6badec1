"""Hook implementations of modelport-gguf.

GGUF references become sources whose ``primary_file`` is the chosen GGUF
file (see :mod:`modelport_gguf.source`); the ``gguf`` config format, the
``gguf`` tokenizer mode and the ``gguf`` load format then read that file's
validated header (:mod:`modelport_gguf.header`). Heavy imports (torch,
transformers, tokenizers) happen inside hook bodies only; gguf-py itself is
used by the testing kit's writer and the tests, never to read a file.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from modelport.errors import WeightsMissingError
from modelport.hookspecs import hookimpl
from modelport.options import LoadOptions
from modelport.registry import Registry
from modelport.types import Decision, Source, TokenizerSpec, WeightFiles
from modelport_gguf.architectures import TABLES


def _gguf_primary(source: Source) -> str | None:
    """The source's primary file when it is a GGUF file, by its magic (fetching it first if remote)."""
    from modelport_gguf.header import has_gguf_magic

    primary = source.primary_file
    if primary is None or not has_gguf_magic(source.fetch(primary)):
        return None
    return primary


def _header(source: Source) -> Any:
    from modelport_gguf.header import cached_header

    assert source.primary_file is not None
    return cached_header(source.fetch(source.primary_file))


@hookimpl(tryfirst=True)
def modelport_classify_reference(reference: str, options: LoadOptions) -> Decision[Source] | None:
    """A ``.gguf`` file (by its magic), a folder of GGUF files, ``path:QUANT``, ``org/repo:QUANT``, ``org/repo/f.gguf``.

    ``tryfirst``, ahead of core's local paths, because ``folder:Q4_K_M`` and
    ``org/repo/file.gguf`` look like paths that do not exist; it passes on
    everything else (Hugging Face folders, other files, plain repository ids).
    """
    from modelport_gguf.source import classify

    return classify(reference, options)


@hookimpl
def modelport_register_config_formats(register: Callable[..., None]) -> None:
    """``gguf``: the config comes from a GGUF file's metadata."""
    register("gguf", "GGUF file metadata (general.architecture and its keys)")


@hookimpl
def modelport_detect_config_format(source: Source, options: LoadOptions) -> Decision[str] | None:
    """``gguf`` for a source whose primary file has the GGUF magic; ``hf`` when a config.json lies beside it."""
    from modelport_gguf.header import has_gguf_magic

    primary = source.primary_file
    if primary is None:
        return None
    local = source.fetch(primary)
    if not has_gguf_magic(local):
        return None
    if source.exists("config.json"):
        return Decision("hf", f"config.json beside {primary} wins over the GGUF metadata")
    return Decision("gguf", f"{primary} starts with the GGUF magic")


@hookimpl
def modelport_register_gguf_architectures(register: Callable[..., None]) -> None:
    """Tables for llama, mistral, mixtral, qwen2, qwen3, qwen2moe, qwen3moe, gemma2, gemma3, phi3, starcoder2, gpt2...

    ...and falcon (see :data:`modelport_gguf.architectures.TABLES`).
    """
    for name, table in TABLES.items():
        register(name, f"modelport_gguf.architectures:{table}", f"GGUF {name!r} metadata and tensor names")


@hookimpl
def modelport_parse_config(source: Source, config_format: str, options: LoadOptions, registry: Registry) -> Any:
    """The GGUF metadata through the registered table for its ``general.architecture`` (named in the trace)."""
    if config_format != "gguf" or source.primary_file is None:
        return None
    from modelport_gguf.config import build_config

    header = _header(source)
    config, table, plugin = build_config(header, registry)
    return Decision(
        config,
        f"GGUF v{header.version} metadata of {source.primary_file}; architecture {header.architecture!r} "
        f"through the {table!r} table registered by {plugin}",
    )


@hookimpl
def modelport_register_tokenizer_modes(register: Callable[..., None]) -> None:
    """``gguf``: a fast tokenizer built from the GGUF file's ``tokenizer.ggml.*`` metadata."""
    register("gguf", "a fast tokenizer built from the GGUF file's tokenizer.ggml.* metadata")


@hookimpl(tryfirst=True)
def modelport_resolve_tokenizer(source: Source, hf_config: Any, options: LoadOptions) -> Decision[TokenizerSpec] | None:
    """The GGUF file's own tokenizer metadata (``tryfirst``: ahead of tokenizer files that ship beside it)."""
    if options.tokenizer_mode not in ("auto", "gguf") or _gguf_primary(source) is None:
        return None
    header = _header(source)
    model = header.get("tokenizer.ggml.model")
    if not isinstance(model, str):
        return None
    primary = source.primary_file or ""
    return Decision(
        TokenizerSpec("gguf", source, (primary,), f"tokenizer.ggml.model={model!r}"),
        f"tokenizer.ggml.model={model!r}, pre-tokenizer {header.get('tokenizer.ggml.pre', 'default')!r} in {primary}",
    )


@hookimpl
def modelport_load_tokenizer(spec: TokenizerSpec, options: LoadOptions) -> Any:
    """A ``PreTrainedTokenizerFast`` from the metadata (see :mod:`modelport_gguf.tokenizer`).

    It is wrapped as modelport-hf wraps its tokenizers (:func:`modelport_hf.tokenizer.cached_tokenizer`), so that
    ``tokenizer.chat_template``, a program from the file, renders under the same time, memory and output budget,
    and fails as a TokenizerError.
    """
    if spec.mode != "gguf":
        return None
    from modelport_gguf.tokenizer import build_tokenizer
    from modelport_hf.tokenizer import cached_tokenizer

    return cached_tokenizer(build_tokenizer(_header(spec.source)))


@hookimpl
def modelport_register_load_formats(register: Callable[..., None]) -> None:
    """``gguf``: tensors of the GGUF file (every part of a split one), dequantised in torch."""
    register("gguf", "GGUF tensors, memory-mapped, dequantised in torch one tensor at a time")


@hookimpl(tryfirst=True)
def modelport_select_weight_files(
    source: Source, config_format: str, hf_config: Any, options: LoadOptions
) -> Decision[WeightFiles] | None:
    """The GGUF file, or every part of a split model, in order (``tryfirst``: whatever config format answered)."""
    if options.load_format not in ("auto", "gguf"):
        return None
    if _gguf_primary(source) is None:
        if options.load_format == "gguf":
            raise WeightsMissingError(source.location, "load_format='gguf' needs a GGUF file reference")
        return None
    from modelport_gguf.source import gguf_parts

    parts = gguf_parts(source)
    reason = f"{len(parts)} parts of a split GGUF model" if len(parts) > 1 else "the GGUF file"
    return Decision(WeightFiles("gguf", source, parts), reason)


@hookimpl
def modelport_iter_weights(weights: WeightFiles, hf_config: Any, options: LoadOptions) -> Any:
    """Every tensor renamed to its Hugging Face name and dequantised straight to the model's dtype."""
    if weights.load_format != "gguf":
        return None
    import torch

    from modelport.facts import resolve_dtype
    from modelport_gguf.config import find_table
    from modelport_gguf.header import cached_header
    from modelport_gguf.weights import iter_tensors

    files = weights.source.fetch_many(weights.files)
    first = cached_header(files[weights.files[0]])
    registry = _registry()
    _, table, _ = find_table(first, registry)
    dtype = getattr(torch, resolve_dtype(options.dtype, hf_config, device=options.device))
    return iter_tensors(files, table, hf_config, dtype)


def _registry() -> Registry:
    from modelport.plugins import get_host

    return get_host().registry
