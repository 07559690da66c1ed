"""Small PNG figures recorded with the assets (Dagster metadata, the viewer's files)."""

from __future__ import annotations

import io

import numpy as np


def png_bytes(rgb: np.ndarray, max_side: int | None = None) -> bytes:
    """PNG of an RGB array, shrunk to ``max_side`` px (metadata copies live in the event log)."""
    from PIL import Image

    im = Image.fromarray(rgb)
    if max_side is not None and max(im.size) > max_side:
        im.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def curves_png(members: list[list[dict]]) -> bytes:
    """Training and validation curves, one colour per ensemble member."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(8, 3), dpi=90)
    for m, curves in enumerate(members):
        ep = [c["epoch"] for c in curves]
        ax[0].plot(ep, [c["train_loss"] for c in curves], color=f"C{m}", label=f"member {m} train")
        ax[0].plot(ep, [c["val_loss"] for c in curves], color=f"C{m}", ls="--", label=f"member {m} validation")
        ax[1].plot(ep, [c["val_gene_pcc"] for c in curves], color=f"C{m}")
    ax[0].set_xlabel("epoch")
    ax[0].set_ylabel("loss")
    ax[0].legend(fontsize=6)
    ax[1].set_xlabel("epoch")
    ax[1].set_ylabel("validation gene PCC")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
