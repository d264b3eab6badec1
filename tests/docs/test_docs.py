"""Meta-tests that keep docs/ honest about the code.

Whatever the code grows (a hook, an option, an error class, an environment
variable, a CLI flag) must show up in the documentation, or these tests fail.
The worked example plugin is run for real, and the site must build in strict
mode. Heavy imports (transformers, torch) happen only inside the tests that
need them, because this module is collected with the rest of the suite.
"""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import inspect
import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from modelport import hookspecs
from modelport.hookspecs import hookimpl
from modelport.types import WeightFiles

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PAGES = DOCS / "src"
EXAMPLE = DOCS / "examples" / "modelport-toml-config"
EXAMPLE_MODEL = EXAMPLE / "example-model"


def _hook_names() -> list[str]:
    return sorted(
        name for name, value in vars(hookspecs).items() if name.startswith("modelport_") and inspect.isfunction(value)
    )


HOOKS = _hook_names()


# --- reading markdown ---------------------------------------------------------


def page(name: str) -> str:
    return (PAGES / name).read_text(encoding="utf-8")


def _outside_fences(text: str) -> Iterator[str]:
    """Lines that are not inside a fenced code block (a ``# comment`` there is no heading)."""
    fenced = False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            yield line


def headings(text: str) -> list[str]:
    return [m.group(2).strip() for line in _outside_fences(text) if (m := re.match(r"(#{1,6}) (.+)$", line))]


def section(text: str, title: str) -> str:
    """The text under heading ``title`` up to the next heading of the same or a higher level."""
    lines = text.splitlines()
    fenced = False
    start = level = None
    for i, line in enumerate(lines):
        if line.startswith("```"):
            fenced = not fenced
        if fenced or not (m := re.match(r"(#{1,6}) (.+)$", line)):
            continue
        if start is None and m.group(2).strip() == title:
            start, level = i + 1, len(m.group(1))
        elif start is not None and level is not None and len(m.group(1)) <= level:
            return "\n".join(lines[start:i])
    if start is None:
        raise AssertionError(f"no heading {title!r}")
    return "\n".join(lines[start:])


