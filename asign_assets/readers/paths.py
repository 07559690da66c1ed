"""Only regular files are read: a FIFO blocks ``open()`` forever, ``/dev/zero`` never ends.

Every reader of a user file calls :func:`require_regular_file` first; it uses ``os.stat``
(no ``open``), so a special file is refused by type before anything can block on it.
Text tables (counts and spots) are read whole through :func:`read_text_bytes`.
"""

from __future__ import annotations

import gzip
import os
import stat
import zlib
from pathlib import Path

from asign_assets.errors import InputError

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def require_regular_file(path: str | Path, what: str = "file", field: str | None = None) -> os.stat_result:
    """``os.stat`` of ``path`` (symlinks followed) if it is a regular file, else an InputError."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise InputError(path, f"{what} not found: it does not exist", field=field) from None
    except OSError as exc:
        raise InputError(path, f"cannot access {what}: {exc.strerror}", field=field) from None
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in _KINDS if test(st.st_mode)), "not a regular file")
        raise InputError(path, f"{what} is {kind}, not a regular file", field=field)
    return st


def read_text_bytes(path: Path) -> bytes:
    """The bytes of a regular, non-empty file, gunzipped when it is gzip (by content, not name)."""
    require_regular_file(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputError(path, f"cannot read file: {exc}") from None
    if not raw:
        raise InputError(path, "file is empty")
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as exc:
            raise InputError(path, f"corrupt or truncated gzip file ({exc})") from None
    return raw
