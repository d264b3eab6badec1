"""Built-in plugin: core's native model implementations, registered by name and imported on first use."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from modelport.hookspecs import hookimpl

#: Architecture names (``config.architectures``) and the native classes that implement them.
NATIVE_ARCHITECTURES: dict[str, str] = {
    "LlamaForCausalLM": "modelport.models.llama:LlamaForCausalLM",
    "MistralForCausalLM": "modelport.models.llama:MistralForCausalLM",
    "Qwen2ForCausalLM": "modelport.models.llama:Qwen2ForCausalLM",
    "Qwen3ForCausalLM": "modelport.models.llama:Qwen3ForCausalLM",
    "MixtralForCausalLM": "modelport.models.mixtral:MixtralForCausalLM",
    "ChatGLMModel": "modelport.models.chatglm:ChatGLMForCausalLM",  # ChatGLM2/3, GLM-4 (vLLM's name for them)
    "InternLM2ForCausalLM": "modelport.models.internlm2:InternLM2ForCausalLM",  # InternLM2/2.5 (remote-code configs)
}


#: The RoPE types and activations the native Llama family implements (``modelport.models.rope.ROPE_TYPES``
#: and ``modelport.models.llama.ACTIVATIONS``, named here so that asking costs no torch import).
LLAMA_FAMILY_ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "llama3", "longrope")
LLAMA_FAMILY_ACTIVATIONS = ("silu", "swish", "gelu", "gelu_pytorch_tanh", "relu")
#: The native classes that decline configs through :func:`llama_family_unsupported_reason`.
_LLAMA_FAMILY = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "MixtralForCausalLM")


def llama_family_unsupported_reason(hf_config: Any) -> str | None:
    """Why the native Llama family declines ``hf_config`` (a RoPE type or an activation it lacks), or ``None``.

    Per-layer-type RoPE parameters and RoPE types outside
    :data:`LLAMA_FAMILY_ROPE_TYPES` are declined, and so are activations outside
    :data:`LLAMA_FAMILY_ACTIVATIONS`; with ``model_impl="auto"`` the Transformers
    backend then serves the config. ``LlamaForCausalLM.unsupported_reason`` is this.
    """
    raw = getattr(hf_config, "rope_parameters", None)
    if raw is None:
        raw = getattr(hf_config, "rope_scaling", None) or {}
    if isinstance(raw, dict):
        if raw and all(isinstance(value, dict) for value in raw.values()):
            return f"RoPE parameters per layer type ({', '.join(raw)}) are not implemented natively"
        rope_type = raw.get("rope_type", raw.get("type", "default"))
        if rope_type not in LLAMA_FAMILY_ROPE_TYPES:
            return f"rope_type {rope_type!r} is not implemented; supported: {', '.join(LLAMA_FAMILY_ROPE_TYPES)}"
    act = getattr(hf_config, "hidden_act", "silu")
    if act not in LLAMA_FAMILY_ACTIVATIONS:
        return f"hidden_act {act!r} is not implemented; supported: {', '.join(LLAMA_FAMILY_ACTIVATIONS)}"
    return None


@hookimpl
def modelport_register_architectures(register: Callable[..., None]) -> None:
    """Register every native implementation (``impl="native"``), with the check of the configs it declines."""
    for name, target in NATIVE_ARCHITECTURES.items():
        register(
            name,
            target,
            impl="native",
            description=f"modelport's native {name.removesuffix('ForCausalLM')}",
            unsupported=f"{__name__}:llama_family_unsupported_reason" if name in _LLAMA_FAMILY else None,
        )
