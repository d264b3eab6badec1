"""The ``modelport`` command.

``modelport inspect REF [--json] [options]`` prints the resolved model and its
trace, as a diagnostic (a tokenizer or weights that cannot be found are shown as
"none found"); ``modelport generate REF PROMPT`` streams a completion;
``modelport chat REF`` is an interactive session; ``modelport plugins [--json]
[--hooks]`` lists every plugin. Errors print one or two lines in the command
line's spelling (``--skip-tokenizer-init``, not ``skip_tokenizer_init=True``), no
traceback, and exit with status 1 (2 for usage errors).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import json
import os
import re
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

#: JSON schema version of ``inspect --json`` and ``plugins --json`` output.
JSON_VERSION = 1

_BOOL_OPTIONS = {"trust_remote_code", "skip_tokenizer_init", "offline"}
_INT_OPTIONS = {"max_model_len", "tensor_parallel_size"}
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
    "tensor_parallel_size": "processes to shard the model over (tensor parallelism)",
    "distributed_executor_backend": "what starts the other ranks: mp (default), ray or a registered backend",
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


#: Sampling parameters and other names that are flags too: their errors are spelt as flags on the command line.
_SAMPLING_FLAGS = ("max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "prompt_ids")


def cli_spelling(message: str) -> str:
    """``message`` with Python spellings of options turned into the command line's flags.

    ``skip_tokenizer_init=True`` becomes ``--skip-tokenizer-init``,
    ``load_format='dummy'`` becomes ``--load-format dummy`` and
    ``option 'model_impl'`` becomes ``option --model-impl``: an error printed by
    the command names what to type. Python callers see the original message.
    """
    from modelport.options import LoadOptions

    for name in (*LoadOptions.names(), *_SAMPLING_FLAGS):
        flag = "--" + name.replace("_", "-")

        def quoted(match: re.Match[str], flag: str = flag) -> str:
            return f"{flag} {match.group(2)}"

        def number(match: re.Match[str], flag: str = flag) -> str:
            return f"{flag} {match.group(1)}"

        message = re.sub(rf"(?<![\w.]){name}=True\b", flag, message)
        message = re.sub(rf"(?<![\w.]){name}=(['\"])(.*?)\1", quoted, message)
        message = re.sub(rf"(?<![\w.]){name}=(-?\d+)\b", number, message)
        message = re.sub(rf"\boption '{name}'", f"option {flag}", message)
    return message


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
    inspect.add_argument(
        "--strict",
        action="store_true",
        help="fail, as resolve() does, when no tokenizer or no weights are found (default: show 'none found')",
    )
    _add_load_options(inspect)

    generate = sub.add_parser("generate", help="generate text for a prompt, streamed to the terminal")
    generate.add_argument("reference", metavar="REF", help="local path, repository id, ...")
    generate.add_argument("prompt", metavar="PROMPT", help="the prompt text (token ids with --prompt-ids)")
    generate.add_argument(
        "--prompt-ids",
        action="store_true",
        help="PROMPT is token ids ('1,2,3' or '1 2 3'), not text; works with --skip-tokenizer-init, "
        "which prints the generated token ids instead of text",
    )
    _add_sampling_options(generate)
    _add_load_options(generate)

    chat = sub.add_parser("chat", help="an interactive chat through the model's chat template")
    chat.add_argument("reference", metavar="REF", help="local path, repository id, ...")
    chat.add_argument("--system", default=None, help="a system message to start the conversation with")
    _add_sampling_options(chat)
    _add_load_options(chat)

    plugins = sub.add_parser("plugins", help="list installed plugins, built-ins included")
    plugins.add_argument("--json", action="store_true", help="print the stable JSON form")
    plugins.add_argument(
        "--hooks",
        action="store_true",
        help="per hook, the implementations in the order they are asked (tryfirst, plain, trylast)",
    )
    return parser


def _version() -> str:
    from modelport import __version__

    return __version__


class TerminalProgress:
    """Draws the pipeline's progress events (:mod:`modelport.progress`) on a terminal, one line at a time.

    ``loading transformers…`` when the config step is still importing it after
    ``delay`` seconds, and a bar over the bytes of weights read. Each line is
    erased when its step ends, so the command's own output stays as it was.
    """

    def __init__(self, stream: Any, delay: float = 1.0) -> None:
        self.stream = stream
        self.delay = delay
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()
        self._showing = False
        self._percent = -1

    def __call__(self, event: str, data: dict[str, Any]) -> None:
        """A listener for :func:`modelport.progress.listening`."""
        if event == "config_started" and data.get("imports"):
            name = "transformers" if "transformers" in data["imports"] else str(data["imports"][-1])
            self._timer = threading.Timer(self.delay, self._show, args=(f"loading {name}\u2026",))
            self._timer.daemon = True
            self._timer.start()
        elif event == "config_finished":
            self.clear()
        elif event == "weights_read":
            self._weights(int(data.get("done", 0)), int(data.get("total", 0)))

    def _weights(self, done: int, total: int) -> None:
        if total <= 0:
            self._show(f"reading weights {done / 1e6:.1f} MB")
            return
        percent = min(100, done * 100 // total)
        if percent == self._percent:
            return
        self._percent = percent
        filled = percent * 24 // 100
        bar = "#" * filled + "." * (24 - filled)
        self._show(f"reading weights [{bar}] {percent:3d}% of {total / 1e6:.1f} MB")

    def _show(self, text: str) -> None:
        with self._lock:
            self.stream.write(f"\r\x1b[K{text}")
            self.stream.flush()
            self._showing = True

    def clear(self) -> None:
        """Cancel a pending line and erase the one shown."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        with self._lock:
            if self._showing:
                self.stream.write("\r\x1b[K")
                self.stream.flush()
                self._showing = False


