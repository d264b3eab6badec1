"""modelport-cuda on CPU tensors: everything but the GPU itself.

The executor's scheduler, its decode-graph bookkeeping (padding to the capture
sizes, static buffers, copy-in and copy-out) and its sampling run here with
:class:`~modelport_cuda.graphs.EagerGraphs` standing in for CUDA graphs, on
tiny native models, and are held to the CPU executor's tokens.
"""

from __future__ import annotations

import importlib.metadata

import pytest
import torch
from conftest import tiny_native

from modelport.errors import DeviceUnavailableError, ExecutorError
from modelport.executor import CPUExecutor, ExecutorSettings
from modelport.models.protocol import SequenceBatch
from modelport.sampling import SamplingParams
from modelport.testing import describe_installed, modules_imported_by_loading
from modelport_cuda.executor import CUDAExecutor
from modelport_cuda.graphs import (
    DecodeGraphRunner,
    EagerGraphs,
    block_bucket,
    capture_sizes,
    graph_support,
    padded_size,
)

DISTRIBUTION = "modelport-cuda"
GREEDY = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)
PROMPTS = [[1, 2, 3], list(range(5, 30)), [7] * 9, [3, 1, 4, 1, 5, 9, 2, 6], [11, 12]]
BLOCK = 4


@pytest.fixture(scope="module")
def llama():
    return tiny_native()


def _settings(**changes):
    fields = {"max_num_seqs": 5, "max_num_batched_tokens": 24, "block_size": BLOCK, "kv_cache_memory": 1 << 22}
    fields.update(changes)
    return ExecutorSettings(**fields)


def _arguments(model, **settings):
    shape = model.shape
    per_token = 2 * shape.num_layers * shape.num_kv_heads * shape.head_dim * 4
    return {
        "max_model_len": 256,
        "vocab_size": shape.vocab_size,
        "kv_bytes_per_token": per_token,
        "settings": _settings(**settings),
    }


def _tokens(results):
    return [r.outputs[0].token_ids for r in results]


# --- the plugin -------------------------------------------------------------------


def test_the_plugin_registers_the_cuda_executor_with_its_availability_check():
    described = describe_installed(DISTRIBUTION)
    assert described["distribution"] == DISTRIBUTION
    assert described["version"] == importlib.metadata.version(DISTRIBUTION)
    assert sorted(described["hooks"]) == ["modelport_create_executor", "modelport_register_executors"]
    assert described["registered"] == {"executor": ["cuda"]}
    from modelport.plugins import get_host

    entry = get_host().registry.lookup("executor", "cuda")
    assert entry is not None and entry.plugin == DISTRIBUTION
    assert entry.extra == {"available": "modelport_cuda.device:cuda_unavailable_reason"}


def test_loading_the_cuda_plugin_does_not_import_torch():
    assert modules_imported_by_loading(DISTRIBUTION, ["torch"]) == set()


# --- choosing the device ----------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a CUDA device")
@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cuda:3"])
def test_llm_on_cuda_without_a_gpu_is_a_device_unavailable_error_before_anything_loads(device, tmp_path):
    import modelport

    # The reference does not exist: the device is refused first, so no file is ever looked for.
    with pytest.raises(DeviceUnavailableError) as caught:
        modelport.LLM(str(tmp_path / "absent"), device=device)
    assert caught.value.device == device
    assert str(caught.value) == (
        f"device {device!r} is not available: no CUDA device is available "
        f"(torch {torch.__version__} was built without CUDA); use device='cpu' or device='auto'"
        if torch.version.cuda is None
        else f"device {device!r} is not available: no CUDA device is available "
        f"(torch {torch.__version__} (CUDA {torch.version.cuda}) finds no CUDA device or driver); "
        "use device='cpu' or device='auto'"
    )
    assert isinstance(caught.value, ExecutorError)  # callers catching the executor's errors catch it too


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a CUDA device")
def test_load_on_cuda_without_a_gpu_fails_before_reading_the_model(tmp_path):
    import modelport

    with pytest.raises(DeviceUnavailableError, match="no CUDA device is available"):
        modelport.load(str(tmp_path / "absent"), device="cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a CUDA device")
