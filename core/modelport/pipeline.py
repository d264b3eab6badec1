"""The pipeline: ``resolve`` (no tensor read) and ``load`` (all the way).

Each step asks the plugins through one hook and records who answered in the
trace. Order of config handling, fixed and documented:

1. the parser builds the config (config classes by ``model_type`` first);
2. ``hf_overrides`` are applied;
3. registered patches run by phase (legacy RoPE forms, attribute remaps,
   format metadata, per-architecture fix-ups);
4. facts are derived (text config, dtype, ``max_model_len``);
5. the architecture is selected.
"""

from __future__ import annotations

import contextlib
import copy
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelport import progress
from modelport.config_checks import check_config_values, check_model_fits
from modelport.devices import resolve_device
from modelport.errors import (
    InvalidConfigError,
    InvalidOptionError,
    ModelportError,
    OfflineMissError,
    PluginError,
    ReferenceNotFoundError,
    TokenizerError,
    UnsupportedArchitectureError,
    UnsupportedFormatError,
    WeightsMissingError,
)
from modelport.facts import (
    ModelFacts,
    apply_overrides,
    length_caps,
    model_facts,
    resolve_dtype,
    resolve_max_model_len,
    text_config,
)
from modelport.options import LoadOptions
from modelport.plugins import Answer, PluginHost, get_host
from modelport.registry import Registry
from modelport.trace import Trace
from modelport.types import ArchitectureChoice, PatchContext, Source, TokenizerSpec, WeightFiles
from modelport.weight_checks import check_nothing_uninitialised, weights_being_read


