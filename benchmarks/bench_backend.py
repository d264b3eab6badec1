"""The Transformers backend's throughput: modelport's CPU executor against transformers' batched generate.

    python benchmarks/bench_backend.py [--repeats 3] [--concurrency 1,8,32] [--prompt-len 64]
                                       [--gen-len 64] [--threads N] [--cache-dir DIR] [--quick]

The model is a ~100M-parameter GPT-NeoX, an architecture core has no native
implementation for, so ``model_impl="auto"`` gives it to the Transformers backend
(modelport-transformers): hidden 768, 12 layers, 12 heads, MLP 2560, vocab 16384,
untied output projection (100.7M parameters), written in float32 by transformers'
own ``GPTNeoXForCausalLM`` and ``save_pretrained`` once under the cache folder.
The weights are random: the tokens are meaningless, the work is not.

The workload, for each concurrency N: N requests whose prompts are ``--prompt-len``
seeded random token ids (one length, so transformers pads nothing), each
generating exactly ``--gen-len`` tokens greedily, in float32:

- ``transformers``: ``AutoModelForCausalLM.from_pretrained(folder, dtype=float32)``, then
  one ``generate`` on the N prompts as one batch with its attention mask,
  ``do_sample=False, use_cache=True, max_new_tokens=G, min_new_tokens=G``;
- ``modelport``: ``modelport.LLM(folder, dtype="float32", skip_tokenizer_init=True)`` (the
  backend on the CPU executor, default settings: continuous batching, paged KV cache),
  then ``llm.generate`` on the N prompts with
  ``SamplingParams(temperature=0, max_tokens=G, ignore_eos=True)``.

Throughput is N x G generated tokens over the wall time of that one call (prompt
processing included), the median over ``--repeats`` rounds. Each round runs one
child process per approach (imports, load, one untimed warm-up generate, then
each N once), the approaches interleaved so that a noisy neighbour hits both
alike; every child sets the same torch thread count. The run prints the load
average before and after, since other work on the machine slows both sides
unevenly. "same tokens" counts the requests whose generated ids are identical
on both sides (random weights make near-ties, where another summation order
picks another token). ``--quick`` is one round of 16 generated tokens, to check
that the script runs end to end.

Each row also gives the CPU time (user and system, all threads) each side's
call took, median over the rounds, and their ratio. On a busy machine the wall
times measure the neighbours as much as the code (a thread descheduled at a
barrier stalls the others); with ``--threads 1`` the CPU-time ratio is the
steadier estimate of what a quiet machine would show.
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

#: The model's shape: GPT-NeoX, ~100M parameters.
MODEL_SIZES: dict[str, Any] = dict(
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=2560,
    vocab_size=16384,
    max_position_embeddings=1024,
    tie_word_embeddings=False,
)
APPROACHES = ("transformers", "modelport")
PLUGINS = "modelport-hf,modelport-transformers"


def model_folder(cache_dir: Path) -> Path:
    """The benchmark model under ``cache_dir``, built on first use (atomically: built aside, then renamed)."""
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    folder = cache_dir / "gpt-neox-100m-f32"
    if (folder / "model.safetensors").is_file():
        return folder
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix="gpt-neox-100m-", dir=cache_dir))
    print(f"building the benchmark model in {folder} (once)...", file=sys.stderr)
    config = GPTNeoXConfig(
        **MODEL_SIZES, bos_token_id=1, eos_token_id=2, architectures=["GPTNeoXForCausalLM"], dtype="float32"
    )
    torch.manual_seed(0)
    GPTNeoXForCausalLM(config).eval().save_pretrained(partial)
    try:
        partial.rename(folder)
    except OSError:  # another run finished first: keep its copy
        shutil.rmtree(partial, ignore_errors=True)
    return folder


def prompts(count: int, length: int, seed: int) -> list[list[int]]:
    """``count`` prompts of ``length`` random token ids above 2 (seeded, so every child builds the same)."""
    rng = random.Random(seed)
    return [[rng.randrange(3, MODEL_SIZES["vocab_size"]) for _ in range(length)] for _ in range(count)]


def _digest(ids: list[int]) -> str:
    return hashlib.sha1(json.dumps(ids).encode()).hexdigest()[:12]


# --- the child: one approach, every concurrency once ---------------------------


def child(approach: str, folder: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """Load ``approach``, warm it up, then time one generate per concurrency."""
    import torch
    import transformers

    torch.set_num_threads(settings["threads"])
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    gen = settings["gen_len"]
    served_by = "transformers generate"

    if approach == "transformers":
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()

        def run(batch: list[list[int]], new_tokens: int) -> list[list[int]]:
            width = max(map(len, batch))
            ids = torch.tensor([[0] * (width - len(p)) + p for p in batch])
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
            with torch.inference_mode():
                out = model.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    do_sample=False,
                    use_cache=True,
                    max_new_tokens=new_tokens,
                    min_new_tokens=new_tokens,
                    pad_token_id=0,
                )
            generated: list[list[int]] = out[:, width:].tolist()
            return generated

    else:
        import modelport
        from modelport import SamplingParams

        llm = modelport.LLM(str(folder), dtype="float32", skip_tokenizer_init=True)
        model = llm.executor.model
        served_by = f"{type(model).__module__}.{type(model).__name__} (batched={getattr(model, 'batched', None)})"

        def run(batch: list[list[int]], new_tokens: int) -> list[list[int]]:
            params = SamplingParams(temperature=0, max_tokens=new_tokens, ignore_eos=True)
            return [result.outputs[0].token_ids for result in llm.generate(batch, params)]

    run(prompts(2, settings["prompt_len"], seed=-1), 8)  # warm-up: lazy initialisation, first-use kernels
    results: dict[str, Any] = {
        "approach": approach,
        "threads": torch.get_num_threads(),
        "served_by": served_by,
        "runs": {},
    }
    for count in settings["concurrency"]:
        batch = prompts(count, settings["prompt_len"], seed=count)
        start, cpu = time.perf_counter(), time.process_time()
        generated = run(batch, gen)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        if any(len(ids) != gen for ids in generated):
            raise SystemExit(f"{approach} generated {sorted({len(ids) for ids in generated})} tokens, not {gen}")
        results["runs"][str(count)] = {
            "seconds": seconds,
            "cpu_seconds": cpu,
            "digests": [_digest(ids) for ids in generated],
        }
    return results


# --- the parent: build, run children, print ------------------------------------


def _run_child(approach: str, folder: Path, settings: dict[str, Any]) -> dict[str, Any]:
    env = {**os.environ, "MODELPORT_PLUGINS": PLUGINS, "TOKENIZERS_PARALLELISM": "false"}
    env.pop("MODELPORT_DISABLE_PLUGINS", None)
    proc = subprocess.run(
        [sys.executable, __file__, "--child", approach, str(folder), json.dumps(settings)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=1800,
    )
    if proc.returncode != 0:
        raise SystemExit(f"the {approach} child failed:\n{proc.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _load() -> str:
    """The 1-minute load average: other work on the machine slows both sides, unevenly."""
    return f"{os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else "unknown"


def _table(runs: dict[str, list[dict[str, Any]]], settings: dict[str, Any]) -> list[str]:
    gen = settings["gen_len"]
    lines = [
        f"float32: generated tokens/s, median of {len(runs['modelport'])} run(s); "
        f"prompt {settings['prompt_len']} + {gen} generated tokens per request; "
        f"{runs['modelport'][0]['threads']} torch thread(s); modelport served by {runs['modelport'][0]['served_by']}",
        f"  {'N':>3} {'transformers':>13} {'modelport':>10} {'modelport/transformers':>23} {'same tokens':>12} "
        f"{'CPU s transformers / modelport':>31} {'CPU-time ratio':>15}",
    ]
    for count in settings["concurrency"]:
        key = str(count)
        rate = {
            approach: statistics.median(count * gen / run["runs"][key]["seconds"] for run in measured)
            for approach, measured in runs.items()
        }
        cpu = {
            approach: statistics.median(run["runs"][key]["cpu_seconds"] for run in measured)
            for approach, measured in runs.items()
        }
        theirs, ours = (runs[approach][0]["runs"][key]["digests"] for approach in APPROACHES)
        same = sum(a == b for a, b in zip(theirs, ours, strict=True))
        spent = f"{cpu['transformers']:.2f} / {cpu['modelport']:.2f}"
        lines.append(
            f"  {count:>3} {rate['transformers']:>13.1f} {rate['modelport']:>10.1f} "
            f"{rate['modelport'] / rate['transformers']:>22.2f}x {f'{same}/{count}':>12} "
            f"{spent:>31} {cpu['transformers'] / cpu['modelport']:>14.2f}x"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="rounds per approach (median reported)")
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated numbers of concurrent requests")
    parser.add_argument("--prompt-len", type=int, default=64, help="prompt tokens per request")
    parser.add_argument("--gen-len", type=int, default=64, help="generated tokens per request")
    parser.add_argument("--threads", type=int, default=None, help="torch threads in every child (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="one round of 16 generated tokens (a smoke run)")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "modelport-bench",
        help="where the benchmark model is built and kept",
    )
    parser.add_argument("--child", nargs=3, metavar=("APPROACH", "FOLDER", "SETTINGS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        approach, folder, settings = args.child
        print(json.dumps(child(approach, Path(folder), json.loads(settings))))
        return 0
    if args.quick:
        args.repeats, args.gen_len = 1, 16

    import torch

    started = time.perf_counter()
    folder = model_folder(args.cache_dir)
    settings = {
        "threads": args.threads or torch.get_num_threads(),
        "concurrency": [int(n) for n in args.concurrency.split(",")],
        "prompt_len": args.prompt_len,
        "gen_len": args.gen_len,
    }
    print(
        f"model: {folder} (GPT-NeoX, 100.7M parameters, float32); python {sys.version.split()[0]}, "
        f"torch {torch.__version__}, {os.cpu_count()} CPU(s); load average {_load()} at the start"
    )
    runs: dict[str, list[dict[str, Any]]] = {approach: [] for approach in APPROACHES}
    for _ in range(args.repeats):
        for approach in APPROACHES:
            runs[approach].append(_run_child(approach, folder, settings))
    print("\n".join(_table(runs, settings)), flush=True)
    print(f"total {time.perf_counter() - started:.0f} s; load average {_load()} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
