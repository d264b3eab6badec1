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

import copy
import functools
from collections.abc import Iterable, Iterator
from typing import Any

from modelport.errors import InvalidConfigError, ModelportError
from modelport.pipeline import WeightReport
from modelport.weight_checks import check_weight_fits


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
        from modelport_transformers.paged import ATTENTION

        #: Whether the module attends through the paged attention function (one forward per step);
        #: otherwise each sequence of a step runs alone with its own transformers cache.
        self.batched = getattr(getattr(module, "config", None), "_attn_implementation", None) == ATTENTION

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
        import transformers

        return cls._build(getattr(transformers, hf_config.architectures[0]), hf_config, dtype=dtype, device=device)

    @classmethod
    def _build(cls, model_cls: Any, hf_config: Any, *, dtype: str, device: str) -> TransformersModel:
        """Build ``model_cls`` on the meta device, with the paged attention function when the class takes one."""
        import torch
        from transformers import initialization

        from modelport_transformers.paged import ATTENTION, register_attention

        kwargs: dict[str, Any] = {}
        if _attends_through_interface(model_cls):
            register_attention()
            kwargs["attn_implementation"] = ATTENTION
            # The module keeps the config it is given and records its attention function there: a copy
            # leaves the caller's config (the pipeline's, a user's) as it was.
            hf_config = copy.deepcopy(hf_config)
        try:
            with torch.device("meta"), initialization.no_tie_weights():
                module = model_cls._from_config(hf_config, dtype=getattr(torch, dtype), **kwargs)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError, ZeroDivisionError) as exc:
            # transformers validates few values before building (an unknown hidden_act or rope_type is a
            # KeyError in a layer's constructor): each such failure means "this config is wrong".
            raise _unbuildable(model_cls, hf_config, exc) from exc
        return cls(module.eval(), device=device)

    def load_weights(self, weights: Iterable[tuple[str, Any]]) -> WeightReport:
        """Put ``(name, tensor)`` pairs into the module's parameters and persistent buffers.

        Names are matched against the module's ``state_dict`` keys after
        transformers' own checkpoint renamings for the model (``embed_out`` to
        ``lm_head`` in GPT-NeoX, a missing or extra base-model prefix), as
        ``from_pretrained`` renames them; a weight that only one of
        transformers' merging conversions (fused experts) would fit stays
        unexpected. A weight whose name is not one of them is reported
        ``unexpected``; one whose shape or kind of dtype differs from its
        parameter's raises :class:`~modelport.errors.WeightsCorruptError`
        (``modelport.weight_checks.check_weight_fits``). Every parameter or persistent buffer no weight filled is
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
        rename = _checkpoint_renamer(module, expected)
        with torch.no_grad():
            for original, tensor in weights:
                name = rename(original)
                target = expected.get(name)
                if target is None:
                    unexpected.append(original)
                    continue
                check_weight_fits(original, tensor, target)  # a wrong shape or dtype kind: WeightsCorruptError
                expected[name] = slots.replace(target, self._placed(tensor, target))
                expected[name]._is_hf_initialized = True
                loaded.add(name)
            missing = self._finish(loaded, slots)
        return WeightReport(tuple(sorted(loaded)), tuple(sorted(missing)), tuple(sorted(unexpected)))

    def new_kv_cache(self, num_blocks: int, block_size: int) -> Any:
        """The cache :meth:`forward` reads and writes over sequence batches.

        A model that attends through the paged attention function gets a
        :class:`~modelport_transformers.paged.PagedCache` (the executor's paged
        KV cache, one :class:`~modelport_transformers.paged.LayerCache` per
        layer, allocated on first use). Any other (a class whose attention does
        not go through transformers' ``AttentionInterface``) gets
        :class:`SequenceCaches`, transformers' own caches, one per sequence.
        """
        if not self.batched:
            return SequenceCaches(num_blocks, block_size)
        from modelport_transformers.paged import PagedCache

        parameter = next(self.module.parameters())
        return PagedCache(num_blocks, block_size, dtype=parameter.dtype, device=parameter.device)

    def forward(self, batch: Any, kv_cache: Any = None) -> Any:
        """Logits for a :class:`~modelport.models.protocol.SequenceBatch`, or for a tensor of token ids.

        Given a ``SequenceBatch`` and the cache from :meth:`new_kv_cache`, it
        keeps the model protocol: the whole flat batch (prefills and decodes
        mixed) goes through the module in one forward, as one row of tokens
        with their positions, and every attention layer writes and reads the
        paged cache (see :mod:`modelport_transformers.paged`). The logits are
        ``[T, vocab]`` with ``all_logits``, else one row per sequence (only
        those rows go through the output projection). A model whose attention
        cannot be replaced runs each sequence alone with its own transformers
        cache instead. Given token ids (``[batch, seq]``), it returns the
        module's logits (``[batch, seq, vocab]``) without any cache.
        """
        import torch

        from modelport.models.protocol import SequenceBatch

        if not isinstance(batch, SequenceBatch):
            return self._plain(batch)
        if kv_cache is None:
            raise ModelportError("forward() over a SequenceBatch needs the cache from new_kv_cache()")
        if isinstance(kv_cache, SequenceCaches):
            return self._sequence_by_sequence(batch, kv_cache)
        from modelport_transformers.paged import PagedCache, PagedStep

        if not isinstance(kv_cache, PagedCache):
            raise ModelportError(f"forward() needs the cache from new_kv_cache(), got {type(kv_cache).__name__}")
        module = self.module
        device = kv_cache.device
        step = PagedStep(batch, kv_cache)
        kwargs: dict[str, Any] = {}
        keep = not batch.all_logits and self._keeps_logits
        if keep:
            kwargs["logits_to_keep"] = step.last_rows
        with torch.no_grad(), step.active():
            logits = module(
                input_ids=batch.token_ids.to(device)[None],
                position_ids=batch.positions.to(device)[None],
                use_cache=False,
                **kwargs,
            ).logits[0]
        if batch.all_logits or keep:
            return logits
        return logits.index_select(0, step.last_rows)

    @functools.cached_property
    def _keeps_logits(self) -> bool:
        """Whether the module's forward takes ``logits_to_keep`` (projecting only the rows a step returns)."""
        import inspect

        return "logits_to_keep" in inspect.signature(self.module.forward).parameters

    def _plain(self, input_ids: Any) -> Any:
        """The module's logits for ``[batch, seq]`` token ids, with no cache (transformers' SDPA or eager attention)."""
        import torch

        module = self.module
        config = module.config
        if not self.batched:
            with torch.no_grad():
                return module(input_ids=input_ids).logits
        # transformers builds its masks (causal, sliding windows) only for the implementations it knows;
        # SDPA cannot soft-cap scores (Gemma 2), eager attention can.
        config._attn_implementation = "eager" if getattr(config, "attn_logit_softcapping", None) else "sdpa"
        try:
            with torch.no_grad():
                return module(input_ids=input_ids).logits
        finally:
            from modelport_transformers.paged import ATTENTION

            config._attn_implementation = ATTENTION

    def _sequence_by_sequence(self, batch: Any, kv_cache: SequenceCaches) -> Any:
        """Each sequence alone through the module, with its own transformers cache (models without the interface)."""
        import torch

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
        _use_modelport_linear(module)
        return missing


class RemoteCodeModel(TransformersModel):
    """The backend over the model class the repository's own code defines (``auto_map``).

    The pipeline chooses it only with ``trust_remote_code=True``. The class is
    imported by transformers' dynamic-module loader from the config's folder,
    where the code file must be (modelport-hf fetches a repository's top-level
    ``.py`` files with its remote config class).
    """

    @classmethod
    def from_config(cls, hf_config: Any, *, dtype: str, device: str) -> TransformersModel:
        """Build the repository's ``AutoModelForCausalLM`` class for ``hf_config`` (see :class:`TransformersModel`)."""
        from pathlib import Path

        from transformers.dynamic_module_utils import get_class_from_dynamic_module

        from modelport_transformers.plugin import remote_code_file, remote_model_class

        reference = remote_model_class(hf_config)
        folder = Path(getattr(hf_config, "_name_or_path", "") or ".")
        if reference is None:
            raise ModelportError(f"{folder / 'config.json'}: auto_map names no AutoModelForCausalLM class")
        code = folder / remote_code_file(reference)
        if "--" not in reference and not code.is_file():
            raise ModelportError(f"{code}: the model code auto_map.AutoModelForCausalLM names ({reference}) is missing")
        model_cls = get_class_from_dynamic_module(reference, str(folder))
        return cls._build(model_cls, hf_config, dtype=dtype, device=device)


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


def _use_modelport_linear(module: Any) -> None:
    """Run the module's float32 CPU ``nn.Linear`` layers through core's linear kernel (oneDNN where it works).

    The layers keep their class's parameters and names (their class becomes a
    subclass of ``nn.Linear``); only the kernel changes, to the one core's
    native models use (:mod:`modelport.models.linear`), which agrees with
    ``F.linear`` to float32 rounding and is faster on the CPU, with a packed
    copy of the weight for products of many rows
    (:mod:`modelport_transformers.linear`).
    """
    import torch

    try:
        from modelport.models.linear import onednn_linear_works
    except ImportError:  # a core without its own linear kernel
        return
    from modelport_transformers.linear import core_linear_class

    for layer in module.modules():
        if (
            type(layer) is torch.nn.Linear
            and layer.weight.dtype is torch.float32
            and layer.weight.device.type == "cpu"
            and onednn_linear_works()
        ):
            layer.__class__ = core_linear_class()


def _checkpoint_renamer(module: Any, expected: dict[str, Any]) -> Any:
    """``name -> name``: transformers' checkpoint renamings for ``module`` (identity when it has none)."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightRenaming, rename_source_key
    except ImportError:  # an older transformers: checkpoint names are the module's names
        return lambda name: name
    try:
        transforms = get_model_conversion_mapping(module)
    except Exception:  # not a transformers PreTrainedModel: nothing to rename
        return lambda name: name
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    prefix = getattr(module, "base_model_prefix", None) or None

    def rename(name: str) -> str:
        if name in expected:
            return name
        renamed, _ = rename_source_key(name, renamings, [], base_model_prefix=prefix, meta_state_dict=expected)
        return str(renamed)

    return rename


def _attends_through_interface(model_cls: Any) -> bool:
    """Whether ``model_cls`` looks its attention function up in transformers' ``AttentionInterface``."""
    check = getattr(model_cls, "_can_set_attn_implementation", None)
    try:
        return bool(check()) if callable(check) else False
    except Exception:  # a heuristic over the class's source: any failure means "no"
        return False


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


def _unbuildable(model_cls: Any, hf_config: Any, exc: Exception) -> InvalidConfigError:
    """The :class:`InvalidConfigError` for a config transformers could not build ``model_cls`` from.

    A ``KeyError`` carries the value that was looked up (``ACT2FN['nope']``): the
    config field holding that value, at the top level or one level down
    (``rope_parameters.rope_type``), is named with it. The file is ``config``;
    the pipeline puts the config's own location in.
    """
    detail = f"transformers could not build {model_cls.__name__}: {type(exc).__name__}: {exc}"
    if isinstance(exc, KeyError) and exc.args:
        wanted = exc.args[0]
        to_dict = getattr(hf_config, "to_dict", None)
        data = to_dict() if callable(to_dict) else {}
        for key, value in data.items():
            if type(value) is type(wanted) and value == wanted:
                return InvalidConfigError("config", detail, field=key, value=value)
        for key, nested in data.items():
            if isinstance(nested, dict):
                for inner, value in nested.items():
                    if type(value) is type(wanted) and value == wanted:
                        return InvalidConfigError("config", detail, field=f"{key}.{inner}", value=value)
    return InvalidConfigError("config", detail)