def code_blocks(text: str) -> list[tuple[str, str, str | None]]:
    """``(language, code, marker)`` for each fenced block; ``marker`` is an HTML comment on the line before."""
    blocks = []
    lines = text.splitlines(keepends=True)
    i = 0
    while i < len(lines):
        m = re.match(r"```(\w*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        previous = lines[i - 1].strip() if i else ""
        marker = re.fullmatch(r"<!-- (.+?) -->", previous)
        end = i + 1
        while not lines[end].startswith("```"):
            end += 1
        blocks.append((m.group(1), "".join(lines[i + 1 : end]), marker.group(1) if marker else None))
        i = end + 1
    return blocks


def table_rows(text: str) -> list[list[str]]:
    """The cells of every markdown table body row (header and separator rows left out)."""
    lines = list(_outside_fences(text))
    rows = []
    for i, line in enumerate(lines):
        is_separator = re.fullmatch(r"\|[-:| ]+\|", line.strip()) is not None
        next_is_separator = i + 1 < len(lines) and re.fullmatch(r"\|[-:| ]+\|", lines[i + 1].strip()) is not None
        if line.startswith("|") and not is_separator and not next_is_separator:
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def backticked(cell: str) -> str | None:
    m = re.fullmatch(r"`([^`]+)`", cell)
    return m.group(1) if m else None


# --- hooks ---------------------------------------------------------------------


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_section_in_the_hook_reference(hook):
    assert hook in headings(page("hooks.md")), f"docs/src/hooks.md has no '## {hook}' section"


def test_the_hook_references_table_of_contents_links_every_hook():
    """The table at the top of hooks.md is the page's table of contents, step by step."""
    contents = page("hooks.md").split("\n## ", 1)[0]
    linked = set(re.findall(r"\[`(modelport_\w+)`\]\(#(modelport_\w+)\)", contents))
    assert sorted(set(HOOKS) - {hook for hook, anchor in linked if hook == anchor}) == []


def test_the_hook_reference_documents_only_hooks_that_exist():
    documented = [h for h in headings(page("hooks.md")) if h.startswith("modelport_")]
    assert sorted(set(documented) - set(HOOKS)) == []
    assert len(documented) == len(set(documented)), "a hook has two sections"


def _spec_parameters(hook: str) -> list[str]:
    return list(inspect.signature(getattr(hookspecs, hook)).parameters)


@pytest.mark.parametrize("hook", HOOKS)
def test_each_hook_section_states_its_shape_signature_and_arguments(hook):
    text = section(page("hooks.md"), hook)
    firstresult = getattr(hookspecs, hook).modelport_spec["firstresult"]
    assert ("**Shape:** choose one." if firstresult else "**Shape:** register many.") in text

    signatures = [
        node
        for lang, code, _ in code_blocks(text)
        if lang == "python"
        for node in ast.parse(code).body
        if isinstance(node, ast.FunctionDef) and node.name == hook and not node.decorator_list
    ]
    assert len(signatures) == 1, f"{hook}: expected one undecorated signature block"
    assert [a.arg for a in signatures[0].args.args] == _spec_parameters(hook)
    for argument in _spec_parameters(hook):
        assert f"- `{argument}`" in text, f"{hook}: argument {argument!r} is not described"
    assert "**Returns:**" in text


def _hookimpls_in(code: str) -> Iterator[ast.FunctionDef]:
    for node in ast.walk(ast.parse(code)):
        if not isinstance(node, ast.FunctionDef):
            continue
        for decorator in node.decorator_list:
            target = decorator.func if isinstance(decorator, ast.Call) else decorator
            name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")
            if name == "hookimpl":
                yield node


@pytest.mark.parametrize("name", ["hooks.md", "plugin-guide.md", "integrator-guide.md"])
def test_example_hook_implementations_match_their_specs(name):
    """An example that a reader copies must load: a real hook name and only the spec's arguments."""
    found = 0
    for lang, code, _ in code_blocks(page(name)):
        if lang != "python":
            continue
        for impl in _hookimpls_in(code):
            found += 1
            assert impl.name in HOOKS, f"{name}: {impl.name} is no hook"
            arguments = [a.arg for a in impl.args.args if a.arg != "self"]
            extra = set(arguments) - set(_spec_parameters(impl.name))
            assert not extra, f"{name}: {impl.name} takes {sorted(extra)}, which its spec lacks"
    assert found


@pytest.mark.parametrize("name", sorted(p.name for p in PAGES.glob("*.md")))
def test_python_code_blocks_are_valid_python(name):
    for lang, code, _ in code_blocks(page(name)):
        if lang == "python":
            ast.parse(code)


def _callback_signature(callback: Callable[..., Any]) -> str:
    parts = []
    for parameter in inspect.signature(callback).parameters.values():
        if parameter.default is inspect.Parameter.empty:
            parts.append(parameter.name)
        else:
            default = parameter.default
            parts.append(f"{parameter.name}={json.dumps(default) if isinstance(default, str) else repr(default)}")
    return f"register({', '.join(parts)})"


def test_register_callbacks_are_documented_as_the_registry_builds_them():
    from modelport.registry import Registry

    rows = {
        backticked(r[0]): (backticked(r[1]), backticked(r[2]))
        for r in table_rows(section(page("hooks.md"), "Register callbacks"))
    }
    registry = Registry()
    for hook, kind in hookspecs.REGISTER_HOOKS.items():
        assert rows.get(hook) == (kind, _callback_signature(registry.registrar(kind, "a-plugin"))), hook
    assert set(rows) == set(hookspecs.REGISTER_HOOKS)


def _test_files_outside_docs() -> list[Path]:
    tests = ROOT / "tests"
    return [p for p in tests.rglob("*.py") if (tests / "docs") not in p.parents]


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_exercised_by_a_test(hook):
    """The datasette rule: a hook that no test outside tests/docs names is a hook without a test."""
    pattern = re.compile(rf"\b{hook}\b")
    users = [p for p in _test_files_outside_docs() if pattern.search(p.read_text(encoding="utf-8"))]
    assert users, f"no test under tests/ (outside tests/docs) mentions {hook}"


# --- options, environment, errors, CLI ----------------------------------------------


def test_every_load_option_is_in_the_user_guide_table_with_its_default():
    import dataclasses

    from modelport.options import LoadOptions

    rows = table_rows(section(page("user-guide.md"), "Load options"))
    documented = {backticked(r[0]): backticked(r[1]) for r in rows}
    fields = {f.name: f.default for f in dataclasses.fields(LoadOptions)}
    missing = sorted(set(fields) - set(documented))
    assert not missing, f"LoadOptions fields missing from the user guide's options table: {missing}"
    assert sorted(set(documented) - set(fields)) == [], "the table documents options that do not exist"
    for name, default in fields.items():
        assert documented[name] is not None, f"{name}: the default is not a `literal`"
        assert ast.literal_eval(documented[name]) == default, f"{name}: documented default is wrong"
    assert [backticked(r[0]) for r in rows] == list(fields), "keep the table in declaration order"


def test_every_environment_variable_is_documented():
    core = Path(importlib.util.find_spec("modelport").origin).parent  # type: ignore[arg-type]
    variables = {"HF_HUB_OFFLINE"}
    for source in core.rglob("*.py"):
        variables.update(re.findall(r"\bMODELPORT_[A-Z_]+\b", source.read_text(encoding="utf-8")))
    guide = section(page("user-guide.md"), "Environment variables")
    documented = {backticked(r[0]) for r in table_rows(guide)}
    assert sorted(variables - documented) == []


def _error_tree() -> str:
    from modelport import errors

    classes = [getattr(errors, name) for name in errors.__all__]
    lines: list[str] = []

    def add(cls: type, depth: int) -> None:
        foreign = [b.__name__ for b in cls.__bases__ if b not in classes]
        also = f"  (also {', '.join(foreign)})" if depth and foreign else ""
        lines.append("    " * depth + cls.__name__ + also)
        for child in sorted((c for c in classes if cls in c.__bases__), key=lambda c: c.__name__):
            add(child, depth + 1)

    for root in (c for c in classes if not any(b in classes for b in c.__bases__)):
        add(root, 0)
    return "\n".join(lines) + "\n"


def test_every_error_is_documented():
    from modelport import errors

    text = page("errors.md")
    missing = sorted(set(errors.__all__) - set(headings(text)))
    assert not missing, f"errors in modelport.errors.__all__ without a section in docs/src/errors.md: {missing}"
    documented = {h for h in headings(text) if h.endswith("Error")}
    assert sorted(documented - set(errors.__all__)) == [], "errors.md documents errors that do not exist"
    [tree] = [code for _, code, marker in code_blocks(text) if marker == "error-tree"]
    assert tree == _error_tree(), "the hierarchy in errors.md differs from modelport.errors"


def _constructor(cls: type) -> str:
    """``Name(a, b=default, *, c=None)`` as errors.md lists it; ``Name(message)`` for a plain exception."""
    if cls.__init__ is Exception.__init__:  # type: ignore[misc]
        return f"{cls.__name__}(message)"
    parts: list[str] = []
    for parameter in list(inspect.signature(cls.__init__).parameters.values())[1:]:
        if parameter.kind is parameter.KEYWORD_ONLY and "*" not in parts:
            parts.append("*")
        default = parameter.default
        parts.append(parameter.name if default is parameter.empty else f"{parameter.name}={default!r}")
    return f"{cls.__name__}({', '.join(parts)})"


def test_every_error_constructor_is_listed_with_its_arguments():
    from modelport import errors

    [block] = [code for _, code, marker in code_blocks(page("errors.md")) if marker == "error-constructors"]
    expected = "".join(_constructor(getattr(errors, name)) + "\n" for name in sorted(errors.__all__))
    assert block == expected, "the constructors in errors.md differ from modelport.errors"


def test_the_tokenizer_protocol_lists_every_member_the_checker_checks():
    from modelport.testing.plugin_checks import CHAT_MEMBERS, TOKENIZER_MEMBERS

    members = {
        (backticked(row[0]) or "").split("(")[0]
        for row in table_rows(section(page("plugin-guide.md"), "The tokenizer protocol"))
    }
    assert sorted({*TOKENIZER_MEMBERS, *CHAT_MEMBERS} - members) == []


@pytest.mark.parametrize("path", ["README.md", "docs/src/user-guide.md"])
def test_the_install_instructions_cover_every_plugin_and_the_pinned_cpu_torch(path):
    text = (ROOT / path).read_text(encoding="utf-8")
    for folder in sorted(p.parent for p in ROOT.glob("plugins/*/pyproject.toml")):
        name = f"modelport-{folder.name}"
        assert f'pip install "{name} @ git+$REPO#subdirectory=plugins/{folder.name}"' in text, name
    [pin] = re.findall(r"^torch==(\S+)$", (ROOT / "tests" / "constraints.txt").read_text(), re.M)
    assert f"pip install torch=={pin} --index-url https://download.pytorch.org/whl/cpu" in text
    assert "pip install -e . -e plugins/hf" in text
    assert re.search(r"(Nothing|None\s+of\s+them)\s+is\s+on\s+PyPI\s+yet", text)


def test_examples_name_the_shipped_model_as_default_not_by_its_path_in_a_clone():
    """``default`` works from any folder; ``core/modelport/data/default-model`` only from a clone's root."""
    pages = [ROOT / "README.md", *PAGES.glob("*.md"), *ROOT.glob("plugins/*/README.md")]
    typed = re.compile(r"(?<![\w/.])core/modelport/data/default-model")  # as typed, not inside an absolute path
    stale = [p.relative_to(ROOT).as_posix() for p in pages if typed.search(p.read_text(encoding="utf-8"))]
    assert stale == []


def test_every_progress_event_the_code_reports_is_in_the_integrator_guide():
    reported = set()
    for path in (ROOT / "core" / "modelport").rglob("*.py"):
        reported |= set(re.findall(r'progress\.report\(\s*"(\w+)"', path.read_text(encoding="utf-8")))
    assert reported, "no progress events found: has the pipeline stopped reporting them?"
    documented = {backticked(row[0]) for row in table_rows(section(page("integrator-guide.md"), "Progress"))}
    assert sorted(reported - documented) == []


def _documented_names(name: str, title: str) -> list[str | None]:
    """First-column names of the first table under ``title``."""
    text = section(page(name), title)
    lines = list(_outside_fences(text))
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return [backticked(r[0]) for r in table_rows("\n".join(lines[start:end]))]


@pytest.mark.parametrize(
    ("name", "title", "qualified_name"),
    [
        ("integrator-guide.md", "Building a plugin host", "modelport.plugins:PluginHost"),
        ("integrator-guide.md", "Resolving", "modelport.pipeline:ResolvedModel"),
        ("integrator-guide.md", "Model facts", "modelport.facts:ModelFacts"),
        ("integrator-guide.md", "The trace", "modelport.trace:TraceStep"),
        ("integrator-guide.md", "Loading", "modelport.pipeline:LoadedModel"),
        ("hooks.md", "ConfigPatch and PatchPhase", "modelport.types:ConfigPatch"),
        ("integrator-guide.md", "The weight report", "modelport.pipeline:WeightReport"),
        ("integrator-guide.md", "The model protocol", "modelport.models.protocol:SequenceBatch"),
        ("generation.md", "Sampling parameters", "modelport.sampling:SamplingParams"),
        ("generation.md", "RequestOutput", "modelport.outputs:RequestOutput"),
        ("generation.md", "CompletionOutput", "modelport.outputs:CompletionOutput"),
        ("generation.md", "Logprob", "modelport.outputs:Logprob"),
        ("generation.md", "ExecutorSettings", "modelport.executor:ExecutorSettings"),
    ],
)
def test_every_field_of_a_public_dataclass_is_documented(name, title, qualified_name):
    import dataclasses

    from modelport.registry import import_target

    fields = [f.name for f in dataclasses.fields(import_target(qualified_name)) if f.init]
    documented = _documented_names(name, title)
    assert sorted(set(fields) - set(documented)) == [], f"{name}, '{title}' lacks fields of {qualified_name}"
    assert sorted(set(documented) - set(fields)) == [], f"{name}, '{title}' documents fields {qualified_name} lacks"


def _documented_defaults(name: str, title: str) -> dict[str | None, str | None]:
    """First column -> second column (both unwrapped from backticks) of the first table under ``title``."""
    text = section(page(name), title)
    lines = list(_outside_fences(text))
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return {backticked(r[0]): backticked(r[1]) for r in table_rows("\n".join(lines[start:end]))}


@pytest.mark.parametrize(
    ("name", "title", "qualified_name"),
    [
        ("generation.md", "Sampling parameters", "modelport.sampling:SamplingParams"),
        ("generation.md", "ExecutorSettings", "modelport.executor:ExecutorSettings"),
    ],
)
def test_documented_defaults_are_the_dataclass_defaults(name, title, qualified_name):
    import dataclasses

    from modelport.registry import import_target

    documented = _documented_defaults(name, title)
    for f in dataclasses.fields(import_target(qualified_name)):
        if not f.init:
            continue
        assert documented.get(f.name) is not None, f"{name}: {f.name} has no `literal` default"
        assert ast.literal_eval(documented[f.name]) == f.default, f"{name}: the documented default of {f.name} is wrong"


def test_every_llm_argument_is_documented_with_its_default():
    from modelport.llm import LLM

    parameters = {
        p.name: p.default
        for p in inspect.signature(LLM.__init__).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }
    documented = _documented_defaults("generation.md", "LLM")
    assert sorted(set(parameters) - set(documented)) == [], "LLM arguments missing from generation.md's table"
    assert sorted(set(documented) - set(parameters)) == [], "generation.md documents LLM arguments that do not exist"
    for argument, default in parameters.items():
        assert ast.literal_eval(documented[argument] or "") == default, f"LLM {argument}: documented default is wrong"


def _subcommands() -> dict[str, Any]:
    import argparse

    from modelport.cli import build_parser

    [subcommands] = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(subcommands.choices)


SUBCOMMANDS = sorted(_subcommands())


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_subcommand_has_a_section_and_a_usage_line_in_the_cli_page(command):
    text = page("cli.md")
    assert f"modelport {command}" in headings(text), f"cli.md has no '## modelport {command}' section"
    [usage] = [code for lang, code, _ in code_blocks(text) if lang == "text"][:1]
    assert f"modelport {command} " in usage, f"the usage block at the top of cli.md lacks {command}"


def _flags(parser: Any) -> dict[str, Any]:
    return {s: action for action in parser._actions for s in action.option_strings if s.startswith("--")}


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_flag_of_every_subcommand_is_in_the_cli_page(command):
    """Load options in the Options table, sampling fields in the sampling table, the rest in the command's section."""
    import dataclasses

    from modelport.options import LoadOptions
    from modelport.sampling import SamplingParams

    flags = _flags(_subcommands()[command])
    flags.pop("--help")
    load_options = {f: a for f, a in flags.items() if a.dest in LoadOptions.names()}
    sampling_fields = {f.name for f in dataclasses.fields(SamplingParams)}
    sampling = {f: a for f, a in flags.items() if a.dest in sampling_fields}
    own = sorted(set(flags) - set(load_options) - set(sampling))

    if load_options:
        documented = {backticked(r[0]): backticked(r[1]) for r in table_rows(section(page("cli.md"), "Options"))}
        assert sorted(set(load_options) - set(documented)) == [], f"{command}: load-option flags missing"
        assert sorted(set(documented) - set(load_options)) == [], f"{command}: the Options table has extra flags"
        assert all(documented[f] == a.dest for f, a in load_options.items()), "a flag names the wrong option"
    if sampling:
        rows = {backticked(r[0]): r for r in table_rows(section(page("cli.md"), "Sampling flags"))}
        assert sorted(set(sampling) - set(rows)) == [], f"{command}: sampling flags missing from 'Sampling flags'"
        assert sorted(set(rows) - set(sampling)) == [], f"{command}: 'Sampling flags' documents flags it lacks"
        for flag, action in sampling.items():
            assert backticked(rows[flag][1]) == action.dest, f"{flag}: wrong field"
            default = rows[flag][2]
            expected = "none" if action.default is None else f"`{action.default}`"
            assert default == expected, f"{flag}: the documented default {default} is not {expected}"
    text = section(page("cli.md"), f"modelport {command}")
    unmentioned = [flag for flag in own if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text)]
    assert unmentioned == [], f"flags of modelport {command} that its section never mentions"


