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
