"""Hook implementations of modelport-mistral: Mistral-native folders and mistral-common tokenizers.

* format ``mistral``: ``params.json`` with consolidated weights (see
  :mod:`modelport_mistral.layout`); detected ``tryfirst``, so under ``auto`` a
  folder holding both layouts is read as Mistral's, and one without
  consolidated weights falls through to modelport-hf.
* config: ``params.json`` adapted as vLLM adapts it (:mod:`modelport_mistral.params`).
* load format ``mistral``: the consolidated files, names mapped and RoPE rows
  permuted (:mod:`modelport_mistral.weights`).
* tokenizer mode ``mistral``: mistral-common (:mod:`modelport_mistral.tokenizer`);
  ``auto`` picks it for Mistral-native folders with a mistral-common tokenizer file.

mistral-common, transformers, safetensors and torch are imported inside hook
bodies only.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from modelport.errors import InvalidConfigError, WeightsCorruptError, WeightsMissingError
from modelport.hookspecs import hookimpl
from modelport.options import LoadOptions
from modelport.registry import Registry
from modelport.types import Decision, Source, TokenizerSpec, WeightFiles
from modelport_mistral.layout import PARAMS, find_layout, mistral_tokenizer_files

FORMAT = "mistral"


@hookimpl
def modelport_register_config_formats(register: Callable[..., None]) -> None:
    """``mistral``: params.json with consolidated weights."""
    register(FORMAT, "Mistral-native: params.json with consolidated weights")


@hookimpl(tryfirst=True)
def modelport_detect_config_format(source: Source, options: LoadOptions) -> Decision[str] | None:
    """``mistral`` when params.json and complete consolidated weights are present (before ``hf``)."""
    if source.primary_file is not None:
        return None
    layout = find_layout(source)
    if not layout.complete:
        return None
    weights = ", ".join(layout.safetensors or layout.pth)
    return Decision(FORMAT, f"params.json and consolidated weights present ({weights})")


@hookimpl
def modelport_parse_config(source: Source, config_format: str, options: LoadOptions, registry: Registry) -> Any:
    """params.json adapted to a ``MistralConfig``/``MixtralConfig`` (or a pixtral config); unknown keys reported."""
    if config_format != FORMAT:
        return None
    from modelport_hf.config import read_config_json
    from modelport_mistral.params import config_from_params

    layout = find_layout(source)
    if not layout.has_params:
        raise InvalidConfigError(
            f"{source.location}/{PARAMS}",
            f"config_format='mistral' needs params.json and consolidated weights; missing: {', '.join(layout.missing)}",
        )
    params = read_config_json(source, PARAMS)
    where = str(source.fetch(PARAMS))
    hf_max = None
    if "max_position_embeddings" not in params and source.exists("config.json"):
        hf_max = _hf_max_position_embeddings(source)
    folder = str(source.fetch(PARAMS).parent)
    config, unknown = config_from_params(params, where, hf_max_position_embeddings=hf_max, folder=folder)
    reason = "params.json adapted as vLLM does"
    if hf_max is not None:
        reason += f"; max_position_embeddings={hf_max} from config.json"
    reason += f"; unknown keys kept: {', '.join(unknown)}" if unknown else "; no unknown keys"
    return Decision(config, reason)


def _hf_max_position_embeddings(source: Source) -> int | None:
    """``max_position_embeddings`` of the config.json beside params.json (its text config's), if readable."""
    try:
        data = json.loads(source.fetch("config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    text = data.get("text_config") if isinstance(data.get("text_config"), dict) else data
    value = text.get("max_position_embeddings")
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


@hookimpl
def modelport_register_tokenizer_modes(register: Callable[..., None]) -> None:
    """``mistral``: mistral-common's tekken or SentencePiece tokenizer."""
    register(FORMAT, "mistral-common: tekken.json or tokenizer.model.vN, chosen as mistral-common chooses")


@hookimpl(tryfirst=True)
def modelport_resolve_tokenizer(source: Source, hf_config: Any, options: LoadOptions) -> Decision[TokenizerSpec] | None:
    """``mistral`` when asked, or under ``auto`` for a Mistral-native folder with a mistral-common tokenizer file.

    Under ``auto`` a folder forced to another format (``config_format="hf"``) keeps that format's tokenizer.
    """
    mode = options.tokenizer_mode
    if mode not in ("auto", FORMAT):
        return None
    candidates = mistral_tokenizer_files(source)
    if mode == "auto":
        native = options.config_format == FORMAT or (options.config_format == "auto" and find_layout(source).complete)
        if not candidates or not native:
            return None  # under auto only a Mistral-native folder read as such gets mistral-common
    from modelport_mistral.tokenizer import choose_file

    chosen = choose_file(source, candidates)
    why = "tokenizer_mode='mistral'" if mode == FORMAT else "a Mistral-native folder"
    return Decision(TokenizerSpec(FORMAT, source, (chosen,)), f"{why}; {chosen} chosen as mistral-common chooses")


@hookimpl
def modelport_load_tokenizer(spec: TokenizerSpec, options: LoadOptions) -> Any:
    """mistral-common's ``MistralTokenizer`` on the spec's file, behind modelport's tokenizer protocol."""
    if spec.mode != FORMAT:
        return None
    from modelport_mistral.tokenizer import load_tokenizer

    return load_tokenizer(spec.source, spec.files[0])


@hookimpl
def modelport_register_load_formats(register: Callable[..., None]) -> None:
    """``mistral``: consolidated weights with Mistral's names."""
    register(FORMAT, "consolidated*.safetensors or consolidated.NN.pth, Mistral's names mapped, RoPE rows permuted")


@hookimpl(tryfirst=True)
def modelport_select_weight_files(
    source: Source, config_format: str, hf_config: Any, options: LoadOptions
) -> Decision[WeightFiles] | None:
    """The consolidated files: safetensors first, ``.pth`` as fallback (``safetensors``/``pt`` pick one)."""
    load_format = options.load_format
    if load_format == "dummy" or not (
        load_format == FORMAT or (config_format == FORMAT and load_format in ("auto", "safetensors", "pt"))
    ):
        return None
    layout = find_layout(source)
    if load_format in ("auto", FORMAT, "safetensors") and layout.safetensors:
        how = f"shards named by {layout.index_file}" if layout.index_file else "consolidated.safetensors"
        files = WeightFiles(FORMAT, source, layout.safetensors, layout.index_file)
        return Decision(files, f"{how} (consolidated safetensors are preferred)")
    if load_format in ("auto", FORMAT, "pt") and len(layout.pth) > 1:
        # Mistral's (and Meta's) numbered .pth parts are tensor-parallel slices of every tensor, not shards.
        raise WeightsCorruptError(
            source.location,
            f"{len(layout.pth)} model-parallel parts ({', '.join(layout.pth)}) hold slices of each tensor, "
            "which modelport does not merge; use consolidated safetensors or a single consolidated.00.pth",
        )
    if load_format in ("auto", FORMAT, "pt") and layout.pth:
        return Decision(WeightFiles(FORMAT, source, layout.pth), "consolidated .pth (read with weights_only=True)")
    wanted = {"safetensors": "consolidated*.safetensors", "pt": "consolidated.NN.pth"}.get(
        load_format, "consolidated*.safetensors or consolidated.NN.pth"
    )
    missing = [m for m in layout.missing if m != PARAMS] or [wanted]
    raise WeightsMissingError(
        source.location,
        f"no Mistral consolidated weights for load_format={load_format!r}; missing: {'; '.join(missing)}",
    )


@hookimpl
def modelport_iter_weights(weights: WeightFiles, hf_config: Any, options: LoadOptions) -> Any:
    """Stream the consolidated tensors under Hugging Face names, ``wq``/``wk`` permuted."""
    if weights.load_format != FORMAT:
        return None
    from modelport_mistral.weights import iter_consolidated

    return iter_consolidated(weights, hf_config)
