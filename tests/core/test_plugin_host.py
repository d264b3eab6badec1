"""Plugin discovery through real entry points of throwaway distributions."""

from __future__ import annotations

import logging
import warnings

import pytest
from toy_model import ToyArchitectures, ToyFormat

import modelport
from modelport.errors import PluginError
from modelport.plugins import PluginHost, PluginWarning, get_host, reset_host

PATCH_PLUGIN = """
from modelport import hookimpl
from modelport.types import ConfigPatch, PatchPhase

def _cap(config, context):
    config.max_position_embeddings = 128
    return config

@hookimpl
def modelport_register_config_patches(register):
    register(ConfigPatch("cap-context", PatchPhase.ARCHITECTURE_FIXUP, _cap, "caps the context at 128"))
"""

BROKEN_PLUGIN = """
from modelport import hookimpl
def modelport_register_config_patches(register)   # missing colon
    pass
"""

MISSPELT_PLUGIN = """
from modelport import hookimpl

@hookimpl
def modelport_register_config_pacthes(register):
    pass
"""


def _allow(monkeypatch, *names: str) -> None:
    monkeypatch.setenv("MODELPORT_PLUGINS", ",".join(names))
    reset_host()


def test_third_party_distribution_changes_the_pipeline_result(plugin_distribution, monkeypatch, toy_model):
    folder = toy_model()
    plugin_distribution("modelport-capper", PATCH_PLUGIN, version="1.2.3")
    _allow(monkeypatch, "modelport-capper")
    host = get_host()
    with host.plugin(ToyFormat(), "toy-format"), host.plugin(ToyArchitectures(), "toy-arch"):
        resolved = modelport.resolve(str(folder))
    assert resolved.max_model_len == 128
    assert resolved.hf_config.max_position_embeddings == 128
    step = resolved.trace.find("patch:cap-context")[0]
    assert step.plugin == "modelport-capper"
    assert step.decision == "changed max_position_embeddings"
    info = host.plugins["modelport-capper"]
    assert (info.distribution, info.version, info.builtin) == ("modelport-capper", "1.2.3", False)
    listed = {p["name"]: p for p in host.describe()}
    assert listed["modelport-capper"]["registered"] == {"config_patch": ["cap-context"]}


def test_same_plugin_without_it_keeps_the_models_length(toy, toy_native, toy_model):
    resolved = modelport.resolve(str(toy_model()))
    assert resolved.max_model_len == 512


def test_broken_distribution_is_reported_and_skipped(plugin_distribution, monkeypatch):
    plugin_distribution("modelport-broken", BROKEN_PLUGIN, version="0.0.1")
    plugin_distribution("modelport-capper", PATCH_PLUGIN)
    monkeypatch.delenv("MODELPORT_STRICT_PLUGINS")
    _allow(monkeypatch, "modelport-broken", "modelport-capper")
    with pytest.warns(PluginWarning) as caught:
        host = get_host()
    message = str(caught[0].message)
    assert "modelport-broken" in message and "0.0.1" in message and "SyntaxError" in message
    assert "modelport-broken" not in host.plugins
    assert "modelport-capper" in host.plugins
    assert [f.name for f in host.failures] == ["modelport-broken"]
    assert host.registry.names("config_patch") == ["cap-context"]


def test_broken_distribution_is_fatal_in_strict_mode(plugin_distribution, monkeypatch):
    plugin_distribution("modelport-broken", BROKEN_PLUGIN)
    monkeypatch.setenv("MODELPORT_STRICT_PLUGINS", "1")
    _allow(monkeypatch, "modelport-broken")
    with pytest.raises(PluginError, match=r"modelport-broken.*SyntaxError"):
        get_host()


def test_allow_list_excludes_unlisted_plugins(plugin_distribution, monkeypatch):
    plugin_distribution("modelport-capper", PATCH_PLUGIN)
    plugin_distribution("modelport-other", PATCH_PLUGIN.replace("cap-context", "other-patch"))
    _allow(monkeypatch, "modelport-other")
    host = get_host()
    assert "modelport-other" in host.plugins
    assert "modelport-capper" not in host.plugins
    _allow(monkeypatch)  # set but empty: no entry-point plugin at all
    assert not [p for p in get_host().plugins.values() if not p.builtin]


def test_deny_list_excludes_plugins_and_builtins(plugin_distribution, monkeypatch):
    plugin_distribution("modelport-capper", PATCH_PLUGIN)
    monkeypatch.delenv("MODELPORT_PLUGINS")
    monkeypatch.setenv("MODELPORT_DISABLE_PLUGINS", "modelport-capper, modelport.builtin.local")
    reset_host()
    host = get_host()
    assert "modelport-capper" not in host.plugins
    assert "modelport.builtin.local" not in host.plugins
    assert "modelport.builtin.architectures" in host.plugins


def test_misspelt_hook_fails_at_start_up_with_a_suggestion(plugin_distribution, monkeypatch):
    plugin_distribution("modelport-typo", MISSPELT_PLUGIN)
    _allow(monkeypatch, "modelport-typo")
    with pytest.raises(
        PluginError,
        match=r"unknown hook 'modelport_register_config_pacthes' "
        r"\(did you mean 'modelport_register_config_patches'\?\)",
    ):
        get_host()
    monkeypatch.delenv("MODELPORT_STRICT_PLUGINS")
    reset_host()
    with pytest.warns(PluginWarning, match="did you mean"):
        host = get_host()
    assert "modelport-typo" not in host.plugins


