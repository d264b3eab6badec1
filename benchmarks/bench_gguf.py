"""Load GGUF files (Q8_0 and Q4_K): modelport against transformers' ``from_pretrained(gguf_file=...)``.

    python benchmarks/bench_gguf.py [--repeats 3] [--cache-dir DIR] [--quick] [--threads N] [--no-bytecode-cache]

transformers' GGUF loading needs ``accelerate`` (``pip install accelerate``).

Two llama-style GGUF files are written once under the cache folder by the
testing kit (``modelport.testing.gguf_files``): a kit model (hidden 1024, 36
layers, vocab 32000: about 470 M parameters) quantised to Q8_0 by gguf-py
(about 500 MB), and the same shapes in Q4_K (random valid blocks, since gguf-py
cannot quantise K-quants; the values do not matter to a load). ``--quick``
uses a small model (hidden 512, 4 layers) and one repeat, to check that the
script runs end to end.

For each file and each approach, a child process is timed:

- ``whole process``: the child's wall time from start to exit: interpreter,
  the imports its approach needs (transformers' modelling code and gguf-py
  for transformers; modelport, its plugins and transformers' config classes
  for modelport), load, and one byte of every page of every parameter read
  ("ready").
- ``warm``: inside the child, after those imports (the file is in the page
  cache): the load call until ready.
- peak RSS over the child's RSS after its imports, against the bytes of the
  dequantised weights (the model's parameters, float32 on both sides).

Python bytecode: an installed package has its ``.pyc`` files (pip compiles
them), but an environment with ``PYTHONDONTWRITEBYTECODE=1`` and none written
compiles every module from source in every process, which then dominates a
whole process (torch, transformers and sympy are large). So by default the
children read and write their bytecode under ``CACHE_DIR/pycache``
(``PYTHONPYCACHEPREFIX``, writing allowed; the installed packages are not
touched), and one untimed run of each approach fills it first: both
approaches get what an installation has. ``--no-bytecode-cache`` leaves the
environment as inherited (from source, where nothing is cached).

Approaches: ``transformers``:
``AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)``;
``modelport``: ``modelport.load(path, dtype="float32", skip_tokenizer_init=True)``
(core's native llama). Medians of ``--repeats`` runs, interleaved.

Then, in this process, dequantisation alone: the GB/s of float32 output of
modelport's torch kernels and of gguf-py's numpy ``dequantize`` on the largest
tensor of each file (best of three, after two untimed rounds; the first call of
each is printed too).

The machine's load average is printed first: the figures are only comparable
as ratios measured in the same run. On a machine busier than its cores,
torch's OpenMP threads wait on each other; ``--threads 1`` gives both sides
one thread.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

FULL: dict[str, Any] = dict(
    hidden_size=1024,
    num_hidden_layers=36,
    num_attention_heads=16,
    num_key_value_heads=4,
    intermediate_size=2816,
    vocab_size=32000,
    max_position_embeddings=2048,
)
QUICK: dict[str, Any] = {**FULL, "hidden_size": 512, "num_hidden_layers": 4, "intermediate_size": 1536}
TYPES = ("Q8_0", "Q4_K")
APPROACHES = ("transformers", "modelport")
PAGE = 4096


def gguf_files(cache_dir: Path, quick: bool) -> dict[str, Path]:
    """The benchmark GGUF files (one per type), built on first use, atomically (built aside, then renamed)."""
    name = "quick" if quick else "full"
    wanted = {t: cache_dir / f"llama-{name}-{t}.gguf" for t in TYPES}
    if all(p.is_file() for p in wanted.values()):
        return wanted
    from modelport.testing import make_tiny_model
    from modelport.testing.gguf_files import write_gguf

    cache_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"gguf-{name}-", dir=cache_dir))
    print(f"building the benchmark GGUF files in {cache_dir} (once)...", file=sys.stderr)
    hf = make_tiny_model(work / "hf", "llama", tokenizer=False, **(QUICK if quick else FULL))
    for ggml_type, path in wanted.items():
        if path.is_file():
            continue
        partial = write_gguf(hf, work / path.name, ggml_type, tokenizer=False, random_k_quants=True)
        partial.rename(path)
    shutil.rmtree(work, ignore_errors=True)
    return wanted


# --- the child: one approach, one file ------------------------------------------------


def _peak_mib() -> float:
    """This process's peak RSS: ``VmHWM`` (reset by exec, unlike ``ru_maxrss``, which a child inherits)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # elsewhere: KiB on Linux, bytes on macOS


