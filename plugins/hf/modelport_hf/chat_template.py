"""Chat templates under a time, memory and output budget.

A chat template is a program from the model repository. transformers runs it
in jinja2's immutable sandbox, which stops escapes but not waste: ``{% for i in
range(99999) %}{% for j in range(99999) %}...`` runs for hours and ``{{ 'x' *
4000000000 }}`` takes 4 GB (jinja2 even folds that constant while compiling).
Before transformers renders a template, :func:`check_chat_template` renders it
once with the same variables in a bounded sandbox:

* **time**: :data:`TEMPLATE_SECONDS` per call; a watchdog thread interrupts the
  rendering thread (an asynchronous exception, delivered between bytecodes);
* **memory**: the operations that multiply memory (``*``, ``+``, ``%``, ``**``,
  ``~``, ``join``, ``replace``, ``expandtabs``, ``format``, width arguments of
  filters and methods) are checked before they run, so that no single result
  exceeds :data:`TEMPLATE_MAX_CHARS`; the watchdog also stops a rendering whose
  process memory (resident set, Linux) grows by more than :data:`TEMPLATE_MAX_GROWTH`;
* **output**: at most :data:`TEMPLATE_MAX_CHARS` characters in all.

Every failure, a budget or the template's own error (``raise_exception``, a
syntax error, a type error), is a :class:`~modelport.errors.TokenizerError`
naming the tokenizer. Only templates that pass are rendered by transformers,
whose output is what the tokenizer returns. jinja2 is imported inside functions.
"""

from __future__ import annotations

import ctypes
import functools
import json
import os
import re
import threading
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from modelport.errors import TokenizerError

#: Seconds one chat template rendering may take.
TEMPLATE_SECONDS = 5.0
#: Characters a rendering may produce in all, and the most any single string, list or argument may hold.
TEMPLATE_MAX_CHARS = 8 * 1024 * 1024
#: Bytes the process's resident memory may grow by while a template renders (checked every few milliseconds).
TEMPLATE_MAX_GROWTH = 1024 * 1024 * 1024
_POLL_SECONDS = 0.005
_NUMBER = re.compile(r"\d+")


class TemplateBudgetExceeded(Exception):
    """Raised inside a rendering that went over its time or memory budget (turned into a TokenizerError)."""


class _Interrupt(BaseException):
    """Sent to the rendering thread by the watchdog; a BaseException, so that templates cannot catch it."""


def _too_big(what: str, size: int) -> TemplateBudgetExceeded:
    return TemplateBudgetExceeded(f"{what} would hold {size} items, more than the {TEMPLATE_MAX_CHARS} allowed")


def _check_size(value: Any) -> Any:
    if isinstance(value, (str, bytes, list, tuple, dict, set)) and len(value) > TEMPLATE_MAX_CHARS:
        raise _too_big(type(value).__name__, len(value))
    return value


def _check_int(value: Any) -> None:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > TEMPLATE_MAX_CHARS:
        raise TemplateBudgetExceeded(f"an argument of {value} is larger than the {TEMPLATE_MAX_CHARS} allowed")


def _check_format_string(text: Any) -> None:
    # Widths and precisions inside a format string (``%0999999999d``, ``{:>999999999}``) allocate that much.
    if isinstance(text, str):
        for number in _NUMBER.findall(text):
            if len(number) > 8 or int(number) > TEMPLATE_MAX_CHARS:
                raise TemplateBudgetExceeded(
                    f"a format width of {number} is larger than the {TEMPLATE_MAX_CHARS} allowed"
                )


