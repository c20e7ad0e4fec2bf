"""Building a teacher-output cache: :class:`CacheWriter`.

Teacher maps arrive in batches, in any sample order. Each (teacher, task) keeps at most one shard in RAM:
when samples of another shard arrive while it is incomplete, it moves to a disk-backed array in the build
folder. A shard is encoded, written and checksummed as soon as its last sample arrives.

Everything is built in a temporary sibling folder (``.tmp-{name}-{host}.{pid}-{random}``) and the manifest
is written last; :meth:`CacheWriter.finish` then renames the folder into place. An interrupted build therefore
never leaves a half cache under the final name — readers see either no cache or a complete one. The folder of
a build whose process was killed is removed by the next build of the same cache on that host (a build still
running, here or on another host sharing the file system, is left alone).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .encoding import ArraySpec, Encoding
from .errors import CacheError
from .format import (
    DEFAULT_SHARD_SIZE,
    FORMAT_VERSION,
    MANIFEST_FILE,
    normalise_fingerprint,
    safe_component,
    shard_file,
    write_npy,
)

EncodingSpec = str | tuple | Encoding


_OWNER = f"{socket.gethostname().replace('-', '_')}.{os.getpid()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_abandoned_builds(root: Path) -> list[Path]:
    """Delete the temporary folders of builds of ``root`` whose process (on this host) no longer runs."""
    removed = []
    host = _OWNER.rpartition(".")[0]
    for folder in root.parent.glob(f".tmp-{root.name}-*"):
        owner = folder.name[len(f".tmp-{root.name}-"):].rsplit("-", 1)[0]
        owner_host, _, pid = owner.rpartition(".")
        if owner_host == host and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


@dataclass
class _Shard:
    """Buffers of one shard being filled (in RAM, or spilled to disk-backed arrays)."""

    count: int
    arrays: dict[str, np.ndarray]
    filled: np.ndarray
    spilled: list[Path] = field(default_factory=list)


@dataclass
class _Output:
    teacher: str
    task: str
    encoding: Encoding
    shape: tuple[int, int, int]
    folder: str
    buffers: dict[int, _Shard] = field(default_factory=dict)
    in_ram: int | None = None
    shards: dict[int, dict[str, Any]] = field(default_factory=dict)


class CacheWriter:
    """Write teacher maps into a new cache folder ``root``; call :meth:`finish` (or leave the ``with`` block).

    ``fingerprint`` is stored as is and compared by readers (a JSON dict built by the caller).
    ``encodings`` maps ``(teacher, task)`` to ``"fp16"``, ``"int8"`` or ``("topk", k)``; the pairs listed are
    required at :meth:`finish`, pairs not listed are stored as ``fp16``. Memory: one shard per (teacher,
    task), i.e. ``shard_size`` samples (float32 for ``int8`` until the shard is quantised).
    """

    def __init__(self, root: str | Path, fingerprint: Mapping[str, Any], num_samples: int,
                 shard_size: int = DEFAULT_SHARD_SIZE,
                 encodings: Mapping[tuple[str, str], EncodingSpec] | None = None):
        for name, value in (("num_samples", num_samples), ("shard_size", shard_size)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise CacheError(f"cache {name} must be a positive int, got {value!r}")
        self.root = Path(root)
        self.fingerprint = normalise_fingerprint(fingerprint)
        self.num_samples = int(num_samples)
        self.shard_size = int(shard_size)
        self.encodings = {tuple(key): Encoding.parse(spec) for key, spec in (encodings or {}).items()}
        self._outputs: dict[tuple[str, str], _Output] = {}
        self._folders: set[str] = set()
        self._check_destination()
        self.root.parent.mkdir(parents=True, exist_ok=True)
        remove_abandoned_builds(self.root)
        self.build_dir = self.root.parent / f".tmp-{self.root.name}-{_OWNER}-{uuid.uuid4().hex[:8]}"
        self.build_dir.mkdir()
        self._state = "open"

    # -- context manager: finish on success, discard the build on an exception
    def __enter__(self) -> CacheWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        elif self._state == "open":
            self.finish()

    @property
    def num_shards(self) -> int:
        return -(-self.num_samples // self.shard_size)

    def _what(self, teacher: str, task: str) -> str:
        return f"cache '{self.root}', teacher '{teacher}' task '{task}'"

    def _check_open(self) -> None:
        if self._state != "open":
            raise CacheError(f"cache writer for '{self.root}' is already {self._state}")

    def _check_destination(self) -> None:
        if self.root.is_dir():
            if any(self.root.iterdir()) and not (self.root / MANIFEST_FILE).is_file():
                raise CacheError(f"'{self.root}' exists and is not a teacher cache (no {MANIFEST_FILE}); "
                                 "choose another cache folder or remove it")
        elif self.root.exists():
            raise CacheError(f"cache folder '{self.root}' exists and is not a folder; choose another path")

    def _output(self, teacher: str, task: str, shape: tuple[int, int, int]) -> _Output:
        key = (teacher, task)
        out = self._outputs.get(key)
        what = self._what(teacher, task)
        if out is None:
            if not isinstance(teacher, str) or not isinstance(task, str) or not teacher or not task:
                raise CacheError(f"cache '{self.root}': teacher and task names must be non-empty strings, "
                                 f"got {teacher!r}, {task!r}")
            encoding = self.encodings.get(key, Encoding("fp16"))
            encoding.check_shape(shape, what)
            folder = f"{safe_component(teacher)}/{safe_component(task)}"
            if folder.lower() in self._folders:  # case-insensitive file systems
                folder = f"{folder}-{len(self._folders)}"
            self._folders.add(folder.lower())
            out = self._outputs[key] = _Output(teacher, task, encoding, shape, folder)
        elif out.shape != shape:
            raise CacheError(f"{what}: maps of per-sample shape {shape} after earlier maps of shape {out.shape}; "
                             "a teacher output must have one shape for every sample")
        return out

    def add(self, teacher: str, task: str, indices: torch.Tensor | np.ndarray | Sequence[int],
            values: torch.Tensor) -> None:
        """Store ``values[i]`` (``(B, C, h, w)``) as sample ``indices[i]`` of ``teacher``/``task``.

        Indices may come in any order, but each sample is written once."""
        self._check_open()
        what = self._what(teacher, task)
        idx = np.asarray(indices.detach().cpu() if isinstance(indices, torch.Tensor) else indices).astype(np.int64)
        if not isinstance(values, torch.Tensor) or values.ndim != 4:
            raise CacheError(f"{what}: values must be a (B, C, h, w) tensor, got "
                             f"{tuple(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__}")
        if idx.ndim != 1 or len(idx) != values.shape[0]:
            raise CacheError(f"{what}: indices must be a 1-D sequence of B = {values.shape[0]} sample indices, "
                             f"got shape {idx.shape}")
        if len(idx) == 0:
            return
        if idx.min() < 0 or idx.max() >= self.num_samples:
            bad = idx[(idx < 0) | (idx >= self.num_samples)][:5].tolist()
            raise CacheError(f"{what}: sample indices {bad} outside [0, {self.num_samples})")
        uniq, counts = np.unique(idx, return_counts=True)
        if (counts > 1).any():
            raise CacheError(f"{what}: sample indices {uniq[counts > 1][:5].tolist()} repeated within one batch")
        out = self._output(teacher, task, tuple(int(s) for s in values.shape[1:]))
        arrays = out.encoding.prepare(values, what)
        order = np.argsort(idx, kind="stable")
        shard_of = idx[order] // self.shard_size
        bounds = np.flatnonzero(np.diff(shard_of)) + 1
        for sel in np.split(order, bounds):
            shard = int(idx[sel[0]] // self.shard_size)
            pos = idx[sel] - shard * self.shard_size
            if shard in out.shards:
                raise CacheError(f"{what}: sample indices {idx[sel][:5].tolist()} were already written")
            buf = self._buffer(out, shard)
            if buf.filled[pos].any():
                raise CacheError(f"{what}: sample indices {idx[sel][buf.filled[pos]][:5].tolist()} were already "
                                 "written")
            for name, a in arrays.items():
                buf.arrays[name][pos] = a[sel]
            buf.filled[pos] = True
            if buf.filled.all():
                self._write_shard(out, shard)

    def _buffer(self, out: _Output, shard: int) -> _Shard:
        buf = out.buffers.get(shard)
        if buf is not None:
            return buf
        if out.in_ram is not None:
            self._spill(out, out.in_ram)
        count = min(self.shard_size, self.num_samples - shard * self.shard_size)
        arrays = {name: np.empty(spec.shard_shape(count), dtype=spec.dtype)
                  for name, spec in out.encoding.buffer_specs(out.shape).items()}
        buf = out.buffers[shard] = _Shard(count, arrays, np.zeros(count, dtype=bool))
        out.in_ram = shard
        return buf

    def _spill(self, out: _Output, shard: int) -> None:
        """Move an incomplete shard from RAM to disk-backed arrays in the build folder."""
        buf = out.buffers[shard]
        for name, arr in list(buf.arrays.items()):
            path = self.build_dir / ".partial" / shard_file(out.folder, shard, name)
            path.parent.mkdir(parents=True, exist_ok=True)
            mm = np.lib.format.open_memmap(path, mode="w+", dtype=arr.dtype, shape=arr.shape)
            mm[...] = arr
            buf.arrays[name] = mm
            buf.spilled.append(path)
        out.in_ram = None

    def _write_shard(self, out: _Output, shard: int) -> None:
        buf = out.buffers.pop(shard)
        if out.in_ram == shard:
            out.in_ram = None
        stored = out.encoding.finalize(buf.arrays)
        files = {}
        for name, arr in stored.items():
            rel = shard_file(out.folder, shard, name)
            files[name] = {"path": rel, **write_npy(self.build_dir / rel, arr)}
        out.shards[shard] = {"count": buf.count, "files": files}
        del stored, buf.arrays
        for path in buf.spilled:
            path.unlink(missing_ok=True)

    def missing(self, teacher: str, task: str) -> np.ndarray:
        """Sample indices of ``teacher``/``task`` not written yet."""
        out = self._outputs.get((teacher, task))
        if out is None:
            return np.arange(self.num_samples)
        parts = []
        for shard in range(self.num_shards):
            start = shard * self.shard_size
            if shard in out.shards:
                continue
            buf = out.buffers.get(shard)
            count = min(self.shard_size, self.num_samples - start)
            parts.append(start + (np.flatnonzero(~buf.filled) if buf is not None else np.arange(count)))
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)

    def finish(self) -> Path:
        """Check every sample of every (teacher, task) was written, write the manifest, move the cache into
        place (replacing an older cache there) and return its path."""
        self._check_open()
        keys = list(self._outputs) + [k for k in self.encodings if k not in self._outputs]
        if not keys:
            raise CacheError(f"cache '{self.root}': nothing was added; add teacher maps before finish()")
        for teacher, task in keys:
            missing = self.missing(teacher, task)
            if len(missing):
                raise CacheError(f"{self._what(teacher, task)}: {len(missing)} of {self.num_samples} samples were "
                                 f"never added (e.g. indices {missing[:5].tolist()}); add them before finish()")
        manifest = {
            "format_version": FORMAT_VERSION,
            "fingerprint": self.fingerprint,
            "num_samples": self.num_samples,
            "shard_size": self.shard_size,
            "outputs": {},
        }
        for (teacher, task), out in self._outputs.items():
            specs: dict[str, ArraySpec] = out.encoding.stored_specs(out.shape)
            manifest["outputs"].setdefault(teacher, {})[task] = {
                "folder": out.folder,
                "encoding": out.encoding.to_json(),
                "shape": list(out.shape),
                "arrays": {name: spec.to_json() for name, spec in specs.items()},
                "shards": [out.shards[s] for s in range(self.num_shards)],
            }
        shutil.rmtree(self.build_dir / ".partial", ignore_errors=True)
        with open(self.build_dir / MANIFEST_FILE, "w") as fh:
            json.dump(manifest, fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        self._check_destination()
        old = None
        try:
            if self.root.exists():
                old = self.root.parent / f".old-{self.root.name}-{uuid.uuid4().hex[:8]}"
                self.root.rename(old)
            os.replace(self.build_dir, self.root)
            _fsync_dir(self.root.parent)
        except BaseException:
            if old is not None and not self.root.exists():
                old.rename(self.root)  # put the previous cache back
            self.abort()
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        self._state = "finished"
        return self.root

    def abort(self) -> None:
        """Discard the build folder; nothing is left under the final name."""
        if self._state == "open":
            self._outputs.clear()
            shutil.rmtree(self.build_dir, ignore_errors=True)
            self._state = "aborted"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
