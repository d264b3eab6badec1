"""Hugging Face tokenizers: loading them by ``tokenizer_mode``, and caching what engines ask of them often.

An engine asks a tokenizer for ``all_special_ids``, ``all_special_tokens``,
``get_vocab()``, ``len()`` and the largest token id again and again (per
request, per detokenised token), and transformers recomputes each of them on
every call: ``get_vocab()`` builds a new dict of the whole vocabulary. A
:class:`CachedTokenizer` computes them once and is otherwise the tokenizer it
wraps: same class name, same methods, same files from ``save_pretrained``.
transformers is imported only inside functions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from modelport.errors import RemoteCodeRequiredError, TokenizerError
from modelport.options import LoadOptions
from modelport.types import TokenizerSpec

#: The modes :func:`load_tokenizer` serves (``auto`` is served as ``hf``).
MODES = ("auto", "hf", "slow")

T = TypeVar("T")


@dataclass(frozen=True)
class TokenizerFacts:
    """What a :class:`CachedTokenizer` computed once.

    Attributes:
        all_special_ids: ids of the special tokens, as ``tokenizer.all_special_ids``.
        all_special_tokens: the special tokens, as ``tokenizer.all_special_tokens``.
        vocab: token -> id, as ``tokenizer.get_vocab()`` (shared: do not mutate it).
        length: ``len(tokenizer)``: the vocabulary with added tokens.
        max_token_id: the largest id the tokenizer knows (in the vocab, or below ``vocab_size``).
    """

    all_special_ids: list[int]
    all_special_tokens: list[str]
    vocab: dict[str, int]
    length: int
    max_token_id: int

    @classmethod
    def of(cls, tokenizer: Any) -> TokenizerFacts:
        """Compute the facts of a plain tokenizer."""
        vocab = tokenizer.get_vocab()
        max_token_id = max(vocab.values(), default=-1)
        try:
            max_token_id = max(max_token_id, int(tokenizer.vocab_size) - 1)
        except (NotImplementedError, AttributeError, TypeError):
            pass
        return cls(
            all_special_ids=list(tokenizer.all_special_ids),
            all_special_tokens=list(tokenizer.all_special_tokens),
            vocab=vocab,
            length=len(tokenizer),
            max_token_id=max_token_id,
        )


_FACTS = "_modelport_cached_facts"
#: Attributes whose assignment changes the special tokens (``bos_token``, ``eos_token_id``...).
_SPECIAL_ATTRIBUTE_SUFFIXES = ("_token", "_token_id", "_tokens", "_tokens_ids", "_token_ids")


class CachedTokenizer:
    """Mixin put in front of a tokenizer's class by :func:`cached_tokenizer`; test with ``isinstance``.

    The cached values are recomputed after ``add_tokens``,
    ``add_special_tokens`` or the assignment of a special-token attribute
    (``tokenizer.pad_token = ...``) made through this object. They assume the
    tokenizer is not changed behind its back (through the object it wraps,
    whose state it shares, or its backend).
    """

    def _cached_facts(self) -> TokenizerFacts:
        facts: TokenizerFacts | None = self.__dict__.get(_FACTS)
        if facts is None:
            facts = TokenizerFacts.of(_plain(self))
            self.__dict__[_FACTS] = facts
        return facts

    @property
    def all_special_ids(self) -> list[int]:
        """Ids of the special tokens (computed once)."""
        return self._cached_facts().all_special_ids

    @property
    def all_special_tokens(self) -> list[str]:
        """The special tokens (computed once)."""
        return self._cached_facts().all_special_tokens

    @property
    def max_token_id(self) -> int:
        """The largest token id the tokenizer knows (computed once)."""
        return self._cached_facts().max_token_id

    def get_vocab(self) -> dict[str, int]:
        """Token -> id (computed once; the same dict every call, so do not mutate it)."""
        return self._cached_facts().vocab

    def __len__(self) -> int:
        return self._cached_facts().length

    def add_tokens(self, *args: Any, **kwargs: Any) -> int:
        """``add_tokens`` of the wrapped tokenizer; the cached values are recomputed."""
        try:
            return super().add_tokens(*args, **kwargs)  # type: ignore[misc, no-any-return]
        finally:
            self.__dict__.pop(_FACTS, None)

    def add_special_tokens(self, *args: Any, **kwargs: Any) -> int:
        """``add_special_tokens`` of the wrapped tokenizer; the cached values are recomputed."""
        try:
            return super().add_special_tokens(*args, **kwargs)  # type: ignore[misc, no-any-return]
        finally:
            self.__dict__.pop(_FACTS, None)

    def apply_chat_template(self, conversation: Any, *args: Any, **kwargs: Any) -> Any:
        """``apply_chat_template`` of the wrapped tokenizer, once the template has rendered within its budgets.

        The template is first rendered with the same arguments in a bounded
        sandbox (time, memory and output, see :mod:`modelport_hf.chat_template`);
        then transformers renders it as usual.

        Raises:
            TokenizerError: no chat template, the template failed or went over a
                budget (an endless loop, a huge string), or transformers refused
                the arguments.
        """
        import inspect

        from modelport_hf.chat_template import check_chat_template

        location = f"{getattr(self, 'name_or_path', '') or type(self).__name__} (chat template)"
        render = super().apply_chat_template  # type: ignore[misc]
        try:
            arguments = inspect.signature(render).bind(conversation, *args, **kwargs).arguments
        except TypeError as exc:
            raise TokenizerError(location, f"apply_chat_template: {exc}") from exc
        check_chat_template(self, location, arguments)
        try:
            return render(conversation, *args, **kwargs)
        except (TokenizerError, KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # transformers' ValueErrors, jinja2's TemplateErrors...: all typed
            # BaseException: tokenizing the rendered prompt may panic in the Rust tokenizer (a tokenizer.json
            # regex backtracking past onig's retry limit), which reaches Python as pyo3's PanicException.
            raise TokenizerError(location, f"the chat template failed: {type(exc).__name__}: {exc}") from exc

    def __setattr__(self, key: str, value: Any) -> None:
        super().__setattr__(key, value)
        if key.endswith(_SPECIAL_ATTRIBUTE_SUFFIXES):
            self.__dict__.pop(_FACTS, None)

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        # The class is made at run time, so pickle (and copy) go through the plain tokenizer.
        return cached_tokenizer, (_plain(self),)


_CLASSES: dict[type, type] = {}


def _cached_class(base: type) -> type:
    cls = _CLASSES.get(base)
    if cls is None:
        # Same name and module as the wrapped class: save_pretrained writes ``tokenizer_class`` from
        # the name, and remote-code tokenizers are saved from their module's file.
        cls = type(base.__name__, (CachedTokenizer, base), {"__module__": base.__module__})
        cls.__qualname__ = base.__qualname__
        _CLASSES[base] = cls
    return cls


def _plain(tokenizer: Any) -> Any:
    """A tokenizer of the wrapped class sharing ``tokenizer``'s state, without the cache."""
    base = next(c for c in type(tokenizer).__mro__ if c is not CachedTokenizer and not issubclass(c, CachedTokenizer))
    plain = base.__new__(base)
    plain.__dict__.update({k: v for k, v in tokenizer.__dict__.items() if k != _FACTS})
    return plain