@contextlib.contextmanager
def _progress() -> Any:
    """Progress on stderr while the block runs, when stderr is a terminal; nothing otherwise."""
    if not sys.stderr.isatty():
        yield None
        return
    from modelport import progress

    drawer = TerminalProgress(sys.stderr)
    try:
        with progress.listening(drawer):
            yield drawer
    finally:
        drawer.clear()


def _cmd_inspect(args: argparse.Namespace) -> int:
    from modelport.pipeline import resolve

    with _progress():
        resolved = resolve(args.reference, strict=args.strict, **_options_from_args(args))
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
        ("tokenizer", _tokenizer_row(resolved)),
        ("weights", _weights_row(resolved)),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    print("\ntrace:")
    # The trace states facts in the API's terms; only the steps that found nothing carry advice, spelt as flags.
    lines = resolved.trace.format().splitlines()
    print("\n".join(cli_spelling(line) if "  none found  " in line else line for line in lines))
    return 0


def _tokenizer_row(resolved: Any) -> str:
    if "tokenizer" in resolved.unresolved:
        return "none found (--skip-tokenizer-init goes without one)"
    if resolved.tokenizer is None:
        return "skipped"
    return f"{resolved.tokenizer.mode}: {', '.join(resolved.tokenizer.files) or resolved.tokenizer.source.location}"


def _weights_row(resolved: Any) -> str:
    if "weights" in resolved.unresolved:
        return "none found (--load-format dummy builds random weights)"
    weights = resolved.weight_files
    return f"{weights.load_format}: {', '.join(weights.files) or '(none)'}"


def _prompt_ids(text: str) -> list[int]:
    from modelport.errors import InvalidOptionError

    parts = [p for p in re.split(r"[,\s]+", text.strip()) if p]
    if not parts or not all(p.isdigit() for p in parts):
        raise InvalidOptionError("prompt_ids", text, detail="expected token ids such as '1,2,3' or '1 2 3'")
    return [int(p) for p in parts]


def _cmd_generate(args: argparse.Namespace) -> int:
    from modelport.llm import LLM

    params = _sampling_from_args(args)
    prompt: str | list[int] = _prompt_ids(args.prompt) if args.prompt_ids else args.prompt
    with _progress():
        llm = LLM(args.reference, **_options_from_args(args))
    if llm.get_tokenizer() is None:
        if isinstance(prompt, str):
            from modelport.errors import InvalidOptionError

            raise InvalidOptionError(
                "prompt",
                prompt,
                detail="without a tokenizer (skip_tokenizer_init=True) the prompt is token ids: add --prompt-ids",
            )
        # No tokenizer, no text: print the generated ids, space-separated.
        (output,) = llm.generate([{"prompt_token_ids": prompt}], params)
        if output.error:
            from modelport.errors import ExecutorError

            raise ExecutorError(output.error)
        sys.stdout.write(" ".join(str(t) for t in output.outputs[0].token_ids) + "\n")
        return 0
    start, first = time.perf_counter(), None
    for piece in llm.stream(prompt, params):
        first = first if first is not None else time.perf_counter() - start
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    if sys.stderr.isatty() and first is not None:
        sys.stderr.write(f"(first token after {first:.2f} s, all in {time.perf_counter() - start:.2f} s)\n")
    return 0