def test_the_testing_kit_is_documented_in_the_plugin_guide():
    """Every fixture, ini option and public name of the testing kit appears in the guide's testing section."""
    import modelport.testing
    from modelport.testing import pytest_plugin

    tree = ast.parse(Path(pytest_plugin.__file__).read_text(encoding="utf-8"))
    fixtures = set()
    ini_options = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
            for decorator in node.decorator_list:
                target = decorator.func if isinstance(decorator, ast.Call) else decorator
                if isinstance(target, ast.Attribute) and target.attr == "fixture":
                    fixtures.add(node.name)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "addini":
            first = node.args[0]
            assert isinstance(first, ast.Constant)
            ini_options.add(first.value)
    assert fixtures and ini_options

    text = section(page("plugin-guide.md"), "Testing a plugin")
    table_names = {backticked(r[0]) for r in table_rows(text)}
    assert sorted(fixtures - table_names) == [], "fixtures of the modelport pytest plugin missing from the guide"
    assert sorted(ini_options - table_names) == [], "ini options of the modelport pytest plugin missing from the guide"
    unmentioned = [name for name in modelport.testing.__all__ if not re.search(rf"[`.]{name}\b", text)]
    assert unmentioned == [], "names in modelport.testing.__all__ that the guide's testing section never mentions"


