"""The real registry against vLLM 0.32 on the published configs of ../shared/corpus.

tests/plugins/hf/test_corpus_vllm.py checks the config facts with a stand-in
registry that accepts any architecture; this test uses what is installed (core's
natives and aliases, modelport-transformers' backend) and checks that modelport
picks vLLM's architecture name, or one serving the same checkpoint, on every
config vLLM loads, with vLLM's max_model_len; the few it cannot serve fail with a
typed error.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import modelport

pytest.importorskip("modelport_hf", reason="the corpus configs are config.json files")
pytest.importorskip("modelport_transformers", reason="vLLM's Transformers backend has its counterpart there")

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus"
EXPECTED = CORPUS / "expected" / "vllm-0.32" / "configs"
if not EXPECTED.is_dir():
    pytest.skip(f"the shared corpus is absent ({CORPUS})", allow_module_level=True)

#: vLLM runs these through its Transformers backend and names that class; modelport names the checkpoint's
#: architecture, served by modelport-transformers (the same deliberate difference as test_corpus_vllm.py).
BACKEND = {
    "ernie__nghuyong_ernie-3.0-base-zh.json": "ErnieForMaskedLM",
    "mbart__Babelscape_mrebel-large.json": "MBartForConditionalGeneration",
    "roberta__deepset_roberta-base-squad2.json": "RobertaForQuestionAnswering",
}
#: The config names no architecture: vLLM guesses an embedding model, modelport asks for hf_overrides.
NO_ARCHITECTURE = {"distilbert__BandaiNamco_DistilBERT-base-jp_null_architectures.json"}
#: vLLM serves these natively; modelport has no implementation, and transformers none: a typed error.
NOT_SERVED = {
    "deepseek_vl_v2__deepseek-ai_DeepSeek-OCR-2.json": "DeepseekOCR2ForCausalLM (a vision-language model)",
}
#: Natively served here as in vLLM (the alias table and the native ChatGLM).
NATIVE_AS_IN_VLLM = {
    "llama__decapoda_llama-7b-hf_legacy_LLaMAForCausalLM.json": "modelport.models.llama:LlamaForCausalLM",
    "chatglm__THUDM_chatglm2-6b.json": "modelport.models.chatglm:ChatGLMForCausalLM",
    "chatglm__mlc_chatglm.json": "modelport.models.chatglm:ChatGLMForCausalLM",
}

LOADED_BY_VLLM = sorted(p.name for p in EXPECTED.glob("*.json") if json.loads(p.read_text())["model_config"]["ok"])


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.mark.parametrize("name", LOADED_BY_VLLM)
def test_the_installed_registry_picks_vllms_architecture(name, tmp_path, offline):
    oracle = json.loads((EXPECTED / name).read_text())["model_config"]
    shutil.copy(CORPUS / "configs" / name, tmp_path / "config.json")
    if name in NO_ARCHITECTURE or name in NOT_SERVED:
        with pytest.raises(modelport.errors.UnsupportedArchitectureError):
            modelport.resolve(str(tmp_path), load_format="dummy", skip_tokenizer_init=True)
        return
    resolved = modelport.resolve(str(tmp_path), load_format="dummy", skip_tokenizer_init=True)
    assert resolved.architecture.name == BACKEND.get(name, oracle["architecture"])
    assert resolved.max_model_len == oracle["max_model_len"]
    if name in BACKEND:
        assert resolved.model_impl == "transformers"
    if name in NATIVE_AS_IN_VLLM:
        assert resolved.architecture.target == NATIVE_AS_IN_VLLM[name]
        assert not oracle["using_transformers_backend"]


def test_the_deliberate_differences_are_few():
    assert len(LOADED_BY_VLLM) >= 44
    assert set(BACKEND) | NO_ARCHITECTURE | set(NOT_SERVED) | set(NATIVE_AS_IN_VLLM) <= set(LOADED_BY_VLLM)
    # Same architecture and length as vLLM on at least 97% of the configs vLLM loads, counting the
    # Transformers-backend naming as agreement (same checkpoint, served), the rest a typed error.
    missed = len(NO_ARCHITECTURE) + len(NOT_SERVED)
    assert (len(LOADED_BY_VLLM) - missed) / len(LOADED_BY_VLLM) >= 0.97
