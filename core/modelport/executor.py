"""The CPU executor: continuous batching over the model protocol.

Requests join and leave between steps. Each step runs one forward over every
running sequence: decoding sequences contribute their last token, sequences
still in prefill contribute a chunk of their prompt (chunked prefill under a
token budget). Keys and values live in a paged cache whose blocks are handed
out as sequences grow; when the cache is full, the newest sequence is
preempted and recomputed later. A request that cannot run (a prompt too long,
token ids outside the vocabulary) fails alone; the others go on. Each step
runs with the torch threads a :class:`ThreadGovernor` allows, fewer while the
machine's other work keeps this process's threads waiting for a CPU.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from modelport.errors import ExecutorError
from modelport.models.protocol import SequenceBatch
from modelport.outputs import CompletionOutput, Logprob, RequestOutput
from modelport.sampling import SamplingParams, apply_repetition_penalty, sample, sample_greedy

if TYPE_CHECKING:
    import torch

_REPLACEMENT = "\ufffd"  # a byte-level tokenizer's partial UTF-8 sequence decodes to this


@dataclass(frozen=True)
class ExecutorSettings:
    """Capacity settings of an executor.

    Attributes:
        max_num_seqs: sequences running at once at most; more wait.
        max_num_batched_tokens: tokens in one forward at most (longer prompts are chunked).
        block_size: tokens per KV cache block.
        kv_cache_memory: bytes the KV cache may take (the CPU executor's budget).
        gpu_memory_utilization: the share of a GPU's memory the executor may use in all (weights,
            activations and KV cache), vLLM's name and default; a GPU executor sizes its KV cache
            from it instead of ``kv_cache_memory``. Above 0, at most 1.
        enforce_eager: run every step eagerly (a GPU executor captures no CUDA graphs).
    """

    max_num_seqs: int = 64
    max_num_batched_tokens: int = 2048
    block_size: int = 16
    kv_cache_memory: int = 1 << 30
    gpu_memory_utilization: float = 0.9
    enforce_eager: bool = False

    def __post_init__(self) -> None:
        from modelport.errors import InvalidOptionError

        for name in ("max_num_seqs", "max_num_batched_tokens", "block_size", "kv_cache_memory"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidOptionError(name, value, detail="expected a positive integer")
        share = self.gpu_memory_utilization
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share <= 1:
            raise InvalidOptionError("gpu_memory_utilization", share, detail="expected a number above 0, at most 1")
        if not isinstance(self.enforce_eager, bool):
            raise InvalidOptionError("enforce_eager", self.enforce_eager, detail="expected True or False")


class BlockAllocator:
    """Hands out KV cache block ids from a fixed pool."""

    def __init__(self, num_blocks: int) -> None:
        self.num_blocks = num_blocks
        self._free = deque(range(num_blocks))

    @property
    def num_free(self) -> int:
        """Blocks not in use."""
        return len(self._free)

    def allocate(self, count: int) -> list[int] | None:
        """``count`` blocks, or ``None`` (and nothing taken) if fewer are free."""
        if count > len(self._free):
            return None
        return [self._free.popleft() for _ in range(count)]

    def free(self, blocks: Iterable[int]) -> None:
        """Return blocks to the pool."""
        self._free.extend(blocks)


def _cpu_wait_ns() -> int | None:
    """Nanoseconds this process's threads have spent runnable but waiting for a CPU; ``None`` off Linux.

    The second field of ``/proc/self/task/<tid>/schedstat`` (time on a run queue), summed over the threads.
    """
    import os

    total = 0
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return None
    for tid in tasks:
        try:
            with open(f"/proc/self/task/{tid}/schedstat", "rb") as stats:
                total += int(stats.read().split()[1])
        except (OSError, IndexError, ValueError):
            continue  # a thread that ended meanwhile
    return total


def _idle_cpus() -> int | None:
    """CPUs of this process's affinity that no other runnable task occupies now (Linux ``/proc/loadavg``)."""
    import os

    try:
        with open("/proc/loadavg", "rb") as loadavg:
            running = int(loadavg.read().split()[3].split(b"/")[0])
        cpus = len(os.sched_getaffinity(0))
    except (OSError, IndexError, ValueError, AttributeError):
        return None
    return max(1, cpus - (running - 1))  # the reading thread is one of the running


