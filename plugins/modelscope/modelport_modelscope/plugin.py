"""Hook implementations of modelport-modelscope: ModelScope ids as a model source.

This module is what the ``modelport-modelscope`` entry point names. It implements
one hook, ``modelport_classify_reference``: when the effective hub is
``modelscope`` (``hub="modelscope"``, or ``MODELPORT_USE_MODELSCOPE`` /
``VLLM_USE_MODELSCOPE`` with ``hub`` left at ``None``), an ``owner/name`` id that
is not a local path becomes a :class:`~modelport_modelscope.source.ModelScopeSource`.
Config, tokenizer and weights then go through the format plugins (modelport-hf)
unchanged. Nothing global is patched: with ``hub="hf"`` this plugin answers
nothing, so one process can load from both hubs. modelscope is imported inside
the hook body only.
"""

from __future__ import annotations

from pathlib import Path

from modelport.hookspecs import hookimpl
from modelport.options import LoadOptions
from modelport.types import Decision, Source


@hookimpl(tryfirst=True)
def modelport_classify_reference(reference: str, options: LoadOptions) -> Decision[Source] | None:
    """A ModelScope id (``owner/name``) that is not a local path, when the effective hub is ``modelscope``.

    ``tryfirst`` so that the id is ModelScope's before modelport-hf sees it; an
    existing local path is left to core's local source.
    """
    if options.effective_hub != "modelscope":
        return None
    from modelport_modelscope.source import ModelScopeSource, looks_like_model_id

    if not looks_like_model_id(reference) or Path(reference).expanduser().exists():
        return None
    source = ModelScopeSource.from_options(reference, options)
    why = "hub option" if options.hub == "modelscope" else "MODELPORT_USE_MODELSCOPE / VLLM_USE_MODELSCOPE"
    return Decision(
        source,
        f"a ModelScope model id ({why}); revision {source.revision!r}; files listed by {source.listed_by}",
    )