def test_create_executor_refuses_cuda_without_a_gpu(llama):
    from modelport_cuda.plugin import modelport_create_executor

    with pytest.raises(DeviceUnavailableError, match="no CUDA device is available"):
        modelport_create_executor("cuda", llama, None, _settings())
    assert modelport_create_executor("cpu", llama, None, _settings()) is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a CUDA device")
def test_auto_is_the_cpu_without_a_gpu():
    from modelport.devices import resolve_device
    from modelport.plugins import get_host

    assert resolve_device("auto", get_host().registry) == (
        "cpu",
        "device='auto': no other registered device is present here",
    )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_auto_is_cuda_where_a_gpu_is_present():
    from modelport.devices import resolve_device
    from modelport.plugins import get_host

    assert resolve_device("auto", get_host().registry)[0] == "cuda"


def test_bfloat16_needs_a_gpu_of_compute_capability_eight():
    from modelport_cuda.device import dtype_problem

    assert dtype_problem("bfloat16", (7, 5), "Tesla T4") == (
        "bfloat16 needs a GPU of compute capability 8.0 or later; Tesla T4 has 7.5: "
        "load with dtype='float16' (or 'float32')"
    )
    assert dtype_problem("bfloat16", (9, 0), "NVIDIA H200") is None
    assert dtype_problem("float16", (7, 0), "Tesla V100") is None


# --- memory sizing --------------------------------------------------------------


def test_the_kv_cache_gets_the_requested_share_less_weights_and_activations():
    from modelport_cuda.memory import GIB, plan_memory

    plan = plan_memory(total=80 * GIB, free=70 * GIB, model=2 * GIB, activations=3 * GIB, gpu_memory_utilization=0.9)
    assert plan.requested == 72 * GIB
    assert plan.kv_cache == 72 * GIB - 2 * GIB - 3 * GIB
    assert plan.describe() == (
        "KV cache 67.00 GiB = 72.00 GiB requested (0.90 of 80.00 GiB) - weights 2.00 GiB - activations 3.00 GiB"
    )


def test_a_device_with_less_free_memory_than_requested_is_refused():
    from modelport_cuda.memory import GIB, plan_memory

    # 60 GiB free (with this model's 2 GiB) of 80 GiB: other processes hold 20 GiB, 0.9 asks for 72.
    with pytest.raises(ExecutorError) as caught:
        plan_memory(total=80 * GIB, free=58 * GIB, model=2 * GIB, activations=GIB, gpu_memory_utilization=0.9)
    assert str(caught.value) == (
        "free memory on cuda (60.00 GiB of 80.00 GiB, counting this model's weights) is less than "
        "gpu_memory_utilization=0.9 asks for (72.00 GiB); lower gpu_memory_utilization or free the memory "
        "other processes hold"
    )
    assert plan_memory(total=80 * GIB, free=58 * GIB, model=2 * GIB, activations=GIB, gpu_memory_utilization=0.75)


def test_a_share_the_weights_fill_leaves_nothing_for_the_cache():
    from modelport_cuda.memory import GIB, plan_memory

    with pytest.raises(ExecutorError, match=r"leaves nothing for the KV cache: the weights take 7\.00 GiB"):
        plan_memory(total=16 * GIB, free=9 * GIB, model=7 * GIB, activations=GIB, gpu_memory_utilization=0.5)


def test_blocks_fill_the_budget_up_to_what_every_sequence_at_full_length_uses():
    from modelport_cuda.memory import kv_cache_blocks

    assert kv_cache_blocks(1000 * 64, 64, max_model_len=100, block_size=16, max_num_seqs=256) == 1000
    # 7 blocks per sequence, 4 sequences: 28 blocks are all that can ever be used.
    assert kv_cache_blocks(1 << 40, 64, max_model_len=100, block_size=16, max_num_seqs=4) == 28
    with pytest.raises(ExecutorError, match="holds 96 tokens, less than one sequence of max_model_len=100"):
        kv_cache_blocks(6 * 64, 64, max_model_len=100, block_size=16, max_num_seqs=4)


