"""Hook implementations of modelport-modelscope: ModelScope ids as a model source.

This module is what the ``modelport-modelscope`` entry point names. It implements
one hook, ``modelport_classify_reference``: when the effective hub is
``modelscope`` (``hub="modelscope"``, or ``MODELPORT_USE_MODELSCOPE`` /
``VLLM_USE_MODELSCOPE`` with ``hub`` left at ``None``), an ``owner/name`` id that
is not a local path becomes a :class:`~modelport_modelscope.source.ModelScopeSource`,
and so do ``owner/name:QUANT`` and ``owner/name/file.gguf`` (the GGUF file picked as
modelport-gguf picks it, which then reads it). Config, tokenizer and weights go
through the format plugins unchanged. Nothing global is patched: with ``hub="hf"``
this plugin answers nothing, so one process can load from both hubs. modelscope is
imported inside the hook body only.
"""

from __future__ import annotations

import re
from pathlib import Path

from modelport.errors import ReferenceNotFoundError
from modelport.hookspecs import hookimpl
from modelport.options import LoadOptions
from modelport.types import Decision, Source

#: ``owner/name:Q4_K_M``: a GGUF repository and the quantisation to pick (modelport-gguf's syntax).
_QUANT_REFERENCE = re.compile(r"^(?P<repo>[^:]+):(?P<quant>[A-Za-z0-9_]{2,16})$")
#: ``owner/name/some/file.gguf``: a GGUF repository and the file to read.
_FILE_REFERENCE = re.compile(r"^(?P<repo>[^/:]+/[^/:]+)/(?P<file>[^:]+\.gguf)$", re.IGNORECASE)


@hookimpl(tryfirst=True)
def modelport_classify_reference(reference: str, options: LoadOptions) -> Decision[Source] | None:
    """A ModelScope id (``owner/name``, or a GGUF file of one) that is not a local path, when the hub is ``modelscope``.

    ``tryfirst``, like modelport-gguf's, for ``owner/name/file.gguf``: core's local
    source (``tryfirst`` too, and asked after entry-point plugins, which register
    after the built-ins) rejects a reference with two slashes as a missing path. An
    existing local path is left to core. No order between plugins matters:
    modelport-hf and modelport-gguf pass on repository ids unless the effective hub
    is ``hf``, and this plugin passes unless it is ``modelscope``.
    """
    if options.effective_hub != "modelscope" or Path(reference).expanduser().exists():
        return None
    from modelport_modelscope.source import ModelScopeSource, looks_like_model_id

    why = "hub option" if options.hub == "modelscope" else "MODELPORT_USE_MODELSCOPE / VLLM_USE_MODELSCOPE"
    if looks_like_model_id(reference):
        source = ModelScopeSource.from_options(reference, options)
        return Decision(
            source,
            f"a ModelScope model id ({why}); revision {source.revision!r}; files listed by {source.listed_by}",
        )
    quant = _QUANT_REFERENCE.match(reference)
    named = _FILE_REFERENCE.match(reference)
    repo_id = quant["repo"] if quant else named["repo"] if named else None
    if repo_id is None or not looks_like_model_id(repo_id):
        return None
    try:
        from modelport_gguf.source import choose_file
    except ImportError:
        raise ReferenceNotFoundError(reference, "a GGUF reference needs modelport-gguf installed") from None
    source = ModelScopeSource.from_options(repo_id, options)
    if quant:
        files = [f for f in source.list_files() if f.lower().endswith(".gguf")]
        chosen = choose_file(files, quant["quant"], reference)
    else:
        chosen = named["file"] if named else ""
        if not source.exists(chosen):
            raise ReferenceNotFoundError(reference, f"no file {chosen!r} in {source.location}")
    source.primary_file = chosen
    source.reference = reference
    return Decision(source, f"a ModelScope GGUF repository ({why}); file {chosen}; files listed by {source.listed_by}")