class ThreadGovernor:
    """Chooses how many torch threads each step runs with, so that a busy machine does not stall the steps.

    A step is a few hundred parallel regions, each ending in a barrier that
    waits for every thread of the team. When other processes compete for the
    cores, a thread of the team is often descheduled, and every barrier waits a
    scheduler time slice for it: with 2 threads on 2 busy cores a step becomes
    several times slower than with 1. The governor measures how long this
    process's threads waited for a CPU during each step (Linux ``schedstat``)
    and, when that is more than ``threshold`` of the step's thread time, runs
    the next steps with fewer threads (about that share fewer, at least one).
    Now and then (every ``probe_every`` steps, backing off to 64 after failed
    probes, and not while ``/proc/loadavg`` counts no idle CPU, four times at
    most in a row) it tries more again, up to the count torch is set to
    (``torch.set_num_threads``), which it restores after every step. The first
    step runs with the CPUs ``/proc/loadavg`` counts idle. Where ``schedstat``
    is not readable it changes nothing.

    Args:
        threshold: the share of waiting time above which a thread is dropped.
        probe_every: steps between attempts to add a thread back.
    """

    def __init__(self, threshold: float = 0.15, probe_every: int = 8) -> None:
        self.threshold = threshold
        self.probe_every = probe_every
        self.threads: int | None = None  # the count the next step runs with; None: torch's own
        self._interval = probe_every
        self._countdown = probe_every
        self._probing = False
        self._before_probe = 0
        self._skipped = 0
        self._started = False
        self.enabled = _cpu_wait_ns() is not None

    def run(self, work: Any) -> Any:
        """Call ``work()`` under the chosen thread count; measure the waiting; adjust for the next step."""
        if not self.enabled:
            return work()
        import time

        import torch

        ceiling = torch.get_num_threads()
        if self.threads is None and not self._started:
            self.threads = _idle_cpus()  # a first guess, before any step was measured
        self._started = True
        threads = max(1, min(self.threads or ceiling, ceiling))
        if threads != ceiling:
            torch.set_num_threads(threads)
        waited, started = _cpu_wait_ns(), time.perf_counter_ns()
        try:
            return work()
        finally:
            elapsed = time.perf_counter_ns() - started
            after = _cpu_wait_ns()
            if threads != ceiling:
                torch.set_num_threads(ceiling)
            if waited is not None and after is not None and elapsed > 0:
                self._adjust(threads, ceiling, (after - waited) / (elapsed * threads))

    def _adjust(self, threads: int, ceiling: int, share: float) -> None:
        busy = share > self.threshold
        if self._probing:
            self._probing = False
            if busy:  # the extra threads did not pay: back off, probe less often
                self.threads = self._before_probe
                self._interval = min(self._interval * 2, 64)
            else:
                self._interval = self.probe_every
            self._countdown = self._interval
            return
        if busy and threads > 1:
            # Drop about the share of thread time spent waiting (at least one thread).
            self.threads = max(1, threads - max(1, round(threads * share)))
            self._countdown = self._interval
        elif threads < ceiling:
            self._countdown -= 1
            if self._countdown > 0:
                return
            idle = _idle_cpus()
            if idle is not None and idle <= threads and self._skipped < 4:
                # No CPU looks free now: a probe would only stall a step; look again later.
                self._skipped += 1
                self._countdown = self._interval
                return
            self._skipped = 0
            self._before_probe, self._probing = threads, True
            self.threads = min(ceiling, max(threads + 1, threads * 3 // 2))
        else:
            self.threads = None


@dataclass(eq=False)  # identity: the scheduler looks requests up in lists every step
class _Request:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    max_tokens: int
    generator: torch.Generator | None
    tokens: list[int]
    output: CompletionOutput = field(default_factory=CompletionOutput)
    num_computed: int = 0
    blocks: list[int] = field(default_factory=list)
    emitted: int = 0  # characters of output.text already streamed
    error: str | None = None

    def snapshot(self) -> RequestOutput:
        out = self.output
        copy = CompletionOutput(
            out.index,
            out.text,
            list(out.token_ids),
            out.cumulative_logprob,
            list(out.logprobs) if out.logprobs is not None else None,
            out.finish_reason,
            out.stop_reason,
        )
        return RequestOutput(
            self.request_id,
            self.prompt,
            list(self.prompt_token_ids),
            [copy],
            out.finish_reason is not None,
            self.error,
        )


class CPUExecutor:
    """Runs a :class:`~modelport.models.protocol.CausalLM` with continuous batching.

    Args:
        model: the model (native or backend) keeping the model protocol.
        tokenizer: encodes text prompts and decodes outputs.
        max_model_len: longest sequence (prompt and output) allowed.
        vocab_size: size of the logits' last dimension.
        eos_token_ids: tokens that end generation unless ``ignore_eos``.
        kv_bytes_per_token: memory one token's keys and values take (sizes the cache).
        settings: capacity settings.
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
    ) -> None:
        import torch

        self.model = model
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len
        self.vocab_size = vocab_size
        self.eos_token_ids = frozenset(eos_token_ids)
        self.settings = settings or ExecutorSettings()
        block = self.settings.block_size
        wanted = math.ceil(max_model_len / block) * self.settings.max_num_seqs
        per_block = kv_bytes_per_token * block
        affordable = self.settings.kv_cache_memory // per_block if per_block else wanted
        num_blocks = min(wanted, affordable)
        if num_blocks < math.ceil(max_model_len / block):
            raise ExecutorError(
                f"kv_cache_memory={self.settings.kv_cache_memory} bytes holds {num_blocks * block} tokens, "
                f"less than one sequence of max_model_len={max_model_len}; raise kv_cache_memory or lower max_model_len"
            )
        self.allocator = BlockAllocator(num_blocks)
        self.kv_cache = model.new_kv_cache(num_blocks, block)
        self._generator = torch.Generator().manual_seed(int(torch.seed() % (2**63)))
        self._ids = itertools.count()
        self.waiting: deque[_Request] = deque()
        self.running: list[_Request] = []
        self._failed: list[_Request] = []
        self.steps = 0
        #: Picks each step's torch thread count from how long the threads waited for a CPU.
        self.threads = ThreadGovernor()

    # --- requests -------------------------------------------------------------------

    def add_request(
        self, prompt: str | Sequence[int], params: SamplingParams | None = None, request_id: str | None = None
    ) -> str:
        """Queue a request (text or token ids); returns its id. Bad requests fail alone at the next step."""
        params = params or SamplingParams()
        rid = request_id if request_id is not None else str(next(self._ids))
        text = prompt if isinstance(prompt, str) else None
        unreadable = None
        if isinstance(prompt, str) and self.tokenizer is None:
            ids: list[int] = []  # fails below, alone: text needs a tokenizer
        else:
            try:
                ids = list(self.tokenizer.encode(prompt)) if isinstance(prompt, str) else [int(t) for t in prompt]
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as exc:  # a prompt the tokenizer cannot encode fails alone, never the whole batch
                # BaseException: a panic in a Rust tokenizer (a tokenizer.json regex that backtracks past onig's
                # retry limit on this prompt) reaches Python as pyo3's PanicException, which is not an Exception.
                ids, unreadable = [], f"the prompt could not be encoded ({type(exc).__name__}: {exc})"
        generator = None
        if params.seed is not None:
            import torch

            generator = torch.Generator().manual_seed(params.seed)
        request = _Request(rid, text, ids, params, 0, generator, list(ids))
        request.output.logprobs = [] if params.logprobs is not None else None
        request.output.cumulative_logprob = 0.0 if params.logprobs is not None else None
        problem = unreadable or self._check(request)
        if problem:
            request.error = problem
            request.output.finish_reason = "error"
            self._failed.append(request)
        else:
            room = self.max_model_len - len(ids)
            request.max_tokens = min(params.max_tokens, room) if params.max_tokens is not None else room
            self.waiting.append(request)
        return rid

    def _check(self, request: _Request) -> str | None:
        ids, params = request.prompt_token_ids, request.params
        if self.tokenizer is None and (request.prompt is not None or params.stop_strings):
            return (
                "a text prompt or stop strings need a tokenizer, and this model was loaded with "
                "skip_tokenizer_init=True; pass token ids and stop_token_ids instead"
            )
        if not ids:
            return "the prompt is empty"
        if len(ids) >= self.max_model_len:
            return (
                f"the prompt has {len(ids)} tokens; max_model_len is {self.max_model_len}, leaving no room to generate"
            )
        bad = [t for t in ids if not 0 <= t < self.vocab_size]
        if bad:
            return f"prompt token ids outside the vocabulary (size {self.vocab_size}): {bad[:5]}"
        bad = [t for t in params.stop_token_ids or () if t >= self.vocab_size]
        if bad:
            return f"stop_token_ids outside the vocabulary (size {self.vocab_size}): {bad[:5]}"
        return None

    def has_unfinished(self) -> bool:
        """Whether any request is waiting, running or has a failure not yet reported."""
        return bool(self.waiting or self.running or self._failed)

    def abort(self, request_id: str) -> None:
        """Drop a request wherever it is."""
        for request in [r for r in self.running if r.request_id == request_id]:
            self.running.remove(request)
            self.allocator.free(request.blocks)
        self.waiting = deque(r for r in self.waiting if r.request_id != request_id)

    # --- scheduling -----------------------------------------------------------------

    def _blocks_needed(self, request: _Request, upto: int) -> int:
        return max(0, math.ceil(upto / self.settings.block_size) - len(request.blocks))

    def _preempt(self, victim: _Request) -> None:
        self.running.remove(victim)
        self.allocator.free(victim.blocks)
        victim.blocks = []
        victim.num_computed = 0  # recomputed from its tokens (prompt and output so far) when readmitted
        self.waiting.appendleft(victim)

    def _schedule(self) -> list[tuple[_Request, int]]:
        while self.waiting and len(self.running) < self.settings.max_num_seqs:
            candidate = self.waiting[0]
            if self._blocks_needed(candidate, min(len(candidate.tokens), self.settings.block_size)) > (
                self.allocator.num_free
            ):
                break
            self.running.append(self.waiting.popleft())
        budget = self.settings.max_num_batched_tokens
        scheduled: list[tuple[_Request, int]] = []
        # Decoding sequences first (one token each), then prefills in arrival order.
        for request in sorted(self.running, key=lambda r: len(r.tokens) - r.num_computed > 1):
            if request not in self.running or budget <= 0:
                continue
            count = min(len(request.tokens) - request.num_computed, budget)
            need = self._blocks_needed(request, request.num_computed + count)
            while need > self.allocator.num_free:
                victims = [r for r in self.running if r is not request and all(r is not s for s, _ in scheduled)]
                if not victims:
                    break
                self._preempt(victims[-1])
            if need > self.allocator.num_free:
                if len(self.running) > 1:
                    self._preempt(request)
                continue
            blocks = self.allocator.allocate(need)
            assert blocks is not None
            request.blocks.extend(blocks)
            scheduled.append((request, count))
            budget -= count
        return scheduled

    # --- stepping -------------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        """Run one forward; return the progress of every request that produced a token, finished or failed."""
        import torch

        reported = [r.snapshot() for r in self._failed]
        self._failed = []
        scheduled = self._schedule()
        if not scheduled:
            if self.running and not reported:
                raise ExecutorError("no sequence fits in the KV cache; raise kv_cache_memory")
            return reported
        token_ids: list[int] = []
        positions: list[int] = []
        for request, count in scheduled:
            token_ids.extend(request.tokens[request.num_computed : request.num_computed + count])
            positions.extend(range(request.num_computed, request.num_computed + count))
        batch = SequenceBatch(
            token_ids=torch.tensor(token_ids, dtype=torch.long),
            positions=torch.tensor(positions, dtype=torch.long),
            query_lens=[c for _, c in scheduled],
            context_lens=[r.num_computed for r, _ in scheduled],
            block_tables=[list(r.blocks) for r, _ in scheduled],
        )
        # Plain greedy rows (no penalty to apply first) that finish their prompt or decode get one argmax.
        plain = [
            row
            for row, (request, count) in enumerate(scheduled)
            if request.params.greedy
            and request.params.repetition_penalty == 1.0
            and request.num_computed + count == len(request.tokens)
        ]

        def forward_and_pick() -> tuple[torch.Tensor, list[int]]:
            logits = self.run_model(batch).float()
            # Every row (the usual decode step): a view, not a copy of [rows, vocab] gathered by index.
            rows = logits if len(plain) == logits.shape[0] else logits[plain]
            return logits, sample_greedy(rows[:, : self.vocab_size]) if plain else []

        # The argmax runs under the governor's thread count too: after the step, a parallel op with every
        # thread waits a scheduler slice for a descheduled one on a busy machine (10 ms for a [1, 32000] row).
        with torch.inference_mode():
            logits, picks = self.threads.run(forward_and_pick)
        self.steps += 1
        for request, count in scheduled:
            request.num_computed += count
        chosen = dict(zip(plain, picks, strict=True))
        for row, (request, _) in enumerate(scheduled):
            if request.num_computed < len(request.tokens):
                continue  # a prefill chunk: no token yet
            self._append(request, logits[row], chosen.get(row))
            self._advance_stream(request)
            reported.append(request.snapshot())
            if request.output.finish_reason is not None:
                self.running.remove(request)
                self.allocator.free(request.blocks)
                request.blocks = []
        return reported

    def run_model(self, batch: SequenceBatch) -> torch.Tensor:
        """One forward of the model over ``batch``; returns its logits.

        :meth:`step` calls it under the :class:`ThreadGovernor`. The seam an executor for another
        device overrides (modelport-cuda replays CUDA graphs for decode steps).
        """
        logits: torch.Tensor = self.model.forward(batch, self.kv_cache)
        return logits

    def _append(self, request: _Request, row: torch.Tensor, token: int | None = None) -> None:
        """Append the next token of ``request``, chosen from its logits ``row`` unless ``token`` is given."""
        import torch

        params, out = request.params, request.output
        raw = row[: self.vocab_size]
        if token is None:
            logits = raw
            if params.repetition_penalty != 1.0:
                seen = torch.tensor(request.tokens, dtype=torch.long)
                logits = apply_repetition_penalty(raw.clone(), seen, params.repetition_penalty)
            token = sample(logits, params, request.generator or self._generator)
        request.tokens.append(token)
        out.token_ids.append(token)
        if params.logprobs is not None:
            logprobs = torch.log_softmax(raw, dim=-1)
            chosen = float(logprobs[token])
            count = min(self.vocab_size, logprobs.numel()) if params.logprobs == -1 else params.logprobs
            top = torch.topk(logprobs, count).indices.tolist() if count else []
            entry = {}
            for tid in [*top, token]:
                lp = float(logprobs[tid])
                rank = int((logprobs > logprobs[tid]).sum()) + 1
                entry[tid] = Logprob(lp, rank, self._decode([tid]))
            assert out.logprobs is not None and out.cumulative_logprob is not None
            out.logprobs.append(entry)
            out.cumulative_logprob += chosen
        self._update_text(request)
        if out.finish_reason is not None:
            return
        if not params.ignore_eos and token in self.eos_token_ids:
            out.finish_reason = "stop"
        elif params.stop_token_ids and token in params.stop_token_ids:
            out.finish_reason, out.stop_reason = "stop", token
        elif len(out.token_ids) >= request.max_tokens or len(request.tokens) >= self.max_model_len:
            out.finish_reason = "length"

    def _update_text(self, request: _Request) -> None:
        out = request.output
        ids = out.token_ids
        if (
            out.finish_reason is None
            and ids
            and (ids[-1] in self.eos_token_ids or ids[-1] in (request.params.stop_token_ids or ()))
        ):
            ids = ids[:-1]  # the ending token's text is not part of the output
        text = self._decode(ids)
        for stop in request.params.stop_strings:
            at = text.find(stop, max(0, len(out.text) - len(stop)))
            if at != -1:
                out.text = text[:at]
                out.finish_reason, out.stop_reason = "stop", stop
                return
        out.text = text

    def _decode(self, ids: list[int]) -> str:
        """Text of ``ids`` (special tokens skipped); empty without a tokenizer (token ids only)."""
        return self.tokenizer.decode(ids, skip_special_tokens=True) if self.tokenizer is not None else ""

    def _advance_stream(self, request: _Request) -> None:
        out = request.output
        if out.finish_reason is not None:
            request.emitted = len(out.text)
            return
        # Hold back what a stop string or an unfinished UTF-8 sequence may still change.
        hold = max((len(s) - 1 for s in request.params.stop_strings), default=0)
        safe = len(out.text) - hold
        while safe > request.emitted and out.text[safe - 1] == _REPLACEMENT:
            safe -= 1
        request.emitted = max(request.emitted, safe)

    # --- whole runs -----------------------------------------------------------------

    def run(self) -> Iterator[RequestOutput]:
        """Step until every request is done, yielding each progress report (whole text so far)."""
        while self.has_unfinished():
            yield from self.step()

    def generate(
        self, prompts: Sequence[str | Sequence[int]], params: SamplingParams | Sequence[SamplingParams] | None = None
    ) -> list[RequestOutput]:
        """Run ``prompts`` to completion together; one final result per prompt, in order."""
        plist = list(params) if isinstance(params, Sequence) else [params or SamplingParams()] * len(prompts)
        if len(plist) != len(prompts):
            raise ExecutorError(f"{len(prompts)} prompts but {len(plist)} sampling params")
        ids = [self.add_request(p, sp) for p, sp in zip(prompts, plist, strict=True)]
        finals = {report.request_id: report for report in self.run() if report.finished}
        return [finals[rid] for rid in ids]

    def stream(self, prompt: str | Sequence[int], params: SamplingParams | None = None) -> Iterator[str]:
        """Generate for one prompt, yielding text as it becomes final (other requests progress too).

        Text that a stop string or an unfinished multi-byte character may still
        change is held back until it is settled.

        Raises:
            ExecutorError: the request failed (its reason is the message).
        """
        rid = self.add_request(prompt, params)
        request = next((r for r in [*self.waiting, *self._failed] if r.request_id == rid), None)
        sent = 0
        while self.has_unfinished():
            for report in self.step():
                if report.request_id != rid:
                    continue
                if report.error:
                    raise ExecutorError(f"request {rid} failed: {report.error}")
                text = report.outputs[0].text
                upto = len(text) if report.finished or request is None else request.emitted
                if upto > sent:
                    yield text[sent:upto]
                    sent = upto
                if report.finished:
                    return
