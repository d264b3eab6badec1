"""Fuzzing params.json: any JSON value in any field is a config or an InvalidConfigError, never another error."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from modelport.errors import InvalidConfigError
from modelport_mistral.params import config_from_params

FUZZ = settings(max_examples=80, deadline=None)
BASE = {
    "dim": 64,
    "n_layers": 4,
    "head_dim": 16,
    "hidden_dim": 128,
    "n_heads": 4,
    "n_kv_heads": 2,
    "norm_eps": 1e-5,
    "vocab_size": 384,
    "rope_theta": 10000.0,
}
KEYS = [
    *BASE,
    "max_seq_len",
    "max_position_embeddings",
    "sliding_window",
    "tied_embeddings",
    "moe",
    "yarn",
    "llama_4_scaling",
    "quantization",
    "vision_encoder",
    "multimodal",
    "activation",
    "something_new",
]
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 70000) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "num_experts",
                    "num_experts_per_tok",
                    "factor",
                    "beta",
                    "alpha",
                    "qformat_weight",
                    "quant_method",
                    "original_max_position_embeddings",
                    "x",
                ]
            ),
            inner,
            max_size=4,
        )
    ),
    max_leaves=8,
)


@FUZZ
@given(st.dictionaries(st.sampled_from(KEYS), JSON, max_size=4))
def test_any_value_in_any_field_is_a_config_or_an_invalid_config_error(changes):
    params = {**BASE, **changes}
    try:
        config, unknown = config_from_params(params, "params.json")
    except InvalidConfigError as exc:
        assert "params.json" in str(exc)
        return
    assert config.architectures and config.get_text_config().hidden_size == params["dim"]
    assert ("something_new" in unknown) == ("something_new" in params)
