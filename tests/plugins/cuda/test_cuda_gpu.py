"""modelport-cuda on a GPU: marked ``gpu``, skipped where torch sees no CUDA device (``nox -s gpu`` runs them).

The CPU executor in float32 is the reference: the CUDA executor must give its
greedy tokens in float32, with CUDA graphs and with ``enforce_eager``, for
native models and for the Transformers backend; in bfloat16 its logits must
stay within a tolerance of the float32 ones.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("modelport_hf", reason="kit models are Hugging Face folders, read by modelport-hf")

import modelport
from modelport import SamplingParams
from modelport.errors import DeviceUnavailableError
from modelport.models.protocol import SequenceBatch
from modelport.testing import make_tiny_model
from modelport_cuda.executor import CUDAExecutor
from modelport_cuda.graphs import CUDAGraphs

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs a CUDA device (torch.cuda.is_available() is False)"
    ),
]

PROMPTS = ["Hello world", "The quick brown fox jumps over the lazy dog.", "It was the best of times", "ab", "x y z"]
GREEDY = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
CAPACITY = {"max_num_seqs": 8, "max_num_batched_tokens": 64, "block_size": 16, "gpu_memory_utilization": 0.3}


@pytest.fixture(scope="module")
def kit_llama(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("gpu") / "llama", "llama", max_position_embeddings=256)


@pytest.fixture(scope="module")
def kit_mistral(tmp_path_factory):
    return make_tiny_model(
        tmp_path_factory.mktemp("gpu") / "mistral", "mistral", max_position_embeddings=256, sliding_window=8
    )


def _tokens(llm, prompts=PROMPTS, params=GREEDY):
    return [r.outputs[0].token_ids for r in llm.generate(prompts, params)]


def _cpu_tokens(path, **options):
    return _tokens(modelport.LLM(str(path), device="cpu", dtype="float32", **options))


@pytest.mark.parametrize("enforce_eager", [False, True], ids=["graphs", "eager"])
def test_float32_greedy_tokens_equal_the_cpu_executors(kit_llama, enforce_eager):
    llm = modelport.LLM(str(kit_llama), device="cuda", dtype="float32", enforce_eager=enforce_eager, **CAPACITY)
    assert isinstance(llm.executor, CUDAExecutor)
    assert llm.loaded.model.device.type == "cuda"
    assert _tokens(llm) == _cpu_tokens(kit_llama)
    runner = llm.executor.graph_runner
    if enforce_eager:
        assert runner is None and llm.executor.eager_reason == "enforce_eager=True"
    else:
        assert runner is not None and isinstance(runner.graphs, CUDAGraphs)
        assert runner.graphs.captured >= 1 and sum(runner.replayed.values()) >= GREEDY.max_tokens - 2


def test_a_sliding_window_model_decodes_through_graphs_with_the_cpu_executors_tokens(kit_mistral):
    llm = modelport.LLM(str(kit_mistral), device="cuda", dtype="float32", **CAPACITY)
    assert llm.executor.graph_runner is not None
    assert _tokens(llm) == _cpu_tokens(kit_mistral)


def test_the_transformers_backend_runs_on_cuda_with_the_cpu_executors_tokens(kit_llama):
    pytest.importorskip("modelport_transformers", reason="the Transformers backend is modelport-transformers")
    llm = modelport.LLM(str(kit_llama), device="cuda", dtype="float32", model_impl="transformers", **CAPACITY)
    assert llm.executor.graph_runner is None
    assert _tokens(llm) == _cpu_tokens(kit_llama, model_impl="transformers")


def test_bfloat16_logits_stay_within_tolerance_of_float32(kit_llama):
    reference = modelport.load(str(kit_llama), device="cpu", dtype="float32")
    llm = modelport.LLM(str(kit_llama), device="cuda", dtype="bfloat16", **CAPACITY)
    ids = llm.get_tokenizer()(PROMPTS[1])["input_ids"]
    batch = SequenceBatch(torch.tensor(ids), torch.arange(len(ids)), [len(ids)], [0], [[0, 1, 2, 3]], all_logits=True)
    expected = reference.model.forward(batch, reference.model.new_kv_cache(4, 16)).float()
    got = llm.loaded.model.forward(batch, llm.loaded.model.new_kv_cache(4, 16)).float().cpu()
    spread = float(expected.max() - expected.min())
    assert float((got - expected).abs().max()) <= 0.05 * spread
    # Greedy choices agree wherever float32's best is clearly ahead of its runner-up.
    top2 = expected.topk(2, dim=-1).values
    clear = (top2[:, 0] - top2[:, 1]) > 0.1 * spread
    assert torch.equal(got.argmax(-1)[clear], expected.argmax(-1)[clear])


def test_the_kv_cache_fits_the_requested_share_of_the_gpu(kit_llama):
    llm = modelport.LLM(str(kit_llama), device="cuda", dtype="float32", **CAPACITY)
    _, total = torch.cuda.mem_get_info()
    assert llm.executor.kv_cache.nbytes <= CAPACITY["gpu_memory_utilization"] * total
    [step] = llm.loaded.trace.find("executor")
    assert "KV blocks" in step.reason and "requested (0.30 of" in step.reason


def test_a_cuda_index_past_the_last_device_is_refused(kit_llama):
    past = torch.cuda.device_count()
    with pytest.raises(DeviceUnavailableError, match=rf"this machine has {past} CUDA device\(s\)"):
        modelport.LLM(str(kit_llama), device=f"cuda:{past}")


def test_auto_runs_on_the_gpu(kit_llama):
    llm = modelport.LLM(str(kit_llama), device="auto", dtype="float32", **CAPACITY)
    assert llm.loaded.resolved.options.device == "cuda"
    assert isinstance(llm.executor, CUDAExecutor)
