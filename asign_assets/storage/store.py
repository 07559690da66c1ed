"""The storage root: one folder per sample, every asset written atomically.

The root is a local path or an fsspec URL (``s3://``, ``gs://``, ``memory://``) via
universal-pathlib, so several machines can share assets. Library code always works
on local paths: :meth:`Storage.write` hands out a local temporary sibling and moves it
into place only when the block succeeds, so a crash or an error never leaves half an
asset where a reader (the next step, the viewer) would find it. Object stores have no
atomic folder rename: there a completion marker, written last and checked by every reader,
takes its place (:meth:`Storage._upload`, docs/deployment.md "Shared storage").
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import functools
import hashlib
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import time
import uuid
import weakref
from collections.abc import Iterator
from pathlib import Path

from asign_assets.errors import InputError
from asign_assets.storage import layout
from asign_assets.ingest.manifest import SAMPLE_ID_RE, Manifest, load_manifest, write_manifest
from asign_assets.runtime.home import default_home, default_local_state, is_url

TMP_PREFIX = ".tmp-"
OLD_PREFIX = ".old-"
TRASH_PREFIX = ".trash-"
#: ``samples/<id>/provenance/<asset>.manifest`` holds the digest of the manifest the asset was built from.
PROVENANCE = "provenance"
# URL roots only: samples/<id>/.complete/<name> is written (one PUT) after the asset's last
# object and deleted before its first, so readers treat an asset without it as absent.
COMPLETE_DIR = ".complete"
READ_RETRIES = 3
# Temporaries are named <prefix><name>-<host>-<pid>-<uuid>, so a sweep can tell a crashed
# writer (same host, process gone) from a live one, even on a folder shared by machines.
_WRITER_RE = re.compile(r"^\.(?:tmp|old)-(?P<name>.+)-(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-[0-9a-f]{12}$")
HOST_ID = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def _writer_token() -> str:
    return f"{HOST_ID}-{os.getpid()}-{uuid.uuid4().hex[:12]}"


def _pid_alive(pid: int) -> bool:
    """Whether a process of this host is still running (a zombie is not)."""
    if pid == os.getpid():
        return True
    try:
        import psutil

        return psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except ImportError:  # pragma: no cover - psutil is a dependency
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    except Exception:  # vanished between the two calls, or access denied
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except OSError:
            return True
        return True


def check_sample_id(sample_id: str) -> str:
    if not isinstance(sample_id, str) or not SAMPLE_ID_RE.match(sample_id):
        raise InputError(None, f"invalid sample id {sample_id!r}", field="sample_id")
    return sample_id


def _check_name(name: str) -> str:
    parts = Path(name).parts
    if not parts or any(p in ("..", "") or p.startswith(".") for p in parts) or Path(name).is_absolute():
        raise ValueError(f"invalid asset name {name!r}")
    return name


class Storage:
    """Asset files under ``<root>/samples/<sample_id>/<name>``."""

    def __init__(self, root: str | os.PathLike | None = None):
        root = str(root) if root is not None else default_home()
        if root.startswith("file://"):
            root = root[len("file://"):]
        self.is_local = not is_url(root)
        self.root = str(Path(root).expanduser().resolve()) if self.is_local else root.rstrip("/")
        self._cache: Path | None = None

    # ---------------------------------------------------------------- layout
    def __repr__(self) -> str:
        return f"Storage({self.root!r})"

    def _upath(self, *parts: str):
        from upath import UPath

        return UPath(self.root).joinpath(*parts)

    def sample_uri(self, sample_id: str, name: str = "") -> str:
        check_sample_id(sample_id)
        parts = ["samples", sample_id] + ([_check_name(name)] if name else [])
        if self.is_local:
            return str(Path(self.root).joinpath(*parts))
        return "/".join([self.root, *parts])

    @property
    def local_root(self) -> Path:
        if not self.is_local:
            raise ValueError(f"{self.root} is not a local path")
        return Path(self.root)

    def exists(self, sample_id: str, name: str) -> bool:
        if self.is_local:
            return Path(self.sample_uri(sample_id, name)).exists()
        return self._completion_token(sample_id, name) is not None

    def _marker(self, sample_id: str, name: str):
        return self._upath("samples", check_sample_id(sample_id), COMPLETE_DIR, _check_name(name))

    def _completion_token(self, sample_id: str, name: str) -> str | None:
        """The writer token of the complete version of a remote asset; None while absent or being replaced."""
        marker = self._marker(sample_id, name)
        try:
            return marker.fs.cat_file(marker.path).decode()
        except FileNotFoundError:
            return None

    def list_samples(self) -> list[str]:
        if self.is_local:
            base = Path(self.root) / "samples"
            names = [p.name for p in base.iterdir() if p.is_dir()] if base.exists() else []
        else:
            base = self._upath("samples")
            names = [p.name for p in base.iterdir()] if base.exists() else []
        return sorted(n for n in names if SAMPLE_ID_RE.match(n))

    # ---------------------------------------------------------------- writing
    @contextlib.contextmanager
    def write(self, sample_id: str, name: str) -> Iterator[Path]:
        """Yield a local temporary path; on success it replaces ``name`` atomically.

        The temporary path does not exist yet: create a file or a directory there.
        On any exception it is deleted and the previous version stays untouched.
        """
        target_uri = self.sample_uri(sample_id, name)
        token = _writer_token()
        digest = self.registered_digest(sample_id, strict=False)
        if self.is_local:
            target = Path(target_uri)
            target.parent.mkdir(parents=True, exist_ok=True)
            self._sweep(target.parent)
            tmp = target.with_name(f"{TMP_PREFIX}{target.name}-{token}")
        else:
            tmpdir = Path(tempfile.mkdtemp(prefix="asign-"))
            tmp = tmpdir / Path(name).name
        try:
            yield tmp
            if not tmp.exists():
                raise RuntimeError(f"asset {name!r} of sample {sample_id!r} wrote nothing")
            if self.is_local:
                _replace(tmp, target)
            else:
                self._upload(tmp, sample_id, name, token)
            if digest is not None:
                self._record_provenance(sample_id, name, digest)
        finally:
            if tmp.exists():
                _remove(tmp)
            if not self.is_local:
                shutil.rmtree(tmp.parent, ignore_errors=True)

    def _record_provenance(self, sample_id: str, name: str, digest: str) -> None:
        """Written after the asset: a crash in between reads as a mismatch, never as a false match."""
        rel = f"{PROVENANCE}/{name.replace('/', '%2F')}.manifest"
        if not self.is_local:
            self._upath("samples", sample_id, rel).write_text(digest)
            return
        path = Path(self.sample_uri(sample_id, rel))
        path.parent.mkdir(exist_ok=True)
        tmp = path.with_name(f"{TMP_PREFIX}{path.name}-{_writer_token()}")
        try:
            tmp.write_text(digest)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def provenance(self, sample_id: str) -> dict[str, str]:
        """``{asset output name: manifest digest}`` for every output that recorded one."""
        if self.is_local:
            folder = Path(self.sample_uri(sample_id, PROVENANCE))
            files = list(folder.glob("*.manifest")) if folder.is_dir() else []
        else:
            folder = self._upath("samples", sample_id, PROVENANCE)
            files = list(folder.glob("*.manifest")) if folder.exists() else []
        return {f.name[: -len(".manifest")].replace("%2F", "/"): f.read_text().strip() for f in files}

    def has_outputs(self, sample_id: str) -> bool:
        """Whether any asset output of the sample exists (temporaries do not count)."""
        if self.is_local:
            folder = Path(self.sample_uri(sample_id))
            return folder.is_dir() and any(not p.name.startswith(".") for p in folder.iterdir())
        return bool(self.completed_assets(sample_id))

    def remove_outputs(self, sample_id: str) -> None:
        """Remove every output of a sample at once: the folder is renamed aside, then deleted,
        so a reader sees either all the old outputs or none (remote roots: best effort)."""
        check_sample_id(sample_id)
        if not self.is_local:
            # No folder rename on object stores: drop the completion markers first (each one
            # PUT-sized delete), so every asset reads as absent before any object goes.
            folder = self._upath("samples", sample_id)
            markers = self._upath("samples", sample_id, COMPLETE_DIR)
            if markers.exists():
                markers.fs.rm(markers.path, recursive=True)
            if folder.exists():
                folder.fs.rm(folder.path, recursive=True)
            return
        base = Path(self.root) / "samples"
        folder = base / sample_id
        if folder.exists():
            os.replace(folder, base / f"{TRASH_PREFIX}{sample_id}-{_writer_token()}")
        for leftover in base.glob(f"{TRASH_PREFIX}{sample_id}-*"):  # this one, and any a crash left
            _remove(leftover)

    def _upload(self, local: Path, sample_id: str, name: str, token: str) -> None:
        """Object stores cannot rename a folder atomically: the completion marker stands in.

        Upload to a staging prefix, delete the marker (readers now see the asset as absent),
        replace the target, then write the marker (a single PUT, atomic) with this writer's
        token. Readers compare the token before and after reading (:meth:`local_path`).
        """
        target = self._upath("samples", sample_id, name)
        staging = target.with_name(f"{TMP_PREFIX}{target.name}-{token}")
        marker = self._marker(sample_id, name)
        fs = target.fs
        fs.put(str(local), staging.path, recursive=local.is_dir())
        with contextlib.suppress(FileNotFoundError):
            fs.rm_file(marker.path)
        if target.exists():
            fs.rm(target.path, recursive=True)
        if local.is_dir():  # object by object: s3fs cannot `mv` a prefix (no rename on S3 anyway)
            base = staging.path.rstrip("/") + "/"
            files = fs.find(staging.path)
            fs.copy(files, [target.path.rstrip("/") + "/" + f[len(base):] for f in files])
            fs.rm(staging.path, recursive=True)
        else:
            fs.mv(staging.path, target.path)
        fs.pipe_file(marker.path, token.encode())

    @staticmethod
    def _sweep(folder: Path, older_than_s: float = 6 * 3600) -> None:
        """Remove temporaries left by crashed writers.

        A temporary written on this host is removed as soon as its writer process is gone
        (the pid is in its name); one from another host (a shared folder) or without a
        parsable name only once it is ``older_than_s`` old. A ``.old-`` copy whose target
        is missing (a crash between the two renames of a directory swap) is put back.
        """
        now = time.time()
        for p in folder.iterdir():
            if not p.name.startswith((TMP_PREFIX, OLD_PREFIX)):
                continue
            m = _WRITER_RE.match(p.name)
            try:
                if m is not None and m["host"] == HOST_ID:
                    dead = not _pid_alive(int(m["pid"]))
                else:
                    dead = now - p.lstat().st_mtime > older_than_s
                if not dead:
                    continue
                target = folder / m["name"] if m is not None else None
                if p.name.startswith(OLD_PREFIX) and target is not None and not target.exists():
                    os.replace(p, target)
                else:
                    _remove(p)
            except OSError:
                pass

    # ---------------------------------------------------------------- reading
    def local_path(self, sample_id: str, name: str) -> Path:
        """A local path to read ``name`` from (downloaded to a cache for remote roots)."""
        uri = self.sample_uri(sample_id, name)
        if self.is_local:
            p = Path(uri)
            if not p.exists():
                raise FileNotFoundError(f"{p}: asset output not found; materialise its asset first")
            return p
        if self._cache is None:
            self._cache = Path(tempfile.mkdtemp(prefix="asign-cache-"))
            # Downloads live as long as this Storage (an asset's step, a viewer session): a
            # long-running daemon or code server must not fill /tmp with one folder per step.
            weakref.finalize(self, shutil.rmtree, str(self._cache), True)
        key = hashlib.sha1(uri.encode()).hexdigest()[:12]
        dest = self._cache / key / Path(name).name
        self.download(sample_id, name, dest)
        return dest

    def file(self, sample_id: str, asset: str, role: str) -> Path:
        """A local path to one file of an asset, by its role in :data:`layout.LAYOUT`
        (``store.file(sid, "registrations", "spots")``); remote roots fetch its whole output."""
        top, _, rest = layout.path(asset, role).partition("/")
        p = self.local_path(sample_id, top)
        return p / rest if rest else p

    def download(self, sample_id: str, name: str, dest: Path) -> str:
        """Copy the complete version of a remote asset to ``dest``; returns its writer token.

        The marker is read before and after the copy: if a writer replaced the asset in
        between (the token changed or vanished), the copy may mix versions and is retried.
        """
        uri = self.sample_uri(sample_id, name)
        src = self._upath("samples", sample_id, name)
        for _ in range(READ_RETRIES):
            before = self._completion_token(sample_id, name)
            if before is None:
                raise FileNotFoundError(f"{uri}: asset output not found (or being replaced); materialise its asset first")
            if dest.exists():
                _remove(dest)
            dest.parent.mkdir(parents=True, exist_ok=True)
            src.fs.get(src.path, str(dest), recursive=src.is_dir())
            if self._completion_token(sample_id, name) == before:
                return before
        raise RuntimeError(f"{uri}: replaced by another writer during {READ_RETRIES} reads in a row")

    def completed_assets(self, sample_id: str) -> dict[str, str]:
        """Remote roots: {asset name: writer token} of every complete asset of a sample."""
        folder = self._upath("samples", check_sample_id(sample_id), COMPLETE_DIR)
        if not folder.exists():
            return {}
        base = folder.path.rstrip("/") + "/"
        return {p[len(base):]: self._completion_token(sample_id, p[len(base):]) or "" for p in folder.fs.find(folder.path)}

    def mirror(self, dest: Path, names: frozenset[str] | None = None) -> list[str]:
        """Bring the complete assets (all, or those in ``names``) of a remote root to ``dest``.

        Same layout as the root; returns the ``<sample>/<asset>`` names copied.

        An asset is downloaded only when its writer token differs from the one copied last
        time (kept in ``dest/samples/<id>/.complete/<name>``), and moved into place with the
        same atomic replace as local writes, so a local reader of ``dest`` never sees half of it.
        """
        copied = []
        local = Storage(dest)
        for sid in self.list_samples():
            provenance: dict[str, str] | None = None
            for name, token in self.completed_assets(sid).items():
                if names is not None and name not in names:
                    continue
                seen = Path(dest, "samples", sid, COMPLETE_DIR, name)
                if not token or (seen.exists() and seen.read_text() == token):
                    continue
                with local.write(sid, name) as tmp:
                    token = self.download(sid, name, tmp)
                if provenance is None:
                    provenance = self.provenance(sid)
                if name in provenance:  # the viewer's mixed-manifest check reads the mirror
                    local._record_provenance(sid, name, provenance[name])
                seen.parent.mkdir(parents=True, exist_ok=True)
                seen.write_text(token)
                copied.append(f"{sid}/{name}")
        return copied

    # ---------------------------------------------------------------- manifests
    def manifest_path(self, sample_id: str) -> Path:
        if not self.is_local:
            raise ValueError("registered manifests live under a local ASIGN_HOME")
        return Path(self.root) / "manifests" / f"{check_sample_id(sample_id)}.yaml"

    def register(self, manifest: Manifest, replace: bool = False) -> Path:
        """Keep a resolved (absolute-path) copy of the manifest that the assets read.

        A sample id already registered with different content and holding outputs is refused
        (they would mix two datasets) unless ``replace``: then the old outputs are removed first,
        at once. Without outputs (e.g. the first run failed validation) the new content simply
        replaces the registration. Registering the same content again changes nothing.
        """
        path = self._manifest_file(manifest.sample_id)
        old = self.registered_digest(manifest.sample_id, strict=False)
        if old == manifest.digest():
            return path
        if old is not None and not replace and self.has_outputs(manifest.sample_id):
            raise InputError(
                manifest.path,
                f"sample {manifest.sample_id!r} is already registered with different content and has outputs ({path}, manifest digest "
                f"{old} here {manifest.digest()}); nothing was changed. Use `asign run --replace` to discard its outputs "
                f"and start afresh, or choose another sample_id",
                field="sample_id",
            )
        if replace:
            self.remove_outputs(manifest.sample_id)
        written = write_manifest(manifest, path, relative=False)
        self._write_digest(written, manifest.digest())
        return written

    def registered_digest(self, sample_id: str, strict: bool = True) -> str | None:
        """Digest of the registered manifest; None when unregistered (or, not ``strict``, unreadable).

        Read from the ``.digest`` file that :meth:`register` wrote beside the manifest, while
        that file still describes the manifest's size and mtime; otherwise (a registration
        from before digests were stored, a hand-edited copy) the manifest is parsed once and
        the file rewritten, so an asset write never re-parses the manifest.
        """
        path = self._manifest_file(sample_id)
        if not path.exists():
            return None
        stored = _read_digest(path)
        if stored is not None:
            return stored
        try:
            digest = load_manifest(path, check_files=False).digest()
        except InputError:
            if strict:
                raise
            return "unreadable"
        with contextlib.suppress(OSError):
            self._write_digest(path, digest)
        return digest

    @staticmethod
    def _write_digest(manifest_file: Path, digest: str) -> None:
        st = manifest_file.stat()
        target = _digest_file(manifest_file)
        tmp = target.with_name(f".{target.name}.{_writer_token()}")
        tmp.write_text(json.dumps({"digest": digest, "size": st.st_size, "mtime_ns": st.st_mtime_ns}))
        os.replace(tmp, target)

    def _manifest_file(self, sample_id: str) -> Path:
        if self.is_local:
            return self.manifest_path(sample_id)
        # Remote roots keep manifests next to the dagster home of this machine.
        return Path(os.environ.get("ASIGN_MANIFESTS", Path(default_local_state()) / "manifests")) / f"{check_sample_id(sample_id)}.yaml"

    def load_registered(self, sample_id: str) -> Manifest:
        path = self._manifest_file(sample_id)
        if not path.exists():
            raise InputError(path, f"sample {sample_id!r} is not registered; run `asign run <manifest>` or drop its manifest in the inbox")
        return load_manifest(path)


def _digest_file(manifest_file: Path) -> Path:
    return manifest_file.with_suffix(".digest")


def _read_digest(manifest_file: Path) -> str | None:
    """The stored digest of a registered manifest, if it was recorded for this very file."""
    try:
        rec = json.loads(_digest_file(manifest_file).read_text())
        st = manifest_file.stat()
    except (OSError, ValueError):
        return None
    if not isinstance(rec, dict) or rec.get("size") != st.st_size or rec.get("mtime_ns") != st.st_mtime_ns:
        return None
    digest = rec.get("digest")
    return digest if isinstance(digest, str) else None



def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


_RENAME_EXCHANGE = 2  # linux/fs.h


@functools.lru_cache(maxsize=1)
def _renameat2():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):  # glibc < 2.28 or another libc
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths (Linux renameat2); False where unsupported."""
    fn = _renameat2()
    if fn is None:
        return False
    at_fdcwd = -100
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):  # filesystem cannot
        return False
    raise OSError(err, os.strerror(err), str(b))


def _replace(tmp: Path, target: Path) -> None:
    """Rename ``tmp`` onto ``target``.

    A directory replacing a directory is swapped atomically where the OS can
    (``renameat2(RENAME_EXCHANGE)``, so a reader always finds one complete version);
    elsewhere via a short-lived ``.old-`` sibling that a sweep puts back after a crash.
    """
    if tmp.is_dir() and target.exists():
        if target.is_dir() and _exchange(tmp, target):
            _remove(tmp)  # now holds the previous version
            return
        old = target.with_name(f"{OLD_PREFIX}{target.name}-{_writer_token()}")
        os.replace(target, old)
        try:
            os.replace(tmp, target)
        except BaseException:
            os.replace(old, target)
            raise
        _remove(old)
    else:
        if target.is_dir() and not tmp.is_dir():
            _remove(target)
        os.replace(tmp, target)
