"""Tensor parallelism on the CPU: tokens/s and per-rank peak memory, TP=1 against TP=2 (and more).

    python benchmarks/bench_tp.py [--repeats 3] [--tp 1,2] [--concurrency 1,8,32] [--prompt-len 64]
                                  [--gen-len 32] [--dtype float32] [--quick] [--cache-dir DIR]

The model is a llama written by ``modelport.testing.make_tiny_model`` (no tokenizer: prompts
are seeded random token ids): hidden 768, 12 layers, 12 query heads and 4 key/value heads,
MLP 2048, vocabulary 32000, untied (~110M parameters, 0.44 GB in float32), built once under
the cache folder. ``--quick`` uses a small one (hidden 256, 4 layers, vocabulary 8000) and one
round, to check that the script runs end to end.

Each round runs one child process per tensor-parallel size, the sizes interleaved so that
a noisy neighbour hits each alike. A child builds ``modelport.LLM(folder, dtype=...,
tensor_parallel_size=N)`` (N-1 worker processes through the ``mp`` backend, gloo on the
CPU), generates once untimed, then for each concurrency C generates C requests of
``--gen-len`` tokens greedily (``ignore_eos``) and times the call. Throughput is C x G
generated tokens over that wall time, the median over the rounds; the ratio column is
TP=N's throughput over TP=1's (the anchor, measured in the same run). "same tokens" says
whether every request generated the same ids as at TP=1.

Memory, per rank: the bytes of its parameters and its peak resident set (``ru_maxrss``:
the process's imports and the KV cache included, so the share of the weights shows in the
parameter bytes). The start-up column is the time ``LLM(...)`` took (workers spawned, each
importing torch and loading its shard).

On the CPU, TP=N splits the matrix products across N processes that together use the same
cores (each worker runs ``cpu_count // N`` torch threads), and every layer adds two
all-reduces over gloo (TCP on the loopback), so it is not expected to be faster than one
process on one machine: tensor parallelism on the CPU is for a model that does not fit one
process's memory, and on GPUs for one that does not fit one device. The run prints the load
average before and after, since other work on the machine slows the sides unevenly.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

FULL_MODEL: dict[str, Any] = dict(
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    num_key_value_heads=4,
    intermediate_size=2048,
    vocab_size=32000,
    max_position_embeddings=1024,
)
QUICK_MODEL: dict[str, Any] = dict(
    hidden_size=256,
    num_hidden_layers=4,
    num_attention_heads=8,
    num_key_value_heads=4,
    intermediate_size=512,
    vocab_size=8000,
    max_position_embeddings=512,
)


def model_folder(cache_dir: Path, sizes: dict[str, Any]) -> Path:
    """The benchmark model, written once under ``cache_dir``."""
    from modelport.testing import make_tiny_model

    name = "tp-" + "-".join(str(sizes[k]) for k in sorted(sizes))
    folder = cache_dir / name
    if not (folder / "model.safetensors").exists():
        make_tiny_model(folder, "llama", tokenizer=False, **sizes)
    return folder


def prompts(count: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    """``count`` seeded random prompts of ``length`` token ids."""
    rng = random.Random(seed)
    return [[rng.randrange(3, vocab) for _ in range(length)] for _ in range(count)]


def child(tp: int, folder: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """One approach's run: build the LLM, warm up, time each concurrency, report memory."""
    import resource

    from modelport import LLM, SamplingParams

    started = time.perf_counter()
    llm = LLM(str(folder), dtype=settings["dtype"], skip_tokenizer_init=True, tensor_parallel_size=tp)
    startup = time.perf_counter() - started
    params = SamplingParams(temperature=0.0, max_tokens=settings["gen_len"], ignore_eos=True)
    llm.generate(prompts(2, settings["prompt_len"], settings["vocab"], seed=99), params)  # warm-up
    results: dict[str, Any] = {"startup_s": startup, "runs": {}}
    for count in settings["concurrency"]:
        batch = prompts(count, settings["prompt_len"], settings["vocab"], seed=count)
        start = time.perf_counter()
        outputs = llm.generate(batch, params)
        seconds = time.perf_counter() - start
        tokens = [o.outputs[0].token_ids for o in outputs]
        results["runs"][str(count)] = {"seconds": seconds, "tokens": sum(map(len, tokens)), "ids": tokens}
    if tp > 1:
        results["ranks"] = llm.loaded.model.rank_reports()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        params_bytes = sum(p.numel() * p.element_size() for p in llm.loaded.model.parameters())
        results["ranks"] = [{"rank": 0, "parameter_bytes": params_bytes, "peak_rss_bytes": peak}]
    llm.close()
    return results


