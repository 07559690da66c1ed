"""The image encoders a run may choose, by name: light on purpose (no torch import), so the
Dagster config and the CLI can offer the choice without loading the encoders."""

from __future__ import annotations

from typing import Literal, get_args

#: ``histology``: the weight-free default; ``torchscript``: the user's model file (``encoder_path``).
EncoderKind = Literal["histology", "torchscript"]
ENCODER_KINDS: tuple[str, ...] = get_args(EncoderKind)


def encoder_spec(kind: str, path: str | None = None) -> str:
    """The encoder string of a kind and its weights file (``torchscript`` + path -> ``torchscript:path``)."""
    from asign_assets.errors import InputError

    if kind not in ENCODER_KINDS:
        raise InputError("encoder", f"unknown encoder {kind!r}; choose from {', '.join(ENCODER_KINDS)}", field="encoder")
    if kind == "histology" and path:
        raise InputError("encoder", "the histology encoder takes no weights file; leave encoder_path empty", field="encoder_path")
    return f"{kind}:{path or ''}" if kind == "torchscript" else kind