@dataclass(frozen=True)
class ResolvedModel:
    """Everything decided about a model before any tensor is read.

    Attributes:
        reference: what the user typed.
        options: the validated options.
        source: where the model's files are.
        config_source: where the config came from (differs with ``hf_config_path``).
        config_format: the detected or requested config format.
        hf_config: the final ``transformers.PretrainedConfig`` (overrides and patches applied).
        hf_text_config: its language-model part (``hf_config`` itself for text-only models).
        architecture: the chosen implementation.
        model_impl: the kind of that implementation (``native``, ``transformers``...).
        dtype: the dtype the model will be built in.
        max_model_len: the context length (the user's cap, else the model's).
        facts: shape and kind of the model (head_dim, num_kv_heads, MoE, multimodal...).
        tokenizer: what tokenizer will be loaded (``None`` with ``skip_tokenizer_init``).
        weight_files: which weight files will be read (load format ``none`` and no
            files when ``resolve(..., strict=False)`` found none).
        trace: every decision, who made it, why and how long it took.
        unresolved: only from ``resolve(..., strict=False)``: the steps that found
            nothing (``tokenizer``, ``weights``), each with the error a strict
            resolve would have raised; empty otherwise.
    """

    reference: str
    options: LoadOptions
    source: Source
    config_source: Source
    config_format: str
    hf_config: Any
    hf_text_config: Any
    architecture: ArchitectureChoice
    model_impl: str
    dtype: str
    max_model_len: int
    facts: ModelFacts
    tokenizer: TokenizerSpec | None
    weight_files: WeightFiles
    trace: Trace = field(compare=False)
    unresolved: Mapping[str, str] = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The stable JSON shape printed by ``modelport inspect --json`` (see docs/cli.md)."""
        return {
            "reference": self.reference,
            "source": self.source.describe(),
            "config_source": self.config_source.describe(),
            "config_format": self.config_format,
            "architecture": {
                "name": self.architecture.name,
                "impl": self.architecture.impl,
                "target": self.architecture.target,
                "plugin": self.architecture.plugin,
            },
            "model_impl": self.model_impl,
            "model_type": getattr(self.hf_config, "model_type", None),
            "dtype": self.dtype,
            "max_model_len": self.max_model_len,
            "facts": self.facts.to_dict(),
            "tokenizer": self.tokenizer.describe() if self.tokenizer else None,
            "weight_files": self.weight_files.describe(),
            "options": self.options.to_public_dict(),
            "trace": self.trace.to_list(),
            "unresolved": dict(self.unresolved),
        }


@dataclass(frozen=True)
class WeightReport:
    """How the weights matched the model's parameters.

    Attributes:
        loaded: names of parameters filled from the weights.
        missing: parameters that no weight filled, although the load format
            reads weights (the model initialised them its own way); ``load()``
            refuses such a load with a ``WeightsMissingError`` naming them.
        unexpected: weights that matched no parameter.
        initialised: parameters left at the model's own (random)
            initialisation on purpose, because the load format reads no
            weights at all (``dummy``: every parameter is here, none is
            ``missing``).
    """

    loaded: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    unexpected: tuple[str, ...] = ()
    initialised: tuple[str, ...] = ()

    def as_initialised(self) -> WeightReport:
        """The report for a load format that reads no weights: what is ``missing`` is ``initialised``."""
        return WeightReport(self.loaded, (), self.unexpected, tuple(sorted({*self.initialised, *self.missing})))


@dataclass(frozen=True)
class LoadedModel:
    """A built model with its weights and tokenizer.

    Attributes:
        resolved: the :class:`ResolvedModel` it was built from.
        model: the implementation instance.
        tokenizer: the tokenizer object, or ``None`` with ``skip_tokenizer_init``.
        weights: how the weights matched the parameters.
        trace: the resolve trace followed by the load steps.
    """

    resolved: ResolvedModel
    model: Any
    tokenizer: Any
    weights: WeightReport
    trace: Trace = field(compare=False)


class _Run:
    """One pipeline run: the host, its registry, the options and the trace."""

    def __init__(self, host: PluginHost, options: LoadOptions) -> None:
        self.host = host
        self.options = options
        self.trace = Trace()
        self.registry: Registry = host.registry

    def ask(self, step: str, hook: str, describe: Any = None, **kwargs: Any) -> Answer:
        answer = self.host.call_first(hook, **kwargs)
        if answer.plugin is not None:
            decision = describe(answer.value) if describe else str(answer.value)
            reason = (
                answer.reason
                or getattr(answer.value, "reason", "")
                or f"first of {len(answer.asked)} plugin(s) asked to answer"
            )
            self.trace.record(step, answer.plugin, decision, reason, answer.seconds, answer.asked)
        return answer

    def check_registered(self, option: str, kind: str) -> None:
        value = getattr(self.options, option)
        valid = ["auto", *self.registry.names(kind)]
        if value not in valid:
            raise InvalidOptionError(option, value, valid)

    def classify(self, step: str, reference: str, options: LoadOptions | None = None) -> Source:
        answer = self.ask(
            step,
            "modelport_classify_reference",
            lambda s: s.location,
            reference=reference,
            options=options or self.options,
        )
        if answer.value is None:
            asked = ", ".join(answer.asked) or "none"
            if Path(reference).expanduser().exists():
                detail = (
                    f"it exists locally, but no plugin took it (asked: {asked}; is modelport.builtin.local disabled?)"
                )
            else:
                # Advise modelport-hf only where it is missing: it was asked, and passed, otherwise.
                hint = "" if "modelport-hf" in answer.asked else "; install modelport-hf for Hugging Face ids"
                detail = f"it is not a local path and no installed plugin recognises it (asked: {asked}{hint})"
            raise ReferenceNotFoundError(reference, detail)
        source: Source = answer.value
        return source


def resolve(reference: str, *, host: PluginHost | None = None, strict: bool = True, **options: Any) -> ResolvedModel:
    """Decide everything about ``reference`` up to the tokenizer and weight files; read no tensor.

    Args:
        reference: a local path, a repository id or anything an installed plugin recognises.
        host: the plugin host to use (default: the process-wide one from the environment).
        strict: ``False`` makes it a diagnostic (what ``modelport inspect`` shows): a
            tokenizer or weights that cannot be found are recorded in ``unresolved`` and
            in the trace as "none found" instead of raising, so one run shows every
            step. Every other error still raises.
        **options: any :class:`~modelport.LoadOptions` field; an unknown name is an error.

    Raises:
        modelport.errors.ModelportError: a typed error naming what was at fault.
    """
    opts = LoadOptions.from_kwargs(**options)
    run = _Run(host or get_host(), opts)
    return _resolve(run, reference, strict=strict)


def _resolve(run: _Run, reference: str, *, strict: bool = True) -> ResolvedModel:
    opts, trace, registry = run.options, run.trace, run.registry
    run.check_registered("config_format", "config_format")
    run.check_registered("tokenizer_mode", "tokenizer_mode")
    run.check_registered("load_format", "load_format")
    backends = registry.names("distributed_backend")
    if opts.distributed_executor_backend is not None and opts.distributed_executor_backend not in backends:
        raise InvalidOptionError("distributed_executor_backend", opts.distributed_executor_backend, backends)

    source = run.classify("source", reference)
    config_source = run.classify("config_source", opts.hf_config_path) if opts.hf_config_path else source

    if opts.config_format == "auto":
        answer = run.ask("format", "modelport_detect_config_format", source=config_source, options=opts)
        if answer.value is None:
            files = config_source.list_files()
            shown = ", ".join(files[:8]) + (", ..." if len(files) > 8 else "")
            raise UnsupportedFormatError(
                config_source.location, registry.names("config_format"), f"files: {shown or 'none'}"
            )
        config_format = str(answer.value)
        if config_format not in registry.names("config_format"):
            raise PluginError(
                answer.plugin or "", f"detected config format {config_format!r}, which no plugin registered"
            )
    else:
        config_format = opts.config_format
        trace.record("format", "modelport", config_format, "given by config_format option", 0.0)

    progress.report("config_started", imports=[m for m in ("torch", "transformers") if m not in sys.modules])
    try:
        answer = run.ask(
            "config",
            "modelport_parse_config",
            lambda c: f"{type(c).__name__} (model_type={getattr(c, 'model_type', None)!r})",
            source=config_source,
            config_format=config_format,
            options=opts,
            registry=registry,
        )
    except ReferenceNotFoundError as exc:
        if opts.config_format == "auto" or not Path(config_source.location).exists():
            raise
        # The reference exists (a single file, say): it is the given format's files that are not there.
        raise UnsupportedFormatError(
            config_source.location,
            registry.names("config_format"),
            f"config_format={config_format!r} was given, but its files are not there: "
            + (exc.args[0].split(": ", 1)[-1] if exc.args else ""),
        ) from exc
    finally:
        progress.report("config_finished")
    if answer.value is None:
        raise UnsupportedFormatError(
            config_source.location, registry.names("config_format"), f"no installed plugin parses {config_format!r}"
        )
    hf_config = answer.value
    _check_architectures(hf_config, config_source.location)

    if opts.hf_overrides is not None:
        with trace.timed("overrides", "modelport", "applied hf_overrides", "") as info:
            before = _snapshot(hf_config)
            hf_config = apply_overrides(hf_config, opts.hf_overrides)
            # A parser may have applied scalar overrides already (so they could pick the config class):
            # name the keys as well as what changed here.
            keys = sorted(opts.hf_overrides) if isinstance(opts.hf_overrides, Mapping) else ["<callable>"]
            info["decision"] = f"applied hf_overrides: {', '.join(keys)}"
            info["reason"] = _changes(before, _snapshot(hf_config))

    context = PatchContext(config_source, config_format, opts)
    for patch, plugin in registry.patches():
        if not patch.applies_to(hf_config):
            continue
        start = time.perf_counter()
        before = _snapshot(hf_config)
        result = patch.apply(hf_config, context)
        if result is not None and not callable(getattr(result, "to_dict", None)):
            raise PluginError(plugin, f"config patch {patch.name!r} returned {type(result).__name__}, not a config")
        hf_config = hf_config if result is None else result
        changed = _changes(before, _snapshot(hf_config))
        trace.record(f"patch:{patch.name}", plugin, changed, f"phase {int(patch.phase)}", time.perf_counter() - start)

    _check_architectures(hf_config, config_source.location)  # again: overrides and patches may have set it
    start = time.perf_counter()
    hf_text = text_config(hf_config)
    format_dtype = _format_default_dtype(registry, config_format) if opts.dtype == "auto" else None
    try:
        # First: NaN, infinite, zero, negative sizes and RoPE values (modelport.config_checks), which the
        # arithmetic below would otherwise meet as a bare OverflowError (a RoPE factor of inf times the length).
        check_config_values(hf_text)
        dtype = format_dtype or resolve_dtype(opts.dtype, hf_config, device=opts.device)
        caps = length_caps(lambda name: _json_beside(source, name), hf_config)  # vLLM's tokenizer/ST caps
        max_len = resolve_max_model_len(opts.max_model_len, hf_text, **caps)
        facts = model_facts(hf_config, hf_text)
    except InvalidConfigError as exc:
        # The facts read attributes, not files: name the file the config came from.
        raise InvalidConfigError(config_source.location, exc.detail, field=exc.field, value=exc.value) from exc
    trace.record(
        "facts",
        "modelport",
        f"dtype={dtype}, max_model_len={max_len}, head_dim={facts.head_dim}, num_kv_heads={facts.num_kv_heads}",
        (
            f"dtype {format_dtype}: the {config_format!r} format's default"
            if format_dtype
            else "dtype from option or checkpoint"
        )
        + "; length from config keys and RoPE scaling, capped by max_model_len",
        time.perf_counter() - start,
    )

    answer = run.ask(
        "architecture",
        "modelport_select_architecture",
        lambda c: f"{c.name} ({c.impl}: {c.target})",
        hf_config=hf_config,
        model_impl=opts.model_impl,
        registry=registry,
        config_format=config_format,
        options=opts,
    )
    if answer.value is None:
        hint = _architecture_hint(run, hf_config)
        raise UnsupportedArchitectureError(
            getattr(hf_config, "architectures", None) or [], opts.model_impl, registry.names("architecture"), hint
        )
    architecture: ArchitectureChoice = answer.value
    if not architecture.plugin:
        architecture = ArchitectureChoice(
            architecture.name, architecture.impl, architecture.target, answer.plugin or "", answer.reason
        )

    unresolved: dict[str, str] = {}
    tokenizer: TokenizerSpec | None = None
    if opts.skip_tokenizer_init:
        trace.record("tokenizer", "modelport", "skipped", "skip_tokenizer_init=True", 0.0)
    else:
        if opts.tokenizer:
            # Another repository's revisions are its own: the model's revision (a commit of the model's
            # repository, say) means nothing there, so only tokenizer_revision applies (unset: its default).
            tok_options = opts.replace(revision=opts.tokenizer_revision)
            tok_source = run.classify("tokenizer_source", opts.tokenizer, tok_options)
        elif opts.tokenizer_revision and opts.tokenizer_revision != opts.revision:
            # The model's own tokenizer at another revision of the model's repository.
            tok_options = opts.replace(revision=opts.tokenizer_revision)
            tok_source = run.classify("tokenizer_source", reference, tok_options)
        else:
            tok_source = source
        try:
            answer = run.ask(
                "tokenizer",
                "modelport_resolve_tokenizer",
                lambda t: f"{t.mode}: {', '.join(t.files) or t.source.location}",
                source=tok_source,
                hf_config=hf_config,
                config_format=config_format,
                options=opts,
            )
            if answer.value is None:
                raise TokenizerError(
                    tok_source.location,
                    f"no installed plugin found a tokenizer for tokenizer_mode={opts.tokenizer_mode!r} "
                    f"(modes: {', '.join(registry.names('tokenizer_mode')) or 'none'}); "
                    "pass skip_tokenizer_init=True to go without one",
                )
            tokenizer = answer.value
        except TokenizerError as exc:
            if strict:
                raise
            unresolved["tokenizer"] = str(exc)
            trace.record("tokenizer", "modelport", "none found", str(exc), 0.0)

    try:
        answer = run.ask(
            "weights",
            "modelport_select_weight_files",
            lambda w: f"{w.load_format}: {len(w.files)} file(s)" + (f" via {w.index_file}" if w.index_file else ""),
            source=source,
            config_format=config_format,
            hf_config=hf_config,
            options=opts,
        )
        if answer.value is None:
            raise WeightsMissingError(
                source.location,
                f"no weight files found for load_format={opts.load_format!r}; "
                f"registered load formats: {', '.join(registry.names('load_format')) or 'none'}",
            )
        weight_files: WeightFiles = answer.value
    except WeightsMissingError as exc:
        if strict:
            raise
        unresolved["weights"] = str(exc)
        trace.record("weights", "modelport", "none found", str(exc), 0.0)
        weight_files = WeightFiles("none", source, reason=str(exc))

    return ResolvedModel(
        reference=reference,
        options=opts,
        source=source,
        config_source=config_source,
        config_format=config_format,
        hf_config=hf_config,
        hf_text_config=hf_text,
        architecture=architecture,
        model_impl=architecture.impl,
        dtype=dtype,
        max_model_len=max_len,
        facts=facts,
        tokenizer=tokenizer,
        weight_files=weight_files,
        trace=trace,
        unresolved=unresolved,
    )


def _format_default_dtype(registry: Registry, config_format: str) -> str | None:
    """The dtype a config format registered as its models' own (``register(name, default_dtype=...)``), if any."""
    entry = registry.lookup("config_format", config_format)
    value = entry.extra.get("default_dtype") if entry is not None else None
    return str(value) if value else None