def _run_child(tp: int, folder: Path, settings: dict[str, Any]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, __file__, "--child", str(tp), str(folder), json.dumps(settings)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"child TP={tp} failed:\n{done.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "unknown"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="rounds per tensor-parallel size (median reported)")
    parser.add_argument("--tp", default="1,2", help="comma-separated tensor-parallel sizes; the first is the anchor")
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated numbers of concurrent requests")
    parser.add_argument("--prompt-len", type=int, default=64, help="prompt tokens per request")
    parser.add_argument("--gen-len", type=int, default=32, help="generated tokens per request")
    parser.add_argument("--dtype", default="float32", help="the dtype the model runs in")
    parser.add_argument("--quick", action="store_true", help="a small model and one round: checks the script runs")
    parser.add_argument("--cache-dir", default=None, help="where the model is written (default: a temp folder)")
    parser.add_argument("--child", nargs=3, metavar=("TP", "FOLDER", "SETTINGS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        tp, folder, raw = args.child
        print(json.dumps(child(int(tp), Path(folder), json.loads(raw))))
        return 0

    sizes = QUICK_MODEL if args.quick else FULL_MODEL
    repeats = 1 if args.quick else args.repeats
    tps = [int(t) for t in args.tp.split(",")]
    settings = {
        "dtype": args.dtype,
        "prompt_len": args.prompt_len if not args.quick else min(args.prompt_len, 32),
        "gen_len": args.gen_len if not args.quick else min(args.gen_len, 16),
        "concurrency": [int(c) for c in args.concurrency.split(",")],
        "vocab": sizes["vocab_size"],
    }
    cache = Path(args.cache_dir) if args.cache_dir else Path(tempfile.gettempdir()) / "modelport-bench-tp"
    cache.mkdir(parents=True, exist_ok=True)
    folder = model_folder(cache, sizes)
    print(f"# bench_tp: {folder.name} ({args.dtype}), {os.cpu_count()} CPUs, torch threads per rank: cpu_count // N")
    print(f"load average before: {_load()}")
    runs: dict[int, list[dict[str, Any]]] = {tp: [] for tp in tps}
    for _ in range(repeats):
        for tp in tps:
            runs[tp].append(_run_child(tp, folder, settings))
    print(f"load average after:  {_load()}")
    anchor = tps[0]

    def rate(tp: int, count: int) -> float:
        return statistics.median(r["runs"][str(count)]["tokens"] / r["runs"][str(count)]["seconds"] for r in runs[tp])

    print()
    print(f"prompt {settings['prompt_len']} tokens, {settings['gen_len']} generated, median of {repeats} round(s)")
    print(f"| TP | requests | tokens/s | vs TP={anchor} | same tokens |")
    print("|---|---|---|---|---|")
    for count in settings["concurrency"]:
        base = rate(anchor, count)
        for tp in tps:
            same = all(r["runs"][str(count)]["ids"] == runs[anchor][0]["runs"][str(count)]["ids"] for r in runs[tp])
            ratio = rate(tp, count) / base
            print(f"| {tp} | {count} | {rate(tp, count):.1f} | {ratio:.2f}x | {'yes' if same else 'no'} |")
    print()
    print("| TP | start-up s | rank | parameter MB | peak RSS MB |")
    print("|---|---|---|---|---|")
    for tp in tps:
        last = runs[tp][-1]
        startup = statistics.median(r["startup_s"] for r in runs[tp])
        for report in last["ranks"]:
            print(
                f"| {tp} | {startup:.1f} | {report['rank']} | {report['parameter_bytes'] / 1e6:.1f} "
                f"| {report['peak_rss_bytes'] / 1e6:.0f} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
