"""Every published config of ../shared/corpus against what vLLM 0.32 made of it.

Each config is resolved alone in a folder (config only, ``load_format="dummy"``,
``skip_tokenizer_init=True``, offline), as the oracle was. Where vLLM succeeded,
modelport must give the same architecture, max_model_len, normalised RoPE
parameters, dtype and shape facts; where vLLM failed or needed remote code,
modelport must raise one of its own typed errors. Deliberate differences are
listed below with the reason. The architecture registry is played by the
stand-in of conftest.py (it accepts the config's first architecture, as vLLM's
registry holds nearly all of them).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import modelport
from modelport.errors import ModelportError, RemoteCodeRequiredError

CORPUS = Path(__file__).resolve().parents[3].parent / "shared" / "corpus"
EXPECTED = CORPUS / "expected" / "vllm-0.32" / "configs"

if not EXPECTED.is_dir():
    pytest.skip(
        f"the shared corpus is absent ({CORPUS}); these tests need ../shared beside the clone", allow_module_level=True
    )

_BACKEND_NAME = (
    "vLLM reports the class of its own Transformers backend; modelport reports the checkpoint's "
    "architecture, which modelport-transformers serves with impl='transformers'"
)

#: file -> {field: (what modelport gives, why it differs from vLLM on purpose)}
DELIBERATE: dict[str, dict[str, tuple[object, str]]] = {
    "ernie__nghuyong_ernie-3.0-base-zh.json": {"architecture": ("ErnieForMaskedLM", _BACKEND_NAME)},
    "mbart__Babelscape_mrebel-large.json": {"architecture": ("MBartForConditionalGeneration", _BACKEND_NAME)},
    "roberta__deepset_roberta-base-squad2.json": {"architecture": ("RobertaForQuestionAnswering", _BACKEND_NAME)},
    "distilbert__BandaiNamco_DistilBERT-base-jp_null_architectures.json": {
        "architecture": (
            None,
            "the config names no architecture; vLLM guesses an embedding model, modelport does not guess "
            "(the stand-in registry finds nothing, and the user names one with hf_overrides={'architectures': [...]})",
        )
    },
    "dbrx__databricks_dbrx-instruct_official_repo.json": {
        "is_moe": (True, "DBRX routes to 16 experts (ffn_config.moe_num_experts); vLLM's count misses that key"),
        "num_experts": (16, "as above"),
    },
    "qwen3_5_moe__Qwen3.5-18B-REAP-A3B-Coding.json": {
        "is_multimodal": (
            False,
            "this checkpoint's config is text-only (no vision part); vLLM judges by its model class, "
            "modelport by the config",
        )
    },
    "RefinedWeb__tiiuae_falcon-40b.json": {
        "resolves": (
            "FalconForCausalLM",
            "vLLM dropped RWForCausalLM in 0.28; modelport's falcon-refinedweb fix-up maps the RefinedWeb "
            "config onto transformers' FalconConfig, whose implementation reads the same weights",
        )
    },
    "fuyu__adept_fuyu-8b.json": {
        "resolves": (
            "FuyuForCausalLM",
            "vLLM fails on the missing image-processor files, which it reads while building its model "
            "config; resolve() needs no processor, so modelport resolves the config",
        )
    },
}

FACT_FIELDS = {  # vLLM's model_config key -> modelport's ModelFacts field
    "head_dim": "head_dim",
    "num_kv_heads": "num_kv_heads",
    "sliding_window": "sliding_window",
    "is_moe": "is_moe",
    "num_experts": "num_experts",
    "is_multimodal_model": "is_multimodal",
    "quantization": "quantization",
    "is_encoder_decoder": "is_encoder_decoder",
}

CASES = sorted(p.name for p in EXPECTED.glob("*.json"))


def test_the_corpus_is_whole():
    configs = sorted(p.name for p in (CORPUS / "configs").glob("*.json"))
    assert configs == CASES
    assert len(CASES) >= 90
    assert set(DELIBERATE) <= set(CASES)


@pytest.fixture
def offline(monkeypatch):
    # The oracle ran offline; some configs name other repositories (ultravox) that must not be fetched.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _resolve(name: str, tmp_path: Path):
    shutil.copy(CORPUS / "configs" / name, tmp_path / "config.json")
    return modelport.resolve(str(tmp_path), load_format="dummy", skip_tokenizer_init=True)


def _deliberate(name: str, field: str, actual: object, expected: object) -> object:
    if field in DELIBERATE.get(name, {}):
        value, reason = DELIBERATE[name][field]
        assert actual == value, f"deliberate difference changed: {field} = {actual!r} ({reason})"
        assert actual != expected, f"{field}: listed as a deliberate difference but equals vLLM's; remove it"
        return None
    return expected


@pytest.mark.parametrize("name", CASES)
def test_config_matches_vllm(name, tmp_path, offline):
    oracle = json.loads((EXPECTED / name).read_text())["model_config"]
    if not oracle["ok"]:
        if "resolves" in DELIBERATE.get(name, {}):
            arch, _reason = DELIBERATE[name]["resolves"]
            assert _resolve(name, tmp_path).architecture.name == arch
            return
        with pytest.raises(ModelportError) as info:
            _resolve(name, tmp_path)
        if oracle.get("needs_remote_code"):
            assert isinstance(info.value, RemoteCodeRequiredError)
        return

    if name in DELIBERATE and "architecture" in DELIBERATE[name] and DELIBERATE[name]["architecture"][0] is None:
        with pytest.raises(ModelportError):
            _resolve(name, tmp_path)
        return
    resolved = _resolve(name, tmp_path)
    expected_arch = _deliberate(name, "architecture", resolved.architecture.name, oracle["architecture"])
    if expected_arch is not None:
        assert resolved.architecture.name == expected_arch
    assert resolved.max_model_len == oracle["max_model_len"]
    assert getattr(resolved.hf_text_config, "rope_parameters", None) == oracle["text_rope_parameters"]
    assert resolved.dtype == oracle["dtype"].removeprefix("torch.")
    for theirs, ours in FACT_FIELDS.items():
        actual = getattr(resolved.facts, ours)
        expected = _deliberate(name, ours, actual, oracle[theirs])
        if expected is not None or ours not in DELIBERATE.get(name, {}):
            assert actual == oracle[theirs], f"{ours}: {actual!r} != vLLM's {oracle[theirs]!r}"
