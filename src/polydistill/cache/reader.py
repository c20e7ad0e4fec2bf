"""Reading a teacher-output cache: :class:`TeacherCache`.

Opening checks the cache can be trusted: the manifest exists (else :class:`CacheMissing`), it was built by
this format version for the caller's fingerprint (else :class:`CacheMismatch`, naming the fingerprint keys
that differ) and its shard files are intact (else :class:`CacheCorrupt`): every file's size is checked and,
with ``verify=True``, its blake2b checksum, read in chunks.

Reading is fast because nothing is unpickled and nothing is read twice: shards are memory-mapped lazily
(``np.load(mmap_mode="r")``), the open maps are kept per process (a bounded number, most recently used), and
a lookup copies out just the one requested sample. The cache object is a picklable callable, as
:meth:`polydistill.data.FolderDataset.attach_teacher_outputs` wants for DataLoader workers: pickling drops
the open maps, and each process (also a forked worker) maps the shards again on first use.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from .encoding import ArraySpec, Encoding
from .errors import REBUILD_HINT, CacheCorrupt, CacheMismatch, CacheMissing
from .format import (
    CHECKSUM,
    FORMAT_VERSION,
    MANIFEST_FILE,
    check_relative,
    file_checksum,
    fingerprint_diff,
    normalise_fingerprint,
    read_manifest,
)

Verify = bool | Literal["size"]


@dataclass(frozen=True)
class CachedOutput:
    """What the cache holds for one teacher and task."""

    teacher: str
    task: str
    encoding: Encoding
    shape: tuple[int, int, int]
    arrays: dict[str, ArraySpec]
    #: per shard: (sample count, {array name: (relative path, bytes, checksum)})
    shards: tuple[tuple[int, dict[str, tuple[str, int, str]]], ...]

    @property
    def size_bytes(self) -> int:
        return sum(f[1] for _, files in self.shards for f in files.values())


class TeacherCache:
    """``cache(index) -> {teacher: {task: float32 (C, h, w)}}`` over a cache folder; use :meth:`open`."""

    def __init__(self, root: str | Path, manifest: dict[str, Any], *, max_open_shards: int = 128):
        self.root = Path(root)
        manifest_path = self.root / MANIFEST_FILE
        try:
            self.format_version = int(manifest["format_version"])
            self.fingerprint: dict[str, Any] = manifest["fingerprint"]
            self.num_samples = int(manifest["num_samples"])
            self.shard_size = int(manifest["shard_size"])
            outputs = []
            for teacher, tasks in manifest["outputs"].items():
                for task, e in tasks.items():
                    shards = tuple(
                        (int(s["count"]), {name: (check_relative(f["path"], manifest_path), int(f["bytes"]),
                                                  str(f[CHECKSUM])) for name, f in s["files"].items()})
                        for s in e["shards"]
                    )
                    arrays = {name: ArraySpec.from_json(a) for name, a in e["arrays"].items()}
                    outputs.append(CachedOutput(teacher, task, Encoding.from_json(e["encoding"]),
                                                tuple(int(s) for s in e["shape"]), arrays, shards))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise CacheCorrupt(f"cache manifest '{manifest_path}' is malformed ({type(e).__name__}: {e}); "
                               f"{REBUILD_HINT}") from None
        expected_shards = -(-self.num_samples // self.shard_size)
        for out in outputs:
            if len(out.shards) != expected_shards or sum(c for c, _ in out.shards) != self.num_samples:
                raise CacheCorrupt(f"cache manifest '{manifest_path}' lists {len(out.shards)} shards for "
                                   f"'{out.teacher}/{out.task}', expected {expected_shards}; {REBUILD_HINT}")
        self.outputs: dict[tuple[str, str], CachedOutput] = {(o.teacher, o.task): o for o in outputs}
        self.max_open_shards = max_open_shards
        self._reset()

    @classmethod
    def open(cls, root: str | Path, fingerprint: dict[str, Any] | None = None, verify: Verify = True,
             *, max_open_shards: int = 128) -> TeacherCache:
        """Open the cache at ``root``; refuse it if it was built for another ``fingerprint`` (when given).

        ``verify=True`` checks every shard's size and checksum (reads the whole cache once, in chunks),
        ``"size"`` only sizes (cheap), ``False`` nothing."""
        root = Path(root)
        if verify not in (True, False, "size"):
            raise ValueError(f"verify must be True, False or 'size', got {verify!r}")
        if not (root / MANIFEST_FILE).is_file():
            raise CacheMissing(f"no teacher cache at '{root}' (no {MANIFEST_FILE}; an interrupted build leaves "
                               "none); build it with `polydistill cache`")
        manifest = read_manifest(root)
        version = manifest.get("format_version")
        if version != FORMAT_VERSION:
            raise CacheMismatch(f"teacher cache '{root}' has format version {version}, this polydistill reads "
                                f"version {FORMAT_VERSION}; {REBUILD_HINT}")
        cache = cls(root, manifest, max_open_shards=max_open_shards)
        if fingerprint is not None:
            given = normalise_fingerprint(fingerprint)
            stored = cache.fingerprint if isinstance(cache.fingerprint, dict) else {}
            differ = fingerprint_diff(stored, given)
            if differ:
                raise CacheMismatch(f"teacher cache '{root}' was built for other inputs (fingerprint keys that "
                                    f"differ: {', '.join(differ)}); {REBUILD_HINT}")
        if verify:
            cache.verify(checksums=verify is True)
        return cache

    def verify(self, checksums: bool = True) -> None:
        """Check that every shard file exists with its recorded size (and checksum); raise :class:`CacheCorrupt`."""
        for out in self.outputs.values():
            for _, files in out.shards:
                for rel, size, digest in files.values():
                    path = self.root / rel
                    try:
                        actual = path.stat().st_size
                    except FileNotFoundError:
                        raise CacheCorrupt(f"teacher cache shard '{path}' is missing; {REBUILD_HINT}") from None
                    if actual < size:
                        raise CacheCorrupt(f"teacher cache shard '{path}' is truncated ({actual} of {size} bytes); "
                                           f"{REBUILD_HINT}")
                    if actual != size:
                        raise CacheCorrupt(f"teacher cache shard '{path}' has {actual} bytes, the manifest says "
                                           f"{size} (overwritten?); {REBUILD_HINT}")
                    if checksums and file_checksum(path) != digest:
                        raise CacheCorrupt(f"teacher cache shard '{path}' is corrupted (its {CHECKSUM} checksum "
                                           f"differs from the manifest's); {REBUILD_HINT}")

    # -- picklable: open maps stay in the process that opened them
    def _reset(self) -> None:
        self._pid = os.getpid()
        self._open: OrderedDict[tuple[str, str, int], dict[str, np.ndarray]] = OrderedDict()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_open"], state["_pid"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    def close(self) -> None:
        """Drop the open memory maps (they are reopened on the next read)."""
        self._open.clear()

    def _arrays(self, out: CachedOutput, shard: int) -> dict[str, np.ndarray]:
        if self._pid != os.getpid():  # a forked DataLoader worker: map the files in this process
            self._reset()
        key = (out.teacher, out.task, shard)
        arrays = self._open.get(key)
        if arrays is not None:
            self._open.move_to_end(key)
            return arrays
        count, files = out.shards[shard]
        arrays = {}
        for name, (rel, _, _) in files.items():
            path = self.root / rel
            spec = out.arrays[name]
            try:
                mm = np.load(path, mmap_mode="r", allow_pickle=False)
            except FileNotFoundError:
                raise CacheCorrupt(f"teacher cache shard '{path}' is missing; {REBUILD_HINT}") from None
            except (OSError, ValueError) as e:
                raise CacheCorrupt(f"teacher cache shard '{path}' is unreadable ({e}); {REBUILD_HINT}") from None
            if mm.shape != spec.shard_shape(count) or mm.dtype != np.dtype(spec.dtype):
                raise CacheCorrupt(f"teacher cache shard '{path}' holds {mm.dtype} {mm.shape}, the manifest says "
                                   f"{spec.dtype} {spec.shard_shape(count)}; {REBUILD_HINT}")
            arrays[name] = mm if spec.per_sample else np.array(mm)  # small per-shard arrays: keep a copy
        self._open[key] = arrays
        while len(self._open) > self.max_open_shards:
            self._open.popitem(last=False)
        return arrays

    def _index(self, index: int) -> int:
        index = int(index)
        if not -self.num_samples <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for a teacher cache of {self.num_samples} samples")
        return index % self.num_samples

    def read(self, teacher: str, task: str, index: int) -> torch.Tensor:
        """One decoded map: float32 ``(C, h, w)``."""
        out = self.outputs.get((teacher, task))
        if out is None:
            raise KeyError(f"teacher cache '{self.root}' holds no '{teacher}/{task}'; it holds "
                           f"{[f'{t}/{k}' for t, k in self.outputs]}")
        shard, pos = divmod(self._index(index), self.shard_size)
        return out.encoding.decode(self._arrays(out, shard), pos, out.shape)

    def __call__(self, index: int) -> dict[str, dict[str, torch.Tensor]]:
        """All cached maps of sample ``index``: ``{teacher: {task: float32 (C, h, w)}}``."""
        shard, pos = divmod(self._index(index), self.shard_size)
        result: dict[str, dict[str, torch.Tensor]] = {}
        for out in self.outputs.values():
            result.setdefault(out.teacher, {})[out.task] = out.encoding.decode(self._arrays(out, shard), pos,
                                                                               out.shape)
        return result

    def __len__(self) -> int:
        return self.num_samples

    @property
    def teachers(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(t for t, _ in self.outputs))

    @property
    def tasks(self) -> dict[str, tuple[str, ...]]:
        """Cached tasks per teacher."""
        return {t: tuple(k for tt, k in self.outputs if tt == t) for t in self.teachers}

    def size_bytes(self, teacher: str | None = None, task: str | None = None) -> int:
        """Bytes of the shard files, of all outputs or of those of ``teacher`` and/or ``task``."""
        return sum(o.size_bytes for (t, k), o in self.outputs.items()
                   if (teacher is None or t == teacher) and (task is None or k == task))

    def __repr__(self) -> str:
        outs = ", ".join(f"{t}/{k}:{o.encoding.kind}{tuple(o.shape)}" for (t, k), o in self.outputs.items())
        return f"TeacherCache('{self.root}', {self.num_samples} samples, {outs})"
