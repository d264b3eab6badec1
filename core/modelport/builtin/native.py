"""Built-in plugin: core's native model implementations, registered by name and imported on first use."""

from __future__ import annotations

from collections.abc import Callable

from modelport.hookspecs import hookimpl

#: Architecture names (``config.architectures``) and the native classes that implement them.
NATIVE_ARCHITECTURES: dict[str, str] = {
    "LlamaForCausalLM": "modelport.models.llama:LlamaForCausalLM",
    "MistralForCausalLM": "modelport.models.llama:MistralForCausalLM",
    "Qwen2ForCausalLM": "modelport.models.llama:Qwen2ForCausalLM",
    "Qwen3ForCausalLM": "modelport.models.llama:Qwen3ForCausalLM",
    "MixtralForCausalLM": "modelport.models.mixtral:MixtralForCausalLM",
    "ChatGLMModel": "modelport.models.chatglm:ChatGLMForCausalLM",  # ChatGLM2/3, GLM-4 (vLLM's name for them)
}


@hookimpl
def modelport_register_architectures(register: Callable[..., None]) -> None:
    """Register every native implementation (``impl="native"``)."""
    for name, target in NATIVE_ARCHITECTURES.items():
        register(name, target, impl="native", description=f"modelport's native {name.removesuffix('ForCausalLM')}")
