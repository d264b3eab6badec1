"""Load a ~500 MB safetensors model: modelport against transformers' from_pretrained and a raw read.

    python benchmarks/bench_load.py [--repeats 3] [--cache-dir DIR] [--warm-only]

The model is a llama-style checkpoint written by ``modelport.testing.make_tiny_model``
(hidden 1024, 16 layers, vocab 32000, bfloat16: 492 MB in one ``model.safetensors``),
built once under the cache folder and reused.

Each measurement runs in its own child process, so that peak RSS
(``getrusage(RUSAGE_SELF).ru_maxrss``) belongs to one approach. Before its clock
starts, every child imports the same libraries (torch, transformers, the llama
modelling module, safetensors, modelport and its two plugins) and builds the
plugin host; its RSS at that point is the *baseline*, and "over base" is the
peak minus it, the memory the weights cost.

- ``floor``: ``readinto`` of the whole file into a preallocated ``bytearray``
  of its size (unbuffered): the bytes in memory, nothing else. It copies
  every byte from the page cache into the buffer; the mapped approaches below
  copy nothing, so they can come in under it.
- ``from_pretrained``: ``AutoModelForCausalLM.from_pretrained(folder)``.
- ``modelport``: ``modelport.load(folder, skip_tokenizer_init=True,
  model_impl="transformers")`` with modelport-hf and modelport-transformers
  (``from_pretrained`` loads no tokenizer either).
- ``modelport_native``: the same with ``model_impl="native"`` (core's own
  llama), shown for information where it exists; the targets are the
  Transformers backend's.

All build the model in the checkpoint's dtype (bfloat16), printed per row.

Both libraries map the file and adopt its tensors without copying, so the
return of the call says little: the bytes are read when first touched. So
every child also reads one byte of every 4 KiB page of every parameter and
buffer after the call returns ("ready"), which brings all the weights into
memory; the floor is ready when ``readinto`` returns. Targets are checked on
"ready" time and on peak RSS after it.

Cold runs evict the weights file from the page cache before each child
(``posix_fadvise(POSIX_FADV_DONTNEED)`` on that file: no root needed, and
the libraries stay cached, so only the weights are read from disk); warm runs
follow one untimed read of the file. Where ``posix_fadvise`` is missing
(macOS) only warm runs are made. Each figure is the median of ``--repeats`` runs,
the approaches interleaved so that a noisy neighbour hits all of them alike.
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

#: The checkpoint's shape: llama-style, ~492 MB in bfloat16.
MODEL_SIZES: dict[str, Any] = dict(
    hidden_size=1024,
    num_hidden_layers=16,
    num_attention_heads=16,
    num_key_value_heads=4,
    intermediate_size=2816,
    vocab_size=32000,
    max_position_embeddings=2048,
    dtype="bfloat16",
)
APPROACHES = ("floor", "from_pretrained", "modelport")
#: Measured too where core's native implementation exists, for information (no target).
OPTIONAL = ("modelport_native",)
PLUGINS = "modelport-hf,modelport-transformers"
PAGE = 4096


def model_folder(cache_dir: Path) -> Path:
    """The benchmark checkpoint under ``cache_dir``, built on first use (atomically: built aside, then renamed)."""
    folder = cache_dir / "llama-500mb-bf16"
    if (folder / "model.safetensors").is_file():
        return folder
    from modelport.testing import make_tiny_model

    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix="llama-500mb-", dir=cache_dir))
    print(f"building the benchmark model in {folder} (once)...", file=sys.stderr)
    make_tiny_model(partial, "llama", tokenizer=False, **MODEL_SIZES)
    try:
        partial.rename(folder)
    except OSError:  # another run finished first: keep its copy
        shutil.rmtree(partial, ignore_errors=True)
    return folder


# --- the child: one approach, one measurement -----------------------------------


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


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


def child(approach: str, folder: Path) -> dict[str, Any]:
    """Measure ``approach`` in this process, after the common imports."""
    import safetensors  # noqa: F401
    import torch  # noqa: F401
    import transformers
    from transformers import AutoModelForCausalLM

    import modelport
    import modelport_hf.plugin  # noqa: F401
    import modelport_transformers.plugin  # noqa: F401
    from modelport.plugins import get_host

    transformers.LlamaForCausalLM  # noqa: B018  (imports the llama modelling module now, for every approach)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    get_host()
    weights = folder / "model.safetensors"
    base = _peak_mib()

    start = time.perf_counter()
    if approach == "floor":
        buffer = bytearray(weights.stat().st_size)
        with open(weights, "rb", buffering=0) as handle:
            handle.readinto(buffer)
        loaded = time.perf_counter() - start
        after_load = _peak_mib()
        ready = loaded
    else:
        if approach == "from_pretrained":
            module = AutoModelForCausalLM.from_pretrained(folder)
        else:
            impl = "native" if approach == "modelport_native" else "transformers"
            model = modelport.load(str(folder), skip_tokenizer_init=True, model_impl=impl).model
            module = getattr(model, "module", model)
        loaded = time.perf_counter() - start
        after_load = _peak_mib()
        _touch(module)
        ready = time.perf_counter() - start
    return {
        "approach": approach,
        "load_s": loaded,
        "ready_s": ready,
        "base_mib": base,
        "peak_after_load_mib": after_load,
        "peak_mib": _peak_mib(),
        "dtype": "bytes" if approach == "floor" else str(next(module.parameters()).dtype).removeprefix("torch."),
    }


# --- the parent: build, run children, print ------------------------------------


def _evict(path: Path) -> bool:
    """Drop ``path``'s pages from the page cache (only that file: libraries stay cached); return whether it could."""
    if not hasattr(os, "posix_fadvise"):
        return False
    os.sync()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return True


