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

    def forward(self, input_ids: Any) -> Any:
        """Logits for a batch of token ids (shape ``[batch, seq, vocab]``)."""
        import torch

        with torch.no_grad():
            return self.module(input_ids=input_ids).logits

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
