"""Tensor parallelism over two GPUs with distributed_executor_backend="ray" (NCCL): runs where two GPUs are visible.

Each rank's bundle is one GPU; Ray gives rank 1's actor its own (CUDA_VISIBLE_DEVICES),
rank 0 (this process) uses cuda:0. The two-rank model is compared with the same model on
one GPU: float32 logits within 1e-5 and the same greedy tokens. Skipped on machines with
fewer than two GPUs (NCCL cannot run two ranks on one GPU).
"""

from __future__ import annotations

import pytest

ray = pytest.importorskip("ray", reason="modelport-ray's tests need ray (pip install 'ray>=2.40')")
pytest.importorskip("modelport_hf", reason="the tiny models are Hugging Face folders")
torch = pytest.importorskip("torch")

from modelport import LLM, SamplingParams  # noqa: E402
from modelport_ray.launcher import RayLauncher  # noqa: E402

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs two CUDA GPUs (NCCL, one per rank)"
)

PROMPTS = [[5, 17, 200, 31, 9, 77, 3], [250, 4, 19], [100, 101, 102, 103, 104, 105, 106, 107, 108, 109, 110]]
OPTIONS = {"dtype": "float32", "skip_tokenizer_init": True, "device": "cuda"}


@pytest.fixture(scope="module")
def gpu_cluster():
    """A local Ray cluster with two GPUs and two CPUs, shut down after the module."""
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mixtral"])
def test_two_gpus_through_ray_match_one_gpu(gpu_cluster, tp_harness, tmp_path, arch):
    folder = tp_harness.write_tp_model(tmp_path / arch, arch)
    single = LLM(str(folder), **OPTIONS)
    sharded = LLM(str(folder), tensor_parallel_size=2, distributed_executor_backend="ray", **OPTIONS)
    try:
        launcher = sharded.loaded.model.launcher
        assert isinstance(launcher, RayLauncher)
        assert launcher.workers[1]["accelerators"].get("GPU")  # rank 1 holds a GPU of its own
        table = next(g for g in ray.util.placement_group_table().values() if g["name"] == launcher.group_name)
        assert table["bundles"] == {0: {"GPU": 1.0}, 1: {"GPU": 1.0}}
        a, b = tp_harness.PagedSteps(single.loaded.model), tp_harness.PagedSteps(sharded.loaded.model)
        work = dict(enumerate(PROMPTS))
        worst = (b.step(work, all_logits=True) - a.step(work, all_logits=True)).abs().max().item()
        assert worst < 1e-5, f"{arch}: logits differ by {worst:.2e}"
        params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
        want = [o.outputs[0].token_ids for o in single.generate(PROMPTS, params)]
        assert [o.outputs[0].token_ids for o in sharded.generate(PROMPTS, params)] == want
    finally:
        sharded.close()
        single.close()
