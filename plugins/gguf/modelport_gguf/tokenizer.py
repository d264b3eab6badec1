"""A fast Hugging Face tokenizer from GGUF tokenizer metadata (``tokenizer.ggml.*``).

llama.cpp's three main tokenizer models become the ``tokenizers`` pipeline that
reproduces them:

* ``llama`` (SentencePiece BPE): merges derived from the token scores (llama.cpp
  merges the adjacent pair whose result scores highest), byte fallback to the
  ``<0xXX>`` tokens, the space prefix and ``▁`` for spaces as the normaliser.
* ``gpt2`` (byte-level BPE): the merges as stored, and llama.cpp's pre-tokenizer
  for ``tokenizer.ggml.pre``: its regular expressions, applied one after the
  other, then the byte-to-unicode mapping (:data:`PRE_TOKENIZERS`).
* ``bert`` (WordPiece): llama.cpp stores word-initial pieces with a ``▁``
  prefix and continuations bare; they are turned back into ``##`` pieces, with
  BERT's normaliser (lowercase and strip accents unless the metadata says otherwise).

Control tokens become special added tokens, user-defined tokens plain added
tokens (llama.cpp always matches both kinds of text as whole tokens when
parsing special tokens, and user-defined ones always). ``add_bos_token`` /
``add_eos_token`` (and BERT's ``[CLS] ... [SEP]``) become the post-processor,
``tokenizer.chat_template`` the chat template.
"""

from __future__ import annotations

import array
from collections.abc import Callable
from typing import Any

from modelport.errors import TokenizerError

#: llama.cpp's token types.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3 = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2 = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Cased letters as DeepSeek's tokenizer lists them. Six code points are written as escapes: they have
# canonical singleton decompositions, so an editor's NFC normalisation would silently change the ranges.
_DEEPSEEK_LETTERS = (
    "A-Za-z\u00b5\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-\u02af"
    "\u0370-\u0373\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c\u038e-\u03a1\u03a3-\u03f5"
    "\u03f7-\u0481\u048a-\u052f\u0531-\u0556\u10a0-\u10c5\u13a0-\u13f5\u13f8-\u13fd\u1c90-\u1cba"
    "\u1cbd-\u1cbf\u1d00-\u1d2b\u1d6b-\u1d77\u1d79-\u1d9a\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45"
    "\u1f48-\u1f4d\u1f50-\u1f57\u1f59\u1f5b\u1f5d\u1f5f-\u1f7d\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe"
    "\u1fc2-\u1fc4\u1fc6-\u1fcc\u1fd0-\u1fd3\u1fd6-\u1fdb\u1fe0-\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc"
    "\u2102\u2107\u210a-\u2113\u2115\u2119-\u211d\u2124\u2126\u2128\u212a-\u212d\u212f-\u2134\u2139"
    "\u213c-\u213f\u2145-\u2149\u214e\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4\u2ceb-\u2cee\u2cf2\u2cf3"
    "\ua640-\ua66d\ua680-\ua69b\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf\ufb00-\ufb06"
    "\ufb13-\ufb17\uff21-\uff3a\uff41-\uff5a\U00010400-\U0001044f\U000104b0-\U000104d3"
    "\U000104d8-\U000104fb\U00010c80-\U00010cb2\U00010cc0-\U00010cf2\U000118a0-\U000118df"
    "\U0001e900-\U0001e943"
)

_DEEPSEEK_PUNCTUATION = "\\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+"
_BLOOM = " ?[^(\\s|.,!?\u2026\u3002\uff0c\u3001\u0964\u06d4\u060c)]+"

