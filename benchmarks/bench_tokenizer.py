"""The cached tokenizer against the plain one on the attributes an engine reads per request.

    python benchmarks/bench_tokenizer.py [--vocab 32000] [--special 256] [--cache-dir DIR]

The tokenizer is a byte-level BPE trained by ``modelport.testing.make_tokenizer``
on a synthetic corpus until it has ``--vocab`` tokens, plus ``--special`` extra
special tokens (Llama 3 ships 256 reserved ones), saved under the cache folder
and reused. The plain tokenizer is ``AutoTokenizer.from_pretrained``; the cached
one is what modelport-hf's ``load()`` returns (``cached_tokenizer`` of it).
Each figure is the best of 5 rounds of the time per call (a round times as
many calls as fit in about 0.2 s; the best, as timeit advises, because other
processes only ever add time); the anchor is the plain tokenizer.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: What is timed: name -> (read on the plain tokenizer, read on the cached one).
ATTRIBUTES: dict[str, tuple[Callable[[Any], Any], Callable[[Any], Any]]] = {
    "all_special_ids": (lambda t: t.all_special_ids, lambda t: t.all_special_ids),
    "all_special_tokens": (lambda t: t.all_special_tokens, lambda t: t.all_special_tokens),
    "get_vocab()": (lambda t: t.get_vocab(), lambda t: t.get_vocab()),
    "len()": (len, len),
    "max_token_id": (lambda t: max(max(t.get_vocab().values()), t.vocab_size - 1), lambda t: t.max_token_id),
}


def _corpus(words: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyzäöüéèñß0123456789"
    return " ".join("".join(rng.choice(letters) for _ in range(rng.randint(2, 12))) for _ in range(words))


def tokenizer_folder(cache_dir: Path, vocab: int, special: int) -> Path:
    """A saved tokenizer with ``vocab`` tokens and ``special`` extra special tokens, built once."""
    folder = cache_dir / f"bpe-{vocab}-{special}"
    if (folder / "tokenizer.json").is_file():
        return folder
    from modelport.testing import make_tokenizer

    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix="bpe-", dir=cache_dir))
    print(f"training a {vocab}-token tokenizer in {folder} (once)...", file=sys.stderr)
    tokenizer = make_tokenizer(partial, vocab_size=vocab, text=_corpus(60_000))
    tokenizer.add_special_tokens({"extra_special_tokens": [f"<|reserved_{i}|>" for i in range(special)]})
    tokenizer.save_pretrained(partial)
    try:
        partial.rename(folder)
    except OSError:
        shutil.rmtree(partial, ignore_errors=True)
    return folder


def per_call(function: Callable[[], Any]) -> float:
    """Best seconds per call of ``function`` over 5 rounds."""
    timer = timeit.Timer(function)
    number, _ = timer.autorange()
    return min(timer.repeat(repeat=5, number=2 * number)) / (2 * number)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocab", type=int, default=32000, help="size of the trained vocabulary")
    parser.add_argument("--special", type=int, default=256, help="extra special tokens")
    parser.add_argument(
        "--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "modelport-bench", help="where it is kept"
    )
    args = parser.parse_args(argv)

    from transformers import AutoTokenizer

    from modelport_hf.tokenizer import cached_tokenizer

    folder = tokenizer_folder(args.cache_dir, args.vocab, args.special)
    plain = AutoTokenizer.from_pretrained(folder)
    start = time.perf_counter()
    cached = cached_tokenizer(plain)
    wrap = time.perf_counter() - start
    for name, (read_plain, read_cached) in ATTRIBUTES.items():
        assert read_cached(cached) == read_plain(plain), name
    print(f"tokenizer: {type(plain).__name__}, len {len(plain)}, {len(plain.all_special_ids)} special tokens")
    print(f"wrapping (computes every value once): {wrap * 1e3:.1f} ms")
    print(f"  {'attribute':<20} {'plain µs':>10} {'cached µs':>10} {'plain/cached':>13}")
    for name, (read_plain, read_cached) in ATTRIBUTES.items():
        slow = per_call(lambda read=read_plain: read(plain))
        fast = per_call(lambda read=read_cached: read(cached))
        print(f"  {name:<20} {slow * 1e6:>10.2f} {fast * 1e6:>10.3f} {slow / fast:>12.0f}x")
    text = "The quick brown fox jumps over the lazy dog. " * 20
    assert cached.encode(text) == plain.encode(text)
    slow, fast = per_call(lambda: plain.encode(text)), per_call(lambda: cached.encode(text))
    print(f"  {'encode(900 chars)':<20} {slow * 1e6:>10.2f} {fast * 1e6:>10.3f} {slow / fast:>12.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
