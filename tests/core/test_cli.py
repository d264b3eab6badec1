"""The modelport command: inspect, plugins, errors without tracebacks."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

import modelport
from modelport import hookimpl
from modelport.cli import JSON_VERSION, TerminalProgress, cli_spelling, main
from modelport.errors import TokenizerError
from modelport.testing import registered_plugin
from modelport.types import LocalSource


def _has_hf() -> bool:
    try:
        import modelport_hf  # noqa: F401
    except ImportError:
        return False
    return True


needs_hf = pytest.mark.skipif(not _has_hf(), reason="needs modelport-hf (the default model's config.json)")


def _modelport(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The installed command as a user runs it: a fresh process, every installed plugin, another folder."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MODELPORT_")}
    return subprocess.run(
        [sys.executable, "-m", "modelport", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env={**environ, **(env or {})},
    )


class NoWeights:
    """A load format whose files are never there: its selection passes, so the pipeline finds none."""

    @hookimpl
    def modelport_register_load_formats(self, register):
        register("absent", "never found")

    @hookimpl
    def modelport_select_weight_files(self, source, options):
        return None


def test_inspect_is_a_diagnostic_marking_a_missing_tokenizer_and_weights_none_found(toy, toy_model, capsys):
    folder = toy_model()
    (folder / "toy-tokenizer.txt").unlink()
    with registered_plugin(NoWeights(), "no-weights", host=toy):
        assert main(["inspect", str(folder), "--load-format", "absent"]) == 0
        out = capsys.readouterr().out
        assert "tokenizer      none found (--skip-tokenizer-init goes without one)" in out
        assert "weights        none found (--load-format dummy builds random weights)" in out
        # Every step it could resolve is still there, and the trace says why the two found nothing.
        assert "architecture   LlamaForCausalLM (native, modelport.models.llama:LlamaForCausalLM" in out
        assert "shape          1 layers, hidden 32, 4 heads (2 kv, head_dim 8), vocab 100" in out
        trace = out.split("trace:")[1]
        assert "none found" in trace and "pass --skip-tokenizer-init to go without one" in trace
        assert "no weight files found for --load-format absent" in trace
        # Facts stay in the API's terms: only the advice of the steps that found nothing is spelt as flags.
        assert "max_model_len=512" in trace and "--max-model-len" not in trace

        assert main(["inspect", str(folder), "--load-format", "absent", "--json"]) == 0
        data = json.loads(capsys.readouterr().out)
        assert set(data["unresolved"]) == {"tokenizer", "weights"}
        assert data["tokenizer"] is None and data["weight_files"]["load_format"] == "none"

        # --strict fails as resolve() does, at the first missing piece, in flag spelling.
        assert main(["inspect", str(folder), "--load-format", "absent", "--strict"]) == 1
        err = capsys.readouterr().err
        assert "pass --skip-tokenizer-init to go without one" in err and "skip_tokenizer_init" not in err

        # resolve() keeps its strictness and its Python spelling.
        with pytest.raises(TokenizerError, match="pass skip_tokenizer_init=True"):
            modelport.resolve(str(folder), host=toy)
        diagnosis = modelport.resolve(str(folder), host=toy, strict=False, load_format="absent")
        assert set(diagnosis.unresolved) == {"tokenizer", "weights"}
        assert diagnosis.tokenizer is None and diagnosis.weight_files.files == ()


def test_cli_spelling_turns_python_options_into_flags():
    assert (
        cli_spelling("pass skip_tokenizer_init=True to go without one")
        == "pass --skip-tokenizer-init to go without one"
    )
    assert cli_spelling("use load_format='dummy' for random weights") == "use --load-format dummy for random weights"
    assert cli_spelling('try model_impl="transformers"') == "try --model-impl transformers"
    assert cli_spelling("invalid value 0 for option 'max_tokens'") == "invalid value 0 for option --max-tokens"
    assert cli_spelling("capped by max_model_len=64") == "capped by --max-model-len 64"
    # Attribute access and longer names are left alone.
    assert cli_spelling("options.load_format='x'") == "options.load_format='x'"
    assert cli_spelling("my_tokenizer_mode='x'") == "my_tokenizer_mode='x'"


class First:
    @hookimpl(tryfirst=True)
    def modelport_classify_reference(self, reference):
        return None


class Last:
    @hookimpl(trylast=True)
    def modelport_classify_reference(self, reference):
        return None


def test_plugins_hooks_lists_each_hooks_implementations_in_the_order_they_are_asked(modelport_host, capsys):
    with registered_plugin(Last(), "last-resort", host=modelport_host):
        with registered_plugin(First(), "first-say", host=modelport_host):
            assert main(["plugins", "--hooks"]) == 0
            out = capsys.readouterr().out
            block = out.split("classify_reference  (choose one: asked in this order, the first answer wins)\n")[1]
            assert block.splitlines()[:3] == [
                "  1. first-say  [tryfirst]",
                "  2. modelport.builtin.local  [tryfirst]",
                "  3. last-resort  [trylast]",
            ]
            assert "register_executors  (register many: every one is called)\n  1. modelport.builtin.cpu" in out
            assert (
                "parse_config  (choose one: asked in this order, the first answer wins)\n  (no implementation)" in out
            )

            assert main(["plugins", "--hooks", "--json"]) == 0
            data = json.loads(capsys.readouterr().out)
            hooks = {h["hook"]: h for h in data["hooks"]}
            assert data["version"] == JSON_VERSION
            assert hooks["modelport_classify_reference"]["shape"] == "choose one"
            assert hooks["modelport_register_executors"]["shape"] == "register many"
            assert [i["plugin"] for i in hooks["modelport_classify_reference"]["order"]] == [
                "first-say",
                "modelport.builtin.local",
                "last-resort",
            ]
            assert hooks["modelport_classify_reference"]["order"][2] == {
                "plugin": "last-resort",
                "tryfirst": False,
                "trylast": True,
            }


def test_the_default_reference_names_the_shipped_model_unless_a_folder_of_that_name_exists(
    modelport_host, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    answer = modelport_host.call_first(
        "modelport_classify_reference", reference="default", options=modelport.LoadOptions()
    )
    assert isinstance(answer.value, LocalSource)
    assert (
        answer.value.location
        == modelport.DEFAULT_MODEL
        == str(Path(modelport.__file__).parent / "data" / "default-model")
    )
    assert answer.reason == "the model shipped with modelport"
    assert "config.json" in answer.value.list_files()
    (tmp_path / "default").mkdir()
    answer = modelport_host.call_first(
        "modelport_classify_reference", reference="default", options=modelport.LoadOptions()
    )
    assert answer.value.location == str(tmp_path / "default") and answer.reason == "an existing local folder"


@pytest.mark.parametrize("reference", ["models/llama/7b", "weights.safetensors", "sub/model.gguf"])
def test_a_relative_path_that_does_not_exist_says_no_such_file_or_folder(reference, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["inspect", reference]) == 1
    assert capsys.readouterr().err.strip() == (
        f"modelport: error: model reference {reference!r} was not found: no such file or folder: {tmp_path / reference}"
    )


def test_generate_prompt_ids_without_a_tokenizer_prints_token_ids(toy, toy_model, capsys):
    folder = toy_model()
    args = ["generate", str(folder), "--skip-tokenizer-init", "--load-format", "dummy", "--max-tokens", "5"]
    assert main([*args, "--prompt-ids", "1, 2 3", "--temperature", "0"]) == 0
    ids = capsys.readouterr().out.split()
    # Dummy weights are random: the output is 5 ids, or fewer ending in the toy's end of sequence (2).
    assert all(0 <= int(t) < 100 for t in ids)
    assert len(ids) == 5 or (1 <= len(ids) < 5 and ids[-1] == "2")

    assert main([*args, "some text"]) == 1
    err = capsys.readouterr().err
    assert "the prompt is token ids: add --prompt-ids" in err and "--skip-tokenizer-init" in err
    assert main([*args, "--prompt-ids", "1 two"]) == 1
    assert "invalid value '1 two' for option --prompt-ids" in capsys.readouterr().err


@needs_hf
def test_the_default_model_runs_from_any_folder(tmp_path):
    proc = _modelport("generate", "default", "ROMEO:\n", "--max-tokens", "8", "--temperature", "0", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()


@needs_hf
def test_a_bare_name_that_fails_as_a_repository_id_says_it_is_no_local_folder_either(tmp_path):
    proc = _modelport("inspect", "nowhere", "--offline", cwd=tmp_path, env={"HF_HOME": str(tmp_path / "hf")})
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert lines[-1] == (
        "modelport: note: it was tried as a repository id; there is no such file or folder here either: "
        f"{tmp_path / 'nowhere'}"
    )


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
        "unresolved",
    }
    assert data["unresolved"] == {}
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
    assert err.startswith("modelport: error: invalid value 'vllm' for option --model-impl;")
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


class Terminal(io.StringIO):
    """What TerminalProgress writes to, standing in for a terminal's stderr."""

    def isatty(self):
        return True


