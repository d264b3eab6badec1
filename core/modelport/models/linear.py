"""Linear layers of the native models, through oneDNN for float32 on the CPU.

ATen runs a float32 ``F.linear`` on the CPU through its BLAS (MKL's sgemm in
the official wheels); bfloat16 and float16 already go through oneDNN,
PyTorch's other CPU kernel library. For float32, oneDNN's inner product is
faster on the shapes a decoder has: 1.2x to 2.4x for 1 to 2048 rows on the
AMD EPYC development machine, where oneDNN runs AVX-512 code and MKL
(``MKL_VERBOSE=1``) only its generic path; see benchmarks/README.md,
"Generation throughput". So :func:`linear` sends float32 CPU inputs to
``torch.ops.mkldnn._linear_pointwise``, the operator ``torch.compile``'s CPU
backend emits for linear layers, with the dense weight as it is (no second,
reordered copy of the weights).

That operator is private. It is tried once per process on a small input
against ``F.linear``; where it is missing, fails or disagrees, and for
anything else (other dtypes or devices, inputs that need gradients),
:func:`linear` is ``F.linear``. The results agree with ``F.linear`` to
float32 rounding (a different summation order).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn


@functools.cache
def onednn_linear_works() -> bool:
    """Whether oneDNN's float32 linear operator exists here and agrees with ``F.linear`` on a probe."""
    op = getattr(torch.ops.mkldnn, "_linear_pointwise", None)
    if op is None or not torch.backends.mkldnn.is_available():  # type: ignore[no-untyped-call]
        return False
    generator = torch.Generator().manual_seed(0)
    x, weight, bias = (torch.randn(*shape, generator=generator) for shape in ((3, 16), (5, 16), (5,)))
    try:
        with torch.no_grad():
            got = op(x, weight, bias, "none", [], "")
    except Exception:  # any failure of a private operator means: do not use it
        return False
    return isinstance(got, torch.Tensor) and torch.allclose(got, F.linear(x, weight, bias), rtol=1e-5, atol=1e-5)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` for a 2D ``x``; float32 CPU tensors go through oneDNN where it works."""
    if (
        x.dtype is torch.float32
        and weight.dtype is torch.float32
        and x.device.type == "cpu"
        and weight.device.type == "cpu"
        and x.dim() == 2
        and weight.is_contiguous()
        and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
        and onednn_linear_works()
    ):
        out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(x.contiguous(), weight, bias, "none", [], "")
        return out
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters and names) whose forward is :func:`linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ weight.T + bias``."""
        return linear(x, self.weight, self.bias)
