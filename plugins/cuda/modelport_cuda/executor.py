"""The CUDA executor: core's scheduler, a paged KV cache in GPU memory, CUDA graphs for decode steps.

:class:`CUDAExecutor` is core's :class:`~modelport.executor.CPUExecutor` (the
same continuous batching, chunked prefill, preemption and per-request failure,
so the same requests give the same tokens) with these changes:

* the step's forward (:meth:`CUDAExecutor.run_model`) replays a decode graph
  (:mod:`modelport_cuda.graphs`) when every sequence of the step decodes and a
  graph serves its shape, and runs ``model.forward`` eagerly otherwise;
* one cache block is kept out of the pool: graph padding rows write there;
* the :class:`~modelport.executor.ThreadGovernor` is off for a model on a GPU;
* a logits row that is sampled (or whose logprobs are returned) is copied to
  the host first, where the request's ``torch.Generator`` lives, so a seeded
  request samples what it would on the CPU; greedy rows are chosen on the device.

:func:`create_cuda_executor` sizes the cache from ``gpu_memory_utilization``
(:mod:`modelport_cuda.memory`) after a profile run of the largest step.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from modelport.errors import ExecutorError
from modelport.executor import CPUExecutor, ExecutorSettings
from modelport.models.protocol import SequenceBatch
from modelport_cuda.graphs import MAX_CAPTURE_LEN, DecodeGraphRunner, GraphCapture, capture_sizes, graph_support
from modelport_cuda.memory import GIB, MemoryPlan, kv_cache_blocks, plan_memory

if TYPE_CHECKING:
    import torch


class CUDAExecutor(CPUExecutor):
    """Continuous batching on a GPU (or, with :class:`~modelport_cuda.graphs.EagerGraphs`, on CPU tensors).

    Args:
        model: the model, on the executor's device.
        tokenizer: encodes text prompts and decodes outputs.
        max_model_len: longest sequence allowed.
        vocab_size: size of the logits' last dimension.
        eos_token_ids: tokens that end generation unless ``ignore_eos``.
        kv_bytes_per_token: memory one token's keys and values take.
        settings: capacity settings (``kv_cache_memory`` is the cache's size in bytes here,
            one block of it kept for graph padding).
        graphs: how decode steps are captured (:class:`~modelport_cuda.graphs.CUDAGraphs`),
            or ``None`` to run every step eagerly (``enforce_eager``).
        max_capture_len: sequences longer than this decode eagerly.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        max_model_len: int,
        vocab_size: int,
        eos_token_ids: Iterable[int] = (),
        kv_bytes_per_token: int = 0,
        settings: ExecutorSettings | None = None,
        graphs: GraphCapture | None = None,
        max_capture_len: int = MAX_CAPTURE_LEN,
    ) -> None:
        super().__init__(
            model,
            tokenizer,
            max_model_len=max_model_len,
            vocab_size=vocab_size,
            eos_token_ids=eos_token_ids,
            kv_bytes_per_token=kv_bytes_per_token,
            settings=settings,
        )
        placed = _model_device(model)
        if placed is not None and placed.type == "cuda":
            # The step's work is the GPU's: there is no CPU thread team to shrink, and reading every
            # thread's schedstat (CUDA starts several) each step would only cost time.
            self.threads.enabled = False
        #: The block padding rows of a graph write to; no sequence owns it. With one sequence at most
        #: no batch is padded, and none is kept (the pool may be capped at one sequence's blocks).
        self.pad_block = 0
        if self.settings.max_num_seqs > 1:
            taken = self.allocator.allocate(1)
            if taken is None:  # the CPU executor's check leaves at least one sequence's blocks
                raise ExecutorError("the KV cache has no block to spare for CUDA graph padding")
            self.pad_block = taken[0]
        self._step_logits: torch.Tensor | None = None  # the last step's logits, on the device
        self._host_logits: torch.Tensor | None = None  # their copy on the host, made on first need
        #: Why decode steps run eagerly (``None`` when graphs serve them).
        self.eager_reason: str | None = "enforce_eager=True" if graphs is None else graph_support(model)
        #: The graph runner, or ``None`` when every step runs eagerly.
        self.graph_runner: DecodeGraphRunner | None = None
        if graphs is not None and self.eager_reason is None:
            block = self.settings.block_size
            self.graph_runner = DecodeGraphRunner(
                model,
                self.kv_cache,
                sizes=capture_sizes(self.settings.max_num_seqs),
                max_blocks=math.ceil(min(max_model_len, max_capture_len) / block),
                pad_block=self.pad_block,
                graphs=graphs,
            )

    def run_model(self, batch: SequenceBatch) -> torch.Tensor:
        """Replay a decode graph when one serves ``batch``, else run ``model.forward`` eagerly; float32 logits."""
        runner = self.graph_runner
        if runner is not None and runner.shape_for(batch) is not None:
            logits = runner.run(batch)
        else:
            logits = self.model.forward(batch, self.kv_cache)
        self._step_logits, self._host_logits = logits.float(), None
        return self._step_logits

    def _append(self, request: Any, row: torch.Tensor, token: int | None = None) -> None:
        """As the CPU executor; a row to sample from or to take logprobs of is read on the host."""
        if row.device.type != "cpu" and (token is None or request.params.logprobs is not None):
            row = self.on_host(row)
        super()._append(request, row, token)

    def on_host(self, row: torch.Tensor) -> torch.Tensor:
        """``row`` on the host; a row of this step's logits comes from one copy of them all, made on first need.

        Sampling several requests of a step then costs one transfer, not one per request.
        """
        step = getattr(self, "_step_logits", None)
        if (
            step is None
            or row.dim() != 1
            or step.dim() != 2
            or not step.is_contiguous()
            or row.untyped_storage().data_ptr() != step.untyped_storage().data_ptr()
        ):
            return row.cpu()
        if self._host_logits is None:
            self._host_logits = step.cpu()
        offset = row.storage_offset() - step.storage_offset()
        index, column = divmod(offset, step.stride(0))
        return self._host_logits[index, column : column + row.numel()]


