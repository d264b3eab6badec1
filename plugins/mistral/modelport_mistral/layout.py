"""Which files make a Mistral-native model, read from a source's listing only.

A Mistral-native folder holds ``params.json`` and consolidated weights in one
of three forms: ``consolidated.safetensors``; shards
``consolidated-0000N-of-0000M.safetensors`` with their index
``consolidated.safetensors.index.json``; or PyTorch files
``consolidated.00.pth`` (``consolidated.01.pth``... for model-parallel
checkpoints). ``params.json`` alone is not enough: Hugging Face repositories
sometimes carry one beside config.json.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from modelport.types import Source

PARAMS = "params.json"
SINGLE = "consolidated.safetensors"
INDEX = "consolidated.safetensors.index.json"
_SHARD = re.compile(r"^consolidated-(\d+)-of-(\d+)\.safetensors$")
_PTH = re.compile(r"^consolidated\.(\d+)\.pth$")


@dataclass(frozen=True)
class MistralLayout:
    """The Mistral-native files of a source.

    Attributes:
        has_params: whether ``params.json`` is there.
        safetensors: ``consolidated.safetensors``, or the shards (when the index is there too).
        index_file: the shard index, when the shards are listed.
        pth: the ``consolidated.NN.pth`` files.
        missing: what a complete Mistral-native folder would need that is absent.
    """

    has_params: bool
    safetensors: tuple[str, ...]
    index_file: str | None
    pth: tuple[str, ...]
    missing: tuple[str, ...]

    @property
    def complete(self) -> bool:
        """``params.json`` and at least one complete form of consolidated weights."""
        return self.has_params and bool(self.safetensors or self.pth)


def find_layout(source: Source) -> MistralLayout:
    """The Mistral-native files of ``source`` (top-level files only), from its listing."""
    files = [f for f in source.list_files() if "/" not in f]
    present = set(files)
    shards = sorted(f for f in files if _SHARD.match(f))
    ranks = {f: int(m[1]) for f in files if (m := _PTH.match(f))}
    pth = tuple(sorted(ranks, key=ranks.__getitem__))
    missing: list[str] = []
    has_params = PARAMS in present
    if not has_params:
        missing.append(PARAMS)
    safetensors: tuple[str, ...] = ()
    index_file = None
    if SINGLE in present:
        safetensors = (SINGLE,)
    elif shards and INDEX in present:
        safetensors, index_file = tuple(shards), INDEX
    elif shards:
        missing.append(f"{INDEX} (the index of {', '.join(shards)})")
    if not safetensors and not pth and not shards:
        missing.append(f"{SINGLE}, consolidated-0000N-of-0000M.safetensors with {INDEX}, or consolidated.00.pth")
    return MistralLayout(has_params, safetensors, index_file, pth, tuple(missing))


#: Top-level tokenizer files mistral-common can read (tekken, SentencePiece with a version suffix, or bare).
_TOKENIZER_FILE = re.compile(r"^(tekken\.json|tokenizer\.model(\.v\d+(m\d+)?)?)$")


def mistral_tokenizer_files(source: Source) -> list[str]:
    """Files of ``source`` that could be a mistral-common tokenizer (the final choice is mistral-common's)."""
    return [f for f in source.list_files() if "/" not in f and _TOKENIZER_FILE.match(f)]
