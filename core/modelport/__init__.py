"""modelport: the front half of an inference engine, as a plugin-based framework.

``import modelport`` is cheap: it imports neither torch nor transformers (nor
even pluggy); the names below are loaded on first use.

    >>> import modelport
    >>> resolved = modelport.resolve("./my-model", load_format="dummy")  # doctest: +SKIP
    >>> print(resolved.trace.format())  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: The folder of the model that ships inside the package (a small Llama trained on Shakespeare).
#: Any reference argument takes it, and so does the reference ``"default"`` (see ``DEFAULT_REFERENCE``).
DEFAULT_MODEL: str = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "default-model")

#: The reference that names the shipped model from any folder (``modelport generate default "ROMEO:"``).
DEFAULT_REFERENCE = "default"

_LAZY = {
    "resolve": "modelport.pipeline",
    "LLM": "modelport.llm",
    "SamplingParams": "modelport.sampling",
    "RequestOutput": "modelport.outputs",
    "CompletionOutput": "modelport.outputs",
    "load": "modelport.pipeline",
    "ResolvedModel": "modelport.pipeline",
    "LoadedModel": "modelport.pipeline",
    "WeightReport": "modelport.pipeline",
    "LoadOptions": "modelport.options",
    "PluginHost": "modelport.plugins",
    "get_host": "modelport.plugins",
    "hookimpl": "modelport.hookspecs",
    "Trace": "modelport.trace",
    "TraceStep": "modelport.trace",
    "Decision": "modelport.types",
    "Source": "modelport.types",
    "LocalSource": "modelport.types",
    "TokenizerSpec": "modelport.types",
    "WeightFiles": "modelport.types",
    "ArchitectureChoice": "modelport.types",
    "ConfigPatch": "modelport.types",
    "PatchContext": "modelport.types",
    "PatchPhase": "modelport.types",
    "errors": "modelport.errors",
}

__all__ = [
    "ArchitectureChoice",
    "CompletionOutput",
    "ConfigPatch",
    "DEFAULT_MODEL",
    "DEFAULT_REFERENCE",
    "Decision",
    "LLM",
    "LoadOptions",
    "LoadedModel",
    "LocalSource",
    "PatchContext",
    "PatchPhase",
    "PluginHost",
    "RequestOutput",
    "ResolvedModel",
    "SamplingParams",
    "Source",
    "TokenizerSpec",
    "Trace",
    "TraceStep",
    "WeightFiles",
    "WeightReport",
    "__version__",
    "errors",
    "get_host",
    "hookimpl",
    "load",
    "resolve",
]

if TYPE_CHECKING:
    from modelport import errors
    from modelport.hookspecs import hookimpl
    from modelport.llm import LLM
    from modelport.options import LoadOptions
    from modelport.outputs import CompletionOutput, RequestOutput
    from modelport.pipeline import LoadedModel, ResolvedModel, WeightReport, load, resolve
    from modelport.plugins import PluginHost, get_host
    from modelport.sampling import SamplingParams
    from modelport.trace import Trace, TraceStep
    from modelport.types import (
        ArchitectureChoice,
        ConfigPatch,
        Decision,
        LocalSource,
        PatchContext,
        PatchPhase,
        Source,
        TokenizerSpec,
        WeightFiles,
    )


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'modelport' has no attribute {name!r}")
    value = importlib.import_module(module)
    if name != "errors":
        value = getattr(value, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
