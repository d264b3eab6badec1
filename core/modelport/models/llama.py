"""Native Llama-family decoders: Llama, Mistral, Qwen2 and Qwen3.

They share one decoder (RMSNorm, rotary grouped-query attention, gated MLP)
and differ only in details their configs state:

=========  ======================  ==========  =========================================
class      attention biases        q/k norm    sliding window
=========  ======================  ==========  =========================================
Llama      ``attention_bias``      no          never
Mistral    none                    no          every layer, when ``sliding_window`` is set
Qwen2      q, k, v always          no          the layers ``layer_types`` marks sliding
Qwen3      ``attention_bias``      per head    the layers ``layer_types`` marks sliding
=========  ======================  ==========  =========================================

Parameters carry the names of the Hugging Face checkpoints
(``model.layers.0.self_attn.q_proj.weight``...), so most weights load by name;
a subclass maps the names its checkpoints spell otherwise
(:meth:`LlamaForCausalLM.weight_target`). The modules are built on the meta
device and given memory once, on the target device; the rotary frequencies
are computed there, never loaded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Self

import torch
import torch.nn.functional as F
from torch import nn

from modelport.distributed.layers import VocabParallelEmbedding, all_gather_last, read_shard, read_whole, row_parallel
from modelport.distributed.state import SINGLE, ParallelState, current
from modelport.errors import InvalidConfigError
from modelport.models.attention import BatchLayout, paged_attention
from modelport.models.kv_cache import PagedKVCache
from modelport.models.linear import Linear, linear, stacked_linear
from modelport.models.protocol import SequenceBatch
from modelport.models.rope import RotaryEmbedding, Rotation
from modelport.pipeline import WeightReport
from modelport.weight_checks import check_weight_fits

#: Activation functions by the names configs use (``hidden_act``).
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "silu": F.silu,
    "swish": F.silu,
    "gelu": F.gelu,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


@dataclass(frozen=True)
class DecoderShape:
    """Everything the decoder reads from the config, checked once.

    Attributes:
        vocab_size: rows of the embedding and of the output head.
        hidden_size: width of the residual stream.
        num_layers: decoder layers.
        num_heads: query heads.
        num_kv_heads: key/value heads (fewer than ``num_heads`` with grouped-query attention).
        head_dim: size of each head.
        intermediate_size: width of the MLP (of each expert, for a mixture of experts).
        rms_norm_eps: the epsilon of every RMSNorm.
        hidden_act: the MLP's activation name.
        qkv_bias: q, k and v projections have a bias.
        o_bias: the output projection has a bias.
        mlp_bias: the MLP projections have biases.
        qk_norm: queries and keys are RMS-normalised per head before RoPE.
        windows: the sliding window of each layer (``None``: full attention).
        tie_word_embeddings: the output head is the embedding matrix.
        initializer_range: standard deviation for parameters no weight fills.
        num_experts: experts per MoE layer (0: dense MLP).
        num_experts_per_tok: experts each token is routed to.
    """

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    rms_norm_eps: float
    hidden_act: str
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    qk_norm: bool
    windows: tuple[int | None, ...]
    tie_word_embeddings: bool
    initializer_range: float
    num_experts: int = 0
    num_experts_per_tok: int = 0


class RMSNorm(nn.Module):
    """Root-mean-square normalisation, computed in float32 as the reference implementations do."""

    def __init__(self, size: int, eps: float, dtype: torch.dtype) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(size, dtype=dtype))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise the last dimension of ``x``."""
        if x.dtype is torch.float32 and self.weight.dtype is torch.float32:
            # The same arithmetic as below in one torch operator (equal to float32 rounding), a third of
            # the operators per call; other dtypes keep the reference's rounding to ``dtype`` before the weight.
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        dtype = x.dtype
        x = x.to(torch.float32)
        variance = x.pow(2).mean(-1, keepdim=True)
        x = x * torch.rsqrt(variance + self.eps)
        return self.weight * x.to(dtype)


