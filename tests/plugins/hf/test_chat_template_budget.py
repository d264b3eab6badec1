"""Hostile chat templates (issue 11, point 4): bounded time, memory and output; every failure a TokenizerError."""

from __future__ import annotations

import resource
import time

import pytest

import modelport
from modelport.errors import TokenizerError
from modelport.testing import make_tiny_model
from modelport_hf import chat_template

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("templates") / "m", num_hidden_layers=1)


@pytest.fixture(scope="module")
def tokenizer(folder):
    return modelport.load(str(folder), load_format="dummy").tokenizer


@pytest.fixture
def one_second(monkeypatch):
    monkeypatch.setattr(chat_template, "TEMPLATE_SECONDS", 1.0)


def _peak_mib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


def test_the_models_own_template_renders_as_transformers_renders_it(folder, tokenizer):
    from transformers import AutoTokenizer

    plain = AutoTokenizer.from_pretrained(folder)
    for tokenize in (False, True):
        ours = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=tokenize)
        theirs = plain.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=tokenize)
        assert ours == theirs


@pytest.mark.parametrize(
    "template",
    [
        "{% for i in range(100000) %}{% for j in range(100000) %}{{ '' }}{% endfor %}{% endfor %}",
        "{% set s = 'x' * 100000 %}{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}",
    ],
    ids=["nested-range", "loop-without-calls"],
)
def test_an_endless_loop_stops_within_the_time_budget(tokenizer, one_second, template):
    start = time.perf_counter()
    with pytest.raises(TokenizerError, match="ran for more than 1 s"):
        tokenizer.apply_chat_template(MESSAGES, chat_template=template, tokenize=False)
    assert time.perf_counter() - start < 3.0


@pytest.mark.parametrize(
    ("template", "why"),
    [
        ("{{ 'x' * 4000000000 }}", "repeated sequence"),
        ("{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}", "concat"),
        ("{{ 'x'|center(4000000000) }}", "argument of 4000000000"),
        ("{{ '%0999999999d' % 1 }}", "format width"),
        ("{{ '{:>999999999}'.format(1) }}", "format width"),
        ("{% set s = 'x' * 1000000 %}{{ s.join(['a'] * 1000) }}", "joined string"),
        ("{% set s = '\t' * 1000000 %}{{ s.expandtabs(1000) }}", "expanded string"),
        ("{% for i in range(100000) %}{{ 'y' * 1000 }}{% endfor %}", "produced more than"),
        ("{{ 10 ** 100000000 }}", "larger than a template may compute"),
    ],
    ids=["mul", "doubling", "center", "percent", "format", "join", "expandtabs", "output", "pow"],
)
def test_a_huge_string_is_refused_before_it_is_built(tokenizer, template, why):
    before = _peak_mib()
    start = time.perf_counter()
    with pytest.raises(TokenizerError, match="was stopped") as info:
        tokenizer.apply_chat_template(MESSAGES, chat_template=template, tokenize=False)
    assert why in str(info.value)
    assert time.perf_counter() - start < 2.0
    assert _peak_mib() - before < 256


def test_memory_growing_step_by_step_is_stopped_by_the_watchdog(tokenizer, monkeypatch):
    monkeypatch.setattr(chat_template, "TEMPLATE_MAX_GROWTH", 256 * 2**20)
    template = (
        "{% set ns = namespace(l=[]) %}{% for i in range(100000) %}{% set ns.l = ns.l + ['x' * 4000000] %}{% endfor %}"
    )
    before = _peak_mib()
    with pytest.raises(TokenizerError, match="more than 256 MiB of memory"):
        tokenizer.apply_chat_template(MESSAGES, chat_template=template, tokenize=False)
    assert _peak_mib() - before < 768


@pytest.mark.parametrize(
    ("template", "found"),
    [
        ("{{ raise_exception('no system messages') }}", "TemplateError: no system messages"),
        ("{% for %}", "TemplateSyntaxError"),
        ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "SecurityError"),
        ("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "recursed too deeply"),
        ("{{ messages[99]['content'] + 1 }}", "failed"),
    ],
    ids=["raise_exception", "syntax", "escape", "recursion", "type-error"],
)
def test_every_template_failure_is_a_tokenizer_error(tokenizer, template, found):
    with pytest.raises(TokenizerError) as info:
        tokenizer.apply_chat_template(MESSAGES, chat_template=template, tokenize=False)
    assert found in str(info.value) and "chat template" in str(info.value)


def test_bad_arguments_are_tokenizer_errors_too(tokenizer):
    with pytest.raises(TokenizerError, match="empty conversation"):
        tokenizer.apply_chat_template([], tokenize=False)
    with pytest.raises(TokenizerError, match="continue_final_message and add_generation_prompt"):
        tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, continue_final_message=True)


LOOP = "{% for i in range(20000) %}{{ i % 2 }}{% endfor %}"


def test_the_watchdog_never_fires_after_a_rendering_finished():
    # Budgets about as long as the rendering: the watchdog fires during some renderings and just after others.
    # An interrupt landing after a rendering would escape here (or in the sleep) as a bare _Interrupt.
    stopped = 0
    for i in range(40):
        try:
            chat_template.render_bounded(LOOP, {}, seconds=0.012 * (i % 10))
        except chat_template.TemplateBudgetExceeded:
            stopped += 1
    time.sleep(0.05)
    assert 0 < stopped < 40


def test_a_tokenizer_regex_that_panics_on_the_rendered_prompt_is_a_tokenizer_error(tmp_path):
    import json

    folder = make_tiny_model(tmp_path / "m", num_hidden_layers=1)
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    # Catastrophic backtracking: onig gives up past its retry limit and the Rust tokenizer panics.
    tokenizer["pre_tokenizer"] = {
        "type": "Split",
        "pattern": {"Regex": "(a+)+$"},
        "behavior": "Isolated",
        "invert": False,
    }
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer))
    tokenizer = modelport.load(str(folder), load_format="dummy").tokenizer
    with pytest.raises(TokenizerError, match="PanicException"):
        tokenizer.apply_chat_template([{"role": "user", "content": "a" * 40 + "!"}], tokenize=True)