def test_progress_shows_loading_transformers_after_a_delay_and_erases_it():
    stream = Terminal()
    drawer = TerminalProgress(stream, delay=0.05)
    drawer("config_started", {"imports": ["torch", "transformers"]})
    deadline = time.monotonic() + 5
    while "loading" not in stream.getvalue() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert stream.getvalue() == "\r\x1b[Kloading transformers\u2026"
    drawer("config_finished", {})
    assert stream.getvalue().endswith("\r\x1b[K")


def test_progress_says_nothing_for_a_quick_config_step_or_one_with_nothing_to_import():
    stream = Terminal()
    drawer = TerminalProgress(stream, delay=0.2)
    drawer("config_started", {"imports": ["transformers"]})
    drawer("config_finished", {})  # done before the delay: no line at all
    drawer("config_started", {"imports": []})
    time.sleep(0.3)
    assert stream.getvalue() == ""


def test_progress_draws_a_bar_over_the_bytes_of_weights_read():
    stream = Terminal()
    drawer = TerminalProgress(stream)
    for done in (0, 500_000, 510_000, 2_000_000):
        drawer("weights_read", {"done": done, "total": 2_000_000})
    drawer.clear()
    frames = stream.getvalue().split("\r\x1b[K")
    assert frames[1:] == [
        "reading weights [........................]   0% of 2.0 MB",
        "reading weights [######..................]  25% of 2.0 MB",  # 510_000 is still 25%: not redrawn
        "reading weights [########################] 100% of 2.0 MB",
        "",
    ]


def test_no_progress_when_stderr_is_not_a_terminal(toy, toy_model, capsys):
    args = ["generate", str(toy_model()), "--skip-tokenizer-init", "--load-format", "dummy", "--max-tokens", "2"]
    assert main([*args, "--prompt-ids", "1 2"]) == 0
    err = capsys.readouterr().err
    assert "\x1b[K" not in err and "reading weights" not in err and "first token" not in err


@needs_hf
def test_on_a_terminal_generate_shows_the_weights_bar_and_the_time_to_first_token(tmp_path):
    import pty

    controller, terminal = pty.openpty()
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MODELPORT_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelport", "generate", "default", "ROMEO:", "--max-tokens", "4", "--seed", "0"],
        stdout=subprocess.PIPE,
        stderr=terminal,
        cwd=tmp_path,
        env=environ,
    )
    os.close(terminal)
    seen = b""
    while True:
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    assert proc.wait(timeout=300) == 0
    os.close(controller)
    text = seen.decode()
    assert "reading weights [########################] 100% of 4.0 MB" in text
    assert re.search(r"\(first token after \d+\.\d\d s, all in \d+\.\d\d s\)", text)
    assert proc.stdout is not None and "reading weights" not in proc.stdout.read().decode()
