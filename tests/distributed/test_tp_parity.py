"""Tensor parallelism over two ranks (the mp backend, gloo on the CPU) against the same model in one process.

One two-rank model per architecture serves every test of that architecture (starting
the workers is most of the time). Each compares what a user sees: float32 logits
within 1e-5, the same greedy tokens, each rank holding about half the parameters;
the last test of each shuts the model down one of the three ways and checks that no
worker process is left.
"""

from __future__ import annotations

import gc

import pytest

pytest.importorskip("modelport_hf", reason="the tiny models are Hugging Face folders")
torch = pytest.importorskip("torch")

from tp_harness import TP_MODELS, alive, logit_parity, wait_gone, write_tp_model  # noqa: E402

from modelport import LLM, SamplingParams  # noqa: E402
from modelport.distributed.driver import ShardedModel  # noqa: E402

PROMPTS = [[5, 17, 200, 31, 9, 77, 3], [250, 4, 19], [100, 101, 102, 103, 104, 105, 106, 107, 108, 109, 110]]


@pytest.fixture(scope="module", params=list(TP_MODELS))
def pair(request, tmp_path_factory, one_thread_each):
    """``{"arch", "single", "sharded"}``: the model in this process, and over two ranks."""
    arch = request.param
    folder = write_tp_model(tmp_path_factory.mktemp(arch), arch)
    options = {"dtype": "float32", "skip_tokenizer_init": True}
    held = {"arch": arch, "single": LLM(str(folder), **options)}
    held["sharded"] = LLM(str(folder), tensor_parallel_size=2, **options)
    yield held
    if "sharded" in held:
        held["sharded"].close()


def test_the_sharded_model_is_the_native_class_split_in_two(pair):
    proxy = pair["sharded"].loaded.model
    assert isinstance(proxy, ShardedModel)
    assert type(proxy.model) is type(pair["single"].loaded.model)
    assert (proxy.parallel.rank, proxy.parallel.world_size) == (0, 2)
    assert [r["rank"] for r in proxy.reports] == [0, 1]
    assert all(r["error"] is None for r in proxy.reports)
    assert pair["sharded"].loaded.weights.missing == () and pair["sharded"].loaded.weights.unexpected == ()
    # The KV cache is split by kv heads: rank 0's holds one of the two, in as many blocks (kv_cache_memory per rank).
    single_cache, sharded_cache = pair["single"].executor.kv_cache, pair["sharded"].executor.kv_cache
    assert (single_cache.num_kv_heads, sharded_cache.num_kv_heads) == (2, 1)
    assert sharded_cache.num_blocks == single_cache.num_blocks


def test_float32_logits_match_the_single_process_model_within_1e_5(pair):
    worst, expected = logit_parity(pair["single"].loaded.model, pair["sharded"].loaded.model, PROMPTS, 4)
    assert worst < 1e-5, f"{pair['arch']}: logits differ by {worst:.2e}"
    assert expected.abs().max().item() > 0.1  # a real comparison: the logits are not all near zero


def test_greedy_generation_gives_the_same_tokens(pair):
    params = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True, logprobs=1)
    expected = pair["single"].generate(PROMPTS, params)
    got = pair["sharded"].generate(PROMPTS, params)
    for want, have in zip(expected, got, strict=True):
        assert have.outputs[0].token_ids == want.outputs[0].token_ids
        assert len(have.outputs[0].token_ids) == 16
        assert have.outputs[0].cumulative_logprob == pytest.approx(want.outputs[0].cumulative_logprob, abs=1e-4)


def test_each_rank_holds_about_half_of_the_parameters(pair):
    single = pair["single"].loaded.model
    total = sum(p.numel() * p.element_size() for p in single.parameters())
    replicated = sum(  # what every rank holds whole: norms, row-parallel biases, the router
        p.numel() * p.element_size()
        for name, p in single.named_parameters()
        if "norm" in name or name.endswith(("o_proj.bias", "down_proj.bias", "mlp.gate.weight"))
    )
    reports = pair["sharded"].loaded.model.rank_reports()
    assert [r["rank"] for r in reports] == [0, 1]
    for report in reports:
        assert report["parameter_bytes"] == (total - replicated) // 2 + replicated, report
    assert replicated < 0.05 * total  # so about half each


def test_shutdown_leaves_no_worker_process(pair):
    """Each architecture's model ends one way: garbage collection, close(), or a with block."""
    sharded = pair.pop("sharded")
    pids = sharded.loaded.model.worker_pids()
    assert pids and all(alive(pid) for pid in pids)
    if pair["arch"] == "llama":
        del sharded
        gc.collect()
    elif pair["arch"] == "qwen2":
        sharded.close()
        sharded.close()  # idempotent
    else:
        with sharded:
            pass
    assert wait_gone(pids) == []
