"""A transformers model behind modelport's model protocol.

The module is built on the ``meta`` device, so building costs neither memory
nor random initialisation. :meth:`TransformersModel.load_weights` then gives
each parameter its memory as its weight arrives: a weight that already has the
parameter's dtype, device and layout (a memory-mapped safetensors tensor, for
instance) becomes the parameter as it is, without a copy; any other weight is
copied, converting its dtype, into fresh memory on the target device. What no
weight filled is then initialised by the model's own ``_init_weights`` and the
tied weights are tied, the same steps in the same order as transformers'
``from_pretrained``, so that both produce the same module.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from modelport.errors import ModelportError
from modelport.pipeline import WeightReport


class TransformersModel:
    """Wraps the transformers class named by ``config.architectures[0]``.

    Built with :meth:`from_config`, filled with :meth:`load_weights`.
    ``module`` is the underlying ``torch.nn.Module``; reading it before
    :meth:`load_weights` has run gives every parameter its random
    initialisation first (as if no weight were found).
    """

    def __init__(self, module: Any, *, device: str = "cpu") -> None:
        self._module = module
        self._device = device
        self._ready = not any(t.is_meta for t in _tensors(module))

    @property
    def module(self) -> Any:
        """The ``torch.nn.Module``, with every parameter on the target device."""
        if not self._ready:
            self._finish(set(), _Slots(self._module))
        return self._module

    @classmethod
    def from_config(cls, hf_config: Any, *, dtype: str, device: str) -> TransformersModel:
        """Build the transformers module for ``hf_config`` on the meta device, for ``device`` in ``dtype``.

        Ties are left undone until the weights are in (as ``from_pretrained``
        does), so that a checkpoint holding both sides of a tie is read as it is.
        """
        import torch
        import transformers
        from transformers import initialization

        model_cls = getattr(transformers, hf_config.architectures[0])
        with torch.device("meta"), initialization.no_tie_weights():
            module = model_cls._from_config(hf_config, dtype=getattr(torch, dtype))
        return cls(module.eval(), device=device)

    def load_weights(self, weights: Iterable[tuple[str, Any]]) -> WeightReport:
        """Put ``(name, tensor)`` pairs into the module's parameters and persistent buffers.

        Names are matched against the module's ``state_dict`` keys. A weight
        whose name is not one of them, or whose shape differs from its
        parameter's, is reported ``unexpected`` (and that parameter stays
        ``missing``). Every parameter or persistent buffer no weight filled is
        reported ``missing`` and initialised the way the model initialises it;
        a tied weight (``lm_head.weight`` with ``tie_word_embeddings``) that the
        checkpoint leaves out is tied, not missing. Non-persistent buffers
        (rotary ``inv_freq``) are computed, never read.

        A weight is adopted without a copy when it already has the parameter's
        dtype, device and a contiguous layout, so the reader must not reuse its
        memory for another tensor (safetensors' memory-mapped tensors and
        ``torch.load(mmap=True)`` tensors are never reused).
        """
        import torch

        module = self._module
        slots = _Slots(module)
        expected = module.state_dict(keep_vars=True)
        loaded: set[str] = set()
        unexpected: list[str] = []
        with torch.no_grad():
            for name, tensor in weights:
                target = expected.get(name)
                if target is None or tuple(target.shape) != tuple(tensor.shape):
                    unexpected.append(name)
                    continue
                expected[name] = slots.replace(target, self._placed(tensor, target))
                expected[name]._is_hf_initialized = True
                loaded.add(name)
            missing = self._finish(loaded, slots)
        return WeightReport(tuple(sorted(loaded)), tuple(sorted(missing)), tuple(sorted(unexpected)))

    def new_kv_cache(self, num_blocks: int, block_size: int) -> SequenceCaches:
        """A cache for :meth:`forward` over sequence batches (transformers' own caches, one per sequence).

        transformers manages its cache memory itself, so ``num_blocks`` and
        ``block_size`` only bound how many sequences can be live at once.
        """
        return SequenceCaches(num_blocks, block_size)

    def forward(self, batch: Any, kv_cache: SequenceCaches | None = None) -> Any:
        """Logits for a :class:`~modelport.models.protocol.SequenceBatch`, or for a tensor of token ids.

        Given a ``SequenceBatch`` and the cache from :meth:`new_kv_cache`, it
        keeps the model protocol: each sequence runs through the module with
        its own transformers cache (found by the first block of its block
        table; a sequence with ``context_lens == 0`` starts a new one), and the
        logits are ``[T, vocab]`` with ``all_logits``, else one row per
        sequence. Given token ids (``[batch, seq]``), it returns the module's
        logits (``[batch, seq, vocab]``) without any cache.
        """
        import torch

        from modelport.models.protocol import SequenceBatch

        if not isinstance(batch, SequenceBatch):
            with torch.no_grad():
                return self.module(input_ids=batch).logits
        if kv_cache is None:
            raise ModelportError("forward() over a SequenceBatch needs the cache from new_kv_cache()")
        module = self.module
        device = next(module.parameters()).device
        rows = []
        start = 0
        with torch.no_grad():
            for query_len, context_len, table in zip(
                batch.query_lens, batch.context_lens, batch.block_tables, strict=True
            ):
                cache = kv_cache.for_sequence(module.config, table, context_len)
                ids = batch.token_ids[start : start + query_len].to(device)[None]
                positions = batch.positions[start : start + query_len].to(device)[None]
                start += query_len
                logits = module(input_ids=ids, position_ids=positions, past_key_values=cache, use_cache=True).logits
                rows.append(logits[0] if batch.all_logits else logits[0, -1:])
        return torch.cat(rows)

    def _placed(self, tensor: Any, target: Any) -> Any:
        """``tensor`` as it is when it fits ``target``'s dtype, device and layout, else a converted copy."""
        import torch

        device = torch.device(self._device)
        if (
            tensor.dtype == target.dtype
            and tensor.device == device
            and tensor.is_contiguous()
            and not tensor.requires_grad
        ):
            return tensor
        placed = torch.empty(tuple(tensor.shape), dtype=target.dtype, device=device)
        placed.copy_(tensor)
        return placed

    def _finish(self, loaded: set[str], slots: _Slots) -> set[str]:
        """Give what no weight filled memory and initial values, tie the tied weights; return the missing names."""
        import torch

        module = self._module
        missing = {name for name in module.state_dict(keep_vars=True) if name not in loaded}
        tied_targets = set(getattr(module, "all_tied_weights_keys", None) or {})
        with torch.no_grad():
            for name, tensor in list(_named_tensors(module)):
                if name in tied_targets:
                    # Tying replaces it below; initialising it first would be wasted work.
                    tensor._is_hf_initialized = True
                elif tensor.is_meta and slots.holds(tensor):
                    slots.replace(tensor, torch.empty_like(tensor, device=self._device))
            if hasattr(module, "initialize_weights"):
                module.initialize_weights()
            if hasattr(module, "tie_weights") and loaded:
                # Tied the way from_pretrained ties: a target the checkpoint holds with other values than
                # its source stays untied, and each target filled from its source leaves ``missing``.
                module.tie_weights(missing_keys=missing, recompute_mapping=False)
            elif hasattr(module, "tie_weights"):
                # Nothing loaded (random weights): tie as a freshly built model does.
                module.tie_weights(recompute_mapping=False)
                missing -= tied_targets
        still_meta = sorted(name for name, tensor in _named_tensors(module) if tensor.is_meta)
        if still_meta:
            raise ModelportError(
                f"{type(module).__name__}: no weight or initialisation filled {', '.join(still_meta[:8])}"
                + (", ..." if len(still_meta) > 8 else "")
            )
        self._ready = True
        return missing


class SequenceCaches:
    """transformers' per-sequence caches, keyed by the first block of each sequence's block table.

    The executor gives every live sequence its own blocks, so a sequence's
    first block names it for as long as it lives; a sequence that starts
    (``context_len == 0``) replaces whatever cache its first block named before.
    """

    def __init__(self, num_blocks: int, block_size: int) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._caches: dict[int, Any] = {}

    def for_sequence(self, config: Any, block_table: Any, context_len: int) -> Any:
        """The cache of the sequence whose blocks are ``block_table``, holding ``context_len`` tokens.

        Raises:
            ModelportError: the block table is empty, or the cache holds another number of tokens.
        """
        from transformers import DynamicCache

        if not block_table:
            raise ModelportError("a sequence needs at least one cache block")
        key = int(block_table[0])
        if context_len == 0:
            self._caches[key] = DynamicCache(config=config)
        cache = self._caches.get(key)
        held = cache.get_seq_length() if cache is not None else 0
        if cache is None or held != context_len:
            raise ModelportError(
                f"the sequence starting at block {key} has {held} cached token(s), the batch says {context_len}"
            )
        return cache


def _named_tensors(module: Any) -> Iterator[tuple[str, Any]]:
    """Every parameter and buffer (persistent or not) by every name it has."""
    yield from module.named_parameters(remove_duplicate=False)
    yield from module.named_buffers(remove_duplicate=False)


def _tensors(module: Any) -> Iterator[Any]:
    for _, tensor in _named_tensors(module):
        yield tensor


class _Slots:
    """Where each parameter and buffer of a module tree is held (a shared tensor is held in several places)."""

    def __init__(self, module: Any) -> None:
        self._held: dict[int, list[tuple[dict[str, Any], str]]] = {}
        for owner in module.modules():
            for slots in (owner._parameters, owner._buffers):
                for key, tensor in slots.items():
                    if tensor is not None:
                        self._held.setdefault(id(tensor), []).append((slots, key))

    def holds(self, tensor: Any) -> bool:
        """Whether ``tensor`` is still in the module tree (not yet replaced)."""
        return id(tensor) in self._held

    def replace(self, old: Any, value: Any) -> Any:
        """Put ``value`` wherever ``old`` is held (as a parameter if ``old`` was one); return what was put."""
        import torch

        if isinstance(old, torch.nn.Parameter):
            value = torch.nn.Parameter(value, requires_grad=old.requires_grad)
        places = self._held.pop(id(old), [])
        for slots, key in places:
            slots[key] = value
        self._held.setdefault(id(value), []).extend(places)
        return value
