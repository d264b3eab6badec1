"""modelport against a live vLLM on every config of ../shared/corpus/configs (the ``vllm-parity`` nox session).

Not a pytest module (no ``test_`` prefix) and not run in CI: it needs vLLM
installed, which the session does in a venv of its own (``vllm==0.32.0
--no-deps`` beside the CPU torch of tests/constraints.txt, then the part of
vLLM's requirements a CPU machine can install; see :func:`cpu_requirements`).

For each config, alone in a folder as config.json (offline, no tokenizer, no
weights), it asks vLLM for its ``ModelConfig`` and modelport for ``resolve()``,
each in child processes (one for every config with ``--isolated``, as the corpus
oracle ran; by default one for all, far faster), and prints one row per
config and an agreement summary. ``--write DIR`` also writes vLLM's answers in the
shape of ``../shared/corpus/expected/vllm-0.32/configs/*.json`` (their
``model_config`` part), so that the expectations can be refreshed for the next
vLLM.

    python tests/vllm_parity.py [--corpus DIR] [--only NAME ...] [--write DIR] [--timeout SECONDS] [--isolated]
    python tests/vllm_parity.py --requirements     # what the session installs after vLLM
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "corpus"

#: vLLM requirements a CPU-only machine leaves out: the torch family stays the constrained CPU build,
#: the rest are CUDA kernels and GPU tooling that ``ModelConfig`` never imports.
NOT_ON_CPU = re.compile(
    r"^(torch|torchaudio|torchvision|torchcodec|pynvvideocodec|flashinfer-python|apache-tvm-ffi|tilelang|"
    r"nvidia-.*|nvtx|fastsafetensors|instanttensor|quack-kernels|tokenspeed-mla|humming-kernels|xformers|"
    r"triton|numba|ray|cupy.*)$",
    re.IGNORECASE,
)

#: vLLM names the class of its Transformers backend; modelport names the checkpoint's architecture.
BACKEND_CLASSES = (
    "TransformersForCausalLM",
    "TransformersMoEForCausalLM",
    "TransformersMultiModalForCausalLM",
    "TransformersEmbeddingModel",
    "TransformersForSequenceClassification",
)


def cpu_requirements() -> list[str]:
    """vLLM's requirements (of the installed distribution) for this platform, without :data:`NOT_ON_CPU`."""
    from importlib.metadata import requires

    from packaging.requirements import Requirement

    found = []
    for line in requires("vllm") or []:
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        if NOT_ON_CPU.match(requirement.name):
            continue
        found.append(str(requirement).split(";")[0].strip())
    return found


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except TypeError:
        return str(value)


