"""Checks on untrusted config files and values, made before anything is allocated.

A model folder is input from a stranger. Its JSON files may be huge or nested
thousands deep, its config may state ``rms_norm_eps: NaN``, ``hidden_size: 0``
or ``num_hidden_layers: 1000000``. This module turns each of those into an
:class:`~modelport.errors.InvalidConfigError` naming the file, field and
value, before a parser recurses, a tensor is allocated or a layer is built:

* :func:`load_json_file` reads a JSON file under a size cap
  (:func:`max_json_bytes`, 50 MiB unless ``MODELPORT_MAX_JSON_BYTES`` says
  otherwise) and a nesting cap (:data:`MAX_JSON_DEPTH`);
* :func:`check_config_values` refuses sizes that are not finite positive
  numbers (:data:`POSITIVE_INT_FIELDS`, :data:`POSITIVE_FLOAT_FIELDS`) and
  more than :data:`MAX_HIDDEN_LAYERS` layers;
* :func:`check_model_fits` compares a lower bound of the model's parameter
  count, computed from the config alone (:func:`parameter_lower_bound`), with
  what the weight files can hold, and, for ``load_format="dummy"``, with the
  machine's memory.

Only the standard library is imported, so ``resolve()`` stays light.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelport.errors import InvalidConfigError
from modelport.facts import num_experts

if TYPE_CHECKING:
    from modelport.pipeline import ResolvedModel

#: Environment variable that overrides :data:`DEFAULT_MAX_JSON_BYTES` (a byte count).
MAX_JSON_BYTES_ENV = "MODELPORT_MAX_JSON_BYTES"
#: The largest config or tokenizer JSON file read by default (50 MiB; real ones are below 40 MiB).
DEFAULT_MAX_JSON_BYTES = 50 * 1024 * 1024
#: The deepest nesting of arrays and objects accepted in a JSON file (real configs nest fewer than 10 deep).
MAX_JSON_DEPTH = 64
#: Config fields that must be positive integers when present (``None`` means "not set" and passes).
POSITIVE_INT_FIELDS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
    "intermediate_size",
    "max_position_embeddings",
)
#: The most layers a config may state: the deepest published models have a few hundred, and building a million
#: (even on the meta device) takes minutes.
MAX_HIDDEN_LAYERS = 4096
#: Fields where 0 means "not set" (published configs state ``head_dim: 0``; vLLM derives it then).
ZERO_MEANS_UNSET = ("head_dim",)
#: Config fields that must be finite positive numbers when present.
POSITIVE_FLOAT_FIELDS = ("rms_norm_eps", "rope_theta")
#: A weight file of ``n`` bytes holds at most ``n * 8 / 1.5`` parameters (1.5 bits a weight is the smallest
#: quantisation in use); a config whose parameter lower bound exceeds the files' bytes this many times is absurd.
PARAMETERS_PER_FILE_BYTE = 128
#: Parameters allowed beyond :data:`PARAMETERS_PER_FILE_BYTE` times the files' size (for tiny test models).
PARAMETER_SLACK = 1 << 23
_DTYPE_BYTES = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2, "float8_e4m3fn": 1, "float8_e5m2": 1}


def max_json_bytes() -> int:
    """The size cap of a JSON file: ``MODELPORT_MAX_JSON_BYTES`` as set now, else 50 MiB.

    Raises:
        InvalidOptionError: the variable is set to something that is not a positive integer.
    """
    raw = os.environ.get(MAX_JSON_BYTES_ENV)
    if raw is None or not raw.strip():
        return DEFAULT_MAX_JSON_BYTES
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        from modelport.errors import InvalidOptionError

        raise InvalidOptionError(MAX_JSON_BYTES_ENV, raw, detail="expected a positive number of bytes")
    return value


def check_json_size(path: Path) -> None:
    """Refuse a JSON file larger than :func:`max_json_bytes`, before reading it.

    Raises:
        InvalidConfigError: the file is too large (the message says how to raise the cap).
    """
    limit = max_json_bytes()
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise InvalidConfigError(str(path), f"cannot be read ({type(exc).__name__}: {exc})") from exc
    if size > limit:
        raise InvalidConfigError(
            str(path),
            f"the file is {size} bytes, more than the {limit} bytes modelport reads from a JSON file "
            f"(set {MAX_JSON_BYTES_ENV} to a larger byte count to read it)",
        )


def check_json_depth(data: Any, where: str) -> None:
    """Refuse JSON data nested deeper than :data:`MAX_JSON_DEPTH` (checked without recursion).

    Raises:
        InvalidConfigError: naming ``where`` and the depth.
    """
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        children = value.values() if isinstance(value, Mapping) else value if isinstance(value, list) else None
        if children is None:
            continue
        if depth > MAX_JSON_DEPTH:
            raise InvalidConfigError(where, f"JSON nested more than {MAX_JSON_DEPTH} levels deep")
        stack.extend((child, depth + 1) for child in children)


def parse_json_bytes(raw: bytes, where: str) -> Any:
    """Decode JSON text, turning every failure (bad UTF-8, bad JSON, too deep, a huge number) into a typed error.

    Raises:
        InvalidConfigError: naming ``where``, with line and column for a syntax error.
    """
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise InvalidConfigError(where, f"not UTF-8 text (byte {exc.start})") from exc
    except json.JSONDecodeError as exc:
        raise InvalidConfigError(where, f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from exc
    except RecursionError as exc:
        raise InvalidConfigError(where, f"JSON nested more than {MAX_JSON_DEPTH} levels deep") from exc
    except ValueError as exc:  # an integer of more than 4300 digits
        raise InvalidConfigError(where, f"invalid JSON: {exc}") from exc
    check_json_depth(data, where)
    return data


def load_json_file(path: Path) -> Any:
    """Read the JSON file ``path`` within the size and nesting caps.

    Raises:
        InvalidConfigError: too large, unreadable, not JSON, or nested too deep; naming ``path``.
    """
    check_json_size(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InvalidConfigError(str(path), f"cannot be read ({type(exc).__name__}: {exc})") from exc
    return parse_json_bytes(raw, str(path))


def _number_problem(value: Any, integer: bool) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "expected a positive integer" if integer else "expected a positive number"
    if integer and not isinstance(value, int):
        return "expected a positive integer"
    if not math.isfinite(value):
        return "expected a finite number"
    if value <= 0:
        return "expected a positive integer" if integer else "expected a positive number"
    return None


def _rope_thetas(hf_text_config: Any) -> list[tuple[str, Any]]:
    params = getattr(hf_text_config, "rope_parameters", None)
    if not isinstance(params, Mapping):
        return []
    found = [("rope_parameters.rope_theta", params["rope_theta"])] if params.get("rope_theta") is not None else []
    for kind, nested in params.items():
        if isinstance(nested, Mapping) and nested.get("rope_theta") is not None:
            found.append((f"rope_parameters.{kind}.rope_theta", nested["rope_theta"]))
    return found


#: RoPE parameters that must be finite numbers when set (``None`` means unset): every RoPE scheme does arithmetic
#: with them, so a string or a list there fails deep inside a model's build otherwise.
ROPE_NUMBER_FIELDS = (
    "factor",
    "low_freq_factor",
    "high_freq_factor",
    "attention_factor",
    "beta_fast",
    "beta_slow",
    "mscale",
    "mscale_all_dim",
)


def _rope_parameter_sets(hf_text_config: Any) -> list[tuple[str, Mapping[str, Any]]]:
    """Each set of RoPE parameters with the field name it sits under (one per layer type when nested)."""
    name = "rope_parameters"
    params = getattr(hf_text_config, name, None)
    if params is None:
        name, params = "rope_scaling", getattr(hf_text_config, "rope_scaling", None)
    if not isinstance(params, Mapping) or not params:
        return []
    if all(isinstance(value, Mapping) for value in params.values()):  # per layer type
        return [(f"{name}.{kind}", nested) for kind, nested in params.items()]
    return [(name, params)]


def _rope_problem(hf_text_config: Any) -> tuple[str, Any, str] | None:
    """The first RoPE value of the wrong type or range: ``(field, value, problem)``, or ``None``.

    Ranges are checked only where no published config goes beyond them: the
    ``factor`` and ``original_max_position_embeddings`` are positive, and
    ``partial_rotary_factor`` (in the RoPE parameters or at the top level)
    lies in ``(0, 1]``, since it picks the rotated part of each head.
    """
    fraction = getattr(hf_text_config, "partial_rotary_factor", None)
    found: list[tuple[str, Any]] = [("partial_rotary_factor", fraction)]
    for prefix, params in _rope_parameter_sets(hf_text_config):
        found += [(f"{prefix}.{key}", params.get(key)) for key in ("rope_type", "type", "partial_rotary_factor")]
        found += [(f"{prefix}.{key}", params.get(key)) for key in ROPE_NUMBER_FIELDS]
        found.append((f"{prefix}.original_max_position_embeddings", params.get("original_max_position_embeddings")))
        for key in ("long_factor", "short_factor"):
            value = params.get(key)
            if value is not None and (not isinstance(value, list) or any(_number_problem(v, False) for v in value)):
                return f"{prefix}.{key}", value, "expected a list of positive numbers"
    for field, value in found:
        if value is None:
            continue
        key = field.rsplit(".", 1)[-1]
        if key in ("rope_type", "type"):
            if not isinstance(value, str):
                return field, value, "expected the name of a RoPE type"
        elif key == "partial_rotary_factor":
            problem = _number_problem(value, False)
            if problem is None and value > 1:
                problem = "expected a fraction of the head in (0, 1]"
            if problem is not None:
                return field, value, problem
        elif key in ("factor", "original_max_position_embeddings"):
            problem = _number_problem(value, key == "original_max_position_embeddings")
            if problem is not None:
                return field, value, problem
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return field, value, "expected a finite number"
    return None


def _expert_problem(hf_text_config: Any) -> tuple[str, Any, str] | None:
    """A ``num_experts_per_tok`` that cannot choose among the experts: ``(field, value, problem)``, or ``None``.

    Checked only where the config states more than one expert (a dense config may
    carry a meaningless ``num_experts_per_tok``): it must be a positive integer no
    larger than the expert count (:func:`modelport.facts.num_experts`), or routing
    fails at the first token (or, at 0, every MoE layer silently outputs zeros).
    """
    experts = num_experts(hf_text_config)
    per_token = getattr(hf_text_config, "num_experts_per_tok", None)
    if experts <= 1 or per_token is None:
        return None
    problem = _number_problem(per_token, True)
    if problem is None and per_token > experts:
        problem = f"more experts per token than the {experts} experts the config states"
    return None if problem is None else ("num_experts_per_tok", per_token, problem)


def check_config_values(hf_text_config: Any) -> None:
    """Refuse size fields that are NaN, infinite, zero, negative or of the wrong type, and RoPE values likewise.

    RoPE parameters of the wrong type (a string ``factor``, a ``rope_type``
    that is not a name, a ``partial_rotary_factor`` above 1) are refused here
    too (:func:`_rope_problem`), before either the native models or the
    Transformers backend do arithmetic with them. Fields that are absent or ``None`` pass (other rules decide what they
    default to), and so does ``head_dim: 0`` (:data:`ZERO_MEANS_UNSET`). The error names the
    field and value; the file is ``config`` (the pipeline puts the config's own location in).

    A language-model part that is a plain mapping, not a config (a ``text_config``
    the config class of the top-level ``model_type`` does not parse, so that
    ``get_text_config()`` hands back the raw dict), is refused too: none of its
    sizes can be read, and vLLM 0.32 refuses it alike (``get_hf_text_config``:
    the text config has no ``num_attention_heads``).

    Raises:
        InvalidConfigError: the first bad field.
    """
    if isinstance(hf_text_config, Mapping):
        raise InvalidConfigError(
            "config",
            "text_config is a plain mapping that the config class of this model_type does not parse, so the "
            "language model's sizes (num_attention_heads...) cannot be read; check that model_type names the "
            "whole model (a multimodal wrapper's type), not its text part",
            field="text_config",
            value=hf_text_config.get("model_type"),
        )
    checks: list[tuple[str, Any, bool]] = []
    for name in POSITIVE_INT_FIELDS:
        checks.append((name, getattr(hf_text_config, name, None), True))
    for name in POSITIVE_FLOAT_FIELDS:
        checks.append((name, getattr(hf_text_config, name, None), False))
    checks += [(name, value, False) for name, value in _rope_thetas(hf_text_config)]
    for name, value, integer in checks:
        if value is None or (name in ZERO_MEANS_UNSET and value == 0 and not isinstance(value, bool)):
            continue
        problem = _number_problem(value, integer)
        if problem is None and name == "num_hidden_layers" and value > MAX_HIDDEN_LAYERS:
            problem = f"more than {MAX_HIDDEN_LAYERS} layers; no real model has that many"
        if problem is not None:
            raise InvalidConfigError("config", problem, field=name, value=value)
    experts = _expert_problem(hf_text_config)
    if experts is not None:
        field, value, problem = experts
        raise InvalidConfigError("config", problem, field=field, value=value)
    rope = _rope_problem(hf_text_config)
    if rope is not None:
        field, value, problem = rope
        raise InvalidConfigError("config", problem, field=field, value=value)


def _count(config: Any, *names: str) -> int:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return 0


def parameter_lower_bound(resolved: ResolvedModel) -> int:
    """A lower bound of the model's parameter count, from the config alone (exact Python integers).

    Counted: the embedding (``vocab_size x hidden_size``) and, per layer, the
    query and output projections (``2 x hidden_size x heads x head_dim``) and
    two MLP matrices (``2 x hidden_size x intermediate_size``), and for a
    mixture of experts one layer's experts (``num_experts x 2 x hidden_size x
    moe_intermediate_size``, else ``intermediate_size``). Left out, so
    the bound stays below any real model of that config: key/value
    projections, a third (gated) MLP matrix, the experts of further layers, norms, biases
    and the output head. Multi-head latent attention counts no attention.
    """
    facts, text = resolved.facts, resolved.hf_text_config
    hidden = facts.hidden_size or 0
    layers = facts.num_hidden_layers or 0
    total = (facts.vocab_size or 0) * hidden
    per_layer = 0
    if not facts.uses_mla and facts.num_attention_heads and facts.head_dim:
        per_layer += 2 * hidden * facts.num_attention_heads * facts.head_dim
    per_layer += 2 * hidden * _count(text, "intermediate_size", "ffn_dim", "n_inner", "ffn_hidden_size")
    # A mixture of experts has at least one layer of num_experts experts, each at least two matrices of
    # hidden x its width (moe_intermediate_size where stated apart from the dense layers' width).
    moe = facts.num_experts * 2 * hidden * _count(text, "moe_intermediate_size", "intermediate_size")
    return max(0, total + layers * per_layer + moe)


def _machine_memory() -> int | None:
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def _gib(count: int) -> str:
    return f"{count / 2**30:.3g} GiB" if count.bit_length() < 1000 else f"about 2^{count.bit_length() - 30} GiB"


def _big(count: int) -> str:
    return f"{count:.4g}" if count.bit_length() < 1000 else f"about 2^{count.bit_length()}"


def check_model_fits(resolved: ResolvedModel) -> None:
    """Refuse a config whose model cannot be what its weight files hold (or, for ``dummy``, what memory holds).

    Called after the files are fetched and before the model is built, so a
    config stating ``hidden_size=2**63`` or a million layers fails in
    milliseconds instead of allocating terabytes or building for minutes.
    The bound is :func:`parameter_lower_bound`; the weight files must be able
    to hold it at the smallest quantisation in use (with a wide margin, see
    :data:`PARAMETERS_PER_FILE_BYTE`). A load format that reads no file
    (``dummy``) must fit in twice the machine's memory in the model's dtype.

    Raises:
        InvalidConfigError: naming the config's location and the sizes that make the model too large.
    """
    params = parameter_lower_bound(resolved)
    facts = resolved.facts
    shape = (
        f"hidden_size={facts.hidden_size}, num_hidden_layers={facts.num_hidden_layers}, "
        f"vocab_size={facts.vocab_size}, intermediate_size="
        f"{_count(resolved.hf_text_config, 'intermediate_size', 'ffn_dim', 'n_inner', 'ffn_hidden_size')}"
        + (f", num_experts={facts.num_experts}" if facts.num_experts else "")
    )
    files = resolved.weight_files
    where = resolved.config_source.location
    if files.files:
        size = 0
        for name in files.files:
            try:
                size += files.source.fetch(name).stat().st_size
            except OSError:
                return  # the reader reports unreadable files with their own error
        if params > PARAMETERS_PER_FILE_BYTE * size + PARAMETER_SLACK:
            raise InvalidConfigError(
                where,
                f"the config describes a model of at least {_big(params)} parameters ({shape}), far more than "
                f"the weight files ({size} bytes in {len(files.files)} file(s)) can hold; the config does not "
                "belong to these weights",
            )
        return
    memory = _machine_memory()
    needed = params * _DTYPE_BYTES.get(resolved.dtype, 2)
    if memory is not None and needed > 2 * memory:
        raise InvalidConfigError(
            where,
            f"load_format={files.load_format!r} would allocate at least {_gib(needed)} for a model of at least "
            f"{_big(params)} parameters ({shape}) in {resolved.dtype}, more than twice this machine's "
            f"memory ({_gib(memory)})",
        )


__all__ = [
    "DEFAULT_MAX_JSON_BYTES",
    "MAX_JSON_BYTES_ENV",
    "MAX_HIDDEN_LAYERS",
    "MAX_JSON_DEPTH",
    "PARAMETERS_PER_FILE_BYTE",
    "PARAMETER_SLACK",
    "POSITIVE_FLOAT_FIELDS",
    "ROPE_NUMBER_FIELDS",
    "POSITIVE_INT_FIELDS",
    "ZERO_MEANS_UNSET",
    "check_config_values",
    "check_json_depth",
    "check_json_size",
    "check_model_fits",
    "load_json_file",
    "max_json_bytes",
    "parameter_lower_bound",
]
