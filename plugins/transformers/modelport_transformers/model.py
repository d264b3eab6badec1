"""A transformers model behind modelport's model protocol."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from modelport.pipeline import WeightReport


class TransformersModel:
    """Wraps the transformers class named by ``config.architectures[0]``.

    Built with :meth:`from_config`, filled with :meth:`load_weights`; ``module``
    is the underlying ``torch.nn.Module``.
    """

    def __init__(self, module: Any) -> None:
        self.module = module

    @classmethod
    def from_config(cls, hf_config: Any, *, dtype: str, device: str) -> TransformersModel:
        """Build the transformers module for ``hf_config`` on ``device`` in ``dtype``."""
        import torch
        import transformers

        model_cls = getattr(transformers, hf_config.architectures[0])
        torch_dtype = getattr(torch, dtype)
        with torch.device(device):
            module = model_cls._from_config(hf_config, dtype=torch_dtype)
        return cls(module.eval())

    def load_weights(self, weights: Iterable[tuple[str, Any]]) -> WeightReport:
        """Copy ``(name, tensor)`` pairs into the module's parameters and buffers."""
        import torch

        state = dict(self.module.named_parameters())
        state.update(dict(self.module.named_buffers()))
        loaded: set[str] = set()
        unexpected: list[str] = []
        with torch.no_grad():
            for name, tensor in weights:
                target = state.get(name)
                if target is None or tuple(target.shape) != tuple(tensor.shape):
                    unexpected.append(name)
                    continue
                target.copy_(tensor)
                loaded.add(name)
        tied = {
            name
            for name in state
            if name not in loaded
            and getattr(self.module.config, "tie_word_embeddings", False)
            and name.endswith("lm_head.weight")
        }
        missing = sorted(n for n in dict(self.module.named_parameters()) if n not in loaded and n not in tied)
        return WeightReport(tuple(sorted(loaded)), tuple(missing), tuple(sorted(unexpected)))

    def forward(self, input_ids: Any) -> Any:
        """Logits for a batch of token ids (shape ``[batch, seq, vocab]``)."""
        import torch

        with torch.no_grad():
            return self.module(input_ids=input_ids).logits
