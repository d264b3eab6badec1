"""Whether a ``cuda`` device is there: the availability check modelport-cuda registers with its executor."""

from __future__ import annotations


def cuda_unavailable_reason(device: str) -> str | None:
    """Why ``device`` (``cuda``, ``cuda:N``) cannot be used on this machine, or ``None`` when it can."""
    import torch

    if not torch.cuda.is_available():
        if torch.version.cuda is None:
            why = f"torch {torch.__version__} was built without CUDA"
        else:
            why = f"torch {torch.__version__} (CUDA {torch.version.cuda}) finds no CUDA device or driver"
        return f"no CUDA device is available ({why}); use device='cpu' or device='auto'"
    index = device.partition(":")[2]
    count = torch.cuda.device_count()
    if index and int(index) >= count:
        return f"this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}"
    return None


def dtype_problem(dtype: str, capability: tuple[int, int], name: str) -> str | None:
    """Why a model in ``dtype`` cannot run on a GPU of compute ``capability`` named ``name``, or ``None``.

    bfloat16 needs compute capability 8.0 (Ampere) or later, as vLLM's CUDA
    platform states; older GPUs run float16 or float32.
    """
    if dtype == "bfloat16" and capability < (8, 0):
        major, minor = capability
        return (
            f"bfloat16 needs a GPU of compute capability 8.0 or later; {name} has {major}.{minor}: "
            "load with dtype='float16' (or 'float32')"
        )
    return None