def _public_members(cls: type) -> list[str]:
    # Inherited ones count too: HubServer's life and request log live in modelport.testing.local_server.
    own = [klass for klass in cls.__mro__ if klass.__module__.startswith("modelport.")]
    return sorted({name for klass in own for name in vars(klass) if not name.startswith("_")})


@pytest.mark.parametrize("class_name", ["HubServer", "HubRepo"])
def test_every_member_of_the_local_hub_is_in_the_plugin_guide(class_name):
    """A plugin author learns the local Hub from the guide: every public method and property is there."""
    from modelport.testing import hub_server

    text = section(page("plugin-guide.md"), "A local Hub")
    cls = getattr(hub_server, class_name)
    members = _public_members(cls)
    assert members
    unmentioned = [name for name in members if not re.search(rf"`{name}\b", text)]
    assert unmentioned == [], f"{class_name} members the guide's 'A local Hub' section never mentions"


# --- the worked example -----------------------------------------------------------


def _example_files() -> list[Path]:
    return sorted(
        p
        for p in EXAMPLE.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and not any(part.startswith(".") for part in p.parts)
    )


def test_the_plugin_guide_shows_every_example_file_verbatim():
    shown = {
        marker.removeprefix("example-file: "): code
        for _, code, marker in code_blocks(page("plugin-guide.md"))
        if marker and marker.startswith("example-file: ")
    }
    for path in _example_files():
        relative = path.relative_to(EXAMPLE).as_posix()
        assert relative in shown, f"plugin-guide.md does not show {relative}"
        assert shown.pop(relative) == path.read_text(encoding="utf-8"), f"plugin-guide.md's copy of {relative} is stale"
    assert shown == {}, f"plugin-guide.md shows files that do not exist: {sorted(shown)}"


def _example_project() -> dict[str, Any]:
    tomllib = pytest.importorskip("tomllib", reason="the example plugin needs Python 3.11 (tomllib)")
    with (EXAMPLE / "pyproject.toml").open("rb") as f:
        project: dict[str, Any] = tomllib.load(f)
    return project


def test_the_example_entry_point_is_named_after_its_distribution():
    project = _example_project()
    name = project["project"]["name"]
    entry_points = project["project"]["entry-points"]["modelport.plugins"]
    assert list(entry_points) == [name]
    assert project["tool"]["setuptools"]["py-modules"] == [entry_points[name]]
    assert (EXAMPLE / f"{entry_points[name]}.py").is_file()


def _install_example(plugin_distribution: Callable[..., Any]) -> Any:
    project = _example_project()
    name = project["project"]["name"]
    module = project["project"]["entry-points"]["modelport.plugins"][name]
    code = (EXAMPLE / f"{module}.py").read_text(encoding="utf-8")
    return plugin_distribution(name, code, version=project["project"]["version"], module=module)


