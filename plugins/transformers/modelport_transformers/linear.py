"""Float32 linear layers of a transformers model on the CPU: core's oneDNN kernel, with packed weights for batches.

The backend's model runs its float32 CPU ``nn.Linear`` layers through
:func:`modelport.models.linear.linear` (oneDNN's inner product on the dense
weight, as core's native models do). oneDNN reads a dense weight through a
reorder into its own blocked layout on every call; for products of
:data:`PACKED_MIN_ROWS` rows or more (a decode step of several sequences, a
prefill), a copy of the weight reordered once
(``torch.ops.mkldnn._reorder_linear_weight``) is faster: on the development
machine's AMD EPYC (one thread) a GPT-NeoX layer's products of 32 rows took
about 17% less time, those of 2048 rows about 5% less, and a whole 32-sequence
decode step of the 100M GPT-NeoX 135 ms instead of 160 (see
benchmarks/README.md). Fewer rows (one sequence decoding) keep the dense
weight, which is faster there.

The choice is the same on a CPU without AVX-512 (an AMD EPYC Zen 3 with AVX2,
GPT-NeoX layer shapes, 12 distinct layers cycled, interleaved rounds, load
average 1.0 to 1.5): the packed product was the cheapest at 8 and 32 rows with
one thread and with two (a 32-row step of 12 layers and the output head 130 to
138 ms against 158 through oneDNN on the dense weight and 167 to 190 through
``F.linear``, one thread), and at 2048 rows with two threads (8% below oneDNN
on the dense weight, 17% below ``F.linear`` in wall time; with one thread the
three were within the noise).

**The packed copy doubles the memory of the float32 weights** it is made for;
it is made the first time a layer multiplies that many rows, so a model that
only ever runs one sequence at a time never makes it. It is remade when the
weight is replaced or changed in place (its storage or version counter
changes). The results agree with ``F.linear`` to float32 rounding; the packed
product is probed once against ``F.linear`` and not used where it disagrees or
is missing.
"""

from __future__ import annotations

import functools
import weakref
from typing import Any

import torch
import torch.nn.functional as F

#: Rows of input from which a product uses the packed weight (fewer: the dense one).
PACKED_MIN_ROWS = 8

#: The number of rows the weights are packed for (oneDNN picks the blocked layout for it).
PACKED_FOR_ROWS = 32

#: Each layer's packed weight, with the (storage, version) of the weight it was made from.
_packed: weakref.WeakKeyDictionary[torch.nn.Module, tuple[tuple[int, int | None], torch.Tensor]] = (
    weakref.WeakKeyDictionary()
)


@functools.cache
def packed_float32_works() -> bool:
    """Whether oneDNN packs float32 weights here and its product with them equals ``F.linear`` on a probe."""
    from modelport.models.linear import onednn_linear_works

    reorder = getattr(torch.ops.mkldnn, "_reorder_linear_weight", None)
    if reorder is None or not onednn_linear_works():
        return False
    generator = torch.Generator().manual_seed(0)
    x, weight, bias = (torch.randn(*shape, generator=generator) for shape in ((9, 32), (24, 32), (24,)))
    try:
        with torch.no_grad():
            got = torch.ops.mkldnn._linear_pointwise(x, reorder(weight, PACKED_FOR_ROWS), bias, "none", [], "")
    except Exception:  # a private operator: any failure means it is not used
        return False
    return isinstance(got, torch.Tensor) and torch.allclose(got, F.linear(x, weight, bias), rtol=1e-5, atol=1e-5)


def _stamp(weight: torch.Tensor) -> tuple[int, int | None]:
    try:
        version: int | None = weight._version
    except RuntimeError:  # a tensor made under inference mode keeps no version counter
        version = None
    return weight.data_ptr(), version


def packed_weight(layer: torch.nn.Linear) -> torch.Tensor:
    """``layer``'s weight reordered once for oneDNN (made on first use, remade when the weight changed)."""
    weight = layer.weight
    stamp = _stamp(weight)
    held = _packed.get(layer)
    if held is None or held[0] != stamp:
        with torch.inference_mode(False), torch.no_grad():  # usable in and out of inference mode
            packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), PACKED_FOR_ROWS)
        held = (stamp, packed)
        _packed[layer] = held
    return held[1]


@functools.cache
def core_linear_class() -> Any:
    """The ``nn.Linear`` subclass the backend gives its float32 CPU linear layers (same parameters and names)."""
    from modelport.models.linear import linear

    class CoreLinear(torch.nn.Linear):
        """``nn.Linear`` through core's oneDNN kernel, with a packed weight for products of many rows."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            """``x @ weight.T + bias``, over any leading dimensions."""
            rows = x if x.dim() == 2 else x.reshape(-1, x.shape[-1])
            if (
                rows.shape[0] >= PACKED_MIN_ROWS
                and rows.dtype is torch.float32
                and not (torch.is_grad_enabled() and (rows.requires_grad or self.weight.requires_grad))
                and packed_float32_works()
            ):
                out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(
                    rows.contiguous(), packed_weight(self), self.bias, "none", [], ""
                )
            else:
                out = linear(rows, self.weight, self.bias)
            return out if x.dim() == 2 else out.reshape(*x.shape[:-1], -1)

    return CoreLinear