class Attention(nn.Module):
    """Grouped-query self-attention with rotary positions over a paged KV cache."""

    def __init__(self, shape: DecoderShape, layer: int, dtype: torch.dtype, parallel: ParallelState = SINGLE) -> None:
        super().__init__()
        h, d, ranks = shape.hidden_size, shape.head_dim, parallel.world_size
        self.layer = layer
        # Tensor parallelism: this rank's heads only (q, k, v column-parallel; o_proj row-parallel).
        self.num_heads, self.num_kv_heads, self.head_dim = shape.num_heads // ranks, shape.num_kv_heads // ranks, d
        self.window = shape.windows[layer]
        self.scale = d**-0.5
        self.q_proj = Linear(h, self.num_heads * d, bias=shape.qkv_bias, dtype=dtype)
        self.k_proj = Linear(h, self.num_kv_heads * d, bias=shape.qkv_bias, dtype=dtype)
        self.v_proj = Linear(h, self.num_kv_heads * d, bias=shape.qkv_bias, dtype=dtype)
        self.o_proj = row_parallel(shape.num_heads * d, h, shape.o_bias, dtype=dtype, state=parallel)
        self.q_norm = RMSNorm(d, shape.rms_norm_eps, dtype) if shape.qk_norm else None
        self.k_norm = RMSNorm(d, shape.rms_norm_eps, dtype) if shape.qk_norm else None

    def forward(self, x: torch.Tensor, rotation: Rotation, layout: BatchLayout) -> torch.Tensor:
        """Attend the batch's new tokens ``x`` (``[T, hidden]``); their keys and values go into the cache."""
        tokens = x.shape[0]
        q, k, v = stacked_linear(x, (self.q_proj, self.k_proj, self.v_proj))  # one product where that is faster
        q = q.view(tokens, self.num_heads, self.head_dim)
        k = k.view(tokens, self.num_kv_heads, self.head_dim)
        v = v.view(tokens, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = rotation.apply_pair(q, k)  # one pass where q and k are adjacent columns of one product
        out = paged_attention(q, k, v, layer=self.layer, layout=layout, window=self.window, scale=self.scale)
        projected: torch.Tensor = self.o_proj(out.reshape(tokens, self.num_heads * self.head_dim))
        return projected


class GatedMLP(nn.Module):
    """``down(act(gate(x)) * up(x))``."""

    def __init__(self, shape: DecoderShape, dtype: torch.dtype, parallel: ParallelState = SINGLE) -> None:
        super().__init__()
        h, i, bias = shape.hidden_size, shape.intermediate_size, shape.mlp_bias
        # Tensor parallelism: gate and up column-parallel, down row-parallel.
        self.gate_proj = Linear(h, i // parallel.world_size, bias=bias, dtype=dtype)
        self.up_proj = Linear(h, i // parallel.world_size, bias=bias, dtype=dtype)
        self.down_proj = row_parallel(i, h, bias, dtype=dtype, state=parallel)
        self.act = ACTIVATIONS[shape.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the MLP to ``x`` (``[T, hidden]``)."""
        gate, up = stacked_linear(x, (self.gate_proj, self.up_proj))  # one product where that is faster
        out: torch.Tensor = self.down_proj(self.act(gate) * up)
        return out


class DecoderLayer(nn.Module):
    """Pre-norm residual block: attention, then the MLP."""

    def __init__(self, attention: Attention, mlp: nn.Module, shape: DecoderShape, dtype: torch.dtype) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(shape.hidden_size, shape.rms_norm_eps, dtype)
        self.self_attn = attention
        self.post_attention_layernorm = RMSNorm(shape.hidden_size, shape.rms_norm_eps, dtype)
        self.mlp = mlp

    def forward(self, x: torch.Tensor, rotation: Rotation, layout: BatchLayout) -> torch.Tensor:
        """Run the block on the batch's hidden states ``x`` (``[T, hidden]``)."""
        x = x + self.self_attn(self.input_layernorm(x), rotation, layout)
        out: torch.Tensor = x + self.mlp(self.post_attention_layernorm(x))
        return out


class DecoderModel(nn.Module):
    """The embedding, the decoder layers and the final norm (``model.*`` in checkpoints)."""

    def __init__(self, shape: DecoderShape, layers: list[DecoderLayer], dtype: torch.dtype) -> None:
        super().__init__()
        # Given its (uninitialised) weight: nn.Embedding's own normal_ initialisation is wasted on values a load
        # replaces, and on the meta device it runs through torch._refs, which imports torch._dynamo (1-2 s).
        weight = torch.empty(shape.vocab_size, shape.hidden_size, dtype=dtype)
        self.embed_tokens = nn.Embedding(shape.vocab_size, shape.hidden_size, _weight=weight)
        self.layers = nn.ModuleList(layers)
        self.norm = RMSNorm(shape.hidden_size, shape.rms_norm_eps, dtype)


@dataclass(frozen=True)
class WeightTarget:
    """Where a checkpoint tensor goes.

    Attributes:
        parameter: the parameter's name.
        index: the part of the parameter it fills (``None``: all of it).
        piece: what it fills, for parameters assembled from several tensors
            (a fused tensor is loaded when every piece is).
    """

    parameter: str
    index: tuple[Any, ...] | None = None
    piece: Any = None


class LlamaForCausalLM(nn.Module):
    """LlamaForCausalLM, natively: the decoder shared by the Llama family.

    Subclasses change class attributes for what their configs mean:
    ``attention_bias`` (``"config"``: q, k, v and o follow ``attention_bias``;
    ``"qkv"``: q, k and v always have one; ``"none"``), ``qk_norm``, and
    ``sliding_window`` (``"never"``, ``"all"``: every layer when
    ``config.sliding_window`` is set, ``"layer_types"``: the layers
    ``config.layer_types`` marks ``sliding_attention``).
    """

    attention_bias: ClassVar[Literal["config", "qkv", "none"]] = "config"
    mlp_bias_from_config: ClassVar[bool] = True
    #: Shards over ranks (``tensor_parallel_size``; :mod:`modelport.distributed`).
    supports_tensor_parallel: ClassVar[bool] = True
    #: The rank this model is a shard of (``current()`` when it was built).
    parallel: ParallelState = SINGLE
    qk_norm: ClassVar[bool] = False
    sliding_window: ClassVar[Literal["never", "all", "layer_types"]] = "never"

    def __init__(self, hf_config: Any, *, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.hf_config = hf_config
        self.shape = self.decoder_shape(hf_config)
        self.dtype = dtype
        self._rotary_embedding: RotaryEmbedding | None = None
        self.parallel = parallel = current()
        shape = self.shape
        layers = [
            DecoderLayer(Attention(shape, i, dtype, parallel), self.build_mlp(shape, i, dtype), shape, dtype)
            for i in range(shape.num_layers)
        ]
        self.model = DecoderModel(shape, layers, dtype)
        if parallel.sharded:
            self.model.embed_tokens = VocabParallelEmbedding(
                shape.vocab_size, shape.hidden_size, dtype=dtype, state=parallel
            )
        vocab = shape.vocab_size // parallel.world_size  # the LM head's rows: this rank's vocabulary range
        self.lm_head = None if shape.tie_word_embeddings else Linear(shape.hidden_size, vocab, False, dtype=dtype)

    # --- building ---------------------------------------------------------------------

    @classmethod
    def unsupported_reason(cls, hf_config: Any) -> str | None:
        """Why this implementation declines ``hf_config`` (a feature it lacks), or ``None`` if it serves it.

        It declines RoPE types or per-layer-type RoPE parameters
        :mod:`modelport.models.rope` does not implement, and activations
        outside :data:`ACTIVATIONS`; with ``model_impl="auto"`` another
        implementation (the Transformers backend) then serves the config. The
        check itself is :func:`modelport.builtin.native.llama_family_unsupported_reason`,
        which the registry names so that the architecture step asks it without importing torch.
        """
        from modelport.builtin.native import llama_family_unsupported_reason

        return llama_family_unsupported_reason(hf_config)

    @classmethod
    def tensor_parallel_sizes(cls, hf_config: Any) -> dict[str, int]:
        """The config fields each rank takes an equal slice of (each must divide by ``tensor_parallel_size``)."""
        s = cls.decoder_shape(hf_config)
        return {
            "num_attention_heads": s.num_heads,
            "num_key_value_heads": s.num_kv_heads,
            "vocab_size": s.vocab_size,
            "intermediate_size": s.intermediate_size,
        }

    @classmethod
    def decoder_shape(cls, hf_config: Any) -> DecoderShape:
        """Read and check the config fields the decoder needs."""
        where = type(hf_config).__name__
        heads = int(hf_config.num_attention_heads)
        kv_heads = int(getattr(hf_config, "num_key_value_heads", None) or heads)
        head_dim = int(getattr(hf_config, "head_dim", None) or hf_config.hidden_size // heads)
        if heads % kv_heads:
            raise InvalidConfigError(
                where,
                f"num_attention_heads ({heads}) is not a multiple of num_key_value_heads ({kv_heads})",
                field="num_key_value_heads",
                value=kv_heads,
            )
        act = getattr(hf_config, "hidden_act", "silu")
        if act not in ACTIVATIONS:
            raise InvalidConfigError(
                where, f"unsupported activation; supported: {', '.join(ACTIVATIONS)}", field="hidden_act", value=act
            )
        attention_bias = bool(getattr(hf_config, "attention_bias", False))
        qkv_bias = {"config": attention_bias, "qkv": True, "none": False}[cls.attention_bias]
        o_bias = attention_bias if cls.attention_bias == "config" else False
        layers = int(hf_config.num_hidden_layers)
        return DecoderShape(
            vocab_size=int(hf_config.vocab_size),
            hidden_size=int(hf_config.hidden_size),
            num_layers=layers,
            num_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=head_dim,
            intermediate_size=int(hf_config.intermediate_size),
            rms_norm_eps=float(getattr(hf_config, "rms_norm_eps", 1e-6)),
            hidden_act=act,
            qkv_bias=qkv_bias,
            o_bias=o_bias,
            mlp_bias=bool(getattr(hf_config, "mlp_bias", False)) and cls.mlp_bias_from_config,
            qk_norm=cls.qk_norm,
            windows=cls.layer_windows(hf_config, layers),
            tie_word_embeddings=bool(getattr(hf_config, "tie_word_embeddings", False)),
            initializer_range=float(getattr(hf_config, "initializer_range", 0.02)),
        )

    @classmethod
    def layer_windows(cls, hf_config: Any, num_layers: int) -> tuple[int | None, ...]:
        """The sliding window of each layer, as the config asks (``None``: full attention)."""
        window = getattr(hf_config, "sliding_window", None)
        if cls.sliding_window == "never" or not window:
            return (None,) * num_layers
        if cls.sliding_window == "all":
            return (int(window),) * num_layers
        types = getattr(hf_config, "layer_types", None)
        if types is None:
            # Configs written before layer_types: the layers from max_window_layers on slide.
            first = int(getattr(hf_config, "max_window_layers", num_layers))
            sliding = getattr(hf_config, "use_sliding_window", True)
            types = ["sliding_attention" if sliding and i >= first else "full_attention" for i in range(num_layers)]
        return tuple(int(window) if kind == "sliding_attention" else None for kind in list(types)[:num_layers])

    def build_mlp(self, shape: DecoderShape, layer: int, dtype: torch.dtype) -> nn.Module:
        """The MLP of ``layer`` (a gated MLP; a mixture of experts in Mixtral)."""
        return GatedMLP(shape, dtype, self.parallel)

    def _get_rotary(self) -> RotaryEmbedding:
        if self._rotary_embedding is None:
            raise RuntimeError("the model was not built with from_config()")
        return self._rotary_embedding

    @classmethod
    def _build_on_meta(cls, hf_config: Any, *, dtype: str, device: str) -> Self:
        """The model for ``hf_config`` in ``dtype``, its parameters on the meta device, bound to ``device``."""
        torch_dtype = getattr(torch, dtype, None)
        if not isinstance(torch_dtype, torch.dtype):
            raise InvalidConfigError(type(hf_config).__name__, f"unknown dtype {dtype!r}", field="dtype", value=dtype)
        with torch.device("meta"):
            model = cls(hf_config, dtype=torch_dtype)
        model._device = torch.device(device)
        return model

    @classmethod
    def from_config(cls, hf_config: Any, *, dtype: str, device: str) -> LlamaForCausalLM:
        """Build the model for ``hf_config`` in ``dtype`` on ``device``.

        The parameters stay on the meta device until :meth:`load_weights`
        gives each its memory on ``device``: a checkpoint tensor that already
        has the right dtype and device becomes the parameter without a copy,
        so no memory is spent twice.
        """
        model = cls._build_on_meta(hf_config, dtype=dtype, device=device)
        model._rotary_embedding = RotaryEmbedding(hf_config, model.shape.head_dim, device)
        return model.eval()

    @property
    def device(self) -> torch.device:
        """Where the parameters are (or will be, before :meth:`load_weights`)."""
        return self._device

    def _place(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        """Make ``tensor`` parameter ``name`` (replacing a meta placeholder); returns the parameter."""
        owner, _, attr = name.rpartition(".")
        param = nn.Parameter(tensor, requires_grad=False)
        self.get_submodule(owner)._parameters[attr] = param
        return param

    def _materialise(self, name: str, param: torch.Tensor) -> torch.Tensor:
        """Parameter ``name`` with real (uninitialised) memory on the device."""
        if not param.is_meta:
            return param
        return self._place(name, torch.empty(param.shape, dtype=param.dtype, device=self._device))

    # --- weights ------------------------------------------------------------------------

    def weight_target(self, name: str) -> WeightTarget | None:
        """Where the checkpoint tensor ``name`` goes, or ``None`` if nowhere (names equal to a parameter's)."""
        return WeightTarget(name)

    def weight_pieces(self, parameter: str) -> frozenset[Any]:
        """The pieces ``parameter`` is assembled from (one, ``None``, for an ordinary parameter)."""
        return frozenset({None})

    def weight_shard(self, name: str, target: WeightTarget) -> tuple[int, bool] | None:
        """How checkpoint tensor ``name`` splits over the ranks: ``(dimension, halves)``, or ``None`` (whole).

        Column-parallel weights and biases split along their rows, row-parallel weights along
        their columns, the embedding and the LM head along the vocabulary; ``halves`` marks a
        tensor of two stacked projections, each split alike.
        """
        parameter = target.parameter
        if parameter in ("model.embed_tokens.weight", "lm_head.weight"):
            return 0, False
        if parameter.endswith((".o_proj.weight", ".down_proj.weight")):
            return 1, False
        if any(f".{p}." in parameter for p in ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")):
            return 0, False
        return None

    def _shard(self, name: str, tensor: Any, target: WeightTarget, param: torch.Tensor) -> torch.Tensor:
        """The part of checkpoint tensor ``name`` this rank holds (from a tensor, or a lazy safetensors slice)."""
        spec = self.weight_shard(name, target) if self.parallel.sharded else None
        if spec is None:
            return read_whole(tensor)
        dim, halves = spec
        local = (param if target.index is None else param[target.index]).shape[dim] // (2 if halves else 1)
        return read_shard(name, tensor, dim, local, self.parallel, halves=halves)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> WeightReport:
        """Copy ``(name, tensor)`` pairs into the parameters, converting dtype and device.

        A name that matches no parameter is reported ``unexpected``; a tensor
        whose shape or kind of dtype does not fit its target raises
        :class:`~modelport.errors.WeightsCorruptError` naming it (see
        :mod:`modelport.weight_checks`). Parameters that no weight
        filled (or filled only in part, for a fused parameter) are reported
        ``missing`` and what no weight filled is initialised (norm weights to
        one, biases to zero, the others from a normal distribution of
        ``initializer_range``), so that the model is usable, as a dummy load
        needs. With tied embeddings a checkpoint's ``lm_head.weight`` fills the
        embedding only when ``model.embed_tokens.weight`` is absent.
        """
        params: dict[str, torch.Tensor] = dict(self.named_parameters())
        self._device = getattr(self, "_device", None) or next(iter(params.values())).device
        filled: dict[str, set[Any]] = {name: set() for name in params}
        parts: dict[str, list[tuple[Any, ...]]] = {}  # the indexes filled of partly loaded parameters
        unexpected: list[str] = []
        tied_head: torch.Tensor | None = None
        with torch.no_grad():
            for name, tensor in weights:
                if name == "lm_head.weight" and self.lm_head is None:
                    # The same matrix as the embedding: used only if that is absent. Read now (this rank's
                    # rows): a lazy safetensors slice cannot be read once its file is closed.
                    embed_param = params["model.embed_tokens.weight"]
                    tied_head = self._shard(name, tensor, WeightTarget("model.embed_tokens.weight"), embed_param)
                    continue
                target = self.weight_target(name)
                if target is None or target.parameter not in params:
                    unexpected.append(name)
                    continue
                tensor = self._shard(name, tensor, target, params[target.parameter])  # whole with one rank
                check_weight_fits(name, tensor, params[target.parameter], target.index)  # else WeightsCorruptError
                if not self._fill(params, target, tensor):
                    unexpected.append(name)
                    continue
                if target.index is None:
                    filled[target.parameter].update(self.weight_pieces(target.parameter))
                else:
                    filled[target.parameter].add(target.piece)
                    parts.setdefault(target.parameter, []).append(target.index)
            embed = "model.embed_tokens.weight"
            if tied_head is not None and not filled[embed]:
                check_weight_fits("lm_head.weight", tied_head, params[embed])
                if self._fill(params, WeightTarget(embed), tied_head):
                    filled[embed].update(self.weight_pieces(embed))
                else:
                    unexpected.append("lm_head.weight")
            loaded = [name for name in params if filled[name] >= self.weight_pieces(name)]
            missing = sorted(set(params) - set(loaded))
            for name in missing:
                params[name] = self._materialise(name, params[name])
                # A fused parameter keeps the pieces that did arrive; only the rest is initialised.
                kept = [(index, params[name].data[index].clone()) for index in parts.get(name, [])]
                self._initialise(name, params[name])
                for index, value in kept:
                    params[name].data[index] = value
        return WeightReport(tuple(sorted(loaded)), tuple(missing), tuple(unexpected))

    def _fill(self, params: dict[str, torch.Tensor], target: WeightTarget, tensor: torch.Tensor) -> bool:
        """Put ``tensor`` where ``target`` says; ``False`` (nothing changed) when the shapes differ.

        A whole-parameter tensor already in the parameter's dtype, on its
        device and contiguous is adopted as the parameter itself (readers hand
        out tensors they never reuse: safetensors' memory maps, ``torch.load``);
        anything else is copied, converting dtype and device.
        """
        name, param = target.parameter, params[target.parameter]
        if target.index is None:
            if tuple(param.shape) != tuple(tensor.shape):
                return False
            if tensor.dtype == param.dtype and tensor.device == self._device and tensor.is_contiguous():
                params[name] = self._place(name, tensor.detach())
                return True
            params[name] = param = self._materialise(name, param) if param.is_meta else param
            param.data.copy_(tensor)
            return True
        if tuple(param[target.index].shape) != tuple(tensor.shape):
            return False
        params[name] = param = self._materialise(name, param)
        param.data[target.index].copy_(tensor)
        return True

    def _initialise(self, name: str, param: torch.Tensor) -> None:
        if name.endswith("norm.weight"):
            param.data.fill_(1.0)
        elif name.endswith(".bias"):
            param.data.zero_()
        else:
            param.data.normal_(0.0, self.shape.initializer_range)

    # --- running ------------------------------------------------------------------------

    def new_kv_cache(self, num_blocks: int, block_size: int) -> PagedKVCache:
        """A paged cache of ``num_blocks`` blocks of ``block_size`` tokens, in the model's dtype and device."""
        s = self.shape
        kv_heads = s.num_kv_heads // self.parallel.world_size  # this rank's kv heads
        return PagedKVCache(
            s.num_layers, num_blocks, block_size, kv_heads, s.head_dim, dtype=self.dtype, device=self.device
        )

    def forward(self, batch: SequenceBatch, kv_cache: PagedKVCache) -> torch.Tensor:
        """Run one step over ``batch``; write its keys and values into ``kv_cache``; return logits.

        Returns ``[T, vocab]`` with ``batch.all_logits``, else the logits of
        each sequence's last new token (``[num_sequences, vocab]``).
        """
        device = self.device
        with torch.no_grad():
            layout = BatchLayout(batch, kv_cache, device)
            positions = batch.positions.to(device)
            hidden = self.model.embed_tokens(batch.token_ids.to(device))
            rotation = self._get_rotary().rotation(positions, layout.bounds, hidden.dtype)
            for layer in self.model.layers:
                hidden = layer(hidden, rotation, layout)
            if not batch.all_logits:
                hidden = hidden[layout.last_token_index]
            hidden = self.model.norm(hidden)
            logits: torch.Tensor = (
                linear(hidden, self.model.embed_tokens.weight) if self.lm_head is None else self.lm_head(hidden)
            )
            # Tensor parallelism: each rank has its vocabulary range's logits; gather the whole rows.
            return all_gather_last(logits, self.parallel) if self.parallel.sharded else logits


class MistralForCausalLM(LlamaForCausalLM):
    """MistralForCausalLM: no biases; every layer slides when ``sliding_window`` is set."""

    attention_bias = "none"
    mlp_bias_from_config = False
    sliding_window = "all"


class Qwen2ForCausalLM(LlamaForCausalLM):
    """Qwen2ForCausalLM: q, k and v have biases; the layers ``layer_types`` marks slide."""

    attention_bias = "qkv"
    mlp_bias_from_config = False
    sliding_window = "layer_types"


class Qwen3ForCausalLM(LlamaForCausalLM):
    """Qwen3ForCausalLM: per-head RMSNorm of queries and keys; the layers ``layer_types`` marks slide."""

    attention_bias = "config"
    mlp_bias_from_config = False
    qk_norm = True
    sliding_window = "layer_types"
