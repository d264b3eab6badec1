"""Hook implementations of modelport-hf.

Heavy imports (transformers, safetensors, torch) happen inside hook bodies so
that ``modelport plugins`` and ``--help`` stay fast.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from modelport.hookspecs import hookimpl
from modelport.options import LoadOptions
from modelport.registry import Registry
from modelport.types import Decision, Source, TokenizerSpec, WeightFiles
from modelport_hf import config as hf_config_module
from modelport_hf import weights as hf_weights

#: Files that make up a Hugging Face tokenizer, in the order they are listed.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "chat_template.jinja",
)


@hookimpl
def modelport_classify_reference(reference: str, options: LoadOptions) -> Decision[Source] | None:
    """A Hugging Face repository id (``name`` or ``org/name``) that is not a local path.

    The revision is pinned to a commit here, once (see :mod:`modelport_hf.hub`).
    """
    from modelport_hf.hub import HubSource, looks_like_repo_id

    if not looks_like_repo_id(reference) or options.effective_hub != "hf":
        return None  # with hub="modelscope" (or its environment switch) ids are modelport-modelscope's
    source = HubSource.from_options(reference, options)
    return Decision(source, f"a Hub repository id; {source.pinned_by}; files listed by {source.listed_by}")


@hookimpl
def modelport_register_config_formats(register: Callable[..., None]) -> None:
    """``hf``: a folder with config.json."""
    register("hf", "Hugging Face config.json")


@hookimpl
def modelport_detect_config_format(source: Source, options: LoadOptions) -> Decision[str] | None:
    """``hf`` when the source has config.json."""
    if source.primary_file is None and source.exists("config.json"):
        return Decision("hf", "config.json present")
    return None


#: ``model_type`` -> config class, for model types transformers does not know (see configs.py).
CONFIG_CLASSES: dict[str, str] = {
    "RefinedWeb": "modelport_hf.configs:RWConfig",
    "RefinedWebModel": "modelport_hf.configs:RWModelConfig",
    "chatglm": "modelport_hf.configs:ChatGLMConfig",
    "kimi_k2": "modelport_hf.configs:KimiK2Config",
    "deepseek_vl_v2": "modelport_hf.configs:DeepseekVLV2Config",
}


@hookimpl
def modelport_register_config_classes(register: Callable[..., None]) -> None:
    """Config classes for published model types that transformers lacks (Falcon RefinedWeb, ChatGLM...)."""
    for model_type, target in CONFIG_CLASSES.items():
        register(model_type, target)


@hookimpl
def modelport_register_config_patches(register: Callable[..., None]) -> None:
    """Legacy RoPE forms, attribute remaps and per-architecture fix-ups (see patches.py)."""
    from modelport_hf.patches import PATCHES

    for patch in PATCHES:
        register(patch)


@hookimpl
def modelport_parse_config(source: Source, config_format: str, options: LoadOptions, registry: Registry) -> Any:
    """Read config.json into a ``PretrainedConfig`` (registry by model_type first, then AutoConfig)."""
    if config_format != "hf":
        return None
    return hf_config_module.parse_config(source, options, registry)


@hookimpl
def modelport_register_tokenizer_modes(register: Callable[..., None]) -> None:
    """``hf`` (fast when available) and ``slow`` (the Python tokenizer)."""
    register("hf", "AutoTokenizer, fast tokenizer when available")
    register("slow", "the Python tokenizer: AutoTokenizer with use_fast=False, or SentencePiece's tokenizer.model")


@hookimpl
def modelport_resolve_tokenizer(source: Source, hf_config: Any, options: LoadOptions) -> Decision[TokenizerSpec] | None:
    """The Hugging Face tokenizer files present in ``source``."""
    if options.tokenizer_mode not in ("auto", "hf", "slow"):
        return None
    present = tuple(f for f in TOKENIZER_FILES if source.exists(f))
    if not present and getattr(source, "offline", False) and getattr(source, "listing_complete", True) is False:
        # Offline with only the cached files known: the files may well be in the repository, just not cached.
        from modelport.errors import OfflineMissError

        raise OfflineMissError(
            source.reference,
            ["tokenizer.json", "tokenizer_config.json"],
            f"no tokenizer file ({', '.join(TOKENIZER_FILES)}) of {source.location} is in the cache, and the cache "
            "holds no listing of that commit, so which of them the repository has is unknown; fetch them once "
            "online, or pass skip_tokenizer_init=True",
        )
    if not present:
        return None
    mode = "slow" if options.tokenizer_mode == "slow" else "hf"
    return Decision(TokenizerSpec(mode, source, present), f"tokenizer files found: {', '.join(present)}")


@hookimpl
def modelport_load_tokenizer(spec: TokenizerSpec, options: LoadOptions) -> Any:
    """``AutoTokenizer`` on the spec's files (``slow``: the Python tokenizer), cached (see tokenizer.py)."""
    if spec.mode not in ("hf", "slow"):
        return None
    from modelport_hf.tokenizer import load_tokenizer

    return load_tokenizer(spec, options)


@hookimpl
def modelport_register_load_formats(register: Callable[..., None]) -> None:
    """``safetensors``, ``pt`` and ``dummy``."""
    register("safetensors", "*.safetensors, memory-mapped, streamed tensor by tensor")
    register("pt", "*.bin / *.pt PyTorch checkpoints, loaded with weights_only=True")
    register("dummy", "no weight files; parameters keep their random initialisation")


@hookimpl
def modelport_select_weight_files(
    source: Source, config_format: str, hf_config: Any, options: LoadOptions
) -> Decision[WeightFiles] | None:
    """Safetensors first (only the shards the index names), ``.bin``/``.pt`` as fallback, none for dummy."""
    if options.load_format == "dummy":
        return Decision(WeightFiles("dummy", source), "load_format=dummy reads no file")
    if config_format != "hf" or options.load_format not in ("auto", "safetensors", "pt"):
        return None
    return hf_weights.select_files(source, options.load_format)


@hookimpl
def modelport_iter_weights(weights: WeightFiles, hf_config: Any, options: LoadOptions) -> Any:
    """Stream ``(name, tensor)`` from safetensors or ``.bin`` files; nothing for dummy."""
    if weights.load_format == "dummy":
        return iter(())
    if weights.load_format == "safetensors":
        # A tensor-parallel rank reads only its slice of each tensor (the model asks for it).
        return hf_weights.iter_safetensors(weights, slices=options.tensor_parallel_size > 1)
    if weights.load_format == "pt":
        return hf_weights.iter_pt(weights)
    return None