def _cmd_chat(args: argparse.Namespace, stdin: Any = None) -> int:
    from modelport.llm import LLM

    stdin = stdin or sys.stdin
    params = _sampling_from_args(args)
    with _progress():
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
    if args.hooks:
        return _print_hooks(host, as_json=args.json)
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


def _print_hooks(host: Any, *, as_json: bool) -> int:
    """Every hook with its implementations in the order the host asks them (like pytest's --trace-config)."""
    order = []
    for hook in sorted(h for h in vars(host.pm.hook) if h.startswith("modelport_")):
        # pluggy keeps implementations in the reverse of the order it calls them (as PluginHost asks them).
        impls = [i for i in reversed(getattr(host.pm.hook, hook).get_hookimpls()) if not (i.hookwrapper or i.wrapper)]
        order.append(
            (hook, [{"plugin": i.plugin_name, "tryfirst": bool(i.tryfirst), "trylast": bool(i.trylast)} for i in impls])
        )
    if as_json:
        listing = {
            "version": JSON_VERSION,
            "hooks": [{"hook": hook, "shape": _shape_of(host, hook), "order": impls} for hook, impls in order],
        }
        print(json.dumps(listing, indent=2))
        return 0
    for hook, impls in order:
        shape = _shape_of(host, hook)
        how = "asked in this order, the first answer wins" if shape == "choose one" else "every one is called"
        print(f"{hook.removeprefix('modelport_')}  ({shape}: {how})")
        if not impls:
            print("  (no implementation)")
        for position, impl in enumerate(impls, 1):
            marks = [m for m in ("tryfirst", "trylast") if impl[m]]
            print(f"  {position}. {impl['plugin']}" + (f"  [{', '.join(marks)}]" if marks else ""))
    return 0


def _shape_of(host: Any, hook: str) -> str:
    spec = getattr(host.pm.hook, hook).spec
    if spec is not None and spec.opts.get("firstresult"):
        return "choose one"
    return "register many"


def _flag_hint(parser: argparse.ArgumentParser, command: str | None, unknown: Sequence[str]) -> str:
    """`` (did you mean --dtype?)`` for misspelt flags: argparse names the flag it refused, not the one meant."""
    flags: list[str] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:
            flags = [f for a in action.choices[command]._actions for f in a.option_strings if f.startswith("--")]
    meant = []
    for arg in unknown:
        close = difflib.get_close_matches(arg.partition("=")[0], flags, n=1) if arg.startswith("--") else []
        if close and close[0] not in meant:
            meant.append(close[0])
    return f" (did you mean {', '.join(meant)}?)" if meant else ""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``modelport`` console script; returns the exit status."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}{_flag_hint(parser, args.command, unknown)}")
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
        print(f"modelport: error: {cli_spelling(str(exc))}", file=sys.stderr)
        note = _not_here_note(args, exc)
        if note:
            print(f"modelport: note: {note}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader went away (`modelport plugins --json | head`): stop quietly, as Unix tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


#: A reference that starts with a scheme (``shelf:``, ``s3://``): a plugin's, never a repository id.
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")


def _not_here_note(args: argparse.Namespace, exc: Exception) -> str:
    """A bare name that failed as a repository id may have been meant as a local folder: say it is not one."""
    from pathlib import Path

    from modelport.errors import AccessDeniedError, DownloadError, OfflineMissError, ReferenceNotFoundError

    reference = getattr(args, "reference", None)
    if not reference or "no such file or folder" in str(exc):
        return ""
    if _SCHEME.match(reference):
        # ``shelf:NAME``, ``s3://...``: a plugin's own scheme, not a repository id (those have no
        # ``:`` before their ``/``), and its plugin said what was wrong; a note would be false.
        return ""
    if not isinstance(exc, (ReferenceNotFoundError, DownloadError, OfflineMissError, AccessDeniedError)):
        return ""
    path = Path(reference).expanduser()
    if path.exists():
        return ""
    return f"it was tried as a repository id; there is no such file or folder here either: {path.resolve()}"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