def _architecture_hint(run: _Run, hf_config: Any) -> str:
    """What to do when no implementation serves the config: the likeliest fix first."""
    opts = run.options
    auto_map = getattr(hf_config, "auto_map", None)
    if isinstance(auto_map, Mapping) and auto_map and not opts.trust_remote_code:
        classes = ", ".join(sorted(str(v) for v in auto_map.values()))
        return (
            f"the repository's own code implements it (auto_map: {classes}), which runs only with "
            "trust_remote_code=True and the Transformers backend (modelport-transformers)"
        )
    if opts.model_impl == "transformers" and "modelport-transformers" not in run.host.plugins:
        names = getattr(hf_config, "architectures", None) or []
        native = any(e.extra.get("impl") == "native" for n in names for e in run.registry.architectures(n))
        return "model_impl='transformers' needs the Transformers backend: install modelport-transformers" + (
            ", or try model_impl='native'" if native else ""
        )
    if opts.model_impl == "native":
        return "try model_impl='transformers'"
    if opts.model_impl == "transformers":
        return "try model_impl='native'"
    return "install a plugin that implements it (modelport-transformers serves any architecture transformers knows)"


def load(reference: str, *, host: PluginHost | None = None, **options: Any) -> LoadedModel:
    """Resolve ``reference``, build its model, stream its weights in, load its tokenizer.

    Accepts the same arguments as :func:`resolve`. The model class named by the
    chosen architecture is built with ``from_config(hf_config, dtype=..., device=...)``
    and filled by ``load_weights(iterator)``, which returns a
    :class:`WeightReport` of parameters no weight filled and weights no
    parameter took.

    The ``device`` option is settled first (:func:`modelport.devices.resolve_device`):
    ``auto`` becomes a device present here, and a device its executor plugin reports
    absent raises :class:`~modelport.errors.DeviceUnavailableError` before any file is read.
    """
    opts = LoadOptions.from_kwargs(**options)
    host = host or get_host()
    started = time.perf_counter()
    device, why = resolve_device(opts.device, host.registry)
    opts = opts.replace(device=device) if device != opts.device else opts
    run = _Run(host, opts)
    run.trace.record("device", "modelport", device, why, time.perf_counter() - started)
    resolved = _resolve(run, reference)
    trace = run.trace
    _fetch_files(resolved, trace)
    check_model_fits(resolved)  # before building: a config far larger than its weights fails now

    with trace.timed("model", resolved.architecture.plugin, resolved.architecture.target, "") as info:
        cls = run.registry.load(resolved.architecture.target)
        if opts.tensor_parallel_size > 1:
            _check_shard(cls, resolved)
        try:
            model = cls.from_config(resolved.hf_config, dtype=resolved.dtype, device=opts.device)
        except InvalidConfigError as exc:
            # A model class sees a config object, not its file: name the file the config came from.
            raise InvalidConfigError(
                resolved.config_source.location, exc.detail, field=exc.field, value=exc.value
            ) from exc
        info["reason"] = f"built on {opts.device} in {resolved.dtype}"

    answer = run.ask(
        "weights_reader",
        "modelport_iter_weights",
        lambda _: f"reading {resolved.weight_files.load_format}",
        weights=resolved.weight_files,
        hf_config=resolved.hf_config,
        options=opts,
        config_format=resolved.config_format,
    )
    if answer.value is None:
        raise WeightsMissingError(
            resolved.source.location,
            f"no installed plugin reads load_format={resolved.weight_files.load_format!r}",
        )
    with trace.timed("load_weights", resolved.architecture.plugin, "", "") as info:
        with weights_being_read(resolved.weight_files):  # a tensor that does not fit names its file
            report = model.load_weights(_counted(_checked(answer.value), resolved.weight_files))
        if not isinstance(report, WeightReport):
            report = WeightReport()
        if not resolved.weight_files.files:
            # A format that reads no file (dummy) leaves the parameters at their initialisation on purpose.
            report = report.as_initialised()
        info["decision"] = (
            f"{len(report.loaded)} loaded, {len(report.missing)} missing, {len(report.unexpected)} unexpected"
            + (f", {len(report.initialised)} randomly initialised" if report.initialised else "")
        )
        check_nothing_uninitialised(report, resolved.weight_files)  # not loaded, not tied: WeightsMissingError

    tokenizer = None
    if resolved.tokenizer is not None:
        answer = run.ask(
            "tokenizer_load",
            "modelport_load_tokenizer",
            lambda t: type(t).__name__,
            spec=resolved.tokenizer,
            options=opts,
            config_format=resolved.config_format,
            hf_config=resolved.hf_config,
        )
        if answer.value is None:
            raise TokenizerError(
                resolved.tokenizer.source.location, f"no plugin loads mode {resolved.tokenizer.mode!r}"
            )
        tokenizer = answer.value

    return LoadedModel(resolved, model, tokenizer, report, trace)