def _warm(path: Path) -> None:
    with open(path, "rb", buffering=0) as handle:
        while handle.read(1 << 24):
            pass


def _run_child(approach: str, folder: Path) -> dict[str, Any] | None:
    env = {**os.environ, "MODELPORT_PLUGINS": PLUGINS, "TOKENIZERS_PARALLELISM": "false"}
    env.pop("MODELPORT_DISABLE_PLUGINS", None)
    proc = subprocess.run(
        [sys.executable, __file__, "--child", approach, str(folder)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=300,
    )
    if proc.returncode != 0:
        if approach in OPTIONAL:
            print(f"{approach} failed (skipped): {proc.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
            return None
        raise SystemExit(f"the {approach} child failed:\n{proc.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def _table(mode: str, runs: dict[str, list[dict[str, Any]]], weights_mib: float) -> list[str]:
    lines = [
        f"{mode}: median of {len(runs['floor'])} run(s); weights {weights_mib:.0f} MiB",
        f"  {'approach':<17} {'dtype':<9} {'load s':>7} {'ready s':>8} {'peak MiB':>9} {'base MiB':>9} "
        f"{'over base':>10} {'over/weights':>13}",
    ]
    medians: dict[str, dict[str, float]] = {}
    for approach, measured in runs.items():
        if not measured:
            continue
        m = {key: _median(measured, key) for key in ("load_s", "ready_s", "base_mib", "peak_mib")}
        m["over"] = statistics.median(r["peak_mib"] - r["base_mib"] for r in measured)
        medians[approach] = m
        lines.append(
            f"  {approach:<17} {measured[0]['dtype']:<9} {m['load_s']:>7.3f} {m['ready_s']:>8.3f} "
            f"{m['peak_mib']:>9.0f} {m['base_mib']:>9.0f} {m['over']:>10.0f} {m['over'] / weights_mib:>13.2f}"
        )
    hf, floor = medians["from_pretrained"], medians["floor"]
    for approach in ("modelport", *OPTIONAL):
        if approach not in medians:
            continue
        mp = medians[approach]
        target = approach == "modelport"
        lines += [
            f"  {approach} / from_pretrained: load {mp['load_s'] / hf['load_s']:.2f}x, "
            f"ready {mp['ready_s'] / hf['ready_s']:.2f}x" + ("   (target < 1)" if target else ""),
            f"  {approach} / floor: ready {mp['ready_s'] / floor['ready_s']:.2f}x"
            + ("   (target <= 1.5)" if target else ""),
            f"  {approach} peak RSS over base / weights: {mp['over'] / weights_mib:.2f}"
            + ("   (target <= 1.2)" if target else ""),
        ]
    lines.append(f"  from_pretrained peak RSS over base / weights: {hf['over'] / weights_mib:.2f}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs per approach and mode (median reported)")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "modelport-bench",
        help="where the benchmark model is built and kept",
    )
    parser.add_argument("--warm-only", action="store_true", help="skip the cold (page cache dropped) runs")
    parser.add_argument("--child", nargs=2, metavar=("APPROACH", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], Path(args.child[1]))))
        return 0

    started = time.perf_counter()
    folder = model_folder(args.cache_dir)
    weights = folder / "model.safetensors"
    weights_mib = weights.stat().st_size / 2**20
    modes = ["warm"]
    if not args.warm_only:
        if _evict(weights):
            modes.append("cold")
        else:
            print("cannot evict the file from the page cache here: warm runs only", file=sys.stderr)
    print(f"model: {folder} ({weights_mib:.0f} MiB of safetensors); python {sys.version.split()[0]}")
    for mode in modes:
        runs: dict[str, list[dict[str, Any]]] = {a: [] for a in (*APPROACHES, *OPTIONAL)}
        skipped: set[str] = set()
        for _ in range(args.repeats):
            for approach in runs:
                if approach in skipped:
                    continue
                if mode == "cold":
                    _evict(weights)
                else:
                    _warm(weights)
                result = _run_child(approach, folder)
                if result is None:
                    skipped.add(approach)
                else:
                    runs[approach].append(result)
        print("\n".join(_table(mode, runs, weights_mib)))
    print(f"total {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
