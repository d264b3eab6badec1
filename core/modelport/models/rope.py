"""Rotary position embeddings for every ``rope_type`` that modelport-hf normalises.

The config's ``rope_parameters`` (transformers' current form, which
modelport-hf's ``legacy-rope`` patch produces from every older spelling) name
the scheme: ``default``, ``linear``, ``dynamic``, ``yarn``, ``llama3`` or
``longrope``. Each gives inverse frequencies and an attention scaling that
multiplies cos and sin. The arithmetic follows transformers' own, operation for
operation and in the same dtypes, so that float32 results agree bit for bit
where the inputs do.

Two schemes depend on the sequence's length, and here that length is the
sequence's own (the largest position of its tokens in this step, plus one),
so a batch of sequences of different lengths gives each its own frequencies:

* ``dynamic`` (NTK-aware) raises the base once a sequence outgrows
  ``max_position_embeddings``. transformers keeps the largest length seen in
  the module (until a short input resets it); for one sequence generated from
  its start, both agree.
* ``longrope`` uses ``long_factor`` once a sequence outgrows
  ``original_max_position_embeddings``, ``short_factor`` before.

Keys already in the KV cache keep the rotation they were written with, as in
transformers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from modelport.errors import InvalidConfigError

#: The ``rope_type`` values implemented here.
ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "llama3", "longrope")
#: Types whose ``original_max_position_embeddings`` defaults to ``max_position_embeddings``.
_NEEDS_ORIGINAL_LENGTH = ("llama3", "yarn", "longrope")
_DEFAULT_THETA = 10_000.0


def rope_parameters(hf_config: Any) -> dict[str, Any]:
    """The RoPE parameters of ``hf_config`` as one flat dict with ``rope_type`` and ``rope_theta`` set.

    Reads ``rope_parameters``; a config that never went through transformers'
    standardisation (or modelport-hf's patch) may still hold ``rope_scaling``
    and ``rope_theta``, which are read the same way. ``original_max_position_embeddings``
    is filled in for the types that need it, as transformers does.

    Raises:
        InvalidConfigError: the parameters are nested per layer type, or the type is not implemented.
    """
    where = type(hf_config).__name__
    raw = getattr(hf_config, "rope_parameters", None)
    if raw is None:
        raw = getattr(hf_config, "rope_scaling", None) or {}
    if not isinstance(raw, Mapping):
        raise InvalidConfigError(where, "expected a dict of RoPE parameters", field="rope_parameters", value=raw)
    if raw and all(isinstance(value, Mapping) for value in raw.values()):
        raise InvalidConfigError(
            where,
            "RoPE parameters per layer type are not supported by this implementation",
            field="rope_parameters",
            value=dict(raw),
        )
    params = dict(raw)
    params["rope_type"] = params.get("rope_type", params.get("type", "default"))
    if params.get("rope_theta") is None:
        params["rope_theta"] = getattr(hf_config, "rope_theta", None) or _DEFAULT_THETA
    if params["rope_type"] not in ROPE_TYPES:
        raise InvalidConfigError(
            where,
            f"rope_type {params['rope_type']!r} is not implemented; supported: {', '.join(ROPE_TYPES)}",
            field="rope_parameters.rope_type",
            value=params["rope_type"],
        )
    if params["rope_type"] in _NEEDS_ORIGINAL_LENGTH:
        original = getattr(hf_config, "original_max_position_embeddings", None)
        if original is not None:
            params["original_max_position_embeddings"] = original
        else:
            params.setdefault("original_max_position_embeddings", hf_config.max_position_embeddings)
    return params


def _exponents(dim: int, device: torch.device | str | None) -> torch.Tensor:
    return torch.arange(0, dim, 2, dtype=torch.int64).to(device=device, dtype=torch.float) / dim


def inverse_frequencies(
    params: Mapping[str, Any],
    rotary_dim: int,
    max_position_embeddings: int,
    *,
    seq_len: int | None = None,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, float]:
    """Inverse frequencies (``[rotary_dim // 2]``, float32) and the attention scaling for ``params``.

    Args:
        params: flat RoPE parameters, as :func:`rope_parameters` returns them.
        rotary_dim: how many dimensions of each head are rotated.
        max_position_embeddings: the config's context length.
        seq_len: the sequence's length, for the two length-dependent types
            (``dynamic``, ``longrope``); ``None`` means "not longer than the model's".
        device: where to put the frequencies.
    """
    rope_type = params["rope_type"]
    base = float(params["rope_theta"])
    dim = rotary_dim
    if rope_type == "default":
        return 1.0 / (base ** _exponents(dim, device)), 1.0
    if rope_type == "linear":
        return 1.0 / (base ** _exponents(dim, device)) / params["factor"], 1.0
    if rope_type == "dynamic":
        return _dynamic(params, dim, max_position_embeddings, seq_len, device), 1.0
    if rope_type == "yarn":
        return _yarn(params, dim, max_position_embeddings, device)
    if rope_type == "llama3":
        return _llama3(params, dim, device), 1.0
    if rope_type == "longrope":
        return _longrope(params, dim, max_position_embeddings, seq_len, device)
    raise InvalidConfigError("rope_parameters", f"rope_type {rope_type!r} is not implemented", value=rope_type)


def _dynamic(
    params: Mapping[str, Any], dim: int, max_len: int, seq_len: int | None, device: torch.device | str | None
) -> torch.Tensor:
    factor = params["factor"]
    base: float | torch.Tensor = float(params["rope_theta"])
    if seq_len is None or seq_len <= max_len:
        # transformers computes the unscaled case in Python floats; the scaled one in float32 tensors.
        scale = (factor * max_len / max_len) - (factor - 1)
        base = base * scale ** (dim / (dim - 2))
    else:
        length = torch.tensor(seq_len, dtype=torch.int64, device=device)
        base = base * ((factor * length / max_len) - (factor - 1)) ** (dim / (dim - 2))
    return 1.0 / (base ** _exponents(dim, device))


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def _yarn(
    params: Mapping[str, Any], dim: int, max_len: int, device: torch.device | str | None
) -> tuple[torch.Tensor, float]:
    base = float(params["rope_theta"])
    original = params["original_max_position_embeddings"]
    factor = params.get("factor")
    if factor is None:
        factor = max_len / original
    attention_factor = params.get("attention_factor")
    mscale, mscale_all_dim = params.get("mscale"), params.get("mscale_all_dim")
    if attention_factor is None:
        if mscale and mscale_all_dim:
            attention_factor = float(_yarn_mscale(factor, mscale) / _yarn_mscale(factor, mscale_all_dim))
        else:
            attention_factor = _yarn_mscale(factor)
    beta_fast = params.get("beta_fast") or 32
    beta_slow = params.get("beta_slow") or 1

    def correction_dim(rotations: float) -> float:
        # The dimension whose wavelength makes ``rotations`` turns over the original context.
        return (dim * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if params.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # a zero-width ramp would divide by zero
    pos_freqs = base ** (torch.arange(0, dim, 2).to(device=device, dtype=torch.float) / dim)
    extrapolation = 1.0 / pos_freqs
    interpolation = 1.0 / (factor * pos_freqs)
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    keep = 1 - ramp.to(device=device, dtype=torch.float)
    return interpolation * (1 - keep) + extrapolation * keep, float(attention_factor)


def _llama3(params: Mapping[str, Any], dim: int, device: torch.device | str | None) -> torch.Tensor:
    inv_freq = 1.0 / (float(params["rope_theta"]) ** _exponents(dim, device))
    factor = params["factor"]
    low_freq_factor = params["low_freq_factor"]
    high_freq_factor = params["high_freq_factor"]
    old_context = params["original_max_position_embeddings"]
    low_freq_wavelen = old_context / low_freq_factor
    high_freq_wavelen = old_context / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    # Long wavelengths are divided by factor, short ones kept, the ones between blended smoothly.
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_context / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


def _longrope(
    params: Mapping[str, Any], dim: int, max_len: int, seq_len: int | None, device: torch.device | str | None
) -> tuple[torch.Tensor, float]:
    base = float(params["rope_theta"])
    original = params["original_max_position_embeddings"]
    factor = params.get("factor")
    if factor is None:
        factor = max_len / original
    attention_factor = params.get("attention_factor")
    if attention_factor is None:
        attention_factor = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))
    chosen = params["long_factor"] if seq_len is not None and seq_len > original else params["short_factor"]
    ext_factors = torch.tensor(chosen, dtype=torch.float32, device=device)
    shape = torch.arange(0, dim, 2, dtype=torch.int64, device=device).float() / dim
    return 1.0 / (ext_factors * base**shape), float(attention_factor)


class RotaryEmbedding:
    """A model's rotary embedding: its frequencies, and the rotation of each step's tokens.

    Args:
        hf_config: the text config (``rope_parameters``, ``max_position_embeddings``).
        head_dim: the attention head size; ``partial_rotary_factor`` rotates its first part only.
        device: where the frequencies live (computed there, never loaded).
    """

    def __init__(self, hf_config: Any, head_dim: int, device: torch.device | str) -> None:
        self.params = rope_parameters(hf_config)
        self.rope_type: str = self.params["rope_type"]
        self.head_dim = head_dim
        self.rotary_dim = int(head_dim * self.params.get("partial_rotary_factor", 1.0))
        self.max_position_embeddings = int(hf_config.max_position_embeddings)
        self.device = torch.device(device)
        self.inv_freq, self.attention_scaling = inverse_frequencies(
            self.params, self.rotary_dim, self.max_position_embeddings, device=self.device
        )
        self._by_length: dict[int, torch.Tensor] = {}

    @property
    def depends_on_length(self) -> bool:
        """Whether a sequence's frequencies depend on its length (``dynamic``, ``longrope``)."""
        return self.rope_type in ("dynamic", "longrope")

    def _threshold(self) -> int:
        if self.rope_type == "longrope":
            return int(self.params["original_max_position_embeddings"])
        return self.max_position_embeddings

    def inv_freq_for(self, seq_len: int) -> torch.Tensor:
        """The inverse frequencies a sequence of ``seq_len`` tokens uses."""
        if not self.depends_on_length or seq_len <= self._threshold():
            return self.inv_freq
        key = seq_len if self.rope_type == "dynamic" else -1  # longrope has a single long set
        found = self._by_length.get(key)
        if found is None:
            found, _ = inverse_frequencies(
                self.params, self.rotary_dim, self.max_position_embeddings, seq_len=seq_len, device=self.device
            )
            if len(self._by_length) > 4096:
                self._by_length.clear()
            self._by_length[key] = found
        return found

    def rotation(self, positions: torch.Tensor, spans: Sequence[tuple[int, int]], dtype: torch.dtype) -> Rotation:
        """The rotation of the flat batch's tokens at ``positions`` (cos and sin in ``dtype``).

        ``spans`` are each sequence's ``(start, end)`` in the flat batch; a
        sequence's length is its largest position in this step plus one.
        """
        inv_freq = self.inv_freq
        if self.depends_on_length and positions.numel():
            lengths = [int(positions[start:end].max()) + 1 if end > start else 0 for start, end in spans]
            if any(length > self._threshold() for length in lengths):
                inv_freq = torch.cat(
                    [
                        self.inv_freq_for(length).expand(end - start, -1)
                        for length, (start, end) in zip(lengths, spans, strict=True)
                    ]
                )
        freqs = positions[:, None].float() * inv_freq.to(device=positions.device, dtype=torch.float)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos = emb.cos() * self.attention_scaling
        sin = emb.sin() * self.attention_scaling
        return Rotation(cos.to(dtype=dtype)[:, None, :], sin.to(dtype=dtype)[:, None, :], self.rotary_dim)


class Rotation:
    """The rotary rotation of one step's tokens.

    Args:
        cos: ``[T, 1, rotary_dim]``.
        sin: ``[T, 1, rotary_dim]``.
        rotary_dim: how many leading dimensions of each head are rotated.
    """

    def __init__(self, cos: torch.Tensor, sin: torch.Tensor, rotary_dim: int) -> None:
        self.cos, self.sin, self.rotary_dim = cos, sin, rotary_dim
        half = rotary_dim // 2
        # sin with rotate_half's sign folded in: rotate_half(x) * sin == swap_halves(x) * signed_sin, exactly
        # (negation is exact), one operation fewer for every rotated tensor of the step.
        self.signed_sin = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Rotate ``x`` (``[T, heads, head_dim]``)."""
        if self.rotary_dim == x.shape[-1]:
            return self._rotate(x)
        rotated, passed = x[..., : self.rotary_dim], x[..., self.rotary_dim :]
        return torch.cat((self._rotate(rotated), passed), dim=-1)

    def apply_pair(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(apply(q), apply(k))``, in one pass where ``k``'s heads follow ``q``'s in memory.

        That is so when q and k are column views of one product's output: :func:`stacked_linear`'s
        packed or upcast product (bfloat16, float16); the rotated pair are then views of one new tensor.
        Float32 q and k come from separate products and are rotated one after the other.
        """
        tokens, heads, dim = q.shape
        if (
            k.shape[0] == tokens
            and k.shape[2] == dim
            and q.stride() == k.stride()
            and q.stride(1) == dim
            and q.stride(2) == 1
            and k.data_ptr() == q.data_ptr() + heads * dim * q.element_size()
            and k.dtype == q.dtype
            and (q.storage_offset() + (tokens - 1) * q.stride(0) + (heads + k.shape[1]) * dim) * q.element_size()
            <= q.untyped_storage().nbytes()
        ):
            both = q.as_strided((tokens, heads + k.shape[1], dim), q.stride())
            rotated = self.apply(both)
            return rotated[:, :heads], rotated[:, heads:]
        return self.apply(q), self.apply(k)

    def _rotate(self, x: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        swapped = torch.cat((x[..., half:], x[..., :half]), dim=-1)
        return (x * self.cos).add_(swapped.mul_(self.signed_sin))