@pytest.mark.parametrize("share", [0, -0.1, 1.01, float("nan"), True, "0.9"])
def test_gpu_memory_utilization_is_validated(share):
    from modelport.errors import InvalidOptionError

    with pytest.raises(InvalidOptionError, match="gpu_memory_utilization"):
        ExecutorSettings(gpu_memory_utilization=share)


def test_enforce_eager_is_validated():
    from modelport.errors import InvalidOptionError

    with pytest.raises(InvalidOptionError, match="'enforce_eager': expected True or False"):
        ExecutorSettings(enforce_eager="yes")  # type: ignore[arg-type]


# --- capture sizes and padding ----------------------------------------------------


def test_capture_sizes_follow_vllm_and_stop_at_the_first_that_holds_max_num_seqs():
    assert capture_sizes(1) == (1,)
    assert capture_sizes(5) == (1, 2, 4, 8)
    assert capture_sizes(64) == (1, 2, 4, *range(8, 65, 8))
    assert capture_sizes(256) == (1, 2, 4, *range(8, 257, 8))
    assert capture_sizes(300) == (1, 2, 4, *range(8, 256, 8), 256, 272, 288, 304)
    assert capture_sizes(10_000)[-1] == 512


def test_a_batch_pads_to_the_smallest_capture_size_that_holds_it():
    sizes = capture_sizes(256)
    assert [padded_size(n, sizes) for n in (1, 2, 3, 5, 8, 9, 250, 256, 257)] == [1, 2, 4, 8, 8, 16, 256, 256, None]


def test_block_buckets_are_powers_of_two_from_sixteen_capped_at_the_longest():
    assert [block_bucket(n, 512) for n in (1, 16, 17, 33, 500)] == [16, 16, 32, 64, 512]
    assert block_bucket(40, 48) == 48


def test_padding_rows_write_to_the_pad_block_and_tables_are_padded_with_it(llama):
    model = llama
    cache = model.new_kv_cache(20, BLOCK)
    runner = DecodeGraphRunner(model, cache, sizes=(1, 2, 4), max_blocks=8, pad_block=19, graphs=EagerGraphs())
    batch = SequenceBatch(
        token_ids=torch.tensor([5, 6, 7]),
        positions=torch.tensor([4, 0, 9]),
        query_lens=[1, 1, 1],
        context_lens=[4, 0, 9],
        block_tables=[[3, 1], [2], [0, 4, 5]],
    )
    assert runner.shape_for(batch) == (4, 8)  # 3 rows pad to 4; 3 blocks at most, bucket 16 capped at 8
    host = runner.host_inputs(batch, 4, 8)
    assert host["tokens"].tolist() == [5, 6, 7, 0]
    assert host["positions"].tolist() == [4, 0, 9, 0]
    assert host["seq_lens"].tolist() == [5, 1, 10, 1]
    # Token 4 of [3, 1] is block 1 offset 0; token 0 of [2] block 2 offset 0; token 9 of [0, 4, 5] block 5 offset 1.
    assert host["slots"].tolist() == [1 * BLOCK, 2 * BLOCK, 5 * BLOCK + 1, 19 * BLOCK]
    assert host["tables"].tolist() == [
        [3, 1, 19, 19, 19, 19, 19, 19],
        [2, 19, 19, 19, 19, 19, 19, 19],
        [0, 4, 5, 19, 19, 19, 19, 19],
        [19] * 8,
    ]


