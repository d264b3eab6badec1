"""The CUDA executor's throughput: modelport-cuda against transformers' batched generate on one GPU.

    python benchmarks/bench_gpu.py [--concurrency 1,32,256] [--prompt-len 128] [--gen-len 128]
                                   [--repeats 3] [--cache-dir DIR] [--quick] [--device cpu]

Where torch sees no CUDA device it prints one line saying so and exits with
status 0, having measured nothing (so a CPU-only CI or ``nox -s benchmarks``
never fails on it); ``--device cpu`` runs the same harness on the CPU executor
and a tiny model instead, to check that the script works end to end, not to
measure anything.

The model is a ~0.5B-parameter Qwen2 of Qwen2.5-0.5B's shape, written once by
the testing kit (``make_tiny_model``) in bfloat16 under the cache folder:
hidden 896, 24 layers, 14 heads (2 key/value heads), MLP 4864, vocab 151936,
tied embeddings (494M parameters). The weights are random: the tokens are
meaningless, the work is not.

For each concurrency N, N requests whose prompts are ``--prompt-len`` seeded
random token ids (one length, so transformers pads nothing) each generate
exactly ``--gen-len`` tokens greedily, in bfloat16:

- ``transformers``: ``AutoModelForCausalLM.from_pretrained(folder, dtype=bfloat16)`` moved
  to the GPU, then one ``generate`` on the N prompts as one batch,
  ``do_sample=False, max_new_tokens=G, min_new_tokens=G``;
- ``modelport``: ``modelport.LLM(folder, device="cuda", dtype="bfloat16", max_num_seqs=256,
  max_num_batched_tokens=8192)`` (the cuda executor: paged KV cache sized by
  ``gpu_memory_utilization=0.9``, CUDA graphs for decode), then ``llm.generate`` with
  ``SamplingParams(temperature=0, max_tokens=G, ignore_eos=True)``.

Each approach runs in a child process of its own (the executor takes 90% of the
GPU's memory), one after the other, ``--repeats`` times interleaved; the figures
are medians. A child loads (timed: ``load``, from the call to a model ready on
the GPU, the cuda executor's profile run and cache included), warms up once per
N with 4 tokens (transformers' kernels, modelport's graph captures), measures
the time to first token of one request (``ttft``: modelport steps its executor
until the request's first token; transformers generates one token), then runs
each N once. Throughput is N x G generated tokens over the wall time of the
call, prompt processing included. The run prints the load average before and
after. ``--quick`` is one round of 16 generated tokens.

Goal (issue 15): modelport at least 5x transformers' tokens/s at 256 requests.
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

#: Qwen2.5-0.5B's shape.
MODEL_SIZES: dict[str, Any] = dict(
    hidden_size=896,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    intermediate_size=4864,
    vocab_size=151936,
    max_position_embeddings=4096,
    tie_word_embeddings=True,
)
#: A tiny model of the same family, for ``--device cpu`` (the harness check).
TINY_SIZES: dict[str, Any] = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=128,
    vocab_size=512,
    max_position_embeddings=1024,
    tie_word_embeddings=True,
)
APPROACHES = ("transformers", "modelport")
#: Exit status when a child fails (status 0 means measured, or no GPU to measure on).
CHILD_FAILED = 3


def model_folder(cache_dir: Path, tiny: bool) -> Path:
    """The benchmark model under ``cache_dir``, written on first use (aside, then renamed)."""
    from modelport.testing import make_tiny_model

    folder = cache_dir / ("qwen2-tiny-bf16" if tiny else "qwen2-0.5b-bf16")
    if (folder / "model.safetensors").is_file():
        return folder
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=folder.name + "-", dir=cache_dir))
    print(f"writing the benchmark model in {folder} (once)...", file=sys.stderr)
    make_tiny_model(partial, "qwen2", tokenizer=False, dtype="bfloat16", **(TINY_SIZES if tiny else MODEL_SIZES))
    try:
        partial.rename(folder)
    except OSError:  # another run finished first: keep its copy
        shutil.rmtree(partial, ignore_errors=True)
    return folder


def prompts(count: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    """``count`` prompts of ``length`` random token ids above 2 (seeded: every child builds the same)."""
    rng = random.Random(seed)
    return [[rng.randrange(3, vocab) for _ in range(length)] for _ in range(count)]


def _digest(ids: list[int]) -> str:
    return hashlib.sha1(json.dumps(ids).encode()).hexdigest()[:12]


# --- the child: one approach, every concurrency once ---------------------------


def child(approach: str, folder: Path, spec: dict[str, Any]) -> dict[str, Any]:
    """Load ``approach``, warm it up, time the first token and one generate per concurrency."""
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    device, gen, vocab = spec["device"], spec["gen_len"], spec["vocab"]
    on_gpu = device.startswith("cuda")

    def sync() -> None:
        if on_gpu:
            torch.cuda.synchronize()

    started = time.perf_counter()
    if approach == "transformers":
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).to(device).eval()
        sync()
        load = time.perf_counter() - started

        def run(batch: list[list[int]], new_tokens: int) -> list[list[int]]:
            ids = torch.tensor(batch, device=device)
            with torch.inference_mode():
                out = model.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    do_sample=False,
                    max_new_tokens=new_tokens,
                    min_new_tokens=new_tokens,
                    pad_token_id=0,
                )
            sync()
            return [row[ids.shape[1] :].tolist() for row in out]

        def first_token(prompt: list[int]) -> float:
            begun = time.perf_counter()
            run([prompt], 1)
            return time.perf_counter() - begun

        served_by = "transformers generate"
    else:
        import modelport

        llm = modelport.LLM(
            str(folder),
            device=device,
            dtype="bfloat16",
            skip_tokenizer_init=True,
            max_num_seqs=max(spec["concurrency"]),
            max_num_batched_tokens=8192,
        )
        sync()
        load = time.perf_counter() - started
        served_by = type(llm.executor).__name__

        def run(batch: list[list[int]], new_tokens: int) -> list[list[int]]:
            params = modelport.SamplingParams(temperature=0, max_tokens=new_tokens, ignore_eos=True)
            return [r.outputs[0].token_ids for r in llm.generate(batch, params)]

        def first_token(prompt: list[int]) -> float:
            executor = llm.executor
            params = modelport.SamplingParams(temperature=0, max_tokens=2, ignore_eos=True)
            begun = time.perf_counter()
            rid = executor.add_request(prompt, params)
            while not any(r.request_id == rid and r.outputs[0].token_ids for r in executor.step()):
                pass
            elapsed = time.perf_counter() - begun
            executor.abort(rid)
            return elapsed

    warmup_started = time.perf_counter()
    for n in spec["concurrency"]:
        run(prompts(n, spec["prompt_len"], vocab, seed=n + 1000), 4)
    warmup = time.perf_counter() - warmup_started
    ttft = statistics.median(first_token(prompts(1, spec["prompt_len"], vocab, seed=2000 + i)[0]) for i in range(3))
    results = {}
    for n in spec["concurrency"]:
        batch = prompts(n, spec["prompt_len"], vocab, seed=n)
        begun = time.perf_counter()
        generated = run(batch, gen)
        elapsed = time.perf_counter() - begun
        assert all(len(ids) == gen for ids in generated), "a request generated fewer tokens than asked"
        results[str(n)] = {"seconds": elapsed, "digests": [_digest(ids) for ids in generated]}
    name = torch.cuda.get_device_name() if on_gpu else "cpu"
    return {"served_by": served_by, "device": name, "load": load, "warmup": warmup, "ttft": ttft, "runs": results}


# --- the parent ----------------------------------------------------------------


def _run_child(approach: str, folder: Path, spec: dict[str, Any]) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", approach, "--folder", str(folder), "--spec", json.dumps(spec)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-4000:])
        print(f"bench_gpu: the {approach} child failed (status {done.returncode})", file=sys.stderr)
        raise SystemExit(CHILD_FAILED)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> int:
    """Parse the options, run the children, print the table; see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", default="1,32,256")
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--gen-len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "modelport-bench")
    parser.add_argument("--quick", action="store_true", help="one round of 16 generated tokens")
    parser.add_argument("--device", default="cuda", help="cuda (default), or cpu to check the harness on a tiny model")
    parser.add_argument("--child", choices=APPROACHES, help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        print(json.dumps(child(args.child, args.folder, json.loads(args.spec))))
        return 0

    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        built = "without CUDA" if torch.version.cuda is None else f"with CUDA {torch.version.cuda}, but finds no device"
        print(f"bench_gpu: no CUDA device (torch {torch.__version__} built {built}); nothing measured")
        return 0
    tiny = not args.device.startswith("cuda")
    concurrency = [int(n) for n in args.concurrency.split(",")]
    gen_len = 16 if args.quick else args.gen_len
    repeats = 1 if args.quick else args.repeats
    folder = model_folder(args.cache_dir, tiny)
    sizes = TINY_SIZES if tiny else MODEL_SIZES
    spec = {
        "device": args.device,
        "concurrency": concurrency,
        "prompt_len": args.prompt_len,
        "gen_len": gen_len,
        "vocab": sizes["vocab_size"],
    }
    print(f"load average before: {_load_average()}  (cpus: {os.cpu_count()})")
    rounds: dict[str, list[dict[str, Any]]] = {a: [] for a in APPROACHES}
    for _ in range(repeats):
        for approach in APPROACHES:
            rounds[approach].append(_run_child(approach, folder, spec))
    after = _load_average()

    first = rounds["modelport"][0]
    print(
        f"device: {first['device']} ({first['served_by']}); model: qwen2 {'tiny' if tiny else '0.5B'} bfloat16; "
        f"prompt {args.prompt_len} tokens, {gen_len} generated; medians of {repeats}"
    )

    def median(approach: str, key: str) -> float:
        return statistics.median(r[key] for r in rounds[approach])

    print("ratio: how many times faster modelport is")
    print(f"{'':26}{'modelport':>12}{'transformers':>14}{'ratio':>8}")
    for key, label, unit in (("load", "load", "s"), ("ttft", "time to first token", "ms")):
        scale = 1000 if unit == "ms" else 1
        mine, theirs = median("modelport", key) * scale, median("transformers", key) * scale
        print(f"{label + ' (' + unit + ')':26}{mine:12.3f}{theirs:14.3f}{theirs / mine:7.2f}x")
    print(f"{'warm-up (s)':26}{median('modelport', 'warmup'):12.3f}{median('transformers', 'warmup'):14.3f}")
    print()
    print(f"{'requests':>8}{'modelport tok/s':>18}{'transformers tok/s':>20}{'ratio':>8}{'same tokens':>13}")
    for n in concurrency:
        tokens = n * gen_len
        rates = {a: statistics.median(tokens / r["runs"][str(n)]["seconds"] for r in rounds[a]) for a in APPROACHES}
        same = sum(
            x == y
            for x, y in zip(
                rounds["modelport"][0]["runs"][str(n)]["digests"],
                rounds["transformers"][0]["runs"][str(n)]["digests"],
                strict=True,
            )
        )
        ratio = rates["modelport"] / rates["transformers"]
        print(f"{n:8d}{rates['modelport']:18.1f}{rates['transformers']:20.1f}{ratio:7.2f}x{same:>8d}/{n}")
    print(f"load average after: {after}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
