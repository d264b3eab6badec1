"""bfloat16 linear layers of the benchmark llama's shapes: modelport's kernel choices against ``F.linear``.

    python benchmarks/bench_linear.py [--threads 2] [--rows 1,4,8,32,2048] [--rounds 10]

For each weight shape of ``bench_generate.py``'s model (q/k/v stacked, o, gate/up stacked, down, the
32,000-row output head) and each row count, times one product, interleaved round by round:

- ``F.linear``: bfloat16 ``F.linear`` (ATen's kernel, or oneDNN's where the CPU has bfloat16 kernels);
- ``upcast``: ``modelport.models.linear._upcast_product``, the weight converted to float32
  ``UPCAST_CHUNK`` elements at a time into one reused buffer, a float32 product per chunk, the
  output rounded to bfloat16 once (what ``linear`` runs from ``UPCAST_MIN_ROWS`` rows on where the
  CPU has no bfloat16 kernels);
- ``whole``: the whole weight converted per call (``F.linear(x.float(), w.float())``);
- ``f32 kept``: a float32 copy of the weight kept beside it (twice the weights' memory again);
- ``modelport``: ``modelport.models.linear.linear``, whatever it chooses on this CPU.

Each call reads another of several copies of the weight (more than 160 MiB of them), so that every
product reads its weight from memory, as a decode step does, not from the cache. Prints the fastest
and the median time a call of each, the fastest's ratio to ``F.linear``'s, the bfloat16 weight's bytes
over the fastest time and the largest difference from a float64 product, and the load average.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from modelport.models import linear as native_linear

#: Weight shapes (out_features, in_features) of the benchmark llama (hidden 768, GQA 12/4 of 64, MLP 2048).
SHAPES = {
    "q/k/v stacked": (1280, 768),
    "o": (768, 768),
    "gate/up stacked": (4096, 768),
    "down": (768, 2048),
    "head": (32000, 768),
}

Kernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]

KERNELS: dict[str, Kernel] = {
    "F.linear": lambda x, w, w32: F.linear(x, w),
    "upcast": lambda x, w, w32: native_linear._upcast_product(x, (w,), (None,)),
    "whole": lambda x, w, w32: F.linear(x.float(), w.float()).to(x.dtype),
    "f32 kept": lambda x, w, w32: F.linear(x.float(), w32 if w32 is not None else w.float()).to(x.dtype),
    "modelport": lambda x, w, w32: native_linear.linear(x, w),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", default="1,4,8,32,2048", help="row counts, comma-separated")
    parser.add_argument("--rounds", type=int, default=10, help="timed calls of each kernel (3 at 2048 rows or more)")
    parser.add_argument(
        "--kernels", default=",".join(KERNELS), help="a comma-separated subset of " + ", ".join(KERNELS)
    )
    parser.add_argument("--shapes", default=",".join(SHAPES), help="a comma-separated subset of " + ", ".join(SHAPES))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    kernels = args.kernels.split(",")
    print(
        f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
        f"oneDNN bfloat16 kernels {native_linear.bfloat16_kernels()}, threads {torch.get_num_threads()}, "
        f"UPCAST_MIN_ROWS {native_linear.UPCAST_MIN_ROWS}, UPCAST_CHUNK {native_linear.UPCAST_CHUNK}, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    generator = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for shape_name in args.shapes.split(","):
            n, k = SHAPES[shape_name]
            copies = max(2, (160 << 20) // (n * k * 2))
            weights = [torch.randn(n, k, generator=generator).bfloat16() for _ in range(copies)]
            kept = [w.float() for w in weights] if "f32 kept" in kernels else [None] * copies
            for rows in (int(r) for r in args.rows.split(",")):
                if rows * n > 2048 * 4096:  # the head at prefill sizes: the executor runs it on last tokens only
                    continue
                x = torch.randn(rows, k, generator=generator).bfloat16()
                exact = F.linear(x.double(), weights[0].double())
                times: dict[str, list[float]] = {name: [] for name in kernels}
                turn = itertools.cycle(range(copies))
                for name in kernels:  # warm-up: buffers, primitive caches
                    KERNELS[name](x, weights[0], kept[0])
                for _ in range(args.rounds if rows < 2048 else min(args.rounds, 3)):
                    for name in kernels:
                        i = next(turn)
                        start = time.perf_counter()
                        KERNELS[name](x, weights[i], kept[i])
                        times[name].append(time.perf_counter() - start)
                base = min(times["F.linear"]) if "F.linear" in times else None
                for name in kernels:
                    best, median = min(times[name]), statistics.median(times[name])
                    error = (KERNELS[name](x, weights[0], kept[0]).double() - exact).abs().max().item()
                    ratio = f"{base / best:5.2f}x" if base is not None else "   - "
                    print(
                        f"{shape_name:16} {n:5}x{k:<4} rows {rows:5}  {name:9} {best * 1e3:9.3f} ms "
                        f"(median {median * 1e3:9.3f})  {ratio} F.linear  {n * k * 2 / best / 1e9:5.1f} GB/s  "
                        f"max |error| {error:.3g}",
                        flush=True,
                    )
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
