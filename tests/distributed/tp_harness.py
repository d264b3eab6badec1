"""Shared helpers of the tensor-parallel tests: tiny models, a paged step driver, process checks."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any


def interrupt_generation(executor: Any, pid: int, signal_number: int, steps: int) -> tuple[Exception, float]:
    """Three requests, ``steps`` steps, then ``signal_number`` to worker ``pid``; the steps' error and its delay.

    The steps go on until one raises (the test fails with pytest's ``Failed: DID NOT RAISE`` otherwise);
    returned are the exception and the seconds from the signal to it.
    """
    import pytest

    from modelport import SamplingParams
    from modelport.errors import ExecutorError

    params = SamplingParams(temperature=0.0, max_tokens=200, ignore_eos=True)
    for prompt in ([5, 6, 7], [8, 9], [10, 11, 12, 13]):
        executor.add_request(prompt, params)
    for _ in range(steps):
        executor.step()  # the first is the prefill, on every rank
    os.kill(pid, signal_number)
    signalled = time.monotonic()
    with pytest.raises(ExecutorError) as info:
        while executor.has_unfinished():
            executor.step()
    return info.value, time.monotonic() - signalled


#: The tiny models: each exercises a part of the sharding.
TP_MODELS: dict[str, dict[str, Any]] = {
    # attention_bias and mlp_bias: the row-parallel o_proj and down_proj add their bias once, after the all-reduce.
    "llama": {"attention_bias": True, "mlp_bias": True},
    # Qwen2: q, k and v biases (column-parallel), and the LM head tied to the vocabulary-parallel embedding.
    "qwen2": {"tie_word_embeddings": True},
    # Mixtral: every expert sliced along its intermediate width, legacy per-expert checkpoint names.
    "mixtral": {},
}


def write_tp_model(folder: Path, arch: str) -> Path:
    """A tiny float32 model of ``arch`` (4 heads, 2 kv heads, vocabulary 384) written by the testing kit."""
    from modelport.testing import make_tiny_model

    return make_tiny_model(folder, arch, tokenizer=False, seed=3, **TP_MODELS[arch])


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (``/proc``)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_gone(pids: list[int], seconds: float = 15.0) -> list[int]:
    """The pids still alive after waiting up to ``seconds`` for them to end."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not any(alive(pid) for pid in pids):
            return []
        time.sleep(0.1)
    return [pid for pid in pids if alive(pid)]


class PagedSteps:
    """Drives a model (or a tensor-parallel proxy) one SequenceBatch at a time over its own paged cache."""

    def __init__(self, model: Any, num_blocks: int = 32, block_size: int = 4) -> None:
        self.model, self.block_size = model, block_size
        self.cache = model.new_kv_cache(num_blocks, block_size)
        self.free = list(range(num_blocks))[::-1]
        self.tables: dict[int, list[int]] = {}
        self.lengths: dict[int, int] = {}

    def step(self, work: dict[int, list[int]], *, all_logits: bool = False) -> Any:
        """One forward: ``work`` maps a sequence id to its new tokens."""
        import torch

        from modelport.models.protocol import SequenceBatch

        ids, positions, query_lens, context_lens, tables = [], [], [], [], []
        for seq, tokens in work.items():
            start = self.lengths.get(seq, 0)
            table = self.tables.setdefault(seq, [])
            while len(table) * self.block_size < start + len(tokens):
                table.append(self.free.pop())
            ids += tokens
            positions += range(start, start + len(tokens))
            query_lens.append(len(tokens))
            context_lens.append(start)
            tables.append(list(table))
            self.lengths[seq] = start + len(tokens)
        batch = SequenceBatch(
            torch.tensor(ids), torch.tensor(positions), query_lens, context_lens, tables, all_logits=all_logits
        )
        with torch.inference_mode():
            return self.model.forward(batch, self.cache)


def logit_parity(
    single_model: Any, sharded_model: Any, prompts: list[list[int]], decode_steps: int
) -> tuple[float, Any]:
    """The largest logit difference between two models over one prefill and ``decode_steps`` decode steps.

    Returns the difference and the single-process model's last logits (so a caller can check they are not
    all near zero). The prefill's rows must be whole: the sharded LM head gathered every vocabulary slice.
    """
    single, sharded = PagedSteps(single_model), PagedSteps(sharded_model)
    work = dict(enumerate(prompts))
    expected, got = single.step(work, all_logits=True), sharded.step(work, all_logits=True)
    assert got.shape == expected.shape == (sum(map(len, prompts)), 384)  # whole rows: the LM head gathered
    worst = (got - expected).abs().max().item()
    for step in range(decode_steps):  # decode steps over the paged cache, each rank holding its kv heads
        tokens = {seq: [int(t)] for seq, t in enumerate(expected[-len(prompts) :].argmax(-1))} if step else None
        tokens = tokens or {seq: [7 + seq] for seq in work}
        expected, got = single.step(tokens), sharded.step(tokens)
        worst = max(worst, (got - expected).abs().max().item())
    return worst, expected