def test_a_prefill_too_many_sequences_or_too_long_a_sequence_runs_eagerly(llama):
    model = llama
    cache = model.new_kv_cache(20, BLOCK)
    runner = DecodeGraphRunner(model, cache, sizes=(1, 2), max_blocks=2, pad_block=19, graphs=EagerGraphs())

    def batch(query_lens, context_lens):
        total = sum(query_lens)
        tables = [[0, 1, 2]] * len(query_lens)
        return SequenceBatch(
            torch.zeros(total, dtype=torch.long), torch.zeros(total, dtype=torch.long), query_lens, context_lens, tables
        )

    assert runner.shape_for(batch([1, 1], [3, 7])) == (2, 2)
    assert runner.shape_for(batch([1, 2], [3, 0])) is None  # a prefill chunk
    assert runner.shape_for(batch([1, 1, 1], [0, 0, 0])) is None  # more than the largest capture size
    assert runner.shape_for(batch([1], [8])) is None  # 9 tokens: 3 blocks, past max_blocks
    with pytest.raises(ValueError, match="no decode graph serves this batch"):
        runner.run(batch([1, 2], [3, 0]))


def test_a_replay_returns_the_logits_of_the_real_rows_as_model_forward_gives_them(llama):
    model = llama
    cache = model.new_kv_cache(20, BLOCK)
    reference_cache = model.new_kv_cache(20, BLOCK)
    prompt = SequenceBatch(
        torch.tensor([3, 1, 4, 1, 5, 9]), torch.tensor([0, 1, 2, 0, 1, 2]), [3, 3], [0, 0], [[0], [1]]
    )
    for target in (cache, reference_cache):
        model.forward(prompt, target)
    graphs = EagerGraphs()
    runner = DecodeGraphRunner(model, cache, sizes=(1, 4), max_blocks=8, pad_block=19, graphs=graphs)
    step = SequenceBatch(torch.tensor([2, 6]), torch.tensor([3, 3]), [1, 1], [3, 3], [[0], [1]])
    got = runner.run(step)
    expected = model.forward(step, reference_cache)
    assert got.shape == (2, model.shape.vocab_size)  # the padding rows are dropped
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # The keys and values written are those the eager step wrote, in the same slots; the pad block took the rest.
    for layer in range(model.shape.num_layers):
        torch.testing.assert_close(cache.keys[layer][:19], reference_cache.keys[layer][:19])
    assert (runner.replayed, graphs.captured) == ({(4, 8): 1}, 1)
    runner.run(SequenceBatch(torch.tensor([7, 8]), torch.tensor([4, 4]), [1, 1], [4, 4], [[0, 2], [1, 3]]))
    assert (runner.replayed, graphs.captured) == ({(4, 8): 2}, 1)  # the same shape replays its capture