def vllm_facts(folder: str) -> dict[str, Any]:
    """vLLM's ``ModelConfig`` for the config in ``folder``, as the corpus expectations record it."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from vllm.config import ModelConfig

        mc = ModelConfig(model=folder, skip_tokenizer_init=True)
    except Exception as exc:  # every failure is an answer to record
        text = str(exc).replace(folder, "<model_dir>")
        return {
            "ok": False,
            "error_type": type(exc).__name__,
            "error": text[:400],
            "needs_remote_code": "trust_remote_code" in text or "custom code" in text,
        }
    facts: dict[str, Any] = {"ok": True}
    probes = {
        "architecture": lambda: mc.architecture,
        "architectures": lambda: list(mc.architectures),
        "max_model_len": lambda: mc.max_model_len,
        "dtype": lambda: str(mc.dtype),
        "is_multimodal_model": lambda: mc.is_multimodal_model,
        "is_moe": lambda: mc.is_moe,  # a property in vLLM 0.32 (is_model_moe() is gone)
        "head_dim": lambda: mc.get_head_size(),
        "num_kv_heads": lambda: mc.get_total_num_kv_heads(),
        "sliding_window": lambda: mc.get_sliding_window(),
        "quantization": lambda: mc.quantization,
        "runner_type": lambda: mc.runner_type,
        "hidden_size": lambda: mc.get_hidden_size(),
        "vocab_size": lambda: mc.get_vocab_size(),
        "num_experts": lambda: mc.get_num_experts(),
        "is_encoder_decoder": lambda: mc.is_encoder_decoder,
        "using_transformers_backend": lambda: mc.using_transformers_backend(),
        "hf_config_class": lambda: type(mc.hf_config).__name__,
        "text_rope_parameters": lambda: getattr(mc.hf_text_config, "rope_parameters", None),
    }
    for key, probe in probes.items():
        try:
            facts[key] = _jsonable(probe())
        except Exception as exc:  # a probe vLLM renamed is reported, not fatal
            facts[key] = f"<{type(exc).__name__}: {exc}>"[:200]
    return facts


def modelport_facts(folder: str) -> dict[str, Any]:
    """modelport's ``resolve()`` for the config in ``folder`` (offline, no tokenizer, no weights)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import modelport
    from modelport.errors import ModelportError

    try:
        resolved = modelport.resolve(folder, load_format="dummy", skip_tokenizer_init=True)
    except ModelportError as exc:
        return {"ok": False, "error_type": type(exc).__name__, "error": str(exc).replace(folder, "<model_dir>")[:400]}
    except Exception as exc:  # an untyped failure is a finding
        return {"ok": False, "untyped": True, "error_type": type(exc).__name__, "error": str(exc)[:400]}
    return {
        "ok": True,
        "architecture": resolved.architecture.name,
        "impl": resolved.model_impl,
        "max_model_len": resolved.max_model_len,
        "dtype": resolved.dtype,
        "text_rope_parameters": _jsonable(getattr(resolved.hf_text_config, "rope_parameters", None)),
    }