def cached_tokenizer(tokenizer: T) -> T:
    """A tokenizer that computes its special ids and tokens, vocab, length and max token id once.

    It is an instance of ``type(tokenizer)`` (and of :class:`CachedTokenizer`),
    shares ``tokenizer``'s state (a shallow copy), and otherwise behaves like
    it: encode, decode, ``apply_chat_template``, ``save_pretrained``,
    pickling (when ``tokenizer`` pickles). A tokenizer that is already cached
    is returned as it is.
    """
    if isinstance(tokenizer, CachedTokenizer):
        return tokenizer
    cls = _cached_class(type(tokenizer))
    cached = cls.__new__(cls)
    cached.__dict__.update(tokenizer.__dict__)
    cached._cached_facts()
    return cached  # type: ignore[no-any-return]


def load_tokenizer(spec: TokenizerSpec, options: LoadOptions) -> Any:
    """Build the tokenizer ``spec`` describes (modes ``hf`` and ``slow``), wrapped by :func:`cached_tokenizer`.

    ``hf`` is ``AutoTokenizer`` (the fast, Rust tokenizer where there is one).
    ``slow`` is the Python tokenizer: ``AutoTokenizer`` with ``use_fast=False``
    where that gives one, else the SentencePiece tokenizer built from
    ``tokenizer.model``.

    Raises:
        TokenizerError: the files cannot be read, or ``slow`` was asked and the
            model has no slow tokenizer (the message lists the modes).
        RemoteCodeRequiredError: the tokenizer needs code from the repository
            and ``trust_remote_code`` is off.
    """
    local = spec.source.fetch_many(spec.files)
    folder = local[spec.files[0]].parent
    _check_json_files(spec, local)
    kwargs = {"trust_remote_code": options.trust_remote_code}
    if spec.mode == "slow":
        tokenizer = _slow_tokenizer(spec, folder, kwargs)
    else:
        tokenizer = _auto_tokenizer(spec, folder, kwargs)
    return cached_tokenizer(tokenizer)