def test_hook_with_an_argument_the_spec_lacks_is_rejected():
    class WrongArgs:
        @modelport.hookimpl
        def modelport_detect_config_format(self, source, opts):
            return None

    host = PluginHost(load_entry_points=False)
    with pytest.warns(PluginWarning, match="opts"):
        assert host.register(WrongArgs(), "wrong-args") is False
    assert "wrong-args" not in host.plugins


def test_builtins_are_registered_through_the_same_manager():
    host = PluginHost(load_entry_points=False)
    builtin = {name: info for name, info in host.plugins.items() if info.builtin}
    assert {"modelport.builtin.local", "modelport.builtin.architectures", "modelport.builtin.cpu"} <= set(builtin)
    assert builtin["modelport.builtin.local"].distribution == "modelport"
    assert "modelport_classify_reference" in builtin["modelport.builtin.local"].hooks
    assert host.pm.get_plugin("modelport.builtin.local") is not None


def test_trace_switch_logs_every_hook_call(toy, toy_native, toy_model, caplog, monkeypatch):
    toy.trace = True
    with caplog.at_level(logging.DEBUG, logger="modelport.hooks"):
        modelport.resolve(str(toy_model()), host=toy)
    lines = [r.getMessage() for r in caplog.records if r.name == "modelport.hooks"]
    assert any(
        line.startswith("modelport_classify_reference asked ['modelport.builtin.local'] -> modelport.builtin.local")
        for line in lines
    )
    assert any(
        line.startswith("modelport_detect_config_format asked") and "toy-format answered 'toy'" in line
        for line in lines
    )
    assert any(line.startswith("modelport_register_config_formats asked") for line in lines)


def test_trace_switch_is_read_from_the_environment(monkeypatch):
    monkeypatch.setenv("MODELPORT_TRACE", "1")
    reset_host()
    assert get_host().trace is True


def test_tryfirst_beats_plain_regardless_of_registration_order(toy, toy_model):
    class Late:
        @modelport.hookimpl(tryfirst=True)
        def modelport_detect_config_format(self, source, options):
            return modelport.Decision("toy", "tryfirst wins")

    class Plain:
        @modelport.hookimpl
        def modelport_detect_config_format(self, source, options):
            raise AssertionError("a plain implementation must not be asked before a tryfirst one answers")

    with toy.plugin(Late(), "late"), toy.plugin(Plain(), "plain"):
        answer = toy.call_first("modelport_detect_config_format", source=None, options=None)
    assert answer.plugin == "late"
    assert answer.reason == "tryfirst wins"


def test_context_manager_registers_for_one_block(toy):
    from modelport.testing import registered_plugin

    class Extra:
        @modelport.hookimpl
        def modelport_register_load_formats(self, register):
            register("extra-format")

    with registered_plugin(Extra(), "extra", host=toy):
        assert "extra-format" in toy.registry.names("load_format")
    assert "extra-format" not in toy.registry.names("load_format")
    assert "extra" not in toy.plugins


def test_no_warning_for_a_clean_environment():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reset_host()
        get_host()


def test_hook_wrappers_are_rejected_with_the_reason():
    class Wrapper:
        @modelport.hookimpl(wrapper=True)
        def modelport_detect_config_format(self, source, options):
            return (yield)

    host = PluginHost(load_entry_points=False)
    with pytest.warns(PluginWarning, match="hook wrappers are not supported"):
        assert host.register(Wrapper(), "wrapper") is False


def test_specname_names_the_hook_an_implementation_serves():
    class Named:
        @modelport.hookimpl(specname="modelport_register_load_formats")
        def load_formats(self, register):
            register("named-format")

    host = PluginHost(load_entry_points=False)
    assert host.register(Named(), "named") is True
    assert host.registry.names("load_format") == ["named-format"]


def test_a_failing_register_hook_is_reported_and_the_rest_still_register(monkeypatch):
    class Good:
        @modelport.hookimpl
        def modelport_register_load_formats(self, register):
            register("good-format")

    class Bad:
        @modelport.hookimpl
        def modelport_register_load_formats(self, register):
            register("half-registered")
            raise RuntimeError("boom")

    host = PluginHost(load_entry_points=False)
    host.register(Good(), "good")
    host.register(Bad(), "bad")
    with pytest.warns(PluginWarning, match=r"'bad' \(registered in code\) was skipped: .*RuntimeError: boom"):
        names = host.registry.names("load_format")
    assert names == ["good-format"]  # the failing plugin's partial registration is rolled back
    strict = PluginHost(load_entry_points=False, strict=True)
    strict.register(Bad(), "bad")
    with pytest.raises(PluginError, match="boom"):
        strict.registry.names("load_format")


def test_a_decision_without_a_value_passes_to_the_next_plugin(toy):
    class Passes:
        @modelport.hookimpl(tryfirst=True)
        def modelport_detect_config_format(self, source, options):
            return modelport.Decision(None, "not mine")

    with toy.plugin(Passes(), "passes"):
        answer = toy.call_first("modelport_detect_config_format", source=_Exists(), options=None)
    assert answer.plugin == "toy-format"
    assert answer.asked == ("passes", "toy-format")


class _Exists:
    def exists(self, path):
        return True


def test_a_detected_format_that_nobody_registered_is_a_plugin_error(toy, toy_model):
    class Liar:
        @modelport.hookimpl(tryfirst=True)
        def modelport_detect_config_format(self, source, options):
            return "imaginary"

    with toy.plugin(Liar(), "liar"), pytest.raises(PluginError, match="'imaginary', which no plugin registered"):
        modelport.resolve(str(toy_model()))