def _check_arguments(args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
    for value in (*args, *kwargs.values()):
        _check_int(value)
        _check_size(value)


def _sized(value: Any) -> int:
    return len(value) if isinstance(value, (str, bytes, list, tuple, dict, set)) else len(str(value))


def _check_method(obj: Any, args: Sequence[Any]) -> None:
    """Pre-checks of the string methods whose result can be far larger than their arguments."""
    owner, name = getattr(obj, "__self__", None), getattr(obj, "__name__", "")
    if not isinstance(owner, str):
        return
    if name in ("format", "format_map"):
        _check_format_string(owner)
    elif name == "join" and args and isinstance(args[0], (list, tuple)):
        items = args[0]
        size = len(owner) * max(len(items) - 1, 0) + sum(_sized(item) for item in items)
        if size > TEMPLATE_MAX_CHARS:
            raise _too_big("a joined string", size)
    elif name == "replace" and len(args) >= 2 and isinstance(args[1], str):
        size = len(owner) + (len(owner) + 1) * len(args[1])
        if size > TEMPLATE_MAX_CHARS:
            raise _too_big("a replaced string", size)
    elif name == "expandtabs":
        width = args[0] if args and isinstance(args[0], int) else 8
        size = len(owner) * max(width, 1)
        if size > TEMPLATE_MAX_CHARS:
            raise _too_big("an expanded string", size)


def _check_binop(operator: str, left: Any, right: Any) -> None:
    """Refuse ``*``, ``+``, ``%`` and ``**`` whose result would exceed the budget, before computing it."""
    if operator == "*":
        for sequence, count in ((left, right), (right, left)):
            if isinstance(sequence, (str, list, tuple)) and isinstance(count, int) and not isinstance(count, bool):
                if len(sequence) * max(count, 0) > TEMPLATE_MAX_CHARS:
                    raise _too_big("a repeated sequence", len(sequence) * count)
    elif operator == "+" and isinstance(left, (str, list, tuple)) and isinstance(right, (str, list, tuple)):
        if len(left) + len(right) > TEMPLATE_MAX_CHARS:
            raise _too_big("a concatenation", len(left) + len(right))
    elif operator == "%" and isinstance(left, str):
        _check_format_string(left)
        _check_arguments(right if isinstance(right, tuple) else (right,), {})
    elif operator == "**" and isinstance(left, (int, float)) and isinstance(right, (int, float)):
        if abs(right) > 4096 and abs(left) > 1:
            raise TemplateBudgetExceeded(f"{left} ** {right} is larger than a template may compute")


def _guard_filter(name: str, function: Any) -> Any:
    @functools.wraps(function)  # keeps jinja2's pass_context / pass_environment marks
    def guarded(*args: Any, **kwargs: Any) -> Any:
        _check_arguments(args, kwargs)
        if name == "format" and args:
            _check_format_string(next((a for a in args if isinstance(a, str)), None))
        if name == "join" and args:
            items = next((a for a in args if isinstance(a, (list, tuple))), None)
            separator = kwargs.get("d", next((a for a in args[1:] if isinstance(a, str)), ""))
            if items is not None:
                size = len(str(separator)) * max(len(items) - 1, 0) + sum(_sized(item) for item in items)
                if size > TEMPLATE_MAX_CHARS:
                    raise _too_big("a joined string", size)
        if name == "indent":
            text = next((a for a in args if isinstance(a, str)), "")
            width = next((a for a in (*args[1:], *kwargs.values()) if isinstance(a, (int, str))), 4)
            size = len(text) + (text.count("\n") + 1) * (width if isinstance(width, int) else len(width))
            if size > TEMPLATE_MAX_CHARS:
                raise _too_big("an indented string", size)
        return _check_size(function(*args, **kwargs))

    return guarded


@functools.lru_cache(maxsize=32)
def _compile(source: str) -> Any:
    """The template compiled in the bounded sandbox (cached per template text)."""
    import jinja2
    from jinja2 import nodes
    from jinja2.compiler import CodeGenerator, Frame
    from jinja2.ext import Extension
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    from jinja2.utils import Namespace

    class BoundedCodeGenerator(CodeGenerator):
        # ``a ~ b`` compiles to a join jinja2 offers no hook for: route it through the environment.
        def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
            self.write("environment.bounded_concat((")
            for arg in node.nodes:
                self.visit(arg, frame)
                self.write(", ")
            self.write("))")

    class BoundedSandbox(ImmutableSandboxedEnvironment):
        code_generator_class = BoundedCodeGenerator
        intercepted_binops = frozenset({"*", "+", "%", "**"})

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            _check_binop(operator, left, right)
            return _check_size(super().call_binop(context, operator, left, right))

        def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
            _check_arguments(args, kwargs)
            _check_method(__obj, args)
            return _check_size(super().call(__context, __obj, *args, **kwargs))

        def wrap_str_format(self, value: Any) -> Any:
            # jinja2 wraps ``str.format`` when the attribute is read: check the widths in the string then.
            if getattr(value, "__name__", "") in ("format", "format_map"):
                _check_format_string(getattr(value, "__self__", None))
            return super().wrap_str_format(value)

        @staticmethod
        def bounded_concat(parts: Sequence[Any]) -> str:
            texts = [str(part) for part in parts]
            size = sum(len(text) for text in texts)
            if size > TEMPLATE_MAX_CHARS:
                raise _too_big("a concatenation", size)
            return "".join(texts)

    class Generation(Extension):
        # transformers' {% generation %} block marks assistant tokens; here it only renders its body.
        tags = frozenset({"generation"})

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.Scope(body).set_lineno(lineno)

    class SafeNamespace(Namespace):
        def __setitem__(self, name: str, value: Any) -> None:
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(f"a namespace attribute may not start with '_': {name!r}")
            super().__setitem__(name, value)

    def raise_exception(message: Any) -> None:
        raise jinja2.exceptions.TemplateError(str(message))

    def tojson(
        value: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None, sort_keys: bool = False
    ) -> str:
        _check_int(indent)
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(format: str) -> str:
        _check_format_string(format)
        return datetime.now().strftime(format)

    environment = BoundedSandbox(
        trim_blocks=True, lstrip_blocks=True, extensions=[Generation, "jinja2.ext.loopcontrols"]
    )
    environment.filters["tojson"] = tojson
    environment.filters = {name: _guard_filter(name, f) for name, f in environment.filters.items()}
    environment.globals.update(
        raise_exception=raise_exception, strftime_now=strftime_now, dict=dict, namespace=SafeNamespace
    )
    return environment.from_string(source)


def _resident_bytes() -> int | None:
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


class _Watchdog:
    """Interrupts the thread that started it once it runs past its time or memory budget."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.thread_id = threading.get_ident()
        self.reason: str | None = None
        self._lock = threading.Lock()
        self._done = False
        self._stop = threading.Event()
        self._start_memory = _resident_bytes()
        self._watcher = threading.Thread(target=self._watch, name="modelport-chat-template-watchdog", daemon=True)

    def __enter__(self) -> _Watchdog:
        self._deadline = time.monotonic() + self.seconds
        self._watcher.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(_POLL_SECONDS):
            reason = None
            if time.monotonic() > self._deadline:
                reason = f"it ran for more than {self.seconds:g} s"
            elif self._start_memory is not None:
                now = _resident_bytes()
                if now is not None and now - self._start_memory > TEMPLATE_MAX_GROWTH:
                    reason = f"it took more than {TEMPLATE_MAX_GROWTH // 2**20} MiB of memory"
            if reason is not None:
                with self._lock:
                    if not self._done:
                        self.reason = reason
                        ctypes.pythonapi.PyThreadState_SetAsyncExc(
                            ctypes.c_ulong(self.thread_id), ctypes.py_object(_Interrupt)
                        )
                return

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._done = True
            if self.reason is not None:
                # Fired: make sure the interrupt cannot land after this point, outside the rendering.
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self.thread_id), None)
        self._stop.set()
        self._watcher.join()


def render_bounded(source: str, variables: Mapping[str, Any], *, seconds: float | None = None) -> str:
    """Render chat template ``source`` with ``variables`` in the bounded sandbox; return the text.

    ``seconds`` defaults to :data:`TEMPLATE_SECONDS` as set when called.

    Raises:
        TemplateBudgetExceeded: over the time, memory or output budget.
        Exception: the template's own errors (jinja2's ``TemplateError`` and others), as jinja2 raises them.
    """
    watchdog = _Watchdog(TEMPLATE_SECONDS if seconds is None else seconds)
    try:
        with watchdog:
            template = _compile(source)
            pieces: list[str] = []
            total = 0
            for piece in template.generate(**variables):
                total += len(piece)
                if total > TEMPLATE_MAX_CHARS:
                    raise TemplateBudgetExceeded(f"it produced more than {TEMPLATE_MAX_CHARS} characters")
                pieces.append(piece)
            return "".join(pieces)
    except _Interrupt:
        raise TemplateBudgetExceeded(watchdog.reason or "it was interrupted") from None
    except RecursionError:
        raise TemplateBudgetExceeded("it recursed too deeply") from None
    except MemoryError:
        raise TemplateBudgetExceeded("it ran out of memory") from None


def _plain(value: Any) -> Any:
    """Messages, tools and documents as the template sees them: plain dicts and lists (dataclasses converted)."""
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    to_dict = getattr(value, "model_dump", None) or getattr(value, "to_dict", None)
    if callable(to_dict) and not isinstance(value, type):
        return _plain(to_dict())
    return value


def check_chat_template(tokenizer: Any, location: str, arguments: Mapping[str, Any]) -> None:
    """Render the chat template ``apply_chat_template`` would render, with its arguments, under the budgets.

    ``arguments`` are ``apply_chat_template``'s, bound by name. Nothing is
    returned: a template that renders within the budgets is then rendered by
    transformers itself.

    Raises:
        TokenizerError: no chat template, the template failed, or it went over a budget.
    """
    tools = arguments.get("tools")
    try:
        source = tokenizer.get_chat_template(arguments.get("chat_template"), tools)
    except (ValueError, TypeError, KeyError) as exc:
        raise TokenizerError(location, f"no usable chat template ({exc})") from exc
    conversation = arguments.get("conversation")
    batched = (
        isinstance(conversation, (list, tuple)) and bool(conversation) and isinstance(conversation[0], (list, tuple))
    )
    conversations = conversation if batched else [conversation]
    variables: dict[str, Any] = {**getattr(tokenizer, "special_tokens_map", {}), **(arguments.get("kwargs") or {})}
    variables.update(
        tools=[_plain(t) for t in tools if isinstance(t, Mapping)] if tools else None,
        documents=_plain(arguments.get("documents")),
        add_generation_prompt=bool(arguments.get("add_generation_prompt", False)),
    )
    for messages in conversations:
        try:
            render_bounded(source, {**variables, "messages": _plain(getattr(messages, "messages", messages))})
        except TemplateBudgetExceeded as exc:
            raise TokenizerError(location, f"the chat template was stopped: {exc}") from None
        except Exception as exc:  # the template's own failure, whatever jinja2 or the template raised
            raise TokenizerError(location, f"the chat template failed: {type(exc).__name__}: {exc}") from exc


__all__ = [
    "TEMPLATE_MAX_CHARS",
    "TEMPLATE_MAX_GROWTH",
    "TEMPLATE_SECONDS",
    "TemplateBudgetExceeded",
    "check_chat_template",
    "render_bounded",
]