def _auto_tokenizer(spec: TokenizerSpec, folder: Path, kwargs: dict[str, Any]) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder, **kwargs)
    except Exception as exc:  # hostile files make transformers and tokenizers raise anything: all mean "bad files"
        raise _tokenizer_error(spec, folder, exc) from exc


def _slow_tokenizer(spec: TokenizerSpec, folder: Path, kwargs: dict[str, Any]) -> Any:
    from transformers import PreTrainedTokenizer

    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(folder, use_fast=False, **kwargs)
    except Exception as exc:  # as in _auto_tokenizer
        if not (folder / "tokenizer.model").is_file():
            raise _tokenizer_error(spec, folder, exc) from exc
        tokenizer = None
    if isinstance(tokenizer, PreTrainedTokenizer):
        return tokenizer
    if (folder / "tokenizer.model").is_file():
        from transformers import SentencePieceBackend

        try:
            return SentencePieceBackend.from_pretrained(folder, **kwargs)
        except Exception as exc:  # as in _auto_tokenizer
            raise _tokenizer_error(spec, folder, exc) from exc
    built = type(tokenizer).__name__
    raise TokenizerError(
        spec.source.location,
        f"tokenizer_mode='slow' asks for a slow (Python) tokenizer, but this model has none "
        f"(transformers builds {built}, a fast one, and there is no tokenizer.model); "
        f"tokenizer modes of modelport-hf: {', '.join(repr(m) for m in MODES)} "
        "(use 'hf' or 'auto' for the fast tokenizer)",
    )


def _check_json_files(spec: TokenizerSpec, local: dict[str, Path]) -> None:
    """Every JSON file within the size cap; the small ones (not tokenizer.json) also within the nesting cap.

    transformers parses them with Python's ``json``, which recurses: a file nested thousands deep would be a
    ``RecursionError`` there. tokenizer.json is parsed by the tokenizers library, which has its own depth limit.
    """
    from modelport.config_checks import check_json_size, load_json_file
    from modelport.errors import InvalidConfigError

    for name, path in local.items():
        if not name.endswith(".json"):
            continue
        try:
            if name == "tokenizer.json":
                check_json_size(path)
            else:
                load_json_file(path)
        except InvalidConfigError as exc:
            raise TokenizerError(spec.source.location, f"{name}: {exc.detail}") from exc


def _tokenizer_error(spec: TokenizerSpec, folder: Path, exc: Exception) -> Exception:
    remote = _remote_tokenizer_class(folder)
    if remote and "trust_remote_code" in str(exc):
        return RemoteCodeRequiredError(spec.source.location, remote, field="auto_map.AutoTokenizer")
    return TokenizerError(
        spec.source.location,
        f"cannot build the {spec.mode!r} tokenizer from {', '.join(spec.files)} ({type(exc).__name__}: {exc})",
    )


def _remote_tokenizer_class(folder: Path) -> str | None:
    """The class tokenizer_config.json's ``auto_map`` names for AutoTokenizer, if any."""
    try:
        data = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    auto_map = data.get("auto_map") if isinstance(data, dict) else None
    entry = auto_map.get("AutoTokenizer") if isinstance(auto_map, dict) else auto_map
    if isinstance(entry, (list, tuple)):
        entry = next((e for e in entry if e), None)
    return str(entry) if entry else None