#: ``tokenizer.ggml.pre`` -> (regular expressions applied in turn, ``ignore_merges``), as llama.cpp splits text.
PRE_TOKENIZERS: dict[str, tuple[tuple[str, ...], bool]] = {
    "default": ((r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"), False),
    "gpt-2": ((_GPT2,), False),
    "mpt": ((_GPT2,), False),
    "olmo": ((_GPT2,), False),
    "phi-2": ((_GPT2,), False),
    "jina-es": ((_GPT2,), False),
    "jina-de": ((_GPT2,), False),
    "jina-v1-en": ((_GPT2,), False),
    "jina-v2-es": ((_GPT2,), False),
    "jina-v2-de": ((_GPT2,), False),
    "jina-v2-code": ((_GPT2,), False),
    "roberta-bpe": ((_GPT2,), False),
    "gigachat": ((_GPT2,), False),
    "falcon": ((r"[\p{P}\$\+<=>\^~\|`]+", _GPT2, r"[0-9][0-9][0-9]"), False),
    "starcoder": ((r"\p{N}", _GPT2), False),
    "refact": ((r"\p{N}", _GPT2), False),
    "command-r": ((r"\p{N}", _GPT2), False),
    "smollm": ((r"\p{N}", _GPT2), False),
    "codeshell": ((r"\p{N}", _GPT2), False),
    "exaone": ((r"\p{N}", _GPT2), False),
    "minerva-7b": ((r"\p{N}", _GPT2), False),
    "llama3": ((_LLAMA3,), True),
    "llama-v3": ((_LLAMA3,), True),
    "llama-bpe": ((_LLAMA3,), True),
    "falcon3": ((_LLAMA3,), True),
    "pixtral": ((_LLAMA3,), True),
    "dbrx": ((_LLAMA3,), False),
    "smaug-bpe": ((_LLAMA3,), False),
    "qwen2": ((_QWEN2,), False),
    "deepseek-r1-qwen": ((_QWEN2,), False),
    "stablelm2": ((_QWEN2,), False),
    "deepseek-llm": (
        (
            "[\r\n]",
            rf"\s?[{_DEEPSEEK_LETTERS}]+",
            _DEEPSEEK_PUNCTUATION,
            r"\s+$",
            "[一-龥ࠀ-一가-퟿]+",
            r"\p{N}+",
        ),
        False,
    ),
    "deepseek-coder": (("[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", "[一-龥ࠀ-一가-퟿]+", r"\p{N}"), False),
    "chatglm-bpe": ((_LLAMA3,), False),
    "glm4": ((_LLAMA3,), False),
    "poro-chat": ((_BLOOM,), False),
    "bloom": ((_BLOOM,), False),
    "gpt3-finnish": ((_BLOOM,), False),
}

_SPECIAL_IDS = {
    "bos_token": "bos",
    "eos_token": "eos",
    "unk_token": "unknown",
    "sep_token": "seperator",
    "pad_token": "padding",
    "cls_token": "cls",
    "mask_token": "mask",
}


def _int(header: Any, key: str) -> int | None:
    value = header.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _numbers(header: Any, key: str, n: int, where: str) -> list[Any] | None:
    """The numeric array ``key`` holding one entry per token, or ``None`` when absent.

    Raises:
        TokenizerError: a value that is not a numeric array, or one of another length.
    """
    value = header.get(key)
    if value is None:
        return None
    if not isinstance(value, array.array):
        raise TokenizerError(where, f"{key} is not an array of numbers but {_shown(value)}")
    if len(value) != n:
        raise TokenizerError(where, f"{key} has {len(value)} entries for {n} tokens")
    return list(value)


def _string(header: Any, key: str, default: str, where: str) -> str:
    value = header.get(key, default)
    if not isinstance(value, str):
        raise TokenizerError(where, f"{key} is not a string but {_shown(value)}")
    return value


def _flag(header: Any, key: str, default: bool, where: str) -> bool:
    """The boolean ``key``, or ``default`` when absent (llama.cpp refuses a flag of another type too).

    Raises:
        TokenizerError: a value that is not a boolean (a string ``"no"`` would otherwise read as true).
    """
    value = header.get(key, default)
    if not isinstance(value, bool):
        raise TokenizerError(where, f"{key} is not a boolean but {_shown(value)}")
    return value


def _shown(value: Any) -> str:
    """A short description of a metadata value for a message: its type, and the value when it is short."""
    text = repr(value)
    kind = type(value).__name__
    return f"{kind} {text}" if len(text) <= 60 else f"a {kind} of {len(value)} entries"


def _tokenizers_model(where: str, build: Callable[[], Any]) -> Any:
    """``build()``, with the tokenizers library's refusal (a plain ``Exception`` from Rust) as a TokenizerError."""
    try:
        return build()
    except Exception as exc:  # the Rust side raises plain Exception (e.g. "Token `x` out of vocabulary")
        raise TokenizerError(where, f"the tokenizer.ggml.* metadata does not make a tokenizer: {exc}") from exc


def build_tokenizer(header: Any) -> Any:
    """The ``PreTrainedTokenizerFast`` that ``header``'s ``tokenizer.ggml.*`` metadata describes.

    Raises:
        TokenizerError: no or malformed token list, an unknown tokenizer model or pre-tokenizer.
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    where = str(header.path)
    model = header.get("tokenizer.ggml.model")
    tokens = header.get("tokenizer.ggml.tokens")
    if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) for t in tokens):
        raise TokenizerError(where, "tokenizer.ggml.tokens is absent or not a list of strings")
    types = _numbers(header, "tokenizer.ggml.token_type", len(tokens), where) or [NORMAL] * len(tokens)
    if model == "llama":
        tokenizer = _spm(header, tokens, types, where)
    elif model == "gpt2":
        tokenizer = _bpe(header, tokens, types, where)
    elif model == "bert":
        tokenizer = _wpm(header, tokens, types, where)
    else:
        raise TokenizerError(
            where, f"tokenizer.ggml.model={model!r} is not supported; supported: 'llama', 'gpt2', 'bert'"
        )
    assert isinstance(tokenizer, Tokenizer)
    specials: dict[str, str] = {}
    for name, key in _SPECIAL_IDS.items():
        token_id = _int(header, f"tokenizer.ggml.{key}_token_id")
        if token_id is not None and 0 <= token_id < len(tokens):
            specials[name] = tokens[token_id]
    if model == "bert" and _int(header, "tokenizer.ggml.cls_token_id") is None and len(tokens) > 101:
        specials.setdefault("cls_token", tokens[101])  # BERT's [CLS] id, as llama.cpp assumes without the key
    _post_process(tokenizer, header, tokens, model, where)
    template = header.get("tokenizer.chat_template")
    fast = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tokenizer,
        name_or_path=where,  # named by errors, chat template ones included
        chat_template=template if isinstance(template, str) else None,
        clean_up_tokenization_spaces=False,
        **specials,
    )
    return fast


def _added_tokens(tokenizer: Any, tokens: list[str], types: list[int]) -> None:
    from tokenizers import AddedToken

    added = []
    for token_id, (token, kind) in enumerate(zip(tokens, types, strict=True)):
        if kind == CONTROL:
            added.append((token_id, AddedToken(token, special=True, normalized=False)))
        elif kind == USER_DEFINED:
            added.append((token_id, AddedToken(token, special=False, normalized=False)))
    tokenizer.add_tokens([t for _, t in added if not t.special])
    tokenizer.add_special_tokens([t for _, t in added if t.special])


#: Characters :func:`_spm_merges` may slice while looking for merges: about a second of work. The corpus's
#: llama-spm vocabulary (32000 tokens) needs 0.86 M; a file of a few long tokens would otherwise need the square of
#: their length (a 400 kB token took 35 s).
SPM_MERGE_WORK = 1 << 28


def _spm_merges(tokens: list[str], scores: list[float], types: list[int], where: str) -> list[tuple[str, str]]:
    """Every split of a mergeable token into two tokens, highest-scoring result first (llama.cpp's merge order).

    Only cuts whose two sides have the length of some token are looked up, and the
    characters sliced are counted against :data:`SPM_MERGE_WORK`.

    Raises:
        TokenizerError: the tokens need more work than that (tokens of absurd length).
    """
    vocab = {t: i for i, t in enumerate(tokens) if types[i] in (NORMAL, USER_DEFINED, UNUSED)}
    lengths = {len(t) for t in vocab}
    found: list[tuple[float, int, int, str, str]] = []
    work = 0
    for token, token_id in vocab.items():
        size = len(token)
        for cut in range(1, size):
            if cut not in lengths or size - cut not in lengths:
                continue
            work += size
            if work > SPM_MERGE_WORK:
                longest = max(lengths)
                raise TokenizerError(
                    where,
                    f"tokenizer.ggml.tokens holds tokens of up to {longest} characters, too long to derive the "
                    f"SentencePiece merges from (more than {SPM_MERGE_WORK} characters to compare)",
                )
            left, right = token[:cut], token[cut:]
            if left in vocab and right in vocab:
                found.append((-scores[token_id], vocab[left], vocab[right], left, right))
    found.sort()
    return [(left, right) for _, _, _, left, right in found]


def _spm(header: Any, tokens: list[str], types: list[int], where: str) -> Any:
    from tokenizers import Tokenizer, decoders, models, normalizers

    scores = _numbers(header, "tokenizer.ggml.scores", len(tokens), where) or [0.0] * len(tokens)
    vocab = {t: i for i, t in enumerate(tokens)}
    unk_id = _int(header, "tokenizer.ggml.unknown_token_id")
    unk = tokens[unk_id] if unk_id is not None and 0 <= unk_id < len(tokens) else None
    merges = _spm_merges(tokens, scores, types, where)
    bpe = _tokenizers_model(where, lambda: models.BPE(vocab, merges, unk_token=unk, byte_fallback=True, fuse_unk=True))
    tokenizer = Tokenizer(bpe)
    prefix = _flag(header, "tokenizer.ggml.add_space_prefix", True, where)
    steps = [normalizers.Prepend("▁")] if prefix else []
    tokenizer.normalizer = normalizers.Sequence([*steps, normalizers.Replace(" ", "▁")])
    decode = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if prefix:
        decode.append(decoders.Strip(" ", 1, 0))
    tokenizer.decoder = decoders.Sequence(decode)
    _added_tokens(tokenizer, tokens, types)
    return tokenizer


def _bpe(header: Any, tokens: list[str], types: list[int], where: str) -> Any:
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    merges_raw = header.get("tokenizer.ggml.merges")
    if not isinstance(merges_raw, list) or not all(isinstance(merge, str) for merge in merges_raw):
        raise TokenizerError(where, "a gpt2 tokenizer needs tokenizer.ggml.merges, an array of strings")
    merges = []
    for merge in merges_raw:
        cut = merge.find(" ", 1)
        if cut < 0:
            raise TokenizerError(where, f"tokenizer.ggml.merges holds {merge!r}, not two tokens separated by a space")
        merges.append((merge[:cut], merge[cut + 1 :]))
    pre = _string(header, "tokenizer.ggml.pre", "default", where)
    if pre not in PRE_TOKENIZERS:
        raise TokenizerError(
            where, f"tokenizer.ggml.pre={pre!r} is not supported; supported: {', '.join(sorted(PRE_TOKENIZERS))}"
        )
    expressions, ignore_merges = PRE_TOKENIZERS[pre]
    vocab = {t: i for i, t in enumerate(tokens)}
    tokenizer = Tokenizer(_tokenizers_model(where, lambda: models.BPE(vocab, merges, ignore_merges=ignore_merges)))
    splits = [pre_tokenizers.Split(Regex(e), behavior="isolated") for e in expressions]
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [*splits, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    tokenizer.decoder = decoders.ByteLevel()
    _added_tokens(tokenizer, tokens, types)
    return tokenizer


def _wpm(header: Any, tokens: list[str], types: list[int], where: str) -> Any:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    vocab: dict[str, int] = {}
    for token_id, token in enumerate(tokens):
        if types[token_id] == CONTROL or (token.startswith("[") and token.endswith("]")):
            piece = token
        elif token.startswith("▁"):
            piece = token[1:]
        else:
            piece = "##" + token
        vocab.setdefault(piece, token_id)
    unk_id = _int(header, "tokenizer.ggml.unknown_token_id")
    unk = tokens[unk_id] if unk_id is not None and 0 <= unk_id < len(tokens) else "[UNK]"
    if unk not in vocab:  # WordPiece would fail on the first unknown word of a prompt, with a bare Exception
        raise TokenizerError(
            where, f"a bert tokenizer needs its unknown token: {unk!r} (tokenizer.ggml.unknown_token_id) is not a piece"
        )
    tokenizer = Tokenizer(
        _tokenizers_model(where, lambda: models.WordPiece(vocab, unk_token=unk, max_input_chars_per_word=1 << 20))
    )
    lowercase = _flag(header, "tokenizer.ggml.normalizer.lowercase", True, where)
    strip = _flag(header, "tokenizer.ggml.normalizer.strip_accents", lowercase, where)
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=strip, lowercase=lowercase
    )
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    _added_tokens(tokenizer, tokens, types)
    return tokenizer


def _post_process(tokenizer: Any, header: Any, tokens: list[str], model: str, where: str) -> None:
    from tokenizers import processors

    def token(key: str, default: int | None = None) -> tuple[str, int] | None:
        token_id = _int(header, f"tokenizer.ggml.{key}_token_id")
        token_id = default if token_id is None else token_id
        return (tokens[token_id], token_id) if token_id is not None and 0 <= token_id < len(tokens) else None

    if model == "bert":
        cls, sep = token("cls", 101), token("seperator", 102)
        if cls and sep:
            tokenizer.post_processor = processors.BertProcessing(sep, cls)
        return
    single, pair, special = "$A:0", "$A:0 $B:1", []
    if _flag(header, "tokenizer.ggml.add_bos_token", model == "llama", where) and token("bos"):
        bos = token("bos")
        assert bos is not None
        single, pair = f"{bos[0]}:0 {single}", f"{bos[0]}:0 $A:0 {bos[0]}:1 $B:1"
        special.append(bos)
    if _flag(header, "tokenizer.ggml.add_eos_token", False, where) and token("eos"):
        eos = token("eos")
        assert eos is not None
        single, pair = f"{single} {eos[0]}:0", f"{pair} {eos[0]}:1"
        special.append(eos)
    if special:
        tokenizer.post_processor = processors.TemplateProcessing(
            single=single, pair=pair, special_tokens=list(dict.fromkeys(special))
        )
