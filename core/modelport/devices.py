"""The ``device`` option: ``auto`` resolved, and a device checked before anything is built on it.

An executor plugin may register, with its device type, an availability check
(``register("cuda", description, available="module:function")``): a function
taking the device string (``cuda``, ``cuda:1``) and returning why that device
cannot be used here, or ``None`` when it can. Core asks it before a model is
built on the device, so that ``device="cuda"`` on a machine without a GPU fails
at once with a :class:`~modelport.errors.DeviceUnavailableError` that says so,
not deep inside torch after the weights were read. A device type that no
installed executor registered (``cuda`` for :func:`modelport.load` without
modelport-cuda) is checked with torch instead. ``device="auto"`` becomes
the first registered device type other than ``cpu`` (in name order) whose
check passes, else ``cpu``.
"""

from __future__ import annotations

from modelport.errors import DeviceUnavailableError, ExecutorError, PluginError
from modelport.registry import Registry

#: The value of the ``device`` option that picks a device from what is installed and present.
AUTO = "auto"

#: Device types whose executor comes from a plugin of this repository: named when it is missing.
_EXECUTOR_PLUGINS = {"cuda": "modelport-cuda"}


def unavailable_reason(device: str, registry: Registry) -> str | None:
    """Why ``device`` cannot be used here, by its executor's registered check; ``None`` if it can (or none checks)."""
    entry = registry.lookup("executor", device.split(":")[0])
    target = entry.extra.get("available") if entry is not None else None
    if not target:
        return None
    check = registry.load(str(target))
    reason = check(device)
    if reason is not None and not isinstance(reason, str):
        raise PluginError(entry.plugin if entry else "", f"{target} returned {reason!r}, not a reason or None")
    return reason


def resolve_device(device: str, registry: Registry, *, need_executor: bool = False) -> tuple[str, str]:
    """The concrete device for the ``device`` option, and why (for the trace).

    Args:
        device: the option (``auto``, ``cpu``, ``cuda``, ``cuda:1``...).
        registry: the registry holding the executors and their availability checks.
        need_executor: raise when no executor is registered for the device type
            (:class:`modelport.LLM` needs one; :func:`modelport.load` does not).

    Raises:
        DeviceUnavailableError: the device's executor says it is not there.
        ExecutorError: ``need_executor`` and no installed executor drives the device type.
    """
    if device == AUTO:
        for name in registry.names("executor"):
            entry = registry.lookup("executor", name)
            checked = name != "cpu" and entry is not None and entry.extra.get("available")
            if checked and entry is not None and unavailable_reason(name, registry) is None:
                return name, f"device='auto': {name} is present ({entry.plugin})"
        return "cpu", "device='auto': no other registered device is present here"
    executors = registry.names("executor")
    kind = device.split(":")[0]
    if need_executor and kind not in executors:
        # Checked before loading: no point reading weights that nothing can run.
        hint = f"; install {_EXECUTOR_PLUGINS[kind]} for it" if kind in _EXECUTOR_PLUGINS else ""
        raise ExecutorError(
            f"no installed executor drives device {device!r} (registered: {', '.join(executors) or 'none'}){hint}"
        )
    reason = unavailable_reason(device, registry)
    if reason is None and kind not in executors:
        # No installed executor vouches for this type (``cuda`` without modelport-cuda, for
        # modelport.load): ask torch, or the model would fail half-built with torch's own
        # AssertionError or RuntimeError instead of this typed error.
        reason = torch_unavailable_reason(device)
    if reason is not None:
        raise DeviceUnavailableError(device, reason)
    return device, "given by the device option"


def torch_unavailable_reason(device: str) -> str | None:
    """Why torch cannot build on ``device`` here, or ``None`` when it can or has no way to tell.

    Used for device types that no installed executor registered (an executor's own
    check knows its device better). A type torch does not know is refused; a type
    whose torch module has ``is_available`` (``cuda``, ``mps``, ``xpu``...) must be
    available, and an index must be below its ``device_count``; anything else
    (``meta``) is left to torch.
    """
    import torch

    try:
        parsed = torch.device(device)
    except RuntimeError:
        return f"torch {torch.__version__} knows no device type {device.split(':')[0]!r}; use device='cpu'"
    backend = getattr(torch, parsed.type, None)
    is_available = getattr(backend, "is_available", None)
    if not callable(is_available):
        return None
    if not is_available():
        return f"torch {torch.__version__} finds no {parsed.type} device on this machine; use device='cpu'"
    device_count = getattr(backend, "device_count", None)
    if parsed.index is not None and callable(device_count):
        count = int(device_count())
        if parsed.index >= count:
            return f"this machine has {count} {parsed.type} device(s)"
    return None
