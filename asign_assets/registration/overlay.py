"""The registration overlay PNG: registered masks tinted one colour per section.

numpy and scipy.ndimage only, no SimpleITK: the Dash viewer draws its legend
with :func:`overlay_colour` and must not load the registration toolkit for it.
The masks arrive already warped (:func:`asign_assets.registration.masks.warp_masks`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage as ndi

__all__ = ["overlay_colour", "render_overlay"]

_PALETTE = np.array(
    [
        [230, 25, 75], [60, 180, 75], [0, 130, 200], [245, 130, 48], [145, 30, 180],
        [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212], [0, 128, 128],
        [170, 110, 40], [128, 0, 0], [170, 255, 195], [128, 128, 0], [0, 0, 128], [128, 128, 128],
    ],
    dtype=np.float32,
)


def overlay_colour(i: int) -> tuple[int, int, int]:
    """RGB of section ``i`` (stack order) in :func:`render_overlay`, for legends."""
    r, g, b = _PALETTE[i % len(_PALETTE)]
    return int(r), int(g), int(b)


def render_overlay(warped: Sequence[np.ndarray], background: np.ndarray | None = None) -> np.ndarray:
    """All sections' masks on the reference grid, one colour each (uint8 RGB, for a PNG).

    ``warped[i]`` is section ``i``'s tissue (bool [H, W], stack order) on the
    reference grid. Tissue is tinted with the section's colour and its outline
    drawn solid; ``background`` (the reference thumbnail, shown greyscale)
    replaces the white canvas.
    """
    h, w = np.asarray(warped[0]).shape
    if background is not None:
        g = np.asarray(background, np.float32)
        g = g.mean(-1) if g.ndim == 3 else g
        canvas = np.repeat(g[..., None], 3, -1) * 0.5 + 127.0
    else:
        canvas = np.full((h, w, 3), 255.0, np.float32)
    tint = np.zeros((h, w, 3), np.float32)
    count = np.zeros((h, w), np.float32)
    edges = []
    for i, b in enumerate(warped):
        b = np.asarray(b, bool)
        col = _PALETTE[i % len(_PALETTE)]
        tint[b] += col
        count[b] += 1
        edges.append((b & ~ndi.binary_erosion(b, iterations=2), col))
    has = count > 0
    canvas[has] = 0.45 * canvas[has] + 0.55 * tint[has] / count[has, None]
    for e, col in edges:
        canvas[e] = col
    return np.clip(canvas, 0, 255).astype(np.uint8)
