"""Hook specifications: the table of contents of the modelport pipeline.

::

    reference --> source --> format --> config --> patches --> architecture
              --> tokenizer --> weights --> model --> executor

Two shapes only:

* **choose one** (``firstresult``): implementations are asked in order and the
  first non-``None`` answer wins; return ``None`` to pass. An implementation may
  return :class:`modelport.types.Decision` to give the trace a reason.
* **register many**: the hook receives a ``register`` callback and calls it once
  per thing it adds. Every registration is recorded with the plugin's name.

Order is set with ``tryfirst``/``trylast`` only, never by install order; core's
fallbacks are ``trylast``. Specs only grow: an argument is never removed, so an
implementation may accept any subset of a spec's arguments.

This module is cheap to import: argument types are imported under
``TYPE_CHECKING``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from transformers import PretrainedConfig

    from modelport.executor import ExecutorSettings
    from modelport.options import LoadOptions
    from modelport.pipeline import LoadedModel
    from modelport.registry import Registry
    from modelport.types import ArchitectureChoice, ConfigPatch, Source, TokenizerSpec, WeightFiles

PROJECT = "modelport"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# --- reference -> source ---------------------------------------------------


@hookspec(firstresult=True)
def modelport_classify_reference(reference: str, options: LoadOptions) -> Source | None:  # type: ignore[empty-body]
    """Turn what the user typed into a :class:`~modelport.types.Source`.

    Args:
        reference: the model reference (``org/name``, ``./folder``, ``m.gguf``,
            ``org/repo:Q4_K_M``...). Also called for ``hf_config_path`` and
            ``tokenizer`` references.
        options: the load options (``revision``, ``token``, ``offline``...). For
            the tokenizer's reference with ``tokenizer_revision`` set, ``revision``
            is ``tokenizer_revision``.

    Returns:
        A source, or ``None`` if this plugin does not recognise the reference.
        Stops at the first non-``None`` result. Core's local-path
        implementation is ``tryfirst`` for existing paths; a plugin that claims
        remote ids should be plain, and a catch-all ``trylast``.
    """


# --- format ------------------------------------------------------------------


@hookspec
def modelport_register_config_formats(register: Callable[..., None]) -> None:
    """Register config format names (``register(name, description="", default_dtype=None)``).

    The names are the valid values of the ``config_format`` option besides
    ``auto``. Called once when the registry is built. ``default_dtype`` (a torch
    dtype name such as ``"float32"``) is the dtype a model of this format runs in
    with ``dtype="auto"``, instead of the checkpoint rule (float32 becomes
    bfloat16): a format whose models were trained and checked in float32 says so.
    """


@hookspec(firstresult=True)
def modelport_detect_config_format(source: Source, options: LoadOptions) -> str | None:  # type: ignore[empty-body]
    """Say which config format ``source`` holds, from its files, never from its name.

    Only called when ``options.config_format == "auto"``.

    Returns:
        A registered format name, or ``None`` to pass. Stops at the first
        non-``None`` result.
    """


# --- config ------------------------------------------------------------------


@hookspec
def modelport_register_config_classes(register: Callable[..., None]) -> None:
    """Register config classes by ``model_type`` (``register(model_type, "module:Class")``).

    Parsers consult this registry before ``transformers.AutoConfig``, so a
    plugin can support model types transformers does not know. Classes are
    imported on first use.
    """


@hookspec(firstresult=True)
def modelport_parse_config(  # type: ignore[empty-body]
    source: Source, config_format: str, options: LoadOptions, registry: Registry
) -> PretrainedConfig | None:
    """Parse the model's config files into a ``transformers.PretrainedConfig``.

    Args:
        source: where the files are (the ``hf_config_path`` source when given).
        config_format: the detected or requested format.
        options: the load options (``trust_remote_code``, ``hf_overrides``...).
        registry: the registry, for config classes by ``model_type``.

    Returns:
        The config, or ``None`` if this plugin does not parse ``config_format``.
        Stops at the first non-``None`` result. Must raise
        :class:`~modelport.errors.RemoteCodeRequiredError` rather than run
        repository code without ``trust_remote_code``.
    """


# --- patches -----------------------------------------------------------------


@hookspec
def modelport_register_config_patches(register: Callable[[ConfigPatch], None]) -> None:
    """Register post-load config patches (``register(ConfigPatch(...))``).

    Patches run after ``hf_overrides`` are applied, in ascending
    :class:`~modelport.types.PatchPhase` (legacy RoPE forms, attribute remaps,
    format metadata, per-architecture fix-ups); ties keep registration order.
    Each patch's effect (the config keys it changed) is recorded in the trace.
    """


@hookspec
def modelport_register_gguf_architectures(register: Callable[..., None]) -> None:
    """Register GGUF architecture tables (``register(gguf_name, "module:TABLE", description="")``).

    ``gguf_name`` is a value of a GGUF file's ``general.architecture``
    (``llama``, ``qwen2``...); the target is a table that says which
    ``model_type`` and architecture class the file becomes, which metadata
    keys fill which config attributes and how its tensor names map to
    Hugging Face names (modelport-gguf's ``GGUFArchitecture``). The first
    registration of a name wins; the trace names the plugin whose table
    answered. Tables are imported on first use.
    """


# --- architecture ------------------------------------------------------------


@hookspec
def modelport_register_architectures(register: Callable[..., None]) -> None:
    """Register model implementations (``register(name, "module:Class", impl="native")``).

    ``name`` is a value of ``config.architectures``; ``impl`` is ``native``,
    ``transformers`` or a plugin's own kind. Classes are imported on first use.
    """


@hookspec(firstresult=True)
def modelport_select_architecture(  # type: ignore[empty-body]
    hf_config: PretrainedConfig, model_impl: str, registry: Registry, config_format: str, options: LoadOptions
) -> ArchitectureChoice | None:
    """Pick the implementation for ``hf_config`` given the ``model_impl`` option.

    ``config_format`` is the format the config came from (``hf``, ``gguf``...).
    ``options`` are the load options (``trust_remote_code`` decides whether a
    model class from the repository's own code, named by ``auto_map``, may be chosen).
    An implementation whose class declines the config (its optional
    ``unsupported_reason(hf_config)`` classmethod) is passed over under ``auto``.

    Core's registry lookup is a ``trylast`` implementation (native first when
    ``model_impl == "auto"``); a backend that can serve any architecture
    implements this hook ``trylast`` too and answers what core could not.

    Returns:
        An :class:`~modelport.types.ArchitectureChoice` or ``None``. Stops at the
        first non-``None`` result.
    """


# --- tokenizer ---------------------------------------------------------------


@hookspec
def modelport_register_tokenizer_modes(register: Callable[..., None]) -> None:
    """Register tokenizer mode names (``register(name, description="")``).

    The names are the valid values of the ``tokenizer_mode`` option besides ``auto``.
    """


@hookspec(firstresult=True)
def modelport_resolve_tokenizer(  # type: ignore[empty-body]
    source: Source, hf_config: PretrainedConfig, options: LoadOptions, config_format: str
) -> TokenizerSpec | None:
    """Decide which tokenizer will be loaded, without loading it.

    Args:
        source: the tokenizer's source (the ``tokenizer`` option's, or the model's).
        hf_config: the patched config.
        options: the load options (``tokenizer_mode``, ``tokenizer_revision``...).
        config_format: the model's config format, so a format's own tokenizer
            answers for its models only.

    Returns:
        A :class:`~modelport.types.TokenizerSpec` or ``None``. Stops at the
        first non-``None`` result. Not called with ``skip_tokenizer_init``.
    """


@hookspec(firstresult=True)
def modelport_load_tokenizer(
    spec: TokenizerSpec, options: LoadOptions, config_format: str, hf_config: PretrainedConfig
) -> Any | None:
    """Build the tokenizer object that ``spec`` describes.

    ``config_format`` and ``hf_config`` are the model's (a tokenizer may need the
    vocabulary size or special token ids the config states). The object keeps the
    tokenizer protocol (``encode``, ``decode``, ``eos_token_id``, ``all_special_ids``;
    see ``modelport.testing.check_tokenizer``).

    Returns:
        The tokenizer, or ``None`` if this plugin does not handle ``spec.mode``.
        Stops at the first non-``None`` result.
    """


# --- weights -----------------------------------------------------------------


@hookspec
def modelport_register_load_formats(register: Callable[..., None]) -> None:
    """Register load format names (``register(name, description="")``).

    The names are the valid values of the ``load_format`` option besides ``auto``.
    """


@hookspec(firstresult=True)
def modelport_select_weight_files(  # type: ignore[empty-body]
    source: Source, config_format: str, hf_config: PretrainedConfig, options: LoadOptions
) -> WeightFiles | None:
    """Choose the weight files to read for ``options.load_format``, reading no tensor.

    Returns:
        A :class:`~modelport.types.WeightFiles` (``files`` may be empty for
        formats such as ``dummy``), or ``None`` to pass. Stops at the first
        non-``None`` result. Raise :class:`~modelport.errors.WeightsMissingError`
        when the format applies but its files are absent.
    """


@hookspec(firstresult=True)
def modelport_iter_weights(  # type: ignore[empty-body]
    weights: WeightFiles, hf_config: PretrainedConfig, options: LoadOptions, config_format: str
) -> Iterator[tuple[str, Any]] | None:
    """Stream ``(name, tensor)`` pairs from the files ``weights`` names.

    ``config_format`` is the model's config format (weight layouts follow formats).

    Returns:
        An iterator, or ``None`` if this plugin does not read
        ``weights.load_format``. Stops at the first non-``None`` result.
        Corrupt files raise :class:`~modelport.errors.WeightsCorruptError`.
    """


# --- executor ----------------------------------------------------------------


@hookspec
def modelport_register_executors(register: Callable[..., None]) -> None:
    """Register executor names by device type (``register(name, description="", available=None)``).

    ``name`` is a device type (``cpu``, ``cuda``); ``modelport plugins`` lists them.
    ``available`` is an optional ``"module:function"`` string: the function takes a
    device (``cuda:1``) and returns why it cannot be used here, or ``None`` when it
    can (see :mod:`modelport.devices`: ``device="auto"`` and the
    :class:`~modelport.errors.DeviceUnavailableError` before a load).
    """


@hookspec(firstresult=True)
def modelport_create_executor(
    device: str, model: Any, options: LoadOptions, loaded: LoadedModel, settings: ExecutorSettings
) -> Any | None:
    """Create an executor that runs ``model`` on ``device``.

    Args:
        device: the ``device`` option (``cpu``, ``cuda``, ``cuda:1``...) as ``load`` settled it
            (never ``auto``).
        model: the loaded model (keeps :class:`~modelport.models.protocol.CausalLM`).
        options: the load options.
        loaded: the whole :class:`~modelport.pipeline.LoadedModel` (tokenizer, facts, max_model_len).
        settings: capacity settings (:class:`~modelport.executor.ExecutorSettings`).

    Core's CPU executor is ``trylast``, so a plugin can take over ``cpu`` too.

    Returns:
        The executor, or ``None`` if this plugin does not drive ``device``.
        Stops at the first non-``None`` result.
    """


# --- distributed ---------------------------------------------------------------


@hookspec
def modelport_register_distributed_backends(register: Callable[..., None]) -> None:
    """Register what starts the other ranks of a tensor-parallel model (``register(name, target, description="")``).

    ``name`` is a value of the ``distributed_executor_backend`` option (``mp``,
    ``ray``...); ``target`` is a ``"module:Class"`` string naming a
    :class:`~modelport.distributed.launcher.WorkerLauncher` constructible with no
    arguments, imported on first use. Core registers ``mp`` (local worker
    processes); the first registration of a name wins.
    """


#: The "register many" hooks and the registry kind each fills.
REGISTER_HOOKS: dict[str, str] = {
    "modelport_register_config_formats": "config_format",
    "modelport_register_config_classes": "config_class",
    "modelport_register_config_patches": "config_patch",
    "modelport_register_gguf_architectures": "gguf_architecture",
    "modelport_register_architectures": "architecture",
    "modelport_register_tokenizer_modes": "tokenizer_mode",
    "modelport_register_load_formats": "load_format",
    "modelport_register_executors": "executor",
    "modelport_register_distributed_backends": "distributed_backend",
}
