"""Native ChatGLM2, ChatGLM3 and GLM-4 (``model_type`` ``chatglm``, architecture ``ChatGLMModel``).

transformers does not implement these models: their checkpoints ship remote code
(THUDM's ``modeling_chatglm.py``), and vLLM serves them with a native class. This
one follows the remote code's arithmetic, read from its published source:

* the query, key and value come from one fused projection,
  ``self_attention.query_key_value``; with ``multi_query_attention`` it holds all
  query heads, then ``multi_query_group_num`` key heads, then as many value heads;
  without (no published checkpoint does without), every head's query, key and value
  sit side by side, as the remote code splits them (vLLM 0.32 splits that case like
  the multi-query one);
* rotary positions turn only the first half of each head, and turn adjacent pairs
  ``(x[2i], x[2i + 1])`` (not the two halves, as Llama does), with frequencies
  ``(10000 * rope_ratio) ** (-2i / (head_dim / 2))``; a config with
  ``original_rope: false`` (CogAgent's) turns the two halves of that part instead,
  as vLLM 0.32 reads it (``is_neox_style = not original_rope``);
* the MLP is SwiGLU over one fused ``dense_h_to_4h`` (gate rows first);
* RMSNorm (or LayerNorm when ``rmsnorm`` is false) before attention and the MLP, a
  final norm when ``post_layer_norm``; with
  ``apply_residual_connection_post_layernorm`` the residual is the normed input;
* the output head ``output_layer`` is never tied to the embedding.

Parameters carry the checkpoints' names (``transformer.encoder.layers.0.self_attention.query_key_value.weight``...),
so the weights load by name; the stored rotary frequencies
(``transformer.rotary_pos_emb.inv_freq``) are computed, never loaded. Weight
loading, the paged KV cache and attention are the Llama family's
(:mod:`modelport.models.llama`, :mod:`modelport.models.attention`).

GLM-4V (a ``vision_config``) and P-tuning prefixes (``pre_seq_len``) are not implemented.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from modelport.config_checks import _number_problem
from modelport.errors import InvalidConfigError
from modelport.models.attention import BatchLayout, paged_attention
from modelport.models.kv_cache import PagedKVCache
from modelport.models.linear import Linear
from modelport.models.llama import LlamaForCausalLM
from modelport.models.protocol import SequenceBatch
from modelport.pipeline import WeightReport

#: Checkpoint tensors that are derived, not parameters: skipped when loading.
DERIVED_WEIGHTS = ("rotary_pos_emb.inv_freq",)
_BASE = 10000.0


@dataclass(frozen=True)
class ChatGLMShape:
    """Everything the model reads from a ``chatglm`` config, checked once.

    Attributes:
        vocab_size: rows of the embedding and of the output head (``padded_vocab_size``).
        hidden_size: width of the residual stream.
        num_layers: transformer layers.
        num_heads: query heads.
        num_kv_heads: key/value heads (``multi_query_group_num`` with multi-query attention).
        multi_query: the fused projection holds the queries, then the keys, then the values.
        head_dim: size of each head (``kv_channels``).
        ffn_hidden_size: width of the MLP.
        eps: the norms' epsilon (``layernorm_epsilon``).
        rmsnorm: RMSNorm (``True``) or LayerNorm.
        qkv_bias: the fused projection has a bias (``add_bias_linear or add_qkv_bias``).
        linear_bias: the other projections have biases (``add_bias_linear``).
        residual_post_norm: the residual is the normed input (``apply_residual_connection_post_layernorm``).
        post_layer_norm: a final norm before the output head.
        rope_base: the rotary base, ``10000 * rope_ratio``.
        pairs: rotary turns adjacent pairs (``original_rope``, the default) rather than two halves.
        initializer_range: standard deviation for parameters no weight fills.
    """

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    multi_query: bool
    head_dim: int
    ffn_hidden_size: int
    eps: float
    rmsnorm: bool
    qkv_bias: bool
    linear_bias: bool
    residual_post_norm: bool
    post_layer_norm: bool
    rope_base: float
    pairs: bool
    initializer_range: float

    @property
    def rotary_dim(self) -> int:
        """Dimensions of each head that are rotated: the first half."""
        return self.head_dim // 2


class GLMRMSNorm(nn.Module):
    """RMSNorm as ChatGLM computes it: normalised in float32, scaled by the weight, then cast back."""

    def __init__(self, size: int, eps: float, dtype: torch.dtype) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(size, dtype=dtype))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise the last dimension of ``x``."""
        dtype = x.dtype
        variance = x.to(torch.float32).pow(2).mean(-1, keepdim=True)
        normed = x * torch.rsqrt(variance + self.eps)
        return (self.weight * normed).to(dtype)


