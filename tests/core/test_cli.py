"""The modelport command: inspect, plugins, errors without tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys

from modelport.cli import JSON_VERSION, main


def test_inspect_prints_the_resolved_model_and_its_trace(toy_native, toy_model, capsys):
    folder = toy_model()
    assert main(["inspect", str(folder)]) == 0
    out = capsys.readouterr().out
    assert f"source         local {folder}" in out
    assert "architecture   LlamaForCausalLM (native, toy_model:ToyModel, from toy-architectures)" in out
    assert "max model len  512" in out
    assert "shape          1 layers, hidden 32, 4 heads (2 kv, head_dim 8), vocab 100" in out
    assert "trace:" in out and "toy.json present" in out


def test_inspect_json_is_stable_and_complete(toy_native, toy_model, capsys):
    folder = toy_model()
    assert main(["inspect", str(folder), "--json", "--max-model-len", "100", "--dtype", "bfloat16"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["version"] == JSON_VERSION == 1
    assert set(data) == {
        "version",
        "reference",
        "source",
        "config_source",
        "config_format",
        "architecture",
        "model_impl",
        "model_type",
        "facts",
        "dtype",
        "max_model_len",
        "tokenizer",
        "weight_files",
        "options",
        "trace",
    }
    assert data["max_model_len"] == 100 and data["dtype"] == "bfloat16"
    assert data["options"]["max_model_len"] == 100
    assert data["trace"][0] == {
        "step": "source",
        "plugin": "modelport.builtin.local",
        "decision": str(folder),
        "reason": "an existing local folder",
        "seconds": data["trace"][0]["seconds"],
        "asked": ["modelport.builtin.local"],
    }


def test_inspect_hf_overrides_flag_takes_json(toy_native, toy_model, capsys):
    assert main(["inspect", str(toy_model()), "--json", "--hf-overrides", '{"max_position_embeddings": 64}']) == 0
    assert json.loads(capsys.readouterr().out)["max_model_len"] == 64
    assert main(["inspect", str(toy_model()), "--hf-overrides", "[1"]) == 1
    assert "not valid JSON" in capsys.readouterr().err


def test_plugins_json_lists_builtins_with_what_they_registered(toy_native, capsys):
    assert main(["plugins", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["version"] == 1 and data["failed"] == []
    by_name = {p["name"]: p for p in data["plugins"]}
    assert by_name["modelport.builtin.local"] == {
        "name": "modelport.builtin.local",
        "distribution": "modelport",
        "version": by_name["modelport.builtin.local"]["version"],
        "builtin": True,
        "hooks": ["modelport_classify_reference"],
        "registered": {},
    }
    assert by_name["toy-format"]["registered"] == {
        "config_format": ["toy"],
        "load_format": ["dummy"],
        "tokenizer_mode": ["toy"],
    }
    assert by_name["toy-architectures"]["registered"] == {"architecture": ["LlamaForCausalLM"]}


def test_plugins_text_listing(toy, capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "modelport.builtin.local  (built-in)" in out
    assert "  config_format: toy" in out


def test_errors_are_one_line_without_traceback_and_exit_non_zero(tmp_path):
    missing = tmp_path / "nowhere"
    proc = subprocess.run(
        [sys.executable, "-m", "modelport", "inspect", str(missing)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        f"modelport: error: model reference {str(missing)!r} was not found: no such file or folder: {missing}"
    ]


def test_unknown_option_value_on_the_command_line(toy_native, toy_model, capsys):
    assert main(["inspect", str(toy_model()), "--model-impl", "vllm"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("modelport: error: invalid value 'vllm' for option 'model_impl'")
    assert "Traceback" not in err


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "inspect" in capsys.readouterr().out


def test_a_closed_pipe_ends_quietly():
    proc = subprocess.run(
        f"{sys.executable} -m modelport plugins --json | head -c 1",
        shell=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.stdout == "{"
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr
