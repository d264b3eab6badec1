"""The ``mistral`` tokenizer mode: mistral-common's ``MistralTokenizer`` behind modelport's tokenizer protocol.

The file is chosen as mistral-common chooses it
(``get_one_valid_tokenizer_file``: ``tekken.json`` first, else a
SentencePiece ``tokenizer.model.vN``, the last in sorted order when there
are several) and loaded with ``MistralTokenizer.from_file``. The object
returned, :class:`MistralCommonTokenizer`, speaks what modelport's executor
and ``LLM.chat`` call, with vLLM's meaning for each:

* ``encode(text, add_special_tokens=True)``: the raw tokenizer's
  ``encode(text, bos=add_special_tokens, eos=False)``;
* ``decode(ids, skip_special_tokens=True)``: ``MistralTokenizer.decode`` with
  the special-token policy ``IGNORE`` (``KEEP`` when ``False``);
* ``apply_chat_template(messages, tokenize=True)``: the tokens (or, with
  ``tokenize=False``, their text, special tokens kept) of ``encode_chat_completion`` on a
  ``ChatCompletionRequest`` of ``messages``. mistral-common's request format
  decides the prompt, so ``add_generation_prompt`` changes nothing (as in vLLM).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from modelport.config_checks import check_json_size
from modelport.errors import InvalidConfigError, TokenizerError
from modelport.types import Source


def choose_file(source: Source, candidates: Sequence[str]) -> str:
    """The tokenizer file mistral-common would pick among ``candidates``.

    Raises:
        TokenizerError: none of them is a file mistral-common reads.
    """
    from mistral_common.tokens.tokenizers.utils import get_one_valid_tokenizer_file

    try:
        return str(get_one_valid_tokenizer_file(list(candidates)))
    except ValueError as exc:
        raise TokenizerError(
            source.location,
            "no mistral-common tokenizer file (tekken.json or tokenizer.model.vN) "
            f"among {', '.join(candidates) or 'no files'}",
        ) from exc


class MistralCommonTokenizer:
    """A ``MistralTokenizer`` with the methods modelport's executor and ``LLM.chat`` use.

    It keeps modelport's tokenizer protocol (``modelport.testing.check_tokenizer``
    checks it, with ``chat=True``).

    Attributes:
        mistral: the ``mistral_common`` ``MistralTokenizer`` itself.
        file: the tokenizer file it was loaded from.
        chat_template: a description of mistral-common's chat format (not a
            Jinja template); set, so ``LLM.chat`` knows chat is supported.
    """

    def __init__(self, mistral: Any, file: str) -> None:
        self.mistral = mistral
        self.file = file
        self._raw = mistral.instruct_tokenizer.tokenizer
        self.chat_template = f"mistral-common {self._raw.version.value} instruct format"

    @property
    def bos_token_id(self) -> int:
        """The beginning-of-sequence token id."""
        return int(self._raw.bos_id)

    @property
    def eos_token_id(self) -> int:
        """The end-of-sequence token id (generation stops there)."""
        return int(self._raw.eos_id)

    @property
    def all_special_ids(self) -> list[int]:
        """The ids of every special (control) token, sorted; decoding skips them by default."""
        return sorted(int(i) for i in self._raw.special_ids)

    @property
    def vocab_size(self) -> int:
        """Every token id the tokenizer knows, special tokens included."""
        return int(self._raw.n_words)

    def __len__(self) -> int:
        return self.vocab_size

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``, with the BOS token first unless ``add_special_tokens`` is ``False``.

        Raises:
            TokenizerError: tiktoken panicked on the file's tables (see :meth:`_panics_typed`).
        """
        with self._panics_typed("encoding the text"):
            return list(self._raw.encode(text, bos=add_special_tokens, eos=False))

    @contextmanager
    def _panics_typed(self, what: str) -> Iterator[None]:
        """A panic of tiktoken's Rust core as a TokenizerError naming the file.

        A hostile tekken.json loads, then panics while encoding: a ``pattern`` that
        matches the empty string, a ``default_vocab_size`` smaller than its vocabulary.
        pyo3's PanicException is a BaseException, so it would pass every ``except
        Exception``; KeyboardInterrupt and SystemExit still propagate, as do ordinary errors.
        """
        try:
            yield
        except (Exception, KeyboardInterrupt, SystemExit, GeneratorExit):
            raise
        except BaseException as exc:
            raise TokenizerError(self.file, f"{what} panicked in tiktoken ({type(exc).__name__}: {exc})") from exc

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        """``{"input_ids": encode(text)}``, as Hugging Face tokenizers answer."""
        return {"input_ids": self.encode(text, add_special_tokens)}

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """The text of ``ids``; special tokens dropped unless ``skip_special_tokens`` is ``False``.

        Ids the tokenizer does not know are dropped, as Hugging Face's fast tokenizers drop them: a model whose
        ``vocab_size`` is larger than the tokenizer's (padding rows, or a hostile params.json) can sample them,
        and tiktoken raises a bare KeyError on them.
        """
        from mistral_common.tokens.tokenizers.base import SpecialTokenPolicy

        policy = SpecialTokenPolicy.IGNORE if skip_special_tokens else SpecialTokenPolicy.KEEP
        size = self.vocab_size
        known = [int(i) for i in ids if 0 <= int(i) < size]
        return str(self.mistral.decode(known, special_token_policy=policy))

    def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, Any]],
        add_generation_prompt: bool = True,
        tokenize: bool = True,
        **kwargs: Any,
    ) -> list[int] | str:
        """The prompt of a conversation, encoded by mistral-common (``tokenize=False``: its text).

        Raises:
            TokenizerError: mistral-common rejected the conversation (an empty
                one, a bad role or order); the message says why.
        """
        from mistral_common.exceptions import MistralCommonException
        from mistral_common.protocol.instruct.request import ChatCompletionRequest

        try:
            request = ChatCompletionRequest(messages=[dict(m) for m in messages])
            with self._panics_typed("encoding the conversation"):
                tokenized = self.mistral.encode_chat_completion(request)
        except (MistralCommonException, ValueError) as exc:
            raise TokenizerError(self.file, f"mistral-common cannot encode this conversation: {exc}") from exc
        if tokenize:
            return list(tokenized.tokens)
        from mistral_common.tokens.tokenizers.base import SpecialTokenPolicy

        # Tokenized.text is deprecated; mistral-common's advice is to decode the tokens, keeping special ones.
        return str(self.mistral.decode(list(tokenized.tokens), special_token_policy=SpecialTokenPolicy.KEEP))


def load_tokenizer(source: Source, file: str) -> MistralCommonTokenizer:
    """``MistralTokenizer.from_file`` on ``file`` of ``source``.

    Raises:
        TokenizerError: mistral-common cannot read the file.
    """
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    path = source.fetch(file)
    if path.suffix == ".json":
        # tekken.json is parsed whole by mistral-common: the same size cap as every other JSON file of a model.
        try:
            check_json_size(path)
        except InvalidConfigError as exc:
            raise TokenizerError(str(path), exc.detail) from exc
    try:
        mistral = MistralTokenizer.from_file(str(path))
    except Exception as exc:  # mistral-common raises ValueError, AssertionError, KeyError, its own types...
        raise TokenizerError(str(path), f"mistral-common cannot load it ({type(exc).__name__}: {exc})") from exc
    return MistralCommonTokenizer(mistral, str(path))
