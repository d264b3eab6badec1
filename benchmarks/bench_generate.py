"""Generation throughput: modelport's CPU executor against transformers' batched generate.

    python benchmarks/bench_generate.py [--repeats 3] [--dtypes bfloat16,float32] [--concurrency 1,8,32]
                                        [--prompt-len 64] [--gen-len 64] [--threads N] [--cache-dir DIR]

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
  llama on the CPU executor, default settings), then ``llm.generate`` on the N prompts
  with ``SamplingParams(temperature=0, max_tokens=G, ignore_eos=True)``; its results
  carry the decoded text too.

Throughput is N x G generated tokens over the wall time of that one call (prompt
processing included), the median over ``--repeats`` rounds. Each round runs one
child process per approach and dtype (imports, load, one untimed warm-up
generate, then each N once), the approaches interleaved so that a noisy neighbour
hits both alike; every child sets the same torch thread count. The header
names the kernel each side's linear layers call (modelport sends float32 ones
to oneDNN: ``modelport.models.linear``), and the run prints the load average
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


def child(approach: str, dtype: str, folder: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """Load ``approach`` in ``dtype``, warm it up, then time one generate per concurrency."""
    import torch
    import transformers

    torch.set_num_threads(settings["threads"])
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    gen = settings["gen_len"]
    kernel = "F.linear"  # what float32 linear layers run on

    if approach == "transformers":
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype)).eval()

        def run(batch: list[list[int]], new_tokens: int) -> list[list[int]]:
            # Left padding with an attention mask; the prompts here are all one length, so none is added.
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

        llm = modelport.LLM(str(folder), dtype=dtype, model_impl="native")
        try:
            from modelport.models.linear import onednn_linear_works
        except ImportError:  # a modelport from before native linear layers chose their kernel
            pass
        else:
            kernel = "mkldnn._linear_pointwise" if dtype == "float32" and onednn_linear_works() else kernel

        def run(batch: list[list[int]], new_tokens: int) -> list[list[int]]:
            params = SamplingParams(temperature=0, max_tokens=new_tokens, ignore_eos=True)
            return [result.outputs[0].token_ids for result in llm.generate(batch, params)]

    run(prompts(2, settings["prompt_len"], seed=-1), 8)  # warm-up: lazy initialisation, first-use kernels
    results: dict[str, Any] = {
        "approach": approach,
        "dtype": dtype,
        "threads": torch.get_num_threads(),
        "linear": kernel,
        "runs": {},
    }
    for count in settings["concurrency"]:
        batch = prompts(count, settings["prompt_len"], seed=count)
        start = time.perf_counter()
        generated = run(batch, gen)
        seconds = time.perf_counter() - start
        if any(len(ids) != gen for ids in generated):
            raise SystemExit(f"{approach} generated {sorted({len(ids) for ids in generated})} tokens, not {gen}")
        results["runs"][str(count)] = {"seconds": seconds, "digests": [_digest(ids) for ids in generated]}
    return results


# --- the parent: build, run children, print ------------------------------------


def _run_child(approach: str, dtype: str, folder: Path, settings: dict[str, Any]) -> dict[str, Any]:
    env = {**os.environ, "MODELPORT_PLUGINS": PLUGINS, "TOKENIZERS_PARALLELISM": "false"}
    env.pop("MODELPORT_DISABLE_PLUGINS", None)
    proc = subprocess.run(
        [sys.executable, __file__, "--child", approach, dtype, str(folder), json.dumps(settings)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=600,
    )
    if proc.returncode != 0:
        raise SystemExit(f"the {approach} {dtype} child failed:\n{proc.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _load() -> str:
    """The 1-minute load average: other work on the machine slows both sides, unevenly."""
    return f"{os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else "unknown"


def _table(dtype: str, runs: dict[str, list[dict[str, Any]]], settings: dict[str, Any]) -> list[str]:
    gen = settings["gen_len"]
    lines = [
        f"{dtype}: generated tokens/s, median of {len(runs['modelport'])} run(s); "
        f"prompt {settings['prompt_len']} + {gen} generated tokens per request; "
        f"{runs['modelport'][0]['threads']} torch thread(s); "
        f"linear layers: transformers {runs['transformers'][0]['linear']}, modelport {runs['modelport'][0]['linear']}",
        f"  {'N':>3} {'transformers':>13} {'modelport':>10} {'modelport/transformers':>23} {'same tokens':>12}",
    ]
    for count in settings["concurrency"]:
        key = str(count)
        rate = {
            approach: statistics.median(count * gen / run["runs"][key]["seconds"] for run in measured)
            for approach, measured in runs.items()
        }
        theirs, ours = (runs[approach][0]["runs"][key]["digests"] for approach in APPROACHES)
        same = sum(a == b for a, b in zip(theirs, ours, strict=True))
        lines.append(
            f"  {count:>3} {rate['transformers']:>13.1f} {rate['modelport']:>10.1f} "
            f"{rate['modelport'] / rate['transformers']:>22.2f}x {f'{same}/{count}':>12}"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="rounds per approach and dtype (median reported)")
    parser.add_argument("--dtypes", default="bfloat16,float32", help="comma-separated dtypes to run the model in")
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated numbers of concurrent requests")
    parser.add_argument("--prompt-len", type=int, default=64, help="prompt tokens per request")
    parser.add_argument("--gen-len", type=int, default=64, help="generated tokens per request")
    parser.add_argument("--threads", type=int, default=None, help="torch threads in every child (default: torch's)")
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
    }
    print(
        f"model: {folder} (llama, 100.1M parameters, vocab 32000); python {sys.version.split()[0]}, "
        f"torch {torch.__version__}, {os.cpu_count()} CPU(s); load average {_load()} at the start"
    )
    for dtype in args.dtypes.split(","):
        runs: dict[str, list[dict[str, Any]]] = {approach: [] for approach in APPROACHES}
        for _ in range(args.repeats):
            for approach in APPROACHES:
                runs[approach].append(_run_child(approach, dtype, folder, settings))
        print("\n".join(_table(dtype, runs, settings)), flush=True)
    print(f"total {time.perf_counter() - started:.0f} s; load average {_load()} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