def _children(flag: str, folders: list[str], timeout: float, isolated: bool) -> Iterator[dict[str, Any]]:
    """The answers for ``folders``, as they arrive, from child processes (one per folder when ``isolated``).

    A child that crashes, or gives no answer for ``timeout`` seconds, loses the folder
    it was on (recorded as ``Crash`` or ``Timeout``); a new child goes on from the next.
    """
    done = 0
    while done < len(folders):
        batch = folders[done : done + 1] if isolated else folders[done:]
        child = subprocess.Popen(
            [sys.executable, __file__, flag, *batch], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        timed_out = threading.Event()

        def stall(child: subprocess.Popen[str] = child, timed_out: threading.Event = timed_out) -> None:
            timed_out.set()
            child.kill()

        watchdog = threading.Timer(timeout, stall)
        watchdog.start()
        assert child.stdout is not None and child.stderr is not None
        got = 0
        for line in child.stdout:
            if not line.startswith("{"):
                continue
            watchdog.cancel()
            yield json.loads(line)
            got += 1
            watchdog = threading.Timer(timeout, stall)
            watchdog.start()
        watchdog.cancel()
        error = child.stderr.read().strip()[-400:]
        child.wait()
        done += got
        if got < len(batch):
            if timed_out.is_set():
                yield {"ok": False, "error_type": "Timeout", "error": f"no answer in {timeout:.0f} s"}
            else:
                yield {"ok": False, "error_type": "Crash", "error": error}
            done += 1


def compare(vllm: dict[str, Any], ours: dict[str, Any]) -> tuple[str, list[str]]:
    """A verdict (``agree``, ``differ``, ``both fail``, ``only vLLM``, ``only modelport``) and the differing fields."""
    if not vllm["ok"]:
        return ("both fail" if not ours["ok"] else "only modelport"), []
    if not ours["ok"]:
        return "only vLLM", ["resolves"]
    differing = []
    arch_same = ours["architecture"] == vllm["architecture"] or (
        vllm["architecture"] in BACKEND_CLASSES and ours["impl"] == "transformers"
    )
    if not arch_same:
        differing.append("architecture")
    if ours["max_model_len"] != vllm["max_model_len"]:
        differing.append("max_model_len")
    if ours["text_rope_parameters"] != vllm["text_rope_parameters"]:
        differing.append("rope")
    if ours["dtype"] != str(vllm["dtype"]).removeprefix("torch."):
        differing.append("dtype")
    return ("agree" if not differing else "differ"), differing


def run(corpus: Path, only: Iterable[str], write: Path | None, timeout: float, isolated: bool = False) -> int:
    """Compare every config; print the table and the summary; 1 if modelport failed untyped anywhere."""
    configs = sorted((corpus / "configs").glob("*.json"))
    wanted = set(only)
    if wanted:
        configs = [c for c in configs if c.name in wanted or c.stem in wanted]
    if write is not None:
        write.mkdir(parents=True, exist_ok=True)
    try:
        import vllm

        vllm_version = vllm.__version__
    except ImportError:
        vllm_version = "not importable"
    print(f"vLLM {vllm_version}; {len(configs)} config(s) from {corpus / 'configs'}\n")
    header = f"{'config':<62} {'vLLM':<34} {'modelport':<34} {'len vLLM/ours':<17} verdict"
    print(header)
    print("-" * len(header))
    counts: dict[str, int] = {}
    untyped = 0
    with tempfile.TemporaryDirectory() as scratch:
        folders = []
        for config in configs:
            folder = Path(scratch) / config.stem
            folder.mkdir()
            shutil.copy(config, folder / "config.json")
            folders.append(str(folder))
        # modelport first (seconds), then vLLM's answers row by row as they arrive (minutes each on a busy CPU).
        our_answers = list(_children("--modelport", folders, timeout, isolated))
        rows = zip(configs, _children("--vllm", folders, timeout, isolated), our_answers, strict=True)
        for config, theirs, ours in rows:
            verdict, differing = compare(theirs, ours)
            counts[verdict] = counts.get(verdict, 0) + 1
            untyped += bool(ours.get("untyped"))
            left = theirs.get("architecture") if theirs["ok"] else f"({theirs['error_type']})"
            right = f"{ours['architecture']} [{ours['impl']}]" if ours["ok"] else f"({ours['error_type']})"
            lengths = f"{theirs.get('max_model_len', '-')}/{ours.get('max_model_len', '-')}"
            detail = f" ({', '.join(differing)})" if differing else ""
            print(
                f"{config.name[:62]:<62} {str(left)[:34]:<34} {right[:34]:<34} {lengths:<17} {verdict}{detail}",
                flush=True,
            )
            if write is not None:
                record = {
                    "file": config.name,
                    "oracle": {"vllm": vllm_version, "setup": "vllm-parity session: config.json alone, offline, CPU"},
                    "model_config": theirs,
                }
                (write / config.name).write_text(json.dumps(record, indent=1) + "\n")
    loaded = sum(counts.get(k, 0) for k in ("agree", "differ", "only vLLM"))
    agree = counts.get("agree", 0)
    print()
    print(f"vLLM loads {loaded} of {len(configs)}; modelport agrees on architecture, max_model_len, RoPE and dtype")
    print(
        f"for {agree} of them ({100 * agree / loaded if loaded else 0:.1f}%); "
        + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
    )
    print(f"modelport failures that were not typed errors: {untyped}")
    return 1 if untyped else 0


def main(argv: list[str] | None = None) -> int:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    parser.add_argument("--only", nargs="*", default=[])
    parser.add_argument("--write", type=Path)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per config")
    parser.add_argument("--isolated", action="store_true", help="one child process per config, as the oracle ran")
    parser.add_argument("--requirements", action="store_true")
    parser.add_argument("--vllm", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--modelport", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.requirements:
        print("\n".join(cpu_requirements()))
        return 0
    for folders, facts in ((args.vllm, vllm_facts), (args.modelport, modelport_facts)):
        for folder in folders or []:
            print(json.dumps(facts(folder)), flush=True)
        if folders:
            return 0
    if not (args.corpus / "configs").is_dir():
        print(f"no corpus at {args.corpus}: pass --corpus", file=sys.stderr)
        return 2
    return run(args.corpus, args.only, args.write, args.timeout, args.isolated)


if __name__ == "__main__":
    sys.exit(main())
