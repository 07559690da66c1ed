"""The one place that turns a device request into a torch device."""

from __future__ import annotations

import re

import torch

_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def resolve_device(request: str = "auto") -> torch.device:
    """Map ``auto|cpu|cuda[:N]`` to a torch device; ``auto`` prefers CUDA when present."""
    request = (request or "auto").strip().lower()
    if not _DEVICE_RE.match(request):
        raise ValueError(f"device must be auto, cpu or cuda[:N], got {request!r}")
    if request == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if request.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {request!r} requested but CUDA is not available")
        dev = torch.device(request)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {request!r} requested but only {torch.cuda.device_count()} GPU(s) exist")
        return dev
    return torch.device("cpu")
