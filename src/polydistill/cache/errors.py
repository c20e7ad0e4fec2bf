"""Errors of the teacher-output cache.

Each one is a :class:`~polydistill.errors.PolydistillError` (the CLI prints it on one line) whose message names
the cache folder or shard file concerned and says what to do — usually rebuild the cache, since a cache is
only ever a copy of what the teachers would compute again.
"""

from __future__ import annotations

from ..errors import PolydistillError

REBUILD_HINT = "rebuild it with `polydistill cache --rebuild` or delete the folder"


class CacheError(PolydistillError):
    """Something is wrong with a teacher-output cache or with how it is being written."""


class CacheMissing(CacheError):
    """There is no (finished) cache at the given folder."""


class CacheMismatch(CacheError):
    """The cache was built for other inputs (fingerprint) or by another version of the format."""


class CacheCorrupt(CacheError):
    """A file of the cache is missing, truncated or its bytes changed since it was written."""