def _touch(module: Any) -> int:
    """Read one byte of every page of every parameter and buffer; return their total bytes."""
    import torch

    unique = {id(t): t for t in [*module.parameters(), *module.buffers()]}
    total = 0
    with torch.no_grad():
        for tensor in unique.values():
            flat = tensor.detach().reshape(-1).view(torch.uint8)
            flat[::PAGE].sum()
            total += flat.numel()
    return total


def child(approach: str, path: Path, threads: int) -> dict[str, Any]:
    """Load ``path`` with ``approach`` in this process, after the imports that approach needs."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    if approach == "transformers":
        import gguf  # noqa: F401
        from transformers import AutoModelForCausalLM

        transformers.LlamaForCausalLM  # noqa: B018  (the llama modelling module)
    else:
        import modelport
        import modelport_gguf.plugin  # noqa: F401
        from modelport.plugins import get_host

        transformers.LlamaConfig  # noqa: B018  (the config class the metadata becomes)
        get_host()
    base = _peak_mib()
    start = time.perf_counter()
    if approach == "transformers":
        module = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    else:
        module = modelport.load(str(path), dtype="float32", skip_tokenizer_init=True).model
    weights = _touch(module)
    ready = time.perf_counter() - start
    return {"approach": approach, "warm_s": ready, "base_mib": base, "peak_mib": _peak_mib(), "weights": weights}


# --- the parent -------------------------------------------------------------------------


def _run_child(approach: str, path: Path, threads: int, pycache: Path | None) -> dict[str, Any]:
    env = {**os.environ, "MODELPORT_PLUGINS": "modelport-hf,modelport-gguf", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("MODELPORT_DISABLE_PLUGINS", None)
    if pycache is not None:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(pycache)
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, __file__, "--child", approach, str(path), "--threads", str(threads)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=1800,
    )
    whole = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"the {approach} child failed on {path.name}:\n{proc.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    result["whole_s"] = whole
    return result


def _warm_file(path: Path) -> None:
    with open(path, "rb", buffering=0) as handle:
        while handle.read(1 << 24):
            pass


#: Untimed rounds of each approach before the timed ones: see :func:`dequantisation`.
WARMUP_ROUNDS = 2


def dequantisation(path: Path) -> tuple[str, tuple[float, float, float], tuple[float, float, float]]:
    """GB/s of float32 output on the file's largest quantised tensor: ``(type, best, first)``.

    Each of ``best`` and ``first`` is ``(modelport into a new tensor, modelport into an existing one, gguf-py
    numpy)``. The three run in turn, :data:`WARMUP_ROUNDS` rounds untimed, then three rounds whose best is
    ``best``; ``first`` is each one's first call in this process. A new tensor's pages are faulted in as
    they are first written: on a virtual machine the first few hundred MB a process writes cost far more
    than memory it has written and freed before (the host backs the pages then), so the first calls
    measure that and the later ones the kernels.
    """
    import numpy as np
    import torch
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize as numpy_dequantize

    from modelport_gguf.header import read_header
    from modelport_gguf.quants import dequantize

    header = read_header(path)
    tensor = max((t for t in header.tensors if t.type_name not in ("F32", "F16")), key=lambda t: t.nbytes)
    data = np.fromfile(path, dtype=np.uint8, count=tensor.nbytes, offset=tensor.offset)
    raw = torch.from_numpy(data)
    out_bytes = tensor.n_elements * 4
    existing = torch.zeros(tensor.shape, dtype=torch.float32)
    calls = (
        lambda: dequantize(raw, tensor.type_name, tensor.shape, torch.float32),
        lambda: dequantize(raw, tensor.type_name, tensor.shape, torch.float32, out=existing),
        lambda: numpy_dequantize(data, GGMLQuantizationType[tensor.type_name]),
    )
    rounds: list[list[float]] = []
    for _ in range(WARMUP_ROUNDS + 3):
        rates = []
        for call in calls:
            start = time.perf_counter()
            call()
            rates.append(out_bytes / (time.perf_counter() - start) / 1e9)
        rounds.append(rates)
    best = tuple(max(r[i] for r in rounds[WARMUP_ROUNDS:]) for i in range(3))
    return tensor.type_name, best, tuple(rounds[0])  # type: ignore[return-value]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs per approach and file (median reported)")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "modelport-bench",
        help="where the benchmark files are built and kept",
    )
    parser.add_argument("--quick", action="store_true", help="a small model and one repeat (checks the script runs)")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads in every measurement (default: torch's own choice)"
    )
    parser.add_argument(
        "--no-bytecode-cache",
        action="store_true",
        help="children use the inherited bytecode settings (no cache of their own, no untimed first runs)",
    )
    parser.add_argument("--child", nargs=2, metavar=("APPROACH", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], Path(args.child[1]), args.threads)))
        return 0
    repeats = 1 if args.quick else args.repeats
    started = time.perf_counter()
    files = gguf_files(args.cache_dir, args.quick)
    pycache = None if args.no_bytecode_cache else args.cache_dir / "pycache"
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    print(
        f"python {sys.version.split()[0]}; {repeats} run(s) per approach, medians; "
        f"torch threads {args.threads or 'default'}"
    )
    if pycache is None:
        inherited = "no .pyc written" if os.environ.get("PYTHONDONTWRITEBYTECODE") else "Python's default"
        print(f"bytecode: as inherited ({inherited}; PYTHONPYCACHEPREFIX={os.environ.get('PYTHONPYCACHEPREFIX')})")
    else:
        print(f"bytecode: cached under {pycache}, filled by one untimed run of each approach")
        first = next(iter(files.values()))
        for approach in APPROACHES:
            _run_child(approach, first, args.threads, pycache)
    for ggml_type, path in files.items():
        runs: dict[str, list[dict[str, Any]]] = {a: [] for a in APPROACHES}
        for _ in range(repeats):
            for approach in APPROACHES:
                _warm_file(path)
                runs[approach].append(_run_child(approach, path, args.threads, pycache))
        weights_mib = runs["modelport"][0]["weights"] / 2**20
        print(
            f"\n{ggml_type}: {path.name} ({path.stat().st_size / 2**20:.0f} MiB), float32 weights {weights_mib:.0f} MiB"
        )
        print(f"  {'approach':<13} {'whole s':>8} {'warm s':>8} {'peak MiB':>9} {'over base':>10} {'over/weights':>13}")
        medians: dict[str, dict[str, float]] = {}
        for approach, measured in runs.items():
            m = {k: statistics.median(r[k] for r in measured) for k in ("whole_s", "warm_s", "peak_mib")}
            m["over"] = statistics.median(r["peak_mib"] - r["base_mib"] for r in measured)
            medians[approach] = m
            print(
                f"  {approach:<13} {m['whole_s']:>8.2f} {m['warm_s']:>8.2f} {m['peak_mib']:>9.0f} "
                f"{m['over']:>10.0f} {m['over'] / weights_mib:>13.2f}"
            )
        mp, tf = medians["modelport"], medians["transformers"]
        print(
            f"  modelport faster than transformers: whole process {tf['whole_s'] / mp['whole_s']:.2f}x, "
            f"warm {tf['warm_s'] / mp['warm_s']:.2f}x   (target >= 3)"
        )
        print(f"  modelport peak RSS over base / weights: {mp['over'] / weights_mib:.2f}   (target <= 1.3)")
    print()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    for path in files.values():
        type_name, (fresh, into, theirs), first = dequantisation(path)
        print(
            f"dequantisation {type_name} to float32: modelport {fresh:.2f} GB/s into a new tensor "
            f"({fresh / theirs:.2f}x numpy), {into:.2f} GB/s into an existing one ({into / theirs:.2f}x); "
            f"gguf-py numpy {theirs:.2f} GB/s   (target >= 2.4 GB/s on a quiet machine)\n"
            f"  best of 3 after {WARMUP_ROUNDS} untimed rounds; each one's first call in this process: "
            f"{first[0]:.2f} / {first[1]:.2f} / {first[2]:.2f} GB/s"
        )
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"total {time.perf_counter() - started:.0f} s; load average now {load}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
