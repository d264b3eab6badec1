"""Generation throughput: modelport's CPU executor against transformers' batched generate.

    python benchmarks/bench_generate.py [--repeats 3] [--dtypes bfloat16,float32] [--concurrency 1,8,32,256]
                                        [--prompt-len 64] [--gen-len 64] [--threads N] [--load N]
                                        [--cache-dir DIR]

The model is a ~100M-parameter llama written by ``modelport.testing.make_tiny_model``
(hidden 768, 12 layers, 12 query heads and 4 key/value heads, MLP 2048, vocab 32000
with tied embeddings: 100.1M parameters, float32 on disk), with a 32,000-token
byte-level BPE tokenizer trained by ``make_tokenizer`` on a seeded synthetic corpus,
so that every generated id decodes to text as a real tokenizer's would. Both are
built once under the cache folder and reused. The weights are random: the tokens
are meaningless, the work is not.

The workload, for each concurrency N: N requests whose prompts are ``--prompt-len``
seeded random token ids (all the same length, so transformers pads nothing), each
generating exactly ``--gen-len`` tokens greedily. Both sides do the same work:

- ``transformers``: ``AutoModelForCausalLM.from_pretrained(folder, dtype=...)``, then one
  ``generate`` on the N prompts as a left-padded batch with its attention mask,
  ``do_sample=False, use_cache=True, max_new_tokens=G, min_new_tokens=G``.
- ``modelport``: ``modelport.LLM(folder, dtype=..., model_impl="native")`` (core's native
  llama on the CPU executor, default settings: 64 sequences at once, 2048 tokens a step),
  then what ``llm.generate`` does on the N prompts with
  ``SamplingParams(temperature=0, max_tokens=G, ignore_eos=True)``: every request added to
  ``llm.executor``, which steps until all are done; its results carry the decoded text too.

Time to first token (TTFT) is, for each request, the time from the start of the call
to its first generated token; the table gives the median and the 90th percentile over
the requests of every round. transformers' batched generate hands out the first tokens
of the whole batch at once (a streamer notes when); modelport's executor reports each
request's first token from the step that made it.

The roof: at 1 request, a step reads every weight once, so tokens/s cannot exceed
memory bandwidth / weight bytes. Each modelport child measures the bandwidth (a 512 MiB
float32 tensor copy with the same thread count, read + write bytes over the best of 5
times) and the weights' bytes in its dtype; the line under each table prints both, the
roof, and modelport's rate at 1 request as a share of it: the whole call's rate (the
prompt's prefill included), and the rate of its decode steps alone (the tokens after the
first over the time after the first), which is what the roof bounds.

``--load N`` starts N competing processes before the first child and stops them after
the last, each keeping one core busy with float32 matrix products, to see how both
sides behave on a shared machine; the header of each table says how many ran.

Throughput is N x G generated tokens over the wall time of that one call (prompt
processing included), the median over ``--repeats`` rounds. Each round runs one
child process per approach and dtype (imports, load, one untimed warm-up
generate, then each N once), the approaches interleaved so that a noisy neighbour
hits both alike; every child sets the same torch thread count (modelport's executor
runs a step with fewer while its threads wait for a CPU: ``ThreadGovernor``;
transformers always uses the count set). The header
names the kernel each side's linear layers call (modelport sends float32 ones
to oneDNN, and bfloat16 ones to oneDNN with weights packed once, q/k/v and
gate/up stacked: ``modelport.models.linear``), and the run prints the load average
before and after, since other work on the machine slows both sides unevenly.
"same tokens" counts the requests whose generated ids are identical on both
sides, for information: random weights make near-ties, where a different
summation order picks another token, and in bfloat16 modelport computes decode
attention in float32 where transformers stays in bfloat16.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

#: The model's shape: llama-style, ~100M parameters.
MODEL_SIZES: dict[str, Any] = dict(
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    num_key_value_heads=4,
    intermediate_size=2048,
    vocab_size=32000,
    max_position_embeddings=1024,
    tie_word_embeddings=True,
    dtype="float32",
)
APPROACHES = ("transformers", "modelport")
PLUGINS = "modelport-hf"
FIRST_ORDINARY_ID = 3  # ids 0, 1, 2 are the kit tokenizer's <unk>, <s>, </s>


def _corpus(words: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    letters = "etaoinshrdlcumwfgypbvkjxqz"
    weights = [12, 9, 8, 7, 7, 6, 6, 6, 4, 4, 3, 3, 3, 2, 2, 2, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1]
    lexicon = ["".join(rng.choices(letters, weights, k=rng.randint(2, 9))) for _ in range(60_000)]
    return " ".join(rng.choice(lexicon) for _ in range(words))


def model_folder(cache_dir: Path) -> Path:
    """The benchmark model under ``cache_dir``, built on first use (atomically: built aside, then renamed)."""
    folder = cache_dir / "llama-100m-f32"
    if (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file():
        return folder
    from modelport.testing import make_tiny_model, make_tokenizer

    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix="llama-100m-", dir=cache_dir))
    print(f"building the benchmark model in {folder} (once)...", file=sys.stderr)
    make_tiny_model(partial, "llama", tokenizer=False, **MODEL_SIZES)
    tokenizer = make_tokenizer(partial, vocab_size=MODEL_SIZES["vocab_size"], text=_corpus(400_000))
    if len(tokenizer) != MODEL_SIZES["vocab_size"]:
        raise SystemExit(f"the tokenizer has {len(tokenizer)} tokens, not {MODEL_SIZES['vocab_size']}")
    try:
        partial.rename(folder)
    except OSError:  # another run finished first: keep its copy
        shutil.rmtree(partial, ignore_errors=True)
    return folder


def prompts(count: int, length: int, seed: int) -> list[list[int]]:
    """``count`` prompts of ``length`` random ordinary token ids (seeded, so every child builds the same)."""
    rng = random.Random(seed)
    return [[rng.randrange(FIRST_ORDINARY_ID, MODEL_SIZES["vocab_size"]) for _ in range(length)] for _ in range(count)]


# --- the child: one approach and dtype, every concurrency once -----------------


def _digest(ids: list[int]) -> str:
    return hashlib.sha1(json.dumps(ids).encode()).hexdigest()[:12]


def memory_bandwidth(threads: int, megabytes: int = 512, rounds: int = 5) -> float:
    """Bytes per second a large tensor copy moves (read plus write), best of ``rounds``, with ``threads`` threads."""
    import torch

    torch.set_num_threads(threads)
    count = megabytes * (1 << 20) // 4
    source = torch.ones(count, dtype=torch.float32)
    target = torch.empty_like(source)
    target.copy_(source)  # touch every page first
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        target.copy_(source)
        best = min(best, time.perf_counter() - start)
    return 2 * count * 4 / best


def child(approach: str, dtype: str, folder: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """Load ``approach`` in ``dtype``, warm it up, then time one generate per concurrency."""
    import torch
    import transformers

    torch.set_num_threads(settings["threads"])
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    gen = settings["gen_len"]
    kernel = "F.linear"  # what the linear layers run on

    if approach == "transformers":
        from transformers import AutoModelForCausalLM
        from transformers.generation.streamers import BaseStreamer

        model = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype)).eval()

        class FirstToken(BaseStreamer):  # type: ignore[misc]
            """Notes when generate hands out its first new tokens (its first put() is the prompt)."""

            def __init__(self) -> None:
                self.puts = 0
                self.at: float | None = None

            def put(self, value: Any) -> None:
                self.puts += 1
                if self.puts == 2:
                    self.at = time.perf_counter()

            def end(self) -> None:
                pass

        def run(batch: list[list[int]], new_tokens: int, start: float) -> tuple[list[list[int]], list[float]]:
            # Left padding with an attention mask; the prompts here are all one length, so none is added.
            width = max(map(len, batch))
            ids = torch.tensor([[0] * (width - len(p)) + p for p in batch])
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
            first = FirstToken()
            with torch.inference_mode():
                out = model.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    do_sample=False,
                    use_cache=True,
                    max_new_tokens=new_tokens,
                    min_new_tokens=new_tokens,
                    pad_token_id=0,
                    streamer=first,
                )
            generated: list[list[int]] = out[:, width:].tolist()
            at = first.at if first.at is not None else time.perf_counter()
            return generated, [at - start] * len(batch)  # one batch: every request's first token comes at once

    else:
        import modelport
        from modelport import SamplingParams

        llm = modelport.LLM(str(folder), dtype=dtype, model_impl="native")
        try:
            from modelport.models import linear as native_linear
        except ImportError:  # a modelport from before native linear layers chose their kernel
            pass
        else:
            if dtype == "float32" and native_linear.onednn_linear_works():
                kernel = "mkldnn._linear_pointwise"
            works = getattr(native_linear, "packed_linear_works", None)  # absent before packed weights
            if works is not None and dtype != "float32" and works(getattr(torch, dtype)):
                kernel = "mkldnn._linear_pointwise, packed weights, q/k/v and gate/up stacked"
            native_bf16 = getattr(native_linear, "bfloat16_kernels", None)  # absent before the upcast path
            if native_bf16 is not None and dtype == "bfloat16" and not native_bf16():
                kernel = (
                    f"F.linear under {native_linear.UPCAST_MIN_ROWS} rows, else float32 products of the weights"
                    " upcast chunk by chunk, q/k/v and gate/up stacked"
                )

        def run(batch: list[list[int]], new_tokens: int, start: float) -> tuple[list[list[int]], list[float]]:
            # What llm.generate does (add every request, step until done), watching each request's first token.
            executor = llm.executor
            params = SamplingParams(temperature=0, max_tokens=new_tokens, ignore_eos=True)
            ids = [executor.add_request(prompt, params) for prompt in batch]
            first: dict[str, float] = {}
            final: dict[str, list[int]] = {}
            for report in executor.run():
                first.setdefault(report.request_id, time.perf_counter())
                if report.finished:
                    final[report.request_id] = list(report.outputs[0].token_ids)
            return [final[rid] for rid in ids], [first[rid] - start for rid in ids]

    run(prompts(2, settings["prompt_len"], seed=-1), 8, time.perf_counter())  # warm-up: lazy initialisation
    results: dict[str, Any] = {
        "approach": approach,
        "dtype": dtype,
        "threads": torch.get_num_threads(),
        "linear": kernel,
        "runs": {},
    }
    if approach == "modelport":
        results["bandwidth"] = memory_bandwidth(settings["threads"])
        torch.set_num_threads(settings["threads"])
        results["weight_bytes"] = sum(p.numel() * p.element_size() for p in llm.loaded.model.parameters())
    for count in settings["concurrency"]:
        batch = prompts(count, settings["prompt_len"], seed=count)
        start = time.perf_counter()
        generated, first = run(batch, gen, start)
        seconds = time.perf_counter() - start
        if any(len(ids) != gen for ids in generated):
            raise SystemExit(f"{approach} generated {sorted({len(ids) for ids in generated})} tokens, not {gen}")
        results["runs"][str(count)] = {
            "seconds": seconds,
            "ttft": first,
            "digests": [_digest(ids) for ids in generated],
        }
    return results


# --- the parent: build, run children, print ------------------------------------

#: What each competing process of ``--load`` runs: float32 matrix products on one thread, forever.
BUSY = "import torch\ntorch.set_num_threads(1)\na = torch.randn(384, 384)\nwhile True:\n    a = torch.tanh(a @ a)\n"


def _run_child(approach: str, dtype: str, folder: Path, settings: dict[str, Any]) -> dict[str, Any]:
    env = {**os.environ, "MODELPORT_PLUGINS": PLUGINS, "TOKENIZERS_PARALLELISM": "false"}
    env.pop("MODELPORT_DISABLE_PLUGINS", None)
    proc = subprocess.run(
        [sys.executable, __file__, "--child", approach, dtype, str(folder), json.dumps(settings)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=3600,
    )
    if proc.returncode != 0:
        raise SystemExit(f"the {approach} {dtype} child failed:\n{proc.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _load() -> str:
    """The 1-minute load average: other work on the machine slows both sides, unevenly."""
    return f"{os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else "unknown"


def _percentile(values: list[float], share: float) -> float:
    """The ``share`` quantile of ``values`` (linear between the two nearest)."""
    ordered = sorted(values)
    at = (len(ordered) - 1) * share
    low = int(at)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (at - low)


def _table(dtype: str, runs: dict[str, list[dict[str, Any]]], settings: dict[str, Any]) -> list[str]:
    gen = settings["gen_len"]
    ours = runs["modelport"]
    lines = [
        f"{dtype}: generated tokens/s, median of {len(ours)} run(s); "
        f"prompt {settings['prompt_len']} + {gen} generated tokens per request; "
        f"{ours[0]['threads']} torch thread(s); {settings['load']} competing busy process(es); "
        f"linear layers: transformers {runs['transformers'][0]['linear']}, modelport {ours[0]['linear']}",
        f"  {'N':>4} {'transformers':>13} {'modelport':>10} {'modelport/transformers':>23} "
        f"{'TTFT s median/p90: transformers':>32} {'modelport':>14} {'same tokens':>12}",
    ]
    for count in settings["concurrency"]:
        key = str(count)
        rate = {
            approach: statistics.median(count * gen / run["runs"][key]["seconds"] for run in measured)
            for approach, measured in runs.items()
        }
        ttft = {  # over every request of every run
            approach: [t for run in measured for t in run["runs"][key]["ttft"]] for approach, measured in runs.items()
        }
        first = {
            approach: f"{statistics.median(ttft[approach]):.2f}/{_percentile(ttft[approach], 0.9):.2f}"
            for approach in APPROACHES
        }
        theirs, mine = (runs[approach][0]["runs"][key]["digests"] for approach in APPROACHES)
        same = sum(a == b for a, b in zip(theirs, mine, strict=True))
        lines.append(
            f"  {count:>4} {rate['transformers']:>13.1f} {rate['modelport']:>10.1f} "
            f"{rate['modelport'] / rate['transformers']:>22.2f}x {first['transformers']:>32} {first['modelport']:>14} "
            f"{f'{same}/{count}':>12}"
        )
    bandwidth = statistics.median(run["bandwidth"] for run in ours)
    weight_bytes = ours[0]["weight_bytes"]
    roof = bandwidth / weight_bytes
    line = (
        f"  memory bandwidth {bandwidth / 1e9:.1f} GB/s (a 512 MiB tensor copy, read + write, best of 5, "
        f"in each modelport child); weights {weight_bytes / 1e6:.0f} MB; roof {roof:.1f} tokens/s"
    )
    if "1" in ours[0]["runs"]:
        single = statistics.median(gen / run["runs"]["1"]["seconds"] for run in ours)
        # The roof bounds decode steps; the whole call also holds the prompt's prefill, which is compute-bound.
        decode = statistics.median(
            (gen - 1) / (run["runs"]["1"]["seconds"] - run["runs"]["1"]["ttft"][0]) for run in ours
        )
        line += (
            f"; modelport at 1 request {single:.1f} tokens/s = {single / roof:.0%} of the roof "
            f"(its decode steps alone, after the first token: {decode:.1f} tokens/s = {decode / roof:.0%})"
        )
    lines.append(line)
    lines.append(f"  load average {_load()} after this table")
    return lines


def _start_load(count: int) -> list[subprocess.Popen[bytes]]:
    """``count`` competing processes, each keeping one core busy with matrix products."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return [
        subprocess.Popen([sys.executable, "-c", BUSY], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(count)
    ]


