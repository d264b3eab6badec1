"""Checks a plugin author runs: how the host sees an installed plugin, what loading it imports, its tokenizer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterable, Mapping
from typing import Any

from modelport.plugins import PluginHost


def describe_installed(distribution: str) -> dict[str, Any]:
    """The ``modelport plugins --json`` entry of ``distribution``, loaded alone by a strict host.

    Raises:
        modelport.errors.PluginError: the plugin fails to import, validate or register.
        LookupError: no installed distribution provides a ``modelport.plugins`` entry point of that name.
    """
    host = PluginHost(allow={distribution}, strict=True)
    for plugin in host.describe():
        if plugin["name"] == distribution:
            return plugin
    raise LookupError(f"no installed plugin named {distribution!r} (entry-point group modelport.plugins)")


def modules_imported_by_loading(distribution: str, modules: Iterable[str]) -> set[str]:
    """Which of ``modules`` a fresh interpreter has imported after loading ``distribution`` alone.

    A fresh interpreter, because the test process may have imported them already.
    Plugins keep heavy imports (torch, transformers, gguf...) inside hook bodies, so
    this should be empty for ``modelport plugins`` to stay fast.
    """
    code = (
        "import json, sys\n"
        "from modelport.plugins import PluginHost\n"
        f"host = PluginHost(allow={{{distribution!r}}}, strict=True)\n"
        f"assert {distribution!r} in host.plugins, sorted(host.plugins)\n"
        "host.describe()\n"
        f"print(json.dumps(sorted(m for m in {sorted(modules)!r} if m in sys.modules)))\n"
    )
    # The child sees what this process sees, throwaway distributions on sys.path included.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120, env=env
    )
    return set(json.loads(result.stdout.strip().splitlines()[-1]))


#: The members of a tokenizer that core and engines use (the tokenizer protocol; docs/src/plugin-guide.md).
TOKENIZER_MEMBERS = ("encode", "decode", "eos_token_id", "all_special_ids")
#: The further members a tokenizer needs for ``LLM.chat`` and ``modelport chat``.
CHAT_MEMBERS = ("chat_template", "apply_chat_template")


def check_tokenizer(tokenizer: Any, text: str = "Hello world", *, chat: bool = False) -> list[int]:
    """Check that ``tokenizer`` keeps the tokenizer protocol, the way core calls it; returns ``encode(text)``.

    * ``encode(text)`` returns a list of ``int`` token ids;
    * ``decode(ids, skip_special_tokens=True)`` returns ``str``, and decoding
      ``encode(text)`` gives ``text`` back (leading and trailing whitespace aside,
      since some tokenizers add a prefix space);
    * ``eos_token_id`` is an ``int`` or ``None``;
    * ``all_special_ids`` is a collection of ``int``, holding ``eos_token_id`` when
      that is set; decoding them with ``skip_special_tokens=True`` gives no text;
    * with ``chat=True``: ``chat_template`` is a non-empty string and
      ``apply_chat_template(messages, add_generation_prompt=True, tokenize=True)``
      returns token ids (a list, or a mapping with ``input_ids``).

    Raises:
        AssertionError: naming the member that breaks the protocol and what it returned.
    """
    missing = [m for m in (*TOKENIZER_MEMBERS, *(CHAT_MEMBERS if chat else ())) if not hasattr(tokenizer, m)]
    assert not missing, f"{type(tokenizer).__name__} lacks {', '.join(missing)} (the tokenizer protocol)"
    ids = tokenizer.encode(text)
    assert isinstance(ids, list) and all(_is_id(t) for t in ids), (
        f"encode({text!r}) returned {ids!r}: expected a list of int token ids"
    )
    assert ids, f"encode({text!r}) returned no token ids"
    decoded = tokenizer.decode(ids, skip_special_tokens=True)
    assert isinstance(decoded, str), f"decode(...) returned {type(decoded).__name__}: expected str"
    assert decoded.strip() == text.strip(), f"decode(encode({text!r})) is {decoded!r}: expected the text back"
    eos = tokenizer.eos_token_id
    assert eos is None or _is_id(eos), f"eos_token_id is {eos!r}: expected an int token id or None"
    special = list(tokenizer.all_special_ids)
    assert all(_is_id(t) for t in special), f"all_special_ids is {special!r}: expected int token ids"
    assert eos is None or eos in special, f"eos_token_id {eos} is not in all_special_ids {special!r}"
    if special:
        leftover = tokenizer.decode(special, skip_special_tokens=True)
        assert not leftover.strip(), f"decode(all_special_ids, skip_special_tokens=True) gave {leftover!r}"
    if chat:
        template = tokenizer.chat_template
        assert isinstance(template, str) and template, f"chat_template is {template!r}: expected a template"
        chat_ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True
        )
        if isinstance(chat_ids, Mapping):
            chat_ids = chat_ids["input_ids"]
        assert isinstance(chat_ids, list) and chat_ids and all(_is_id(t) for t in chat_ids), (
            f"apply_chat_template(..., tokenize=True) returned {chat_ids!r}: expected token ids"
        )
    return list(ids)


def _is_id(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