@pytest.mark.parametrize("window", [None, 5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decode_attention_equals_cores_grouped_sdpa(window, dtype):
    from types import SimpleNamespace

    from modelport.models.attention import paged_attention
    from modelport.models.kv_cache import PagedKVCache
    from modelport_cuda.graphs import StaticDecodeLayout

    generator = torch.Generator().manual_seed(3)
    caches = [PagedKVCache(1, 12, BLOCK, 2, 8, dtype=dtype, device="cpu") for _ in range(2)]
    filler = torch.randn(12, BLOCK, 2, 8, generator=generator).to(dtype)
    for cache in caches:
        cache.keys[0].copy_(filler)
        cache.values[0].copy_(-filler)
    tables = torch.tensor([[3, 1, 7, 11], [2, 11, 11, 11], [0, 4, 5, 6]])
    seq_lens = torch.tensor([10, 1, 16])  # the new token is the last of each
    slots = torch.tensor([1 * BLOCK + 1, 2 * BLOCK, 6 * BLOCK + 3])
    query = torch.randn(3, 6, 8, generator=generator).to(dtype)  # 6 query heads over 2 key/value heads
    key, value = (torch.randn(3, 2, 8, generator=generator).to(dtype) for _ in range(2))
    mine = StaticDecodeLayout(caches[0], slots, tables, seq_lens, BLOCK)
    cores = StaticDecodeLayout(caches[1], slots, tables, seq_lens, BLOCK)
    as_core_sees_it = SimpleNamespace(cache=caches[1], new_slots=slots, groups=cores.groups)  # no attend
    got = paged_attention(query, key, value, layer=0, layout=mine, window=window, scale=8**-0.5)
    expected = paged_attention(query, key, value, layer=0, layout=as_core_sees_it, window=window, scale=8**-0.5)
    tolerance = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-2}
    torch.testing.assert_close(got, expected, **tolerance)
    assert got.dtype == dtype
    torch.testing.assert_close(caches[0].keys[0], caches[1].keys[0], rtol=0, atol=0)  # the same writes


# --- the executor on CPU tensors ------------------------------------------------------


@pytest.mark.parametrize(
    ("architecture", "overrides"),
    [("llama", {}), ("mistral", {"sliding_window": 8}), ("qwen3", {"head_dim": 32})],
    ids=["llama", "mistral-sliding-window", "qwen3-qk-norm"],
)
def test_graph_bookkeeping_gives_the_cpu_executors_greedy_tokens(architecture, overrides):
    model = tiny_native(architecture, **overrides)
    expected = CPUExecutor(model, None, **_arguments(model)).generate(PROMPTS, GREEDY)
    graphs = EagerGraphs()
    executor = CUDAExecutor(model, None, **_arguments(model), graphs=graphs)
    got = executor.generate(PROMPTS, GREEDY)
    assert _tokens(got) == _tokens(expected)
    assert executor.eager_reason is None
    assert executor.graph_runner is not None
    # Five sequences decode padded to 8, four to 4: both shapes were captured once and replayed.
    assert executor.graph_runner.replayed == {(8, 16): 18, (4, 16): 1}
    assert graphs.captured == 2


def test_sequences_outgrowing_a_block_bucket_move_to_the_next_graph(llama):
    params = SamplingParams(temperature=0, max_tokens=45, ignore_eos=True)
    expected = CPUExecutor(llama, None, **_arguments(llama)).generate(PROMPTS[:2], params)
    executor = CUDAExecutor(llama, None, **_arguments(llama), graphs=EagerGraphs())
    assert _tokens(executor.generate(PROMPTS[:2], params)) == _tokens(expected)
    assert executor.graph_runner is not None
    # Both prompts prefill in steps 1-2 (24 tokens a step), then decode together. Up to 64 tokens a
    # sequence reads 16 blocks of 4, then 32: the longer one (25 + 45 tokens) passes 64 in its last
    # five steps, the last of them alone once the shorter one has its 45 tokens.
    assert executor.graph_runner.replayed == {(2, 16): 39, (2, 32): 4, (1, 32): 1}


def test_seeded_sampling_and_logprobs_match_the_cpu_executor(llama):
    model = llama
    params = [
        SamplingParams(temperature=0.9, top_p=0.9, seed=7, max_tokens=12, ignore_eos=True, logprobs=3),
        SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, logprobs=2),
        SamplingParams(temperature=1.2, top_k=5, seed=1, max_tokens=12, ignore_eos=True, repetition_penalty=1.3),
    ]
    expected = CPUExecutor(model, None, **_arguments(model)).generate(PROMPTS[:3], params)
    got = CUDAExecutor(model, None, **_arguments(model), graphs=EagerGraphs()).generate(PROMPTS[:3], params)
    assert _tokens(got) == _tokens(expected)
    for mine, theirs in zip(got, expected, strict=True):
        assert mine.outputs[0].cumulative_logprob == pytest.approx(theirs.outputs[0].cumulative_logprob, abs=1e-4)
        assert [sorted(e) for e in mine.outputs[0].logprobs or []] == [
            sorted(e) for e in theirs.outputs[0].logprobs or []
        ]


