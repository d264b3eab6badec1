"""Linear layers of the native models, through oneDNN on the CPU.

ATen runs a float32 ``F.linear`` on the CPU through its BLAS (MKL's sgemm in
the official wheels); bfloat16 and float16 already go through oneDNN,
PyTorch's other CPU kernel library. For float32, oneDNN's inner product is
faster on the shapes a decoder has: 1.2x to 2.4x for 1 to 2048 rows on the
AMD EPYC development machine, where oneDNN runs AVX-512 code and MKL
(``MKL_VERBOSE=1``) only its generic path; see benchmarks/README.md,
"Generation throughput". So :func:`linear` sends float32 CPU inputs to
``torch.ops.mkldnn._linear_pointwise``, the operator ``torch.compile``'s CPU
backend emits for linear layers, with the dense weight as it is (no second,
reordered copy of the weights). On a CPU with AVX2 only (an AMD EPYC Zen 3)
the same choice held with two threads: a 32 x 64-token prefill of a 100M llama
took 3.17 to 3.5 s through oneDNN against 3.6 to 3.9 s with ``F.linear`` for its
products of 2,048 rows (quiet, interleaved rounds), although with one thread
MKL's sgemm had used less CPU time on them.

In bfloat16 (and float16 where the CPU has the instructions) oneDNN reads a
weight in a blocked layout of its own, and ``F.linear`` reorders the dense
weight into it on every call: for the few rows of a decode step that copy
costs more than the product (a whole 100M-parameter bfloat16 model's step
took twice as long as with the weights reordered once). So for up to
:data:`PACKED_MAX_ROWS` rows, these dtypes use a copy of the weight reordered
once (``torch.ops.mkldnn._reorder_linear_weight``), kept beside the dense
weight for as long as the weight lives: **it doubles the memory of the
weights it is made for**, the price of the speed. The copy is remade when the
weight is replaced (another tensor or another storage); writing into a weight
in place after it was used is not seen. :func:`stacked_linear` computes
several layers that read the same input (q, k and v; gate and up) in one
product over their weights stacked by rows, packed together the same way.
The results equal ``F.linear``'s (the same oneDNN kernel).

Where the CPU has no bfloat16 kernels for oneDNN (x86 without AVX-512 or
AMX: torch's ``torch.ops.mkldnn._is_mkldnn_bf16_supported()`` is false, and
oneDNN refuses to pack bfloat16 weights), ``F.linear`` in bfloat16 falls back
to ATen's own kernel, which costs about as much per row as a whole
matrix-vector product: 7 to 10 GFLOP/s a core from 4 rows on, against 30 to
45 for a float32 product (MKL's sgemm) at 32 rows on the AVX2 AMD EPYC
(Zen 3) development machine. So bfloat16 products of at least
:data:`UPCAST_MIN_ROWS` rows there convert the weight to float32
:data:`UPCAST_CHUNK` elements at a time into one reused buffer (8 MiB per
thread that multiplies), multiply each chunk in float32 straight into the
float32 output, and round the output to bfloat16 once. Measured with one
thread (``benchmarks/bench_linear.py``, see benchmarks/README.md): about
break-even at 4 rows (0.9x to 1.4x ``F.linear``'s speed by shape), 1.1x to
4.8x at 8, 3.5x to 6x at 32, 5x to 8.4x at 2048. No float32 copy of the
weights is kept (one would be only slightly faster from 8 rows on, and costs
twice the bfloat16 weights' memory). Fewer rows stay with ``F.linear``, whose
per-row product reads the bfloat16 weight once and beats converting it at one
row by 1.6x to 2.5x (a kept float32 copy is slower there too: it reads twice
the bytes). :func:`stacked_linear` stacks the
layers' weights into the same buffer, so one product serves q, k and v, and
gate and up, at no memory cost. The products of the exact bfloat16 values are
summed in float32, as ``F.linear``'s kernel does, in another order: results
agree with ``F.linear``'s within one bfloat16 rounding.

These operators are private. Each is tried once per process and dtype on a
small input against ``F.linear``; where one is missing, fails or disagrees,
and for anything else (other devices, inputs that need gradients),
:func:`linear` is ``F.linear``. The float32 results agree with ``F.linear``
to float32 rounding (a different summation order).
"""

from __future__ import annotations

import functools
import threading
import weakref
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

#: Rows of input up to which bfloat16 and float16 products use the packed weights (more: ``F.linear``).
PACKED_MAX_ROWS = 256

_PACKED_DTYPES = (torch.bfloat16, torch.float16)