def _allow_only(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    from modelport.plugins import reset_host

    monkeypatch.setenv("MODELPORT_PLUGINS", ",".join(names))
    reset_host()


class StandInModel:
    """Stands in for an implementation, so that load() runs with core and the example alone."""

    def __init__(self, hf_config: Any, dtype: str, device: str) -> None:
        self.hf_config, self.dtype, self.device = hf_config, dtype, device

    @classmethod
    def from_config(cls, hf_config: Any, *, dtype: str, device: str) -> StandInModel:
        return cls(hf_config, dtype, device)

    def load_weights(self, weights: Any) -> Any:
        from modelport import WeightReport

        return WeightReport(loaded=tuple(name for name, _ in weights))


class StandIns:
    """What other plugins provide after the config step: an implementation and file-less weights."""

    @hookimpl
    def modelport_register_architectures(self, register):
        register("LlamaForCausalLM", f"{__name__}:StandInModel", impl="native")

    @hookimpl
    def modelport_register_load_formats(self, register):
        register("dummy", "no weight files")

    @hookimpl
    def modelport_select_weight_files(self, source, options):
        return WeightFiles("dummy", source) if options.load_format == "dummy" else None

    @hookimpl
    def modelport_iter_weights(self, weights):
        return iter(()) if weights.load_format == "dummy" else None


@pytest.fixture
def example_plugin(plugin_distribution, monkeypatch):
    """The example installed as a real distribution, with stand-ins for the other steps: core alone."""
    from modelport.plugins import get_host
    from modelport.testing import registered_plugin

    dist = _install_example(plugin_distribution)
    _allow_only(monkeypatch, dist.name)
    with registered_plugin(StandIns(), "stand-ins", host=get_host()):
        yield dist


def test_the_example_plugin_resolves_and_loads_a_model_toml_folder(example_plugin):
    import modelport
    from modelport.plugins import get_host

    resolved = modelport.resolve(str(EXAMPLE_MODEL), load_format="dummy", skip_tokenizer_init=True)

    assert resolved.config_format == "toml"
    assert type(resolved.hf_config).__name__ == "LlamaConfig"
    assert (resolved.hf_config.hidden_size, resolved.hf_config.num_hidden_layers) == (64, 2)
    assert resolved.dtype == "bfloat16"
    assert resolved.max_model_len == 256
    [fmt] = resolved.trace.find("format")
    assert (fmt.plugin, fmt.decision, fmt.reason) == ("modelport-toml-config", "toml", "model.toml present")
    [config] = resolved.trace.find("config")
    assert config.plugin == "modelport-toml-config"
    info = get_host().plugins["modelport-toml-config"]
    assert (info.distribution, info.version, info.builtin) == ("modelport-toml-config", "0.1.0", False)

    loaded = modelport.load(str(EXAMPLE_MODEL), load_format="dummy", skip_tokenizer_init=True)
    assert isinstance(loaded.model, StandInModel)
    assert loaded.model.hf_config.vocab_size == 384


def test_the_example_plugin_reports_a_bad_model_type_with_file_and_field(example_plugin, tmp_path):
    import modelport
    from modelport.errors import InvalidConfigError

    (tmp_path / "model.toml").write_text('model_type = "no-such-model"\n')

    with pytest.raises(InvalidConfigError) as caught:
        modelport.resolve(str(tmp_path), load_format="dummy", skip_tokenizer_init=True)
    assert caught.value.file.endswith("model.toml")
    assert (caught.value.field, caught.value.value) == ("model_type", "no-such-model")


def _has_distribution(name: str) -> bool:
    import importlib.metadata

    try:
        importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def _call_with_fixtures(function: Callable[..., Any], fixtures: dict[str, Any]) -> None:
    wanted = list(inspect.signature(function).parameters)
    unknown = [name for name in wanted if name not in fixtures]
    assert not unknown, f"{function.__name__} uses fixtures this test does not provide: {unknown}"
    function(**{name: fixtures[name] for name in wanted})


@contextlib.contextmanager
def _hub_server(base: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """What the ``hub_server`` fixture gives: a local Hub, with the environment pointing at it."""
    from modelport.testing import HubServer
    from modelport.testing.pytest_plugin import _HUB_ENV_CLEARED

    home = base / "hf_home"
    with HubServer() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("HF_HOME", str(home))
        monkeypatch.setenv("HF_HUB_CACHE", str(home / "hub"))
        monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        for name in _HUB_ENV_CLEARED:
            monkeypatch.delenv(name, raising=False)
        yield server


def _tiny_model_factory(base: Path) -> Callable[..., Path]:
    from modelport.testing import make_tiny_model

    def factory(name: str = "model", architecture: str = "llama", **kwargs: Any) -> Path:
        return make_tiny_model(base / name, architecture, **kwargs)

    return factory


def test_the_examples_own_tests_and_the_guides_test_snippets_pass(plugin_distribution, monkeypatch, tmp_path):
    """Run what the guide tells authors to run, the way the modelport pytest plugin would.

    The tests are called in this process rather than through a nested pytest
    run, which would drop modules it imported (transformers' among them) and
    leave other tests with duplicate classes.
    """
    project = _example_project()
    allowed = project["tool"]["pytest"]["ini_options"]["modelport_plugins"].split()
    absent = [n for n in allowed if n != project["project"]["name"] and not _has_distribution(n)]
    if absent:
        pytest.skip(f"the example's tests need {', '.join(absent)} installed")

    from modelport.plugins import get_host, reset_host

    _install_example(plugin_distribution)
    path = EXAMPLE / "tests" / "test_modelport_toml_config.py"
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # the example registers f"{__name__}:TinyLlamaConfig"
    try:
        spec.loader.exec_module(module)
        snippets: dict[str, Any] = {"__name__": "plugin_guide_snippets"}
        for lang, code, marker in code_blocks(page("plugin-guide.md")):
            if lang == "python" and marker is None and re.search(r"^def test_", code, re.M):
                exec(compile(code, "plugin-guide.md", "exec"), snippets)
        tests = [(name, f) for name, f in vars(module).items() if name.startswith("test_")]
        tests += [(name, f) for name, f in snippets.items() if name.startswith("test_")]
        assert len(tests) >= 8

        for number, (name, test) in enumerate(tests):
            with monkeypatch.context() as patch:
                # What the modelport pytest plugin's isolation does, with the example's ini option.
                patch.setenv("MODELPORT_PLUGINS", ",".join(allowed))
                patch.setenv("MODELPORT_STRICT_PLUGINS", "1")
                patch.delenv("MODELPORT_DISABLE_PLUGINS", raising=False)
                reset_host()
                base = tmp_path / f"{number}-{name}"
                base.mkdir()
                with contextlib.ExitStack() as stack:
                    fixtures = {
                        "tmp_path": base,
                        "monkeypatch": patch,
                        "modelport_host": get_host(),
                        "tiny_model": _tiny_model_factory(base),
                        "plugin_distribution": plugin_distribution,
                    }
                    if "hub_server" in inspect.signature(test).parameters:
                        fixtures["hub_server"] = stack.enter_context(_hub_server(base, patch))
                    _call_with_fixtures(test, fixtures)
            reset_host()
    finally:
        sys.modules.pop(spec.name, None)


LLAMA2C = DOCS / "examples" / "modelport-llama2c"


def test_the_llama2c_examples_own_tests_pass(plugin_distribution, monkeypatch, tmp_path):
    """The second worked example (a whole new format: config, tokenizer, weights) passes its own tests.

    Installed as a real distribution and run the way the modelport pytest plugin
    would, with the plugins its ini option names.
    """
    tomllib = pytest.importorskip("tomllib", reason="reading the example's pyproject.toml needs Python 3.11")
    with (LLAMA2C / "pyproject.toml").open("rb") as f:
        project = tomllib.load(f)
    name = project["project"]["name"]
    allowed = project["tool"]["pytest"]["ini_options"]["modelport_plugins"].split()
    absent = [n for n in allowed if n != name and not _has_distribution(n)]
    if absent:
        pytest.skip(f"the example's tests need {', '.join(absent)} installed")
    module_name = project["project"]["entry-points"]["modelport.plugins"][name]
    assert project["tool"]["setuptools"]["py-modules"] == [module_name]
    code = (LLAMA2C / f"{module_name}.py").read_text(encoding="utf-8")
    plugin_distribution(name, code, version=project["project"]["version"], module=module_name)

    from modelport.plugins import get_host, reset_host

    path = LLAMA2C / "tests" / "test_modelport_llama2c.py"
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    tests = [(n, f) for n, f in vars(module).items() if n.startswith("test_")]
    assert len(tests) >= 7
    for number, (test_name, test) in enumerate(tests):
        with monkeypatch.context() as patch:
            patch.setenv("MODELPORT_PLUGINS", ",".join(allowed))
            patch.setenv("MODELPORT_STRICT_PLUGINS", "1")
            patch.delenv("MODELPORT_DISABLE_PLUGINS", raising=False)
            reset_host()
            base = tmp_path / f"{number}-{test_name}"
            base.mkdir()
            _call_with_fixtures(test, {"tmp_path": base, "monkeypatch": patch, "modelport_host": get_host()})
        reset_host()


def test_the_plugin_guide_shows_the_llama2c_plugin_verbatim():
    shown = [
        code
        for _, code, marker in code_blocks(page("plugin-guide.md"))
        if marker == "llama2c-file: modelport_llama2c.py"
    ]
    assert shown == [(LLAMA2C / "modelport_llama2c.py").read_text(encoding="utf-8")]


# --- the command line ---------------------------------------------------------------


def _documented_json(kind: str) -> Any:
    [code] = [code for lang, code, marker in code_blocks(page("cli.md")) if marker == f"json: {kind}"]
    return json.loads(code)


def _same_shape(documented: Any, actual: Any, path: str = "$") -> None:
    """Same keys and JSON types; ``null`` on either side matches anything (nullable fields)."""
    if documented is None or actual is None:
        return
    if isinstance(documented, dict):
        assert isinstance(actual, dict), path
        if path.endswith(".registered"):  # keys are registry kinds, which vary by plugin
            return
        assert sorted(documented) == sorted(actual), path
        for key in documented:
            _same_shape(documented[key], actual[key], f"{path}.{key}")
    elif isinstance(documented, list):
        assert isinstance(actual, list), path
        if documented and actual:
            _same_shape(documented[0], actual[0], f"{path}[0]")
    else:
        numbers = (int, float)
        same = isinstance(documented, numbers) and isinstance(actual, numbers) and not isinstance(actual, bool)
        assert same or type(documented) is type(actual), f"{path}: {documented!r} vs {actual!r}"


def test_inspect_json_has_the_documented_shape(example_plugin, capsys):
    from modelport import cli

    status = cli.main(["inspect", str(EXAMPLE_MODEL), "--json", "--load-format", "dummy", "--skip-tokenizer-init"])

    assert status == 0
    actual = json.loads(capsys.readouterr().out)
    assert actual["version"] == 1
    _same_shape(_documented_json("inspect"), actual)


def test_plugins_json_has_the_documented_shape(plugin_distribution, monkeypatch, capsys):
    from modelport import cli
    from modelport.plugins import PluginWarning

    _install_example(plugin_distribution)
    plugin_distribution("modelport-broken-example", "raise ImportError('a dependency is missing')\n")
    _allow_only(monkeypatch, "modelport-toml-config", "modelport-broken-example")
    monkeypatch.setenv("MODELPORT_STRICT_PLUGINS", "0")

    with pytest.warns(PluginWarning, match="modelport-broken-example"):
        status = cli.main(["plugins", "--json"])

    assert status == 0
    actual = json.loads(capsys.readouterr().out)
    _same_shape(_documented_json("plugins"), actual)
    [example] = [p for p in actual["plugins"] if p["name"] == "modelport-toml-config"]
    assert example["registered"] == {"config_format": ["toml"]}
    assert [f["name"] for f in actual["failed"]] == ["modelport-broken-example"]


def test_the_plugins_json_table_names_every_registry_kind():
    from modelport.registry import ALIAS_KIND

    [row] = [r for r in table_rows(section(page("cli.md"), "modelport plugins")) if backticked(r[0]) == "plugins"]
    listed = set(re.findall(r"`(\w+)`", row[1].split("the sorted names:", 1)[1]))
    assert listed == {*hookspecs.REGISTER_HOOKS.values(), ALIAS_KIND}


def test_cli_exit_statuses_are_as_documented(tmp_path, capsys):
    from modelport import cli

    assert cli.main(["inspect", str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("modelport: error: ") and err.count("\n") == 1
    assert cli.main([]) == 2
    with pytest.raises(SystemExit) as usage:
        cli.main(["no-such-command"])
    assert usage.value.code == 2


def _repository_plugins() -> list[str]:
    return sorted(f"modelport-{p.parent.name}" for p in ROOT.glob("plugins/*/pyproject.toml"))


def _shown_after(name: str, command: str) -> str:
    """The output a page shows under ``$ COMMAND`` in one of its text blocks, up to the block's end."""
    [block] = [code for lang, code, _ in code_blocks(page(name)) if code.startswith(f"$ {command}\n")]
    return block.removeprefix(f"$ {command}\n")


@pytest.fixture
def repository_plugins_only(monkeypatch):
    """The host of the pages' listings: core and every plugin of the repository, nothing else."""
    from modelport.plugins import reset_host

    absent = [name for name in _repository_plugins() if not _has_distribution(name)]
    if absent:
        pytest.skip(f"the listing shows every plugin of the repository; not installed: {', '.join(absent)}")
    _allow_only(monkeypatch, *_repository_plugins())
    yield
    reset_host()


def test_the_plugins_listing_in_the_cli_page_is_what_the_command_prints(repository_plugins_only, capsys):
    from modelport import cli

    assert cli.main(["plugins"]) == 0
    assert capsys.readouterr().out == _shown_after("cli.md", "modelport plugins")


def _hook_groups(text: str) -> dict[str, list[str]]:
    """``modelport plugins --hooks`` output: each hook's header line -> its numbered lines."""
    groups: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line == "...":
            current = None
        elif line.startswith("  "):
            assert current is not None, f"an implementation line outside a hook: {line!r}"
            current.append(line)
        else:
            current = groups.setdefault(line, [])
    return groups


def test_the_hook_order_in_the_cli_page_is_what_the_command_prints(repository_plugins_only, capsys):
    """The listing is abridged by whole hooks: each hook it shows has every implementation, in order."""
    from modelport import cli

    assert cli.main(["plugins", "--hooks"]) == 0
    actual = _hook_groups(capsys.readouterr().out)
    documented = _hook_groups(_shown_after("cli.md", "modelport plugins --hooks"))
    assert len(documented) >= 3
    for header, lines in documented.items():
        assert header in actual, f"cli.md shows a hook the command does not list: {header}"
        assert lines == actual[header], f"cli.md's order for {header.split()[0]} differs from the command's"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _message(make: Callable[[], object]) -> str:
    from modelport.errors import ModelportError

    with pytest.raises(ModelportError) as caught:
        make()
    return f"{type(caught.value).__name__}: {caught.value}"


def _sampling(**fields: Any) -> Callable[[], object]:
    def make() -> object:
        from modelport import SamplingParams

        return SamplingParams(**fields)

    return make


def _load_options(**fields: Any) -> Callable[[], object]:
    def make() -> object:
        from modelport import LoadOptions

        return LoadOptions.from_kwargs(**fields)

    return make


def _corrupt_weights() -> None:
    from modelport.errors import WeightsCorruptError

    raise WeightsCorruptError("/models/m/model.bin", "header says 7 layers, the file holds 6")


@pytest.mark.parametrize(
    ("name", "make", "cli"),
    [
        ("generation.md", _sampling(temperature=-1), False),
        ("cli.md", _sampling(temperature=-1.0), True),
        ("errors.md", _load_options(dtype="fp8"), False),
        ("errors.md", _corrupt_weights, False),
    ],
    ids=["generation-temperature", "cli-temperature", "errors-dtype", "errors-weights-corrupt"],
)
def test_error_messages_the_pages_quote_are_the_ones_the_code_gives(name, make, cli):
    """A message quoted in a page is what a reader will see: same words, same values (line breaks aside)."""
    from modelport.cli import cli_spelling

    kind, _, message = _message(make).partition(": ")
    shown = f"modelport: error: {cli_spelling(message)}" if cli else message
    text = _one_line(page(name))
    assert _one_line(shown) in text or _one_line(f"{kind}: {message}") in text, f"{name} does not quote: {shown}"


def test_the_rank_report_keys_are_the_ones_the_distributed_page_lists():
    """``ShardedModel.rank_reports()`` returns what each rank's ``rank_report`` says about itself."""
    import torch

    from modelport.distributed.group import rank_report

    text = _one_line(page("distributed.md"))
    [listed] = re.findall(r"`rank_reports\(\)` \(a list, in rank order, of `\{([^}]*)\}`", text)
    documented = set(re.findall(r'"(\w+)"', listed))
    assert set(rank_report(0, torch.nn.Linear(2, 2), None)) == documented


def test_a_plugin_called_a_skeleton_implements_no_hook(monkeypatch):
    """'A skeleton: installable and discovered, but registering nothing' must stay true of what it names."""
    from modelport.plugins import get_host

    pages = [ROOT / "README.md", *PAGES.glob("*.md")]
    named = {m for p in pages for m in re.findall(r"`(modelport-[\w-]+)` is a skeleton", _one_line(p.read_text()))}
    installed = sorted(name for name in named if _has_distribution(name))
    _allow_only(monkeypatch, *installed)
    host = get_host()
    working = [name for name in installed if host.plugins[name].hooks]
    assert working == [], "pages call these plugins skeletons, yet they implement hooks"


def test_the_user_guides_hub_errors_are_what_the_command_prints(tmp_path, monkeypatch, capsys):
    """Against the testing kit's local Hub, as the page says its examples were made: every line of stderr."""
    pytest.importorskip("modelport_hf", reason="modelport-hf is not installed")
    import shlex

    from modelport import cli
    from modelport.testing import make_tiny_model

    _allow_only(monkeypatch, "modelport-hf")
    here = tmp_path / "me"
    here.mkdir()
    monkeypatch.chdir(here)
    with _hub_server(tmp_path, monkeypatch) as server:
        server.add_repo("org/tiny", make_tiny_model(tmp_path / "tiny"))
        assert cli.main(["inspect", "org/tiny"]) == 0  # what the offline example ran before (config.json alone)
        capsys.readouterr()
        for command in ["modelport inspect org/missing", "modelport generate org/tiny Hello --offline"]:
            assert cli.main(shlex.split(command)[1:]) == 1
            shown = _shown_after("user-guide.md", command)
            shown = shown.replace("http://127.0.0.1:33967", server.url).replace("/home/me", str(here))
            assert capsys.readouterr().err == shown, command


def _strip_parentheses(text: str) -> str:
    while (stripped := re.sub(r"\([^()]*\)", "", text)) != text:
        text = stripped
    return text


def _instance(cls: type) -> Exception:
    """An instance built with placeholder arguments (a list where the error keeps a list)."""
    arguments = {}
    for name, parameter in list(inspect.signature(cls.__init__).parameters.items())[1:]:
        if parameter.default is parameter.empty and parameter.kind is parameter.POSITIONAL_OR_KEYWORD:
            arguments[name] = ["x"] if name in {"missing", "architectures", "registered", "supported", "valid"} else "x"
    error: Exception = cls(**arguments)
    return error


def test_the_attributes_errors_md_lists_are_the_ones_each_error_has():
    from modelport import errors

    text = page("errors.md")
    checked = 0
    for name in errors.__all__:
        body = _one_line(section(text, name))
        if "Attributes: " not in body:
            continue
        listed = _strip_parentheses(body.split("Attributes: ", 1)[1]).split(". ", 1)[0]
        documented = set(re.findall(r"`(\w+)`", listed))
        actual = {a for a in vars(_instance(getattr(errors, name))) if not a.startswith("_")}
        assert documented == actual, f"errors.md, {name}: attributes listed {sorted(documented)}, has {sorted(actual)}"
        checked += 1
    assert checked >= 10


def _nox_sessions() -> list[str]:
    sessions = []
    for node in ast.parse((ROOT / "noxfile.py").read_text(encoding="utf-8")).body:
        if not isinstance(node, ast.FunctionDef):
            continue
        for decorator in node.decorator_list:
            target = decorator.func if isinstance(decorator, ast.Call) else decorator
            if isinstance(target, ast.Attribute) and target.attr == "session":
                named = [k.value for k in getattr(decorator, "keywords", []) if k.arg == "name"]
                sessions.append(named[0].value if named and isinstance(named[0], ast.Constant) else node.name)
    return sessions


def test_every_nox_session_is_in_the_readmes_session_table():
    sessions = _nox_sessions()
    assert {"tests", "lint", "docs"} <= set(sessions)
    documented = [backticked(row[0]) for row in table_rows((ROOT / "README.md").read_text(encoding="utf-8"))]
    assert sorted(set(sessions) - set(documented)) == [], "nox sessions the README's table leaves out"


# --- names, steps, runnable pages ----------------------------------------------------


def _all_docs() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in sorted(PAGES.glob("*.md")))


def test_every_public_name_of_modelport_is_documented():
    import modelport

    text = _all_docs()
    missing = [name for name in modelport.__all__ if not re.search(rf"`[^`\n]*\b{re.escape(name)}\b[^`\n]*`", text)]
    assert missing == [], "names in modelport.__all__ that no page of docs/src shows in `code`"


@pytest.mark.parametrize(
    ("name", "title"),
    [
        ("index.md", "Distributions"),
        ("hooks.md", "The two shapes"),
        ("user-guide.md", "Environment variables"),
        ("integrator-guide.md", "Building a plugin host"),
    ],
)
def test_every_built_in_plugin_is_named_where_built_ins_are_listed(name, title):
    from modelport.plugins import BUILTIN_PLUGINS

    text = section(page(name), title)
    missing = [plugin for plugin, _ in BUILTIN_PLUGINS if f"`{plugin}`" not in text]
    assert missing == [], f"{name}, '{title}' does not name these built-in plugins"


def _recorded_steps(path: Path) -> set[str]:
    """Step names a module records: the first argument of trace.record/timed and run.ask/classify."""
    steps = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args):
            continue
        if node.func.attr not in ("record", "timed", "ask", "classify"):
            continue
        first = node.args[0]
        if isinstance(first, ast.Constant) and isinstance(first.value, str):
            steps.add(first.value)
        elif isinstance(first, ast.JoinedStr):
            steps.add("".join(v.value if isinstance(v, ast.Constant) else "<name>" for v in first.values))
    return steps


def test_every_trace_step_the_code_records_is_listed_in_the_integrator_guide():
    core = Path(importlib.util.find_spec("modelport").origin).parent  # type: ignore[arg-type]
    steps = _recorded_steps(core / "pipeline.py") | _recorded_steps(core / "llm.py")
    assert {"source", "files", "patch:<name>", "executor"} <= steps
    [row] = [r for r in table_rows(section(page("integrator-guide.md"), "The trace")) if backticked(r[0]) == "step"]
    documented = set(re.findall(r"`([^`]+)`", row[1]))
    assert sorted(steps - documented) == [], "trace steps missing from the integrator guide's TraceStep table"


def test_the_generation_pages_examples_run(capsys):
    """The blocks marked ``runs: generation`` run in order, on the model that ships in the package."""
    blocks = [code for lang, code, marker in code_blocks(page("generation.md")) if marker == "runs: generation"]
    assert len(blocks) >= 5
    namespace: dict[str, Any] = {"__name__": "generation_page"}
    for code in blocks:
        exec(compile(code, "generation.md", "exec"), namespace)
    assert "'ROMEO:'" in capsys.readouterr().out


# --- modelport-hf ----------------------------------------------------------------------


def _hf_registrations() -> dict[str, list[str]]:
    pytest.importorskip("modelport_hf", reason="modelport-hf is not installed")
    from modelport_hf import plugin

    found: dict[str, list[str]] = {}
    for hook, kind in hookspecs.REGISTER_HOOKS.items():
        implementation = getattr(plugin, hook, None)
        if implementation is None:
            continue

        def register(first: Any, *args: Any, kind: str = kind, **kwargs: Any) -> None:
            found.setdefault(kind, []).append(getattr(first, "name", first))

        implementation(register)
    return found


@pytest.mark.parametrize(
    ("kind", "title"),
    [
        ("config_format", "The Hugging Face plugin"),
        ("config_class", "Config classes"),
        ("config_patch", "Patches"),
        ("tokenizer_mode", "Tokenizers"),
        ("load_format", "Weights"),
    ],
)
def test_everything_modelport_hf_registers_is_in_the_user_guide(kind, title):
    names = _hf_registrations()[kind]
    text = section(page("user-guide.md"), title)
    first_cells = " ".join(r[0] for r in table_rows(text))
    missing = [name for name in names if f"`{name}`" not in first_cells]
    assert missing == [], f"modelport-hf's {kind} entries missing from the first column of '{title}'"


def test_every_key_a_hub_source_describes_is_in_the_user_guide():
    pytest.importorskip("modelport_hf", reason="modelport-hf is not installed")
    from modelport.types import LocalSource
    from modelport_hf.hub import HubSource

    keys = set(LocalSource(ROOT).describe())
    source = inspect.getsource(HubSource.describe)
    for node in ast.walk(ast.parse(inspect.cleandoc("\n" + source))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "update":
            keys.update(k.arg for k in node.keywords if k.arg)
    assert {"repo_id", "pinned_by"} <= keys
    documented = {backticked(r[0]) for r in table_rows(section(page("user-guide.md"), "What a Hub source describes"))}
    assert sorted(keys - documented) == []
    assert sorted(documented - keys) == []


def test_every_environment_variable_modelport_hf_reads_is_in_the_user_guide():
    spec = importlib.util.find_spec("modelport_hf")
    if spec is None or spec.origin is None:
        pytest.skip("modelport-hf is not installed")
    variables = set()
    for source in Path(spec.origin).parent.rglob("*.py"):
        variables.update(re.findall(r"os\.environ\.get\(\"([A-Z_]+)\"", source.read_text(encoding="utf-8")))
    assert "HF_ENDPOINT" in variables
    text = page("user-guide.md")
    assert sorted(v for v in variables if f"`{v}" not in text) == []


# --- the site -----------------------------------------------------------------------


def test_the_docs_build_in_strict_mode(tmp_path):
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip("mkdocs is not installed (pip install mkdocs) so the site cannot be built")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "-f",
            str(DOCS / "mkdocs.yml"),
            "-d",
            str(tmp_path / "site"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