def test_rows_of_a_steps_logits_reach_the_host_through_one_copy(llama):
    executor = CUDAExecutor(llama, None, **_arguments(llama), graphs=EagerGraphs())
    batch = SequenceBatch(torch.tensor([3, 1, 4]), torch.tensor([0, 0, 0]), [1, 1, 1], [0, 0, 0], [[1], [2], [3]])
    logits = executor.run_model(batch)
    assert logits.dtype == torch.float32 and executor._host_logits is None
    first = executor.on_host(logits[2])
    copy = executor._host_logits
    assert copy is not None  # on CPU tensors ``.cpu()`` is the tensor itself; the row arithmetic is what is tested
    assert torch.equal(first, logits[2]) and torch.equal(executor.on_host(logits[0]), logits[0])
    assert executor._host_logits is copy  # the second row came from the same copy
    assert torch.equal(executor.on_host(logits[1, :50]), logits[1, :50])  # a row cut to the vocabulary
    stranger = torch.randn(7)
    assert torch.equal(executor.on_host(stranger), stranger)  # not this step's: copied alone
    executor.run_model(batch)
    assert executor._host_logits is None  # a new step forgets the old copy


def test_preemption_under_a_small_cache_still_gives_the_same_tokens(llama):
    model = llama
    per_token = _arguments(model)["kv_bytes_per_token"]
    # 70 blocks of 4: one is the pad block, so the five sequences (up to 45 tokens each) cannot all stay.
    small = {"kv_cache_memory": 70 * BLOCK * per_token}
    expected = CPUExecutor(model, None, **_arguments(model)).generate(PROMPTS, GREEDY)
    executor = CUDAExecutor(model, None, **_arguments(model, **small), graphs=EagerGraphs())
    assert executor.allocator.num_blocks == 70 and executor.allocator.num_free == 69
    assert _tokens(executor.generate(PROMPTS, GREEDY)) == _tokens(expected)
    assert executor.allocator.num_free == 69  # every block back but the pad block


def test_enforce_eager_runs_every_step_through_model_forward(llama):
    model = llama
    expected = CPUExecutor(model, None, **_arguments(model)).generate(PROMPTS, GREEDY)
    executor = CUDAExecutor(model, None, **_arguments(model), graphs=None)
    assert (executor.graph_runner, executor.eager_reason) == (None, "enforce_eager=True")
    assert _tokens(executor.generate(PROMPTS, GREEDY)) == _tokens(expected)


def test_one_sequence_at_most_keeps_no_pad_block(llama):
    model = llama
    executor = CUDAExecutor(model, None, **_arguments(model, max_num_seqs=1), graphs=EagerGraphs())
    assert executor.allocator.num_free == executor.allocator.num_blocks
    assert executor.graph_runner is not None and executor.graph_runner.sizes == (1,)
    expected = CPUExecutor(model, None, **_arguments(model, max_num_seqs=1)).generate(PROMPTS[:2], GREEDY)
    assert _tokens(executor.generate(PROMPTS[:2], GREEDY)) == _tokens(expected)


def test_models_the_graphs_cannot_drive_decode_eagerly_and_say_why():
    dynamic = tiny_native(rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0})
    assert graph_support(dynamic) == "its RoPE type depends on each sequence's length, read on the host"
    executor = CUDAExecutor(dynamic, None, **_arguments(dynamic), graphs=EagerGraphs())
    assert executor.graph_runner is None
    assert executor.eager_reason == "its RoPE type depends on each sequence's length, read on the host"
    expected = CPUExecutor(dynamic, None, **_arguments(dynamic)).generate(PROMPTS[:2], GREEDY)
    assert _tokens(executor.generate(PROMPTS[:2], GREEDY)) == _tokens(expected)

    experts = tiny_native("mixtral")
    assert graph_support(experts) == "MixtralForCausalLM routes tokens to experts on the host"
    executor = CUDAExecutor(experts, None, **_arguments(experts), graphs=EagerGraphs())
    assert executor.graph_runner is None
    expected = CPUExecutor(experts, None, **_arguments(experts)).generate(PROMPTS[:2], GREEDY)
    assert _tokens(executor.generate(PROMPTS[:2], GREEDY)) == _tokens(expected)

    class Wrapped:  # any other model keeping the protocol (the Transformers backend, say)
        pass

    assert graph_support(Wrapped()) == "Wrapped is not a native Llama-family model (graphs drive that structure only)"