def _check_shard(cls: Any, resolved: ResolvedModel) -> None:
    """A tensor-parallel load builds one rank's shard: only inside a group of that size, of a class that shards."""
    from modelport.distributed.checks import check_tensor_parallel
    from modelport.distributed.state import current

    size = resolved.options.tensor_parallel_size
    arch = resolved.architecture.name
    check_tensor_parallel(cls, resolved.hf_config, size, location=resolved.source.location, architecture=arch)
    if current().world_size != size:
        raise InvalidOptionError(
            "tensor_parallel_size",
            size,
            detail=(
                "load() builds one rank's shard inside a tensor-parallel group of that size; "
                "modelport.LLM starts the group (or set modelport.distributed.state.parallel_state in a worker)"
            ),
        )


def _fetch_files(resolved: ResolvedModel, trace: Trace) -> None:
    """Materialise the tokenizer files, then the weight files, before anything is built.

    Small files first, so a tokenizer that cannot be fetched fails before any
    weight is downloaded; offline, one :class:`OfflineMissError` names every
    file of the load that is not cached, not just the first.
    """
    wanted: list[tuple[Source, tuple[str, ...]]] = []
    if resolved.tokenizer is not None and resolved.tokenizer.files:
        wanted.append((resolved.tokenizer.source, resolved.tokenizer.files))
    if resolved.weight_files.files:
        wanted.append((resolved.weight_files.source, resolved.weight_files.files))
    count = sum(len(files) for _, files in wanted)
    with trace.timed("files", "modelport", f"{count} file(s)", "tokenizer files, then weight files") as info:
        missing: list[OfflineMissError] = []
        for source, files in wanted:
            try:
                source.fetch_many(files)
            except OfflineMissError as exc:
                missing.append(exc)
        if len(missing) == 1:
            raise missing[0]
        if missing:
            info["decision"] = "offline misses"
            raise OfflineMissError(resolved.reference, [f for exc in missing for f in exc.missing])


