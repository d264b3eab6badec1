"""Checks that checkpoint tensors fit the model, and that a load leaves nothing uninitialised.

Shared by every model class (native and backends) so that all of them treat a
damaged or mismatched checkpoint the same way:

* :func:`check_weight_fits`, called by a model's ``load_weights`` for each
  tensor it matched to a parameter: a tensor whose shape differs from the
  parameter's (or the part of it the tensor fills), or whose kind of dtype
  differs (integer or boolean data for a floating-point parameter, say), is a
  :class:`~modelport.errors.WeightsCorruptError` naming the tensor, the file,
  the expected and the found shape and dtype. Before, such a tensor was set
  aside as "unexpected" and its parameter randomly initialised, which made a
  broken checkpoint run as a random model.
* :func:`check_nothing_uninitialised`, called by the pipeline after
  ``load_weights``: a parameter that no weight filled and no tie covers fails
  the load (a :class:`~modelport.errors.WeightsMissingError` naming the
  parameters), except with a load format that reads no weights (``dummy``).

Which file a tensor came from: readers announce each file as they open it
(:func:`note_weight_file`); the pipeline names the weight files of the load as
the fallback (:func:`weights_being_read`). Nothing heavy is imported: tensors
and dtypes are read through their attributes.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelport.errors import WeightsCorruptError, WeightsMissingError

if TYPE_CHECKING:
    from modelport.pipeline import WeightReport
    from modelport.types import WeightFiles

_state = threading.local()


def note_weight_file(path: Path | str) -> None:
    """Record that the reader on this thread now yields tensors from ``path`` (for error messages)."""
    _state.file = str(path)


@contextmanager
def weights_being_read(files: WeightFiles) -> Iterator[None]:
    """While a load's weights are read: errors name these files until a reader announces a single one."""
    listed = ", ".join(files.files) or "(no file)"
    _state.fallback = f"{files.source.location} ({listed})"
    _state.file = None
    try:
        yield
    finally:
        _state.fallback = None
        _state.file = None


def current_weight_file() -> str:
    """The file the tensor being loaded came from, as well as it is known."""
    return getattr(_state, "file", None) or getattr(_state, "fallback", None) or "(weights)"


def _kind(dtype: Any) -> str:
    if str(dtype).endswith("bool"):
        return "boolean"
    if getattr(dtype, "is_complex", False):
        return "complex"
    if getattr(dtype, "is_floating_point", False):
        return "floating-point"
    return "integer"


def _dtype_name(dtype: Any) -> str:
    return str(dtype).removeprefix("torch.")


def check_weight_fits(name: str, tensor: Any, parameter: Any, index: tuple[Any, ...] | None = None) -> None:
    """Refuse checkpoint tensor ``name`` if it cannot fill ``parameter`` (or ``parameter[index]``).

    The shapes must be equal, and the dtypes of the same kind (floating-point,
    integer, boolean, complex): a float16 tensor fills a bfloat16 parameter
    (converted), an int8 tensor does not fill a float parameter. Works on
    meta-device parameters (no memory is touched).

    Raises:
        WeightsCorruptError: naming the tensor, the file, and the expected and found shape and dtype.
    """
    target = parameter if index is None else parameter[index]
    expected, found = tuple(target.shape), tuple(tensor.shape)
    if expected == found and _kind(tensor.dtype) == _kind(parameter.dtype):
        return
    raise WeightsCorruptError(
        current_weight_file(),
        f"tensor {name!r} does not fit the model: expected shape {list(expected)} "
        f"({_kind(parameter.dtype)}, {_dtype_name(parameter.dtype)}), "
        f"found shape {list(found)} ({_kind(tensor.dtype)}, {_dtype_name(tensor.dtype)}); "
        "the checkpoint does not belong to this config",
    )


def check_nothing_uninitialised(report: WeightReport, files: WeightFiles) -> None:
    """Refuse a load that read weight files but left parameters that no weight (and no tie) filled.

    A load format that reads no file (``dummy``) is exempt: its parameters are
    initialised on purpose.

    Raises:
        WeightsMissingError: naming the weight files and the parameters left uninitialised.
    """
    if not files.files or not report.missing:
        return
    shown = ", ".join(report.missing[:8]) + (f", ... ({len(report.missing)} in all)" if len(report.missing) > 8 else "")
    raise WeightsMissingError(
        f"{files.source.location} ({', '.join(files.files)})",
        f"no weight filled {len(report.missing)} parameter(s) of the model: {shown}; the checkpoint does not "
        "match the architecture (load_format='dummy' gives random weights on purpose)",
    )


__all__ = [
    "check_nothing_uninitialised",
    "check_weight_fits",
    "current_weight_file",
    "note_weight_file",
    "weights_being_read",
]