def _norm(shape: ChatGLMShape, dtype: torch.dtype) -> nn.Module:
    if shape.rmsnorm:
        return GLMRMSNorm(shape.hidden_size, shape.eps, dtype)
    return nn.LayerNorm(shape.hidden_size, eps=shape.eps, dtype=dtype)


def rotate_halves(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Turn the first ``2 * cos.shape[-1]`` dimensions of ``x`` as two halves (``original_rope: false``)."""
    rotary = 2 * cos.shape[-1]
    turned, passed = x[..., :rotary], x[..., rotary:]
    first, second = turned[..., : rotary // 2], turned[..., rotary // 2 :]
    c, s = cos[:, None, :].to(x.dtype), sin[:, None, :].to(x.dtype)
    return torch.cat((first * c - second * s, second * c + first * s, passed), dim=-1)


def rotate_pairs(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Turn adjacent pairs of the first ``2 * cos.shape[-1]`` dimensions of ``x`` (``[T, heads, head_dim]``).

    ``cos`` and ``sin`` are ``[T, rotary_dim // 2]``; the other dimensions pass unchanged.
    """
    rotary = 2 * cos.shape[-1]
    turned, passed = x[..., :rotary], x[..., rotary:]
    pairs = turned.reshape(*turned.shape[:-1], rotary // 2, 2)
    even, odd = pairs[..., 0], pairs[..., 1]
    c, s = cos[:, None, :].to(x.dtype), sin[:, None, :].to(x.dtype)
    out = torch.stack((even * c - odd * s, odd * c + even * s), dim=-1).flatten(-2)
    return torch.cat((out, passed), dim=-1)


class SelfAttention(nn.Module):
    """Multi-query (grouped) attention over the fused ``query_key_value`` projection."""

    def __init__(self, shape: ChatGLMShape, layer: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.shape, self.layer = shape, layer
        d = shape.head_dim
        self.query_key_value = Linear(
            shape.hidden_size, (shape.num_heads + 2 * shape.num_kv_heads) * d, bias=shape.qkv_bias, dtype=dtype
        )
        self.dense = Linear(shape.num_heads * d, shape.hidden_size, bias=shape.linear_bias, dtype=dtype)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, layout: BatchLayout) -> torch.Tensor:
        """Attend the batch's new tokens ``x`` (``[T, hidden]``); their keys and values go into the cache."""
        s, tokens = self.shape, x.shape[0]
        mixed = self.query_key_value(x)
        if s.multi_query:
            kv_width = s.num_kv_heads * s.head_dim
            q, k, v = mixed.split([s.num_heads * s.head_dim, kv_width, kv_width], dim=-1)
            q = q.view(tokens, s.num_heads, s.head_dim)
            k = k.view(tokens, s.num_kv_heads, s.head_dim)
            v = v.view(tokens, s.num_kv_heads, s.head_dim)
        else:
            q, k, v = mixed.view(tokens, s.num_heads, 3, s.head_dim).unbind(2)
        rotate = rotate_pairs if s.pairs else rotate_halves
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        out = paged_attention(
            q, k.contiguous(), v.contiguous(), layer=self.layer, layout=layout, window=None, scale=s.head_dim**-0.5
        )
        projected: torch.Tensor = self.dense(out.reshape(tokens, s.num_heads * s.head_dim))
        return projected


class SwiGLU(nn.Module):
    """``dense_4h_to_h(silu(gate) * up)`` with ``gate`` and ``up`` from one fused ``dense_h_to_4h``."""

    def __init__(self, shape: ChatGLMShape, dtype: torch.dtype) -> None:
        super().__init__()
        h, f, bias = shape.hidden_size, shape.ffn_hidden_size, shape.linear_bias
        self.dense_h_to_4h = Linear(h, 2 * f, bias=bias, dtype=dtype)
        self.dense_4h_to_h = Linear(f, h, bias=bias, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the MLP to ``x`` (``[T, hidden]``)."""
        gate, up = self.dense_h_to_4h(x).chunk(2, dim=-1)
        out: torch.Tensor = self.dense_4h_to_h(F.silu(gate) * up)
        return out


class GLMBlock(nn.Module):
    """One layer: norm, attention, residual; norm, MLP, residual."""

    def __init__(self, shape: ChatGLMShape, layer: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.residual_post_norm = shape.residual_post_norm
        self.input_layernorm = _norm(shape, dtype)
        self.self_attention = SelfAttention(shape, layer, dtype)
        self.post_attention_layernorm = _norm(shape, dtype)
        self.mlp = SwiGLU(shape, dtype)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, layout: BatchLayout) -> torch.Tensor:
        """Run the layer on the batch's hidden states ``x`` (``[T, hidden]``)."""
        normed = self.input_layernorm(x)
        attended = self.self_attention(normed, cos, sin, layout)
        x = (normed if self.residual_post_norm else x) + attended
        normed = self.post_attention_layernorm(x)
        out: torch.Tensor = (normed if self.residual_post_norm else x) + self.mlp(normed)
        return out


class Encoder(nn.Module):
    """``transformer.encoder``: the layers and the final norm."""

    def __init__(self, shape: ChatGLMShape, dtype: torch.dtype) -> None:
        super().__init__()
        self.layers = nn.ModuleList(GLMBlock(shape, i, dtype) for i in range(shape.num_layers))
        self.final_layernorm = _norm(shape, dtype) if shape.post_layer_norm else None


class Embedding(nn.Module):
    """``transformer.embedding``."""

    def __init__(self, shape: ChatGLMShape, dtype: torch.dtype) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(shape.vocab_size, shape.hidden_size, dtype=dtype)


class Transformer(nn.Module):
    """``transformer``: embedding, encoder and output head, as the checkpoints name them."""

    def __init__(self, shape: ChatGLMShape, dtype: torch.dtype) -> None:
        super().__init__()
        self.embedding = Embedding(shape, dtype)
        self.encoder = Encoder(shape, dtype)
        self.output_layer = Linear(shape.hidden_size, shape.vocab_size, bias=False, dtype=dtype)


def chatglm_shape(hf_config: Any) -> ChatGLMShape:
    """Read and check the fields of a ``chatglm`` config.

    Raises:
        InvalidConfigError: a field is inconsistent, or the config asks for a part not implemented.
    """
    where = type(hf_config).__name__
    if getattr(hf_config, "vision_config", None) is not None:
        raise InvalidConfigError(where, "GLM-4V's vision part is not implemented natively", field="vision_config")
    if getattr(hf_config, "pre_seq_len", None):
        raise InvalidConfigError(
            where, "P-tuning prefixes are not implemented natively", field="pre_seq_len", value=hf_config.pre_seq_len
        )
    heads = int(hf_config.num_attention_heads)
    hidden = int(hf_config.hidden_size)

    def positive(name: str, default: Any, *, integer: bool = True, zero_unset: bool = True) -> Any:
        # ChatGLM's remote-code config class checks no type: a string or NaN here would fail deep in the build
        # (or make NaN logits), so each field is a positive number, or unset (absent, null, or 0 where the
        # field was always read with ``or default``).
        value = getattr(hf_config, name, None)
        if value is None or (zero_unset and value == 0 and not isinstance(value, bool)):
            return default
        problem = _number_problem(value, integer)
        if problem is not None:
            raise InvalidConfigError(where, problem, field=name, value=value)
        return value

    head_dim = int(positive("kv_channels", hidden // heads))
    multi_query = bool(getattr(hf_config, "multi_query_attention", False))
    kv_heads = int(positive("multi_query_group_num", 1, zero_unset=False)) if multi_query else heads
    if kv_heads < 1 or heads % kv_heads:
        raise InvalidConfigError(
            where,
            f"num_attention_heads ({heads}) is not a multiple of multi_query_group_num ({kv_heads})",
            field="multi_query_group_num",
            value=kv_heads,
        )
    if head_dim % 4:
        raise InvalidConfigError(
            where, "kv_channels must be a multiple of 4 (half of each head turns in pairs)", field="kv_channels"
        )
    rope_ratio = float(positive("rope_ratio", 1.0, integer=False))
    add_bias_linear = bool(getattr(hf_config, "add_bias_linear", False))
    vocab = positive("padded_vocab_size", None) or hf_config.vocab_size
    ffn_hidden_size = positive("ffn_hidden_size", None, zero_unset=False)
    if ffn_hidden_size is None:
        raise InvalidConfigError(where, "expected a positive integer", field="ffn_hidden_size")
    return ChatGLMShape(
        vocab_size=int(vocab),
        hidden_size=hidden,
        num_layers=int(positive("num_layers", None) or hf_config.num_hidden_layers),
        num_heads=heads,
        num_kv_heads=kv_heads,
        multi_query=multi_query,
        head_dim=head_dim,
        ffn_hidden_size=int(ffn_hidden_size),
        eps=float(positive("layernorm_epsilon", 1e-5, integer=False, zero_unset=False)),
        rmsnorm=bool(getattr(hf_config, "rmsnorm", True)),
        qkv_bias=add_bias_linear or bool(getattr(hf_config, "add_qkv_bias", False)),
        linear_bias=add_bias_linear,
        residual_post_norm=bool(getattr(hf_config, "apply_residual_connection_post_layernorm", False)),
        post_layer_norm=bool(getattr(hf_config, "post_layer_norm", True)),
        rope_base=_BASE * rope_ratio,
        pairs=bool(getattr(hf_config, "original_rope", True)),
        initializer_range=float(getattr(hf_config, "initializer_range", 0.02)),
    )


class ChatGLMForCausalLM(LlamaForCausalLM):
    """ChatGLM2/3 and GLM-4, natively (registered for ``ChatGLMModel``, vLLM's name for it).

    It keeps the model protocol and reuses the Llama family's weight loading
    (adoption of tensors already in the right dtype and device, initialisation
    of what no weight filled); the layers are ChatGLM's own.
    """

    supports_tensor_parallel = False  # its fused query_key_value is not split across ranks

    def __init__(self, hf_config: Any, *, dtype: torch.dtype = torch.float32) -> None:
        nn.Module.__init__(self)
        self.hf_config = hf_config
        shape = chatglm_shape(hf_config)
        self.shape = shape  # type: ignore[assignment]
        self.dtype = dtype
        self.transformer = Transformer(shape, dtype)
        self.lm_head = None
        self._inv_freq: torch.Tensor | None = None

    @property
    def glm_shape(self) -> ChatGLMShape:
        """The checked shape of the model."""
        shape: ChatGLMShape = self.shape  # type: ignore[assignment]
        return shape

    @classmethod
    def from_config(cls, hf_config: Any, *, dtype: str, device: str) -> ChatGLMForCausalLM:
        """Build the model for ``hf_config`` in ``dtype`` on ``device`` (parameters on the meta device until loaded)."""
        model = cls._build_on_meta(hf_config, dtype=dtype, device=device)
        shape = model.glm_shape
        n = shape.rotary_dim
        exponents = torch.arange(0, n, 2, dtype=torch.float32, device=model._device) / n
        model._inv_freq = 1.0 / (shape.rope_base**exponents)
        return model.eval()

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> WeightReport:
        """Load the checkpoint's tensors by name; the stored rotary frequencies are skipped (they are computed)."""
        return super().load_weights((n, t) for n, t in weights if not n.endswith(DERIVED_WEIGHTS))

    def rotation(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Cosines and sines (``[T, rotary_dim // 2]``) at ``positions``, cast as the remote code casts them."""
        if self._inv_freq is None:
            raise RuntimeError("the model was not built with from_config()")
        angles = positions.to(torch.float32)[:, None] * self._inv_freq.to(positions.device)[None, :]
        cast = dtype if dtype in (torch.float16, torch.bfloat16) else torch.float32
        return angles.cos().to(cast), angles.sin().to(cast)

    def forward(self, batch: SequenceBatch, kv_cache: PagedKVCache) -> torch.Tensor:
        """Run one step over ``batch``; write its keys and values into ``kv_cache``; return logits.

        Returns ``[T, vocab]`` with ``batch.all_logits``, else the logits of
        each sequence's last new token (``[num_sequences, vocab]``).
        """
        device = self.device
        t = self.transformer
        with torch.no_grad():
            layout = BatchLayout(batch, kv_cache, device)
            hidden = t.embedding.word_embeddings(batch.token_ids.to(device))
            cos, sin = self.rotation(batch.positions.to(device), hidden.dtype)
            for layer in t.encoder.layers:
                hidden = layer(hidden, cos, sin, layout)
            if not batch.all_logits:
                hidden = hidden[layout.last_token_index]
            if t.encoder.final_layernorm is not None:
                hidden = t.encoder.final_layernorm(hidden)
            logits: torch.Tensor = t.output_layer(hidden)
            return logits
