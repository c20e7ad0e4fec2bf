"""On-disk cache of teacher outputs: memory-mapped ``.npy`` shards, a fingerprinted and checksummed manifest.

Write one with :class:`CacheWriter` (built in a temporary folder, moved into place by ``finish()``), read it
with :meth:`TeacherCache.open` — a picklable ``(index) -> {teacher: {task: (C, h, w)}}`` callable for
:meth:`polydistill.data.FolderDataset.attach_teacher_outputs`. See :mod:`.format` for the layout and
:mod:`.encoding` for the ``fp16`` / ``int8`` / ``topk`` encodings and their error bounds.
"""

from .build import build_cache, cache_fingerprint, cache_slot, encodings_for, open_or_build_cache
from .encoding import Encoding, dequantize_int8, quantize_int8, topk_decode, topk_encode
from .errors import CacheCorrupt, CacheError, CacheMismatch, CacheMissing
from .format import DEFAULT_SHARD_SIZE, FORMAT_VERSION, MANIFEST_FILE
from .reader import CachedOutput, TeacherCache
from .writer import CacheWriter

__all__ = [
    "DEFAULT_SHARD_SIZE",
    "FORMAT_VERSION",
    "MANIFEST_FILE",
    "CacheCorrupt",
    "CacheError",
    "CacheMismatch",
    "CacheMissing",
    "CacheWriter",
    "CachedOutput",
    "Encoding",
    "TeacherCache",
    "build_cache",
    "cache_fingerprint",
    "cache_slot",
    "encodings_for",
    "open_or_build_cache",
    "dequantize_int8",
    "quantize_int8",
    "topk_decode",
    "topk_encode",
]
