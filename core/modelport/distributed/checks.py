"""Whether a model can be sharded over ``tensor_parallel_size`` ranks, asked before anything is built."""

from __future__ import annotations

from typing import Any

from modelport.errors import InvalidConfigError, InvalidOptionError


def check_tensor_parallel(model_class: Any, hf_config: Any, size: int, *, location: str, architecture: str) -> None:
    """Refuse to shard ``model_class`` for ``hf_config`` over ``size`` ranks when it cannot be.

    A class shards when its ``supports_tensor_parallel`` class attribute is true; its
    ``tensor_parallel_sizes(hf_config)`` classmethod names the config fields each rank
    takes an equal slice of (heads, kv heads, vocabulary, intermediate width), and
    each must divide by ``size``.

    Raises:
        InvalidOptionError: the implementation has no tensor-parallel support (the
            option ``tensor_parallel_size`` and its value are named).
        InvalidConfigError: a field does not divide by ``size`` (the config file, the field
            and its value are named).
    """
    if size == 1:
        return
    if not getattr(model_class, "supports_tensor_parallel", False):
        name = f"{model_class.__module__}.{model_class.__qualname__}"
        raise InvalidOptionError(
            "tensor_parallel_size",
            size,
            detail=(
                f"{architecture} is served by {name}, which has no tensor-parallel support; "
                "native Llama, Mistral, Qwen2, Qwen3 and Mixtral shard (tensor_parallel_size=1 runs any model)"
            ),
        )
    sizes: dict[str, int] = model_class.tensor_parallel_sizes(hf_config)
    for field, value in sizes.items():
        if value % size:
            raise InvalidConfigError(
                location,
                f"{field} ({value}) does not divide by tensor_parallel_size={size}: each rank takes an equal slice",
                field=field,
                value=value,
            )