def _model_device(model: Any) -> Any:
    """Where ``model``'s parameters are (native models say it; the Transformers backend wraps a module)."""
    import torch

    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    module = getattr(model, "module", model)
    parameters = getattr(module, "parameters", None)
    if callable(parameters):
        for parameter in parameters():
            return parameter.device
    return None


def profile_activations(model: Any, settings: ExecutorSettings, max_model_len: int) -> int:
    """Peak device memory of the largest step, above what was allocated before it, in bytes.

    As vLLM's profile run: ``max_num_batched_tokens`` tokens of prefill shared by
    up to ``max_num_seqs`` sequences, through a cache just large enough for them
    (its own size is not counted).
    """
    import torch

    block = settings.block_size
    tokens = min(settings.max_num_batched_tokens, settings.max_num_seqs * (max_model_len - 1))
    count = max(1, min(settings.max_num_seqs, tokens))
    lengths = [tokens // count + (1 if i < tokens % count else 0) for i in range(count)]
    lengths = [n for n in lengths if n]
    tables, next_block = [], 0
    for n in lengths:
        need = math.ceil(n / block)
        tables.append(list(range(next_block, next_block + need)))
        next_block += need
    device = _model_device(model)
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated(device)
    cache = model.new_kv_cache(next_block, block)
    cache_bytes = torch.cuda.memory_allocated(device) - before
    torch.cuda.reset_peak_memory_stats(device)
    batch = SequenceBatch(
        token_ids=torch.zeros(sum(lengths), dtype=torch.long),
        positions=torch.cat([torch.arange(n) for n in lengths]),
        query_lens=lengths,
        context_lens=[0] * len(lengths),
        block_tables=tables,
    )
    with torch.inference_mode():
        logits = model.forward(batch, cache).float()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - before - cache_bytes
    del cache, logits
    torch.cuda.empty_cache()
    return max(0, int(peak))


def create_cuda_executor(device: str, model: Any, loaded: Any, settings: ExecutorSettings) -> tuple[CUDAExecutor, str]:
    """Size the KV cache for ``device`` from ``gpu_memory_utilization``, build the executor; returns it and why.

    Raises:
        DeviceUnavailableError: no such CUDA device.
        ExecutorError: the model is on another device, or the memory does not fit (see :func:`plan_memory`).
    """
    import torch

    from modelport.builtin.cpu import executor_arguments
    from modelport.errors import DeviceUnavailableError
    from modelport_cuda.device import cuda_unavailable_reason, dtype_problem
    from modelport_cuda.graphs import CUDAGraphs

    reason = cuda_unavailable_reason(device)
    if reason is not None:
        raise DeviceUnavailableError(device, reason)
    target = torch.device(device if ":" in device else f"cuda:{torch.cuda.current_device()}")
    placed = _model_device(model)
    if placed is None or placed.type != "cuda" or (placed.index or 0) != (target.index or 0):
        raise ExecutorError(f"the model is on {placed}, not on {target}: load it with device={device!r}")
    problem = dtype_problem(
        loaded.resolved.dtype, torch.cuda.get_device_capability(target), torch.cuda.get_device_name(target)
    )
    if problem is not None:
        raise ExecutorError(problem)
    arguments = executor_arguments(loaded)
    with torch.cuda.device(target):
        activations = profile_activations(model, settings, arguments["max_model_len"])
        free, total = torch.cuda.mem_get_info(target)
        plan: MemoryPlan = plan_memory(
            total=total,
            free=free,
            model=torch.cuda.memory_allocated(target),
            activations=activations,
            gpu_memory_utilization=settings.gpu_memory_utilization,
            device=str(target),
        )
        per_block = max(1, arguments["kv_bytes_per_token"] * settings.block_size)
        # One block more than the budget's share: the graphs' padding block.
        blocks = (
            kv_cache_blocks(
                plan.kv_cache - per_block,
                per_block,
                max_model_len=arguments["max_model_len"],
                block_size=settings.block_size,
                max_num_seqs=settings.max_num_seqs,
            )
            + 1
        )
        sized = dataclasses.replace(settings, kv_cache_memory=blocks * per_block)
        graphs = None if settings.enforce_eager else CUDAGraphs(target)
        executor = CUDAExecutor(model, loaded.tokenizer, **arguments, settings=sized, graphs=graphs)
    mode = (
        f"CUDA graphs for decode at batch sizes up to {executor.graph_runner.sizes[-1]}"
        if executor.graph_runner is not None
        else f"eager ({executor.eager_reason})"
    )
    cache_bytes = getattr(executor.kv_cache, "nbytes", executor.allocator.num_blocks * per_block)
    return executor, (
        f"{target}: {executor.allocator.num_blocks} KV blocks of {settings.block_size} tokens "
        f"({cache_bytes / GIB:.2f} GiB; budget: {plan.describe()}); {mode}"
    )