#: Rows of input from which bfloat16 products upcast the weight to float32 where the CPU has no bfloat16 kernels.
UPCAST_MIN_ROWS = 4

#: Weight elements the upcast path converts to float32 at a time (2M: an 8 MiB float32 buffer per thread).
UPCAST_CHUNK = 2 * 1024 * 1024


@functools.cache
def bfloat16_kernels() -> bool:
    """Whether oneDNN has bfloat16 kernels for this CPU (x86: AVX-512 or AMX), as torch reports it.

    Where torch cannot say (an older torch), this is true: bfloat16 products keep ``F.linear``.
    """
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    if check is None:
        return True
    try:
        return bool(check())
    except Exception:  # a private operator's failure: keep the behaviour that does not depend on it
        return True


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


@functools.cache
def packed_linear_works(dtype: torch.dtype) -> bool:
    """Whether oneDNN packs ``dtype`` weights here, and its product with them equals ``F.linear`` on a probe."""
    reorder = getattr(torch.ops.mkldnn, "_reorder_linear_weight", None)
    if reorder is None or dtype not in _PACKED_DTYPES or not onednn_linear_works():
        return False
    generator = torch.Generator().manual_seed(0)
    x, weight, bias = (torch.randn(*shape, generator=generator).to(dtype) for shape in ((3, 32), (24, 32), (24,)))
    try:
        with torch.no_grad():
            got = torch.ops.mkldnn._linear_pointwise(x, reorder(weight, 1), bias, "none", [], "")
    except Exception:  # the CPU lacks the instructions (float16 without AVX512-FP16), or any other failure
        return False
    expected = F.linear(x, weight, bias)
    return isinstance(got, torch.Tensor) and torch.allclose(got.float(), expected.float(), rtol=1e-2, atol=1e-2)


class _Packed:
    """A packed copy of one or more weights stacked by rows, with their stacked bias."""

    __slots__ = ("bias", "pointers", "sizes", "sources", "weight")

    def __init__(self, weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor | None]) -> None:
        self.sources = tuple(weakref.ref(w) for w in weights)
        self.pointers = tuple(w.data_ptr() for w in weights)
        self.sizes = [int(w.shape[0]) for w in weights]
        with torch.inference_mode(False), torch.no_grad():  # usable in and out of inference mode
            dense = weights[0] if len(weights) == 1 else torch.cat(list(weights))
            self.weight = torch.ops.mkldnn._reorder_linear_weight(dense.contiguous(), 1)
            if all(b is None for b in biases):
                self.bias = None
            else:
                self.bias = torch.cat(
                    [
                        b.detach() if b is not None else torch.zeros(size, dtype=weights[0].dtype)
                        for b, size in zip(biases, self.sizes, strict=True)
                    ]
                )

    def current(self, weights: Sequence[torch.Tensor]) -> bool:
        """Whether this copy was made from these very weights, in their present storage."""
        if len(weights) != len(self.sources):
            return False
        pairs = zip(self.sources, weights, self.pointers, strict=True)
        return all(ref() is w and w.data_ptr() == pointer for ref, w, pointer in pairs)


#: Packed copies by the ids of the weights they stack; an entry goes when its first weight is freed.
_packed: dict[tuple[int, ...], _Packed] = {}


def _packed_for(weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor | None]) -> _Packed:
    key = tuple(id(w) for w in weights)
    found = _packed.get(key)
    if found is not None and found.current(weights):
        return found
    made = _Packed(weights, biases)
    _packed[key] = made
    if found is None:
        weakref.finalize(weights[0], _packed.pop, key, None)
    return made


