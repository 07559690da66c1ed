"""Content digests of a sample's raw files: the data versions of the raw-input source assets.

A file is hashed (sha256, streamed in 1 MiB blocks) only when its size or mtime changed since
the last digest; the cache is a small JSON file keyed by the resolved path, so observing an
unchanged whole-slide image costs one ``stat``. ``touch`` re-hashes a file but gives the same
digest, so Dagster sees no new data version; an edit in place gives a new one.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

from asign_assets.ingest.manifest import Manifest
from asign_assets.readers.paths import require_regular_file

BLOCK = 1 << 20


def sha256_file(path: Path) -> str:
    """sha256 of a regular file's bytes, read in blocks (never the whole file in memory); a FIFO
    or device is refused by type before it could block (asign_assets.readers.paths)."""
    require_regular_file(path)
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(BLOCK), b""):
            h.update(block)
    return h.hexdigest()


class FileDigestCache:
    """``{path: [size, mtime_ns, sha256]}`` persisted in ``cache_file`` (atomic rewrite)."""

    def __init__(self, cache_file: Path):
        self.cache_file = Path(cache_file)
        self._entries: dict[str, list] = {}
        self._dirty = False
        try:
            data = json.loads(self.cache_file.read_text())
            if isinstance(data, dict):
                self._entries = {k: v for k, v in data.items() if isinstance(v, list) and len(v) == 3}
        except (OSError, ValueError):
            pass  # absent or damaged: every file is hashed again
        self.hashed: list[Path] = []  # files actually read during this cache's life (for tests and logs)

    def digest(self, path: Path) -> str:
        key = str(Path(path).resolve())
        st = os.stat(key)
        old = self._entries.get(key)
        if old is not None and old[0] == st.st_size and old[1] == st.st_mtime_ns:
            return str(old[2])
        sha = sha256_file(Path(key))
        self.hashed.append(Path(key))
        self._entries[key] = [st.st_size, st.st_mtime_ns, sha]
        self._dirty = True
        return sha

    def save(self) -> None:
        if not self._dirty:
            return
        self.cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.cache_file.with_name(f".{self.cache_file.name}.{os.getpid()}")
        tmp.write_text(json.dumps(self._entries, sort_keys=True))
        os.replace(tmp, self.cache_file)
        self._dirty = False


def input_files(manifest: Manifest) -> list[Path]:
    """Every file the non-evaluation stages read: images, spot tables, counts, AnnData sources."""
    files: list[Path] = []
    for s in manifest.sections:
        files += [p for p in (s.image, s.spots, s.counts, s.anndata) if p is not None]
    return list(dict.fromkeys(files))


def truth_files(manifest: Manifest) -> list[Path]:
    """The held-out counts that only ``evaluation`` reads."""
    return list(dict.fromkeys(s.truth for s in manifest.sections if s.truth is not None))


def files_version(files: Iterable[Path], cache: FileDigestCache, extra: str = "") -> str:
    """One digest over ``extra`` (e.g. the manifest's fingerprint) and every file's content."""
    h = hashlib.sha256(extra.encode())
    for p in files:
        h.update(f"\n{Path(p).name}:{cache.digest(Path(p))}".encode())
    return h.hexdigest()[:20]
