"""Where asign keeps its state: the storage root and this machine's own folders.

Separate from :mod:`asign_assets.storage.store` so code that only needs a cache folder
(the AnnData image cache, the file digest cache) does not depend on the storage layer.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_HOME = "~/.asign"


def is_url(root: str) -> bool:
    """Whether ``root`` names an fsspec URL (``s3://``...) rather than a local path."""
    return "://" in root and not root.startswith("file://")


def default_home() -> str:
    """The storage root: ``$ASIGN_HOME``, else ``~/.asign``."""
    return os.environ.get("ASIGN_HOME") or str(Path(DEFAULT_HOME).expanduser())


def default_local_state() -> str:
    """A local folder for caches and manifests: the home, or ``~/.asign`` when the home is a URL."""
    home = default_home()
    return home if not is_url(home) else str(Path(DEFAULT_HOME).expanduser())
