"""Typed errors: one class per failure a user can act on.

Every message names what was at fault (the reference, file, field and value)
and, where there is a closed list of valid values, lists them. The CLI prints
``str(error)`` without a traceback, so a message must stand on its own.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def _listing(values: Iterable[str]) -> str:
    items = sorted(set(values))
    return ", ".join(repr(v) for v in items) if items else "(none registered)"


class ModelportError(Exception):
    """Base class of every error modelport raises on purpose."""


class InvalidOptionError(ModelportError, ValueError):
    """An option name or value that modelport does not accept."""

    def __init__(self, option: str, value: object, valid: Iterable[str] | None = None, *, detail: str = "") -> None:
        self.option = option
        self.value = value
        self.valid = sorted(set(valid)) if valid is not None else None
        message = f"invalid value {value!r} for option {option!r}"
        if detail:
            message += f": {detail}"
        if self.valid is not None:
            message += f"; supported values: {_listing(self.valid)}"
        super().__init__(message)


class UnknownOptionError(InvalidOptionError):
    """An option name that is not one of :class:`modelport.LoadOptions`' fields."""

    def __init__(self, option: str, valid: Iterable[str]) -> None:
        self.option = option
        self.value = None
        self.valid = sorted(set(valid))
        # A misspelt keyword (``dtyp``, ``max_len``) is the usual cause: name the likely one first.
        close = difflib.get_close_matches(option, self.valid, n=1) if isinstance(option, str) else []
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        ValueError.__init__(self, f"unknown option {option!r}{hint}; valid options: {', '.join(self.valid)}")


class PluginError(ModelportError):
    """A plugin failed to import, validate or register (fatal only in strict mode), or broke a hook's contract."""

    def __init__(self, plugin: str, reason: str) -> None:
        self.plugin = plugin
        self.reason = reason
        super().__init__(f"plugin {plugin!r}: {reason}")


class ReferenceNotFoundError(ModelportError):
    """The reference names no local folder or file and no plugin recognised it."""

    def __init__(self, reference: str, detail: str = "") -> None:
        self.reference = reference
        message = f"model reference {reference!r} was not found"
        if detail:
            message += f": {detail}"
        super().__init__(message)


class UnsupportedFormatError(ModelportError):
    """The files are in no config format that an installed plugin can read."""

    def __init__(self, location: str, supported: Iterable[str], detail: str = "") -> None:
        self.location = location
        self.supported = sorted(set(supported))
        message = f"no supported config format found in {location}"
        if detail:
            message += f" ({detail})"
        message += f"; supported formats: {_listing(self.supported)}"
        super().__init__(message)


class InvalidConfigError(ModelportError):
    """A config file that cannot be read or holds a value that makes no sense."""

    def __init__(self, file: str, detail: str, *, field: str | None = None, value: object = None) -> None:
        self.file = file
        self.detail = detail
        self.field = field
        self.value = value
        where = f"{file}"
        if field is not None:
            where += f", field {field!r}"
            if value is not None:
                where += f" = {value!r}"
        super().__init__(f"invalid config in {where}: {detail}")


class RemoteCodeRequiredError(ModelportError):
    """Loading needs code from the model repository and trust_remote_code is off."""

    def __init__(self, location: str, module: str, *, field: str = "auto_map") -> None:
        self.location = location
        self.module = module
        self.field = field
        super().__init__(
            f"{location} needs code from its repository ({module!r}, named in {field!r}); "
            "modelport never runs repository code unless you pass trust_remote_code=True "
            "(CLI: --trust-remote-code)"
        )


class UnsupportedArchitectureError(ModelportError):
    """No registered implementation serves the config's architectures."""

    def __init__(
        self, architectures: Iterable[str], model_impl: str, registered: Iterable[str], hint: str = ""
    ) -> None:
        self.architectures = list(architectures)
        self.model_impl = model_impl
        self.registered = sorted(set(registered))
        message = (
            f"architecture(s) {', '.join(self.architectures) or '(none in config)'} "
            f"not supported with model_impl={model_impl!r}; registered: {_listing(self.registered)}"
        )
        if hint:
            message += f"; {hint}"
        super().__init__(message)


class WeightsError(ModelportError):
    """Weight files that are missing, corrupt or truncated."""

    def __init__(self, file: str, detail: str) -> None:
        self.file = file
        super().__init__(f"weights {file}: {detail}")


class WeightsMissingError(WeightsError):
    """The chosen load format found no weight files."""


class WeightsCorruptError(WeightsError):
    """A weight file that cannot be parsed (truncated, bad header, bad pickle)."""


class TokenizerError(ModelportError):
    """The tokenizer cannot be found or built."""

    def __init__(self, location: str, detail: str) -> None:
        self.location = location
        super().__init__(f"tokenizer {location}: {detail}")


class OfflineMissError(ModelportError):
    """Offline mode is on and files the load needs are not in the cache."""

    def __init__(self, reference: str, missing: Iterable[str], detail: str = "") -> None:
        self.reference = reference
        self.missing = list(missing)
        message = f"offline mode: {reference} is not fully cached; missing: {', '.join(self.missing) or '(unknown)'}"
        if detail:
            message += f" ({detail})"
        super().__init__(message)


class AccessDeniedError(ModelportError):
    """The repository is private or gated and the token (if any) does not grant access."""

    def __init__(self, reference: str, detail: str) -> None:
        self.reference = reference
        super().__init__(f"access to {reference} denied: {detail}")


class DownloadError(ModelportError):
    """A file could not be fetched from a remote source (network failure, server error, interrupted transfer).

    Nothing half-written is left in the cache: the next attempt starts clean.
    """

    def __init__(self, reference: str, file: str | None, detail: str) -> None:
        self.reference = reference
        self.file = file
        what = f"{file!r} of {reference}" if file else reference
        super().__init__(f"download of {what} failed: {detail}")


class ExecutorError(ModelportError):
    """No executor can run the model on the requested device."""


class DeviceUnavailableError(ExecutorError):
    """The ``device`` option names a device this machine does not have (``cuda`` without a CUDA device)."""

    def __init__(self, device: str, detail: str) -> None:
        self.device = device
        self.detail = detail
        super().__init__(f"device {device!r} is not available: {detail}")


__all__ = [
    "AccessDeniedError",
    "DeviceUnavailableError",
    "DownloadError",
    "ExecutorError",
    "InvalidConfigError",
    "InvalidOptionError",
    "ModelportError",
    "OfflineMissError",
    "PluginError",
    "ReferenceNotFoundError",
    "RemoteCodeRequiredError",
    "TokenizerError",
    "UnknownOptionError",
    "UnsupportedArchitectureError",
    "UnsupportedFormatError",
    "WeightsCorruptError",
    "WeightsError",
    "WeightsMissingError",
]