def _upcasts(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether the product of ``x`` and ``weight`` converts the bfloat16 weight to float32 (see above)."""
    return (
        x.dtype is torch.bfloat16
        and weight.dtype is torch.bfloat16
        and x.dim() == 2
        and weight.dim() == 2
        and x.shape[0] >= UPCAST_MIN_ROWS
        and x.device.type == "cpu"
        and weight.device.type == "cpu"
        and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
        and not bfloat16_kernels()
    )


_scratch = threading.local()


def _upcast_buffer(elements: int) -> torch.Tensor:
    """A float32 buffer of at least ``elements`` elements, one per thread, reused from call to call."""
    buffer: torch.Tensor | None = getattr(_scratch, "buffer", None)
    if buffer is None or buffer.numel() < elements:
        with torch.inference_mode(False), torch.no_grad():  # writable in and out of inference mode
            buffer = torch.empty(elements, dtype=torch.float32)
        _scratch.buffer = buffer
    return buffer


def _upcast_product(
    x: torch.Tensor, weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor | None]
) -> torch.Tensor:
    """``x`` times ``weights`` stacked by rows, plus their biases, in float32 a chunk of weight rows at a time.

    Each chunk of the stacked weights is converted into this thread's buffer and multiplied by ``x``
    in float32, straight into its rows of the transposed float32 output (no copy per chunk); the
    output is rounded to ``x.dtype`` once, ``[T, sum of the weights' rows]``, contiguous.
    """
    features = int(x.shape[1])
    sizes = [int(w.shape[0]) for w in weights]
    total = sum(sizes)
    step = max(1, UPCAST_CHUNK // max(features, 1))
    buffer = _upcast_buffer(min(total, step) * features)
    x32t = x.float().t()
    bias32 = None
    if any(b is not None for b in biases):
        bias32 = torch.cat(
            [
                b.float() if b is not None else torch.zeros(size, dtype=torch.float32)
                for b, size in zip(biases, sizes, strict=True)
            ]
        ).unsqueeze(1)
    out = torch.empty(total, x.shape[0], dtype=torch.float32)
    for begin in range(0, total, step):
        end = min(total, begin + step)
        chunk = buffer[: (end - begin) * features].view(end - begin, features)
        first = 0
        for weight, size in zip(weights, sizes, strict=True):  # the weights' rows in [begin, end)
            low, high = max(begin, first), min(end, first + size)
            if low < high:
                chunk[low - begin : high - begin].copy_(weight[low - first : high - first])
            first += size
        if bias32 is None:
            torch.mm(chunk, x32t, out=out[begin:end])
        else:
            torch.addmm(bias32[begin:end], chunk, x32t, out=out[begin:end])
    return out.t().to(x.dtype, memory_format=torch.contiguous_format)


def _packs(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether the product of ``x`` and ``weight`` uses a packed copy of the weight."""
    return (
        x.dtype in _PACKED_DTYPES
        and weight.dtype is x.dtype
        and x.dim() == 2
        and x.shape[0] <= PACKED_MAX_ROWS
        and x.device.type == "cpu"
        and weight.device.type == "cpu"
        and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
        and packed_linear_works(x.dtype)
    )


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` for a 2D ``x``, through oneDNN on the CPU where it works (see above)."""
    if _upcasts(x, weight) and (bias is None or bias.dtype is x.dtype):
        return _upcast_product(x, (weight,), (bias,))
    if _packs(x, weight) and (bias is None or bias.dtype is x.dtype):
        packed = _packed_for((weight,), (bias,))
        result: torch.Tensor = torch.ops.mkldnn._linear_pointwise(
            x.contiguous(), packed.weight, packed.bias, "none", [], ""
        )
        return result
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


def stacked_linear(x: torch.Tensor, layers: Sequence[nn.Module]) -> tuple[torch.Tensor, ...]:
    """``tuple(layer(x) for layer in layers)``, in one product where the weights are packed or upcast (see above).

    ``layers`` are linear layers reading the same ``x`` (``[T, in_features]``), say q, k and v. Where they
    are all plain :class:`Linear` layers of one dtype and :func:`linear` would use packed weights for
    them, their weights are stacked by rows and packed once, and one product gives every output (views
    of its columns); where :func:`linear` would upcast them, they are stacked in the upcast buffer the
    same way; otherwise each layer runs on its own.
    """
    weights = [getattr(layer, "weight", None) for layer in layers]
    first = weights[0] if weights else None
    if (
        len(layers) > 1
        and all(type(layer).forward is Linear.forward for layer in layers)
        and isinstance(first, torch.Tensor)
        and all(isinstance(w, torch.Tensor) and w.dtype is first.dtype and w.dim() == 2 for w in weights)
    ):
        tensors = [w for w in weights if isinstance(w, torch.Tensor)]
        biases = [getattr(layer, "bias", None) for layer in layers]
        if (
            _upcasts(x, first)
            and all(w.shape[1] == x.shape[1] for w in tensors)
            and all(b is None or (isinstance(b, torch.Tensor) and b.dtype is x.dtype) for b in biases)
        ):
            stacked = _upcast_product(x, tensors, biases)
            return tuple(torch.split(stacked, [int(w.shape[0]) for w in tensors], dim=-1))
        if _packs(x, first):
            packed = _packed_for(tensors, biases)
            out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(
                x.contiguous(), packed.weight, packed.bias, "none", [], ""
            )
            return tuple(torch.split(out, packed.sizes, dim=-1))
    return tuple(layer(x) for layer in layers)


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters and names) whose forward is :func:`linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ weight.T + bias``."""
        return linear(x, self.weight, self.bias)