def _checked(weights: Iterable[tuple[str, Any]]) -> Iterator[tuple[str, Any]]:
    for item in weights:
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)):
            raise ModelportError(f"a weights reader yielded {type(item).__name__}, expected (name, tensor)")
        yield item


def _json_beside(source: Source, name: str) -> Any:
    """The parsed JSON file ``name`` of the model, or ``None`` when it has none (see ``facts.length_caps``)."""
    import json

    if not source.exists(name):
        return None
    path = source.fetch(name)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidConfigError(str(path), f"{name} is not a readable JSON file: {exc}") from exc


def _counted(weights: Iterator[tuple[str, Any]], files: WeightFiles) -> Iterator[tuple[str, Any]]:
    """``weights`` unchanged, reporting the bytes read so far against the files' size (``weights_read``)."""
    total = 0
    for name in files.files:
        with contextlib.suppress(OSError, ModelportError):
            total += files.source.fetch(name).stat().st_size  # fetched already: a local path
    done = 0
    for item in weights:
        done += int(getattr(item[1], "nbytes", 0))
        progress.report("weights_read", done=done, total=total)
        yield item
    progress.report("weights_read", done=max(done, total), total=total)  # headers and indexes read too


def _check_architectures(hf_config: Any, location: str) -> None:
    """``architectures`` must be absent, null or a list of names: every later step relies on it."""
    names = getattr(hf_config, "architectures", None)
    if names is None:
        return
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) and n for n in names):
        raise InvalidConfigError(location, "expected a list of architecture names", field="architectures", value=names)


def _snapshot(hf_config: Any) -> dict[str, Any]:
    to_dict = getattr(hf_config, "to_dict", None)
    data = to_dict() if callable(to_dict) else dict(vars(hf_config))
    return copy.deepcopy(data)


def _changes(before: dict[str, Any], after: dict[str, Any]) -> str:
    keys = sorted(k for k in set(before) | set(after) if before.get(k, _MISSING) != after.get(k, _MISSING))
    return ("changed " + ", ".join(keys)) if keys else "no change"


_MISSING = object()
