"""On-disk layout of a teacher-output cache, its manifest, and checksums.

A cache folder holds::

    manifest.json                         written last: what is in the cache and how to check it
    {teacher}/{task}/{shard:05d}.npy      the map's main array for samples [shard * shard_size, ...)
    {teacher}/{task}/{shard:05d}.{name}.npy   companion arrays of some encodings (int8: affine, topk: ids)

Every shard file is a plain ``.npy`` array (no pickles) holding up to ``shard_size`` samples in sample
order, so a reader memory-maps it (``np.load(path, mmap_mode="r")``) and copies out one sample without
reading the rest — the per-sample ``.pt`` files of other tools were slower to load than re-running the
teacher; one mapped file per few hundred samples is not. ``teacher``/``task`` folder names are the names
themselves when they are safe path components, otherwise a sanitised name plus a short hash; the manifest
records every file's relative path, so readers never derive names.

The manifest records ``format_version``, the caller's ``fingerprint`` (an opaque JSON dict: teacher
fingerprints, preprocessing, dataset files; a reader given another fingerprint refuses the cache, so
changed teachers or data are never served stale maps), ``num_samples``, ``shard_size`` and, per teacher and
task, the encoding, per-sample shape, stored arrays and per shard each file's path, byte size and blake2b
checksum (computed while the file is written). Sizes catch truncation cheaply; checksums catch changed bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

import numpy as np

from .errors import REBUILD_HINT, CacheCorrupt, CacheError

#: bumped whenever the layout or an encoding changes meaning; a reader refuses other versions
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
DEFAULT_SHARD_SIZE = 256
CHECKSUM = "blake2b"
_DIGEST_SIZE = 32
_CHUNK = 8 << 20
_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}")


def new_hash() -> Any:
    return hashlib.blake2b(digest_size=_DIGEST_SIZE)


def shard_file(folder: str, shard: int, array: str) -> str:
    """Relative path of ``array`` of ``shard`` (the main array is ``data``: ``{shard:05d}.npy``)."""
    suffix = "" if array == "data" else f".{array}"
    return f"{folder}/{shard:05d}{suffix}.npy"


def safe_component(name: str) -> str:
    """``name`` if it is a safe, portable path component, else a sanitised form plus a short hash of it."""
    if _SAFE.fullmatch(name) and not name.endswith("."):
        return name
    cleaned = re.sub(r"[^A-Za-z0-9_.+-]", "_", name).strip("._")[:48] or "x"
    return f"{cleaned}-{hashlib.blake2b(name.encode(), digest_size=4).hexdigest()}"


class HashingWriter:
    """File-like wrapper that counts and hashes every byte written through it (``np.save`` streams into it)."""

    def __init__(self, fh: BinaryIO):
        self.fh = fh
        self.hash = new_hash()
        self.bytes = 0

    def write(self, data: bytes | memoryview) -> int:
        self.hash.update(data)
        self.bytes += len(memoryview(data).cast("B"))
        return self.fh.write(data)

    def flush(self) -> None:
        self.fh.flush()


def write_npy(path: Path, array: np.ndarray) -> dict[str, Any]:
    """Save ``array`` as ``.npy`` at ``path`` (fsynced); return its ``{"bytes", "blake2b"}`` record."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        out = HashingWriter(fh)
        np.lib.format.write_array(out, np.ascontiguousarray(array), allow_pickle=False)
        fh.flush()
        os.fsync(fh.fileno())
    return {"bytes": out.bytes, CHECKSUM: out.hash.hexdigest()}


def file_checksum(path: Path) -> str:
    """blake2b of a file, read in chunks (never the whole file in memory)."""
    h = new_hash()
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def normalise_fingerprint(fingerprint: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON form of a fingerprint (tuples become lists), so a stored and a given one compare equal."""
    if not isinstance(fingerprint, Mapping):
        raise CacheError(f"a cache fingerprint must be a dict, got {type(fingerprint).__name__}")
    try:
        return json.loads(json.dumps(dict(fingerprint), sort_keys=True))
    except (TypeError, ValueError) as e:
        raise CacheError(f"a cache fingerprint must be JSON-serialisable (str keys, plain values): {e}") from None


def fingerprint_diff(stored: Mapping[str, Any], given: Mapping[str, Any]) -> list[str]:
    """Top-level keys whose values differ (or that only one side has), sorted."""
    return sorted(k for k in set(stored) | set(given) if k not in stored or k not in given or stored[k] != given[k])


def check_relative(path: str, manifest: Path) -> str:
    p = PurePosixPath(path)
    if p.is_absolute() or ".." in p.parts or not p.parts:
        raise CacheCorrupt(f"{manifest}: file path '{path}' points outside the cache; {REBUILD_HINT}")
    return path


def read_manifest(root: Path) -> dict[str, Any]:
    """Parse ``root/manifest.json`` (no validation of the contents beyond being a JSON object)."""
    path = root / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CacheCorrupt(f"cannot read cache manifest '{path}' ({e}); {REBUILD_HINT}") from None
    if not isinstance(manifest, dict):
        raise CacheCorrupt(f"cache manifest '{path}' is not a JSON object; {REBUILD_HINT}")
    return manifest
