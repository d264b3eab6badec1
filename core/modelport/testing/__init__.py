"""Testing kit for modelport and its plugins.

Use it from pytest (the ``modelport`` pytest plugin is registered by the
``modelport`` distribution, so its fixtures are available everywhere) or call
the builders directly:

* :func:`make_tiny_model` writes a tiny Hugging Face model folder: config.json
  through ``save_pretrained``, a real BPE tokenizer trained with ``tokenizers``,
  and random safetensors weights.
* :func:`make_plugin_distribution` writes a throwaway installed distribution
  with a ``modelport.plugins`` entry point, visible to ``importlib.metadata``.
* :func:`isolated_host` builds a :class:`~modelport.plugins.PluginHost` that sees
  only built-ins and the plugins named.
* :class:`HubServer` is a local Hugging Face Hub on 127.0.0.1 that the real
  ``huggingface_hub`` client downloads from (branches, tags, gated and private
  repositories, injected 5xx errors and cut transfers, a log of every request).
* :class:`ModelScopeServer` is a local ModelScope on 127.0.0.1 that the real
  ``modelscope`` client lists and downloads from (branches, tags, private
  repositories, injected errors and stalled transfers, a log of every request).
"""

from __future__ import annotations

from modelport.testing.distributions import PluginDistribution, make_plugin_distribution
from modelport.testing.hosts import isolated_host, registered_plugin
from modelport.testing.hub_server import HubServer
from modelport.testing.models import TINY_ARCHITECTURES, make_tiny_model, make_tokenizer
from modelport.testing.modelscope_server import ModelScopeServer
from modelport.testing.plugin_checks import check_tokenizer, describe_installed, modules_imported_by_loading

__all__ = [
    "TINY_ARCHITECTURES",
    "HubServer",
    "ModelScopeServer",
    "PluginDistribution",
    "check_tokenizer",
    "describe_installed",
    "isolated_host",
    "make_plugin_distribution",
    "make_tiny_model",
    "make_tokenizer",
    "modules_imported_by_loading",
    "registered_plugin",
]
