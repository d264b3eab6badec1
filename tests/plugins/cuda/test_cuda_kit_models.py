"""The CUDA executor's code on CPU tensors over models the testing kit writes and modelport loads.

Kit folders are Hugging Face folders: reading them needs modelport-hf (and the
Transformers backend, modelport-transformers); without them these tests skip.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

pytest.importorskip("modelport_hf", reason="kit models are Hugging Face folders, read by modelport-hf")

import modelport
from modelport import SamplingParams
from modelport.builtin.cpu import executor_arguments
from modelport.executor import CPUExecutor, ExecutorSettings
from modelport.testing import make_tiny_model
from modelport_cuda.executor import CUDAExecutor
from modelport_cuda.graphs import EagerGraphs

PROMPTS = ["Hello world", "The quick brown fox jumps over the lazy dog.", "It was the best of times", "ab"]
GREEDY = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)
SETTINGS = ExecutorSettings(max_num_seqs=4, max_num_batched_tokens=32, block_size=8)


@pytest.fixture(scope="module")
def kit_llama(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("cuda-kit") / "llama", "llama", max_position_embeddings=128)


def _both(loaded):
    arguments = executor_arguments(loaded)
    cpu = CPUExecutor(loaded.model, loaded.tokenizer, **arguments, settings=SETTINGS)
    graphs = EagerGraphs()
    cuda = CUDAExecutor(loaded.model, loaded.tokenizer, **arguments, settings=SETTINGS, graphs=graphs)
    return cpu, cuda, graphs


def test_a_kit_llama_gives_the_cpu_executors_tokens_and_text_through_the_graph_path(kit_llama):
    loaded = modelport.load(str(kit_llama), dtype="float32", model_impl="native")
    cpu, cuda, graphs = _both(loaded)
    expected = cpu.generate(PROMPTS, GREEDY)
    got = cuda.generate(PROMPTS, GREEDY)
    assert [r.outputs[0].token_ids for r in got] == [r.outputs[0].token_ids for r in expected]
    assert [r.outputs[0].text for r in got] == [r.outputs[0].text for r in expected]
    assert cuda.graph_runner is not None and sum(cuda.graph_runner.replayed.values()) >= 9
    assert graphs.captured == len(cuda.graph_runner.replayed)


def test_a_kit_llama_in_bfloat16_gives_the_cpu_executors_tokens(kit_llama):
    loaded = modelport.load(str(kit_llama), dtype="bfloat16", model_impl="native")
    cpu, cuda, _ = _both(loaded)
    expected = cpu.generate(PROMPTS, GREEDY)
    assert [r.outputs[0].token_ids for r in cuda.generate(PROMPTS, GREEDY)] == [
        r.outputs[0].token_ids for r in expected
    ]


def test_the_transformers_backend_runs_eagerly_and_gives_the_cpu_executors_tokens(kit_llama):
    pytest.importorskip("modelport_transformers", reason="the Transformers backend is modelport-transformers")
    loaded = modelport.load(str(kit_llama), dtype="float32", model_impl="transformers")
    cpu, cuda, graphs = _both(loaded)
    assert cuda.graph_runner is None
    assert cuda.eager_reason is not None and "is not a native Llama-family model" in cuda.eager_reason
    expected = cpu.generate(PROMPTS, GREEDY)
    assert [r.outputs[0].token_ids for r in cuda.generate(PROMPTS, GREEDY)] == [
        r.outputs[0].token_ids for r in expected
    ]
    assert graphs.captured == 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the command line on a machine without a CUDA device")
def test_the_command_line_says_no_cuda_device_is_available_in_its_own_spelling():
    done = subprocess.run(
        [sys.executable, "-m", "modelport", "generate", "default", "hi", "--device", "cuda"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1
    assert done.stdout == ""
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("modelport: error: device 'cuda' is not available: no CUDA device is available (torch ")
    assert line.endswith("; use --device cpu or --device auto")
