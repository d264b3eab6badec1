"""The one options object every pipeline step reads.

``LoadOptions`` holds every knob of ``modelport.resolve`` and ``modelport.load``.
Values with a closed set (``model_impl``, ``dtype``) are checked here; values
whose set plugins extend (``config_format``, ``tokenizer_mode``,
``load_format``) are checked against the registry when the pipeline starts.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from modelport.errors import InvalidOptionError, UnknownOptionError

MODEL_IMPLS = ("auto", "native", "transformers")
#: Where repository ids resolve: the Hugging Face Hub or ModelScope (``hub`` option).
HUBS = ("hf", "modelscope")
#: Environment variables that switch repository ids to ModelScope when ``hub`` is ``None``.
MODELSCOPE_ENV_SWITCHES = ("MODELPORT_USE_MODELSCOPE", "VLLM_USE_MODELSCOPE")
DTYPES = ("auto", "float32", "float", "float16", "half", "bfloat16", "float64", "double")
_DEVICE_PATTERN = re.compile(r"^[a-z][a-z0-9_]*(:\d+)?$")
_TRUE = ("1", "true", "yes", "on")


def env_flag(name: str) -> bool:
    """True when environment variable ``name`` is set to 1/true/yes/on."""
    return os.environ.get(name, "").strip().lower() in _TRUE


@dataclass(frozen=True)
class LoadOptions:
    """Every option of the pipeline, with vLLM's names and defaults.

    Attributes:
        revision: branch, tag or commit of the model repository.
        code_revision: revision to take remote code from (defaults to ``revision``).
        token: access token for private or gated repositories; never printed.
        hf_config_path: folder or repository to take the config from instead.
        config_format: ``auto`` (detect from the files) or a registered format name.
        trust_remote_code: allow code from the model repository to run.
        hf_overrides: a dict merged into the config (nested dicts reach
            sub-configs) or a callable taking and returning the config.
        tokenizer: reference of the tokenizer, when not the model's own.
        tokenizer_revision: revision of the tokenizer repository.
        tokenizer_mode: ``auto`` or a registered tokenizer mode.
        skip_tokenizer_init: resolve and load no tokenizer.
        load_format: ``auto`` or a registered load format (``safetensors``, ``pt``, ``dummy``...).
        model_impl: ``auto`` (native first), ``native`` or ``transformers``.
        dtype: ``auto`` (the checkpoint's) or a torch dtype name.
        device: ``cpu``, ``cuda``, ``cuda:1``...; picks the executor. ``auto``: a GPU where one
            is present and an installed executor drives it (modelport-cuda), else ``cpu``.
        download_dir: keep downloaded files here instead of the shared cache.
        offline: make no network call (``None``: follow ``HF_HUB_OFFLINE``).
        max_model_len: cap on the context length; an error if above the model's.
        hub: where repository ids resolve: ``hf`` or ``modelscope`` (``None``: ``modelscope``
            when ``MODELPORT_USE_MODELSCOPE`` or ``VLLM_USE_MODELSCOPE`` is set, else ``hf``).
        tensor_parallel_size: how many processes (ranks) the model is sharded over; ``1``: one
            process, no sharding.
        distributed_executor_backend: what starts the other ranks when ``tensor_parallel_size``
            is above 1: ``mp`` (local worker processes, in core), ``ray`` (modelport-ray) or any
            registered backend; ``None``: ``mp``.
    """

    revision: str | None = None
    code_revision: str | None = None
    token: str | bool | None = field(default=None, repr=False)
    hf_config_path: str | None = None
    config_format: str = "auto"
    trust_remote_code: bool = False
    hf_overrides: Mapping[str, Any] | Callable[[Any], Any] | None = None
    tokenizer: str | None = None
    tokenizer_revision: str | None = None
    tokenizer_mode: str = "auto"
    skip_tokenizer_init: bool = False
    load_format: str = "auto"
    model_impl: str = "auto"
    dtype: str = "auto"
    device: str = "cpu"
    download_dir: str | None = None
    offline: bool | None = None
    max_model_len: int | None = None
    hub: str | None = None
    tensor_parallel_size: int = 1
    distributed_executor_backend: str | None = None

    def __post_init__(self) -> None:
        for name in ("revision", "code_revision", "hf_config_path", "tokenizer", "tokenizer_revision", "download_dir"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise InvalidOptionError(name, value, detail="expected a non-empty string or None")
        for name in ("config_format", "tokenizer_mode", "load_format"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise InvalidOptionError(name, value, detail="expected a non-empty string")
        for name in ("trust_remote_code", "skip_tokenizer_init"):
            if not isinstance(getattr(self, name), bool):
                raise InvalidOptionError(name, getattr(self, name), detail="expected True or False")
        if self.offline is not None and not isinstance(self.offline, bool):
            raise InvalidOptionError("offline", self.offline, detail="expected True, False or None")
        if self.token is not None and not isinstance(self.token, (str, bool)):
            # The value itself is a secret: name its type only.
            raise InvalidOptionError(
                "token", type(self.token).__name__, detail="expected a string, True, False or None"
            )
        if self.hub is not None and self.hub not in HUBS:
            raise InvalidOptionError("hub", self.hub, HUBS)
        if self.model_impl not in MODEL_IMPLS:
            raise InvalidOptionError("model_impl", self.model_impl, MODEL_IMPLS)
        if self.dtype not in DTYPES:
            raise InvalidOptionError("dtype", self.dtype, DTYPES)
        device = self.device
        if not isinstance(device, str) or not _DEVICE_PATTERN.match(device) or device.startswith("auto:"):
            raise InvalidOptionError(
                "device", self.device, detail="expected 'auto' or a device name such as 'cpu', 'cuda' or 'cuda:1'"
            )
        if self.max_model_len is not None and (
            isinstance(self.max_model_len, bool) or not isinstance(self.max_model_len, int) or self.max_model_len <= 0
        ):
            raise InvalidOptionError("max_model_len", self.max_model_len, detail="expected a positive integer or None")
        tp = self.tensor_parallel_size
        if isinstance(tp, bool) or not isinstance(tp, int) or tp < 1:
            raise InvalidOptionError("tensor_parallel_size", tp, detail="expected a positive integer")
        backend = self.distributed_executor_backend
        if backend is not None and (not isinstance(backend, str) or not backend):
            # Registered names are checked against the registry when the pipeline starts.
            raise InvalidOptionError(
                "distributed_executor_backend", backend, detail="expected None or a backend name such as 'mp' or 'ray'"
            )
        overrides = self.hf_overrides
        if overrides is not None and not (isinstance(overrides, Mapping) or callable(overrides)):
            raise InvalidOptionError(
                "hf_overrides", overrides, detail="expected a dict or a callable taking and returning the config"
            )

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The option names, in declaration order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> LoadOptions:
        """Build options from keyword arguments; an unknown name is an error listing the valid ones."""
        valid = cls.names()
        for name in kwargs:
            if name not in valid:
                raise UnknownOptionError(name, valid)
        return cls(**kwargs)

    def replace(self, **changes: Any) -> LoadOptions:
        """A copy with ``changes`` applied (validated like the constructor)."""
        valid = self.names()
        for name in changes:
            if name not in valid:
                raise UnknownOptionError(name, valid)
        return dataclasses.replace(self, **changes)

    @property
    def is_offline(self) -> bool:
        """Whether no network call may be made (the option, else ``HF_HUB_OFFLINE``)."""
        if self.offline is not None:
            return self.offline
        return env_flag("HF_HUB_OFFLINE")

    @property
    def effective_hub(self) -> str:
        """Where repository ids resolve: the ``hub`` option, else ``modelscope`` when an environment switch is set."""
        if self.hub is not None:
            return self.hub
        return "modelscope" if any(env_flag(name) for name in MODELSCOPE_ENV_SWITCHES) else "hf"

    def to_public_dict(self) -> dict[str, Any]:
        """A JSON-friendly view for traces and ``inspect``: the token is masked."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "token":
                value = None if value is None else ("<set>" if value else value)
            elif f.name == "hf_overrides" and callable(value):
                value = f"<callable {getattr(value, '__qualname__', type(value).__name__)}>"
            elif isinstance(value, Mapping):
                value = dict(value)
            out[f.name] = value
        return out
