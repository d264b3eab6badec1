"""The ``modelport`` command.

``modelport inspect REF [--json] [options]`` prints the resolved model and its
trace; ``modelport generate REF PROMPT`` streams a completion; ``modelport chat
REF`` is an interactive session; ``modelport plugins [--json]`` lists every
plugin. Errors print one or two lines, no traceback, and exit with status 1
(2 for usage errors).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

#: JSON schema version of ``inspect --json`` and ``plugins --json`` output.
JSON_VERSION = 1

_BOOL_OPTIONS = {"trust_remote_code", "skip_tokenizer_init", "offline"}
_INT_OPTIONS = {"max_model_len"}
_OPTION_HELP = {
    "revision": "branch, tag or commit of the model repository",
    "code_revision": "revision to take remote code from",
    "token": "access token (prefer the HF_TOKEN environment variable: a flag shows in process lists)",
    "hf_config_path": "take the config from this folder or repository",
    "config_format": "config format: auto or a registered format",
    "trust_remote_code": "allow code from the model repository to run",
    "hf_overrides": "JSON object merged into the config",
    "tokenizer": "tokenizer reference, when not the model's own",
    "tokenizer_revision": "revision of the tokenizer repository",
    "tokenizer_mode": "tokenizer mode: auto or a registered mode",
    "skip_tokenizer_init": "resolve no tokenizer",
    "load_format": "weights format: auto or a registered load format",
    "model_impl": "auto, native or transformers",
    "dtype": "auto or a torch dtype name",
    "device": "cpu, cuda, cuda:N...",
    "download_dir": "keep downloads here instead of the shared cache",
    "offline": "make no network call",
    "max_model_len": "cap on the context length",
}


def _add_load_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("load options (the fields of modelport.LoadOptions)")
    from modelport.options import LoadOptions  # light: no torch, no transformers

    for f in dataclasses.fields(LoadOptions):
        flag = "--" + f.name.replace("_", "-")
        help_text = _OPTION_HELP.get(f.name, "")
        if f.name in _BOOL_OPTIONS:
            group.add_argument(flag, dest=f.name, action="store_true", default=None, help=help_text)
        elif f.name in _INT_OPTIONS:
            group.add_argument(flag, dest=f.name, type=int, default=None, metavar="N", help=help_text)
        else:
            group.add_argument(flag, dest=f.name, default=None, metavar="VALUE", help=help_text)


def _add_sampling_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("sampling (the fields of modelport.SamplingParams)")
    group.add_argument("--max-tokens", type=int, default=128, metavar="N", help="new tokens at most (default 128)")
    group.add_argument("--temperature", type=float, default=0.8, metavar="T", help="0 is greedy (default 0.8)")
    group.add_argument("--top-p", type=float, default=0.95, metavar="P", help="nucleus sampling mass (default 0.95)")
    group.add_argument("--top-k", type=int, default=0, metavar="K", help="keep the K most likely tokens (0: all)")
    group.add_argument("--seed", type=int, default=None, metavar="S", help="make the output reproducible")
    group.add_argument("--stop", action="append", default=None, metavar="TEXT", help="stop at this text (repeatable)")


def _sampling_from_args(args: argparse.Namespace) -> Any:
    from modelport.sampling import SamplingParams

    return SamplingParams(
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        seed=args.seed,
        stop=args.stop,
    )


def _options_from_args(args: argparse.Namespace) -> dict[str, Any]:
    from modelport.errors import InvalidOptionError
    from modelport.options import LoadOptions

    options: dict[str, Any] = {}
    for name in LoadOptions.names():
        value = getattr(args, name, None)
        if value is None:
            continue
        if name == "hf_overrides":
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise InvalidOptionError("hf_overrides", value, detail=f"not valid JSON: {exc}") from exc
            if not isinstance(value, dict):
                raise InvalidOptionError("hf_overrides", value, detail="expected a JSON object")
        options[name] = value
    return options


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests)."""
    parser = argparse.ArgumentParser(
        prog="modelport",
        description="Turn a model reference into a ready-to-run model, through plugins.",
    )
    parser.add_argument("--version", action="version", version=f"modelport {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    inspect = sub.add_parser("inspect", help="resolve a model and print what was decided, and why")
    inspect.add_argument("reference", metavar="REF", help="local path, repository id, ...")
    inspect.add_argument("--json", action="store_true", help="print the stable JSON form")
    _add_load_options(inspect)

    generate = sub.add_parser("generate", help="generate text for a prompt, streamed to the terminal")
    generate.add_argument("reference", metavar="REF", help="local path, repository id, ...")
    generate.add_argument("prompt", metavar="PROMPT", help="the prompt text")
    _add_sampling_options(generate)
    _add_load_options(generate)

    chat = sub.add_parser("chat", help="an interactive chat through the model's chat template")
    chat.add_argument("reference", metavar="REF", help="local path, repository id, ...")
    chat.add_argument("--system", default=None, help="a system message to start the conversation with")
    _add_sampling_options(chat)
    _add_load_options(chat)

    plugins = sub.add_parser("plugins", help="list installed plugins, built-ins included")
    plugins.add_argument("--json", action="store_true", help="print the stable JSON form")
    return parser


def _version() -> str:
    from modelport import __version__

    return __version__


def _cmd_inspect(args: argparse.Namespace) -> int:
    from modelport.pipeline import resolve

    resolved = resolve(args.reference, **_options_from_args(args))
    if args.json:
        print(json.dumps({"version": JSON_VERSION, **resolved.to_dict()}, indent=2, default=str))
        return 0
    arch = resolved.architecture
    rows = [
        ("reference", resolved.reference),
        ("source", f"{resolved.source.kind} {resolved.source.location}"),
        ("config format", resolved.config_format),
        ("model type", str(getattr(resolved.hf_config, "model_type", None))),
        ("architecture", f"{arch.name} ({arch.impl}, {arch.target}, from {arch.plugin})"),
        ("dtype", resolved.dtype),
        ("max model len", str(resolved.max_model_len)),
        ("shape", _shape(resolved.facts)),
        (
            "tokenizer",
            "skipped"
            if resolved.tokenizer is None
            else f"{resolved.tokenizer.mode}: {', '.join(resolved.tokenizer.files)}",
        ),
        ("weights", f"{resolved.weight_files.load_format}: {', '.join(resolved.weight_files.files) or '(none)'}"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    print("\ntrace:")
    print(resolved.trace.format())
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    from modelport.llm import LLM

    params = _sampling_from_args(args)
    llm = LLM(args.reference, **_options_from_args(args))
    for piece in llm.stream(args.prompt, params):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


def _cmd_chat(args: argparse.Namespace, stdin: Any = None) -> int:
    from modelport.llm import LLM

    stdin = stdin or sys.stdin
    params = _sampling_from_args(args)
    llm = LLM(args.reference, **_options_from_args(args))
    messages: list[dict[str, str]] = []
    if args.system:
        messages.append({"role": "system", "content": args.system})
    interactive = stdin.isatty()
    while True:
        if interactive:
            sys.stdout.write("you> ")
            sys.stdout.flush()
        line = stdin.readline()
        if not line or line.strip() in ("/exit", "/quit"):
            return 0
        messages.append({"role": "user", "content": line.rstrip("\n")})
        sys.stdout.write("model> ")
        reply = []
        for piece in llm.stream(llm.chat_prompt(messages), params):
            reply.append(piece)
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        messages.append({"role": "assistant", "content": "".join(reply)})


def _shape(facts: Any) -> str:
    parts = [
        f"{facts.num_hidden_layers} layers",
        f"hidden {facts.hidden_size}",
        f"{facts.num_attention_heads} heads ({facts.num_kv_heads} kv, head_dim {facts.head_dim})",
        f"vocab {facts.vocab_size}",
    ]
    if facts.sliding_window:
        parts.append(f"sliding window {facts.sliding_window}")
    if facts.is_moe:
        parts.append(f"MoE with {facts.num_experts} experts")
    if facts.is_multimodal:
        parts.append("multimodal")
    if facts.quantization:
        parts.append(f"quantized: {facts.quantization}")
    return ", ".join(parts)


def _cmd_plugins(args: argparse.Namespace) -> int:
    from modelport.plugins import get_host

    host = get_host()
    described = host.describe()
    failures = [dataclasses.asdict(f) for f in host.failures]
    if args.json:
        print(json.dumps({"version": JSON_VERSION, "plugins": described, "failed": failures}, indent=2))
        return 0
    for plugin in described:
        origin = "built-in" if plugin["builtin"] else f"{plugin['distribution']} {plugin['version']}"
        print(f"{plugin['name']}  ({origin})")
        print(f"  hooks: {', '.join(h.removeprefix('modelport_') for h in plugin['hooks']) or '(none)'}")
        for kind, names in plugin["registered"].items():
            print(f"  {kind}: {', '.join(names)}")
    for failure in failures:
        print(f"{failure['name']}  (FAILED: {failure['error']})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``modelport`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    from modelport.errors import ModelportError

    try:
        if args.command == "inspect":
            return _cmd_inspect(args)
        if args.command == "generate":
            return _cmd_generate(args)
        if args.command == "chat":
            return _cmd_chat(args)
        return _cmd_plugins(args)
    except ModelportError as exc:
        print(f"modelport: error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader went away (`modelport plugins --json | head`): stop quietly, as Unix tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
