"""Built-in plugin: pick an implementation from the architecture registry, and vLLM's alias names.

vLLM's model registry (``vllm/model_executor/models/registry.py`` of the vllm
0.32.0 wheel) lists several names for one implementation: a legacy
capitalisation (``LLaMAForCausalLM`` of the decapoda checkpoints,
``ExaoneMoEForCausalLM``) or a model's second name
(``ChatGLMForConditionalGeneration``). :data:`ARCHITECTURE_ALIASES` carries them;
they are registered through the architecture hook (``register(alias, name,
impl="alias")``), so that any plugin's implementation of the name they stand for
serves them, and the trace says when an alias was used.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from modelport.errors import UnsupportedArchitectureError
from modelport.hookspecs import hookimpl
from modelport.registry import ALIAS_IMPL, Registry
from modelport.types import ArchitectureChoice, Decision, RegistryEntry

#: For each ``model_impl`` value, the implementation kinds it accepts, best first.
IMPL_PREFERENCE: dict[str, tuple[str, ...]] = {
    "auto": ("native", "transformers"),
    "native": ("native",),
    "transformers": ("transformers",),
}

#: vLLM 0.32's alias names -> the architecture name they stand for (one implementation in vLLM).
#:
#: Only pure renames are carried. vLLM 0.32 also runs ``InternLM3ForCausalLM`` (a ``bias`` key the
#: native Llama does not read), ``TeleChat3ForCausalLM`` and ``IQuestCoderForCausalLM`` as Llama,
#: ``Ministral3ForCausalLM`` as Mistral, ``Cohere2ForCausalLM``, ``GraniteSWAForCausalLM``,
#: ``GraniteMoeSWAForCausalLM`` and ``FalconMambaForCausalLM`` on the class of a sibling: one class
#: that reads their differences (other RoPE, sliding windows, norms) from the config. Here that would
#: run them with the wrong layers, so they stay with whatever implements their own name. The legacy
#: names vLLM dropped before 0.32 (``AquilaForCausalLM``, ``XverseForCausalLM``, ``MPTForCausalLM``,
#: ``StableLMEpochForCausalLM``, ``RWForCausalLM``... in its ``_PREVIOUSLY_SUPPORTED_MODELS``) are not
#: carried either.
ARCHITECTURE_ALIASES: dict[str, str] = {
    "LLaMAForCausalLM": "LlamaForCausalLM",  # decapoda-research/llama-*-hf
    "ChatGLMForConditionalGeneration": "ChatGLMModel",  # both name vLLM's ChatGLMForCausalLM
    "ExaoneMoEForCausalLM": "ExaoneMoeForCausalLM",
}


@hookimpl
def modelport_register_architectures(register: Callable[..., None]) -> None:
    """Register vLLM's alias names (:data:`ARCHITECTURE_ALIASES`) as aliases, without code of their own."""
    for alias, canonical in ARCHITECTURE_ALIASES.items():
        register(alias, canonical, impl=ALIAS_IMPL, description=f"vLLM's alias of {canonical}")


@hookimpl(trylast=True)
def modelport_select_architecture(
    hf_config: Any, model_impl: str, registry: Registry
) -> Decision[ArchitectureChoice] | None:
    """The first of ``config.architectures`` with a registered implementation.

    With ``model_impl="auto"`` a native implementation wins over a
    Transformers-backend one; other kinds registered by plugins come last. An
    implementation whose class declines the config (:func:`unsupported_reason`)
    is passed over: under ``auto`` the next one (or the Transformers backend's
    selector) serves it; with an explicit ``model_impl`` the error says why. A
    name registered as an alias is served by the implementation of the name it
    stands for; the choice keeps the config's name and its reason says which
    alias was used.
    """
    names = list(getattr(hf_config, "architectures", None) or [])
    wanted = IMPL_PREFERENCE.get(model_impl, (model_impl,))
    declined: list[str] = []
    for name in names:
        entries = registry.architectures(name)
        ranked = sorted(
            (e for e in entries if model_impl == "auto" or e.extra.get("impl") in wanted),
            key=lambda e: wanted.index(e.extra["impl"]) if e.extra.get("impl") in wanted else len(wanted),
        )
        for entry in ranked:
            assert entry.target is not None
            refusal = unsupported_reason(registry, entry, hf_config)
            if refusal is not None:
                declined.append(f"{entry.target} declines this config: {refusal}")
                continue
            impl = str(entry.extra.get("impl", "native"))
            reason = f"registered {impl} implementation for {name} (model_impl={model_impl!r})"
            canonical = registry.alias_of(name)
            if canonical is not None:
                reason = (
                    f"{name} is an alias of {canonical} (vLLM's registry); "
                    f"registered {impl} implementation for {canonical} (model_impl={model_impl!r})"
                )
            return Decision(ArchitectureChoice(name, impl, entry.target, entry.plugin), reason)
    if declined and model_impl != "auto":
        raise UnsupportedArchitectureError(
            names,
            model_impl,
            registry.names("architecture"),
            "; ".join(declined) + "; model_impl='auto' lets the Transformers backend (modelport-transformers) serve it",
        )
    return None


def unsupported_reason(registry: Registry, entry: RegistryEntry, hf_config: Any) -> str | None:
    """Why the registered implementation ``entry`` declines ``hf_config``, or ``None`` when it serves it.

    Asks the ``"module:function"`` the implementation was registered with
    (``register(..., unsupported=...)``; for a class, its
    ``unsupported_reason`` classmethod, ``"module:Class.unsupported_reason"``).
    An implementation registered without one serves every config of its
    architecture, and its module is not imported to find out.
    """
    check_target = entry.extra.get("unsupported")
    if not check_target:
        return None
    reason = registry.load(str(check_target))(hf_config)
    return None if reason is None else str(reason)