def _stop_load(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="rounds per approach and dtype (median reported)")
    parser.add_argument("--dtypes", default="bfloat16,float32", help="comma-separated dtypes to run the model in")
    parser.add_argument("--concurrency", default="1,8,32,256", help="comma-separated numbers of concurrent requests")
    parser.add_argument("--prompt-len", type=int, default=64, help="prompt tokens per request")
    parser.add_argument("--gen-len", type=int, default=64, help="generated tokens per request")
    parser.add_argument("--threads", type=int, default=None, help="torch threads in every child (default: torch's)")
    parser.add_argument(
        "--load", type=int, default=0, help="competing busy processes (one core each) running during the measurement"
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "modelport-bench",
        help="where the benchmark model is built and kept",
    )
    parser.add_argument("--child", nargs=4, metavar=("APPROACH", "DTYPE", "FOLDER", "SETTINGS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        approach, dtype, folder, settings = args.child
        print(json.dumps(child(approach, dtype, Path(folder), json.loads(settings))))
        return 0

    import torch

    started = time.perf_counter()
    folder = model_folder(args.cache_dir)
    settings = {
        "threads": args.threads or torch.get_num_threads(),
        "concurrency": [int(n) for n in args.concurrency.split(",")],
        "prompt_len": args.prompt_len,
        "gen_len": args.gen_len,
        "load": args.load,
    }
    print(
        f"model: {folder} (llama, 100.1M parameters, vocab 32000); python {sys.version.split()[0]}, "
        f"torch {torch.__version__}, {os.cpu_count()} CPU(s); load average {_load()} at the start"
    )
    load = _start_load(args.load)
    try:
        for dtype in args.dtypes.split(","):
            runs: dict[str, list[dict[str, Any]]] = {approach: [] for approach in APPROACHES}
            for _ in range(args.repeats):
                for approach in APPROACHES:
                    runs[approach].append(_run_child(approach, dtype, folder, settings))
            print("\n".join(_table(dtype, runs, settings)), flush=True)
    finally:
        _stop_load(load)
    print(f"total {time.perf_counter() - started:.0f} s; load average {_load()} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
