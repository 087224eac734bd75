"""The OCI error answer for a store failure: a status that says whose fault it was.

containerd tries its next registry host (often the real registry) on any 5xx, so each of these
lets a pull go on without us; the status and the message tell the operator why.
"""

from __future__ import annotations

import errno

from peer.front.oci_errors import OciError
from pieces.partial import BlobFailed, DigestMismatch, DiskFull, NoRoom, SizeRefused


def store_failure(exc: Exception) -> OciError:
    """507 when the blob does not fit the disk or the cache size, 502 when the upstream (or a
    peer) told a wrong size or sent wrong bytes, 500 for anything else."""
    cause = exc.__cause__ if isinstance(exc, BlobFailed) and exc.__cause__ is not None else exc
    message = f"pollen store: {exc}"
    full = isinstance(cause, OSError) and cause.errno == errno.ENOSPC
    if full or isinstance(cause, DiskFull | NoRoom):
        return OciError(507, "UNKNOWN", message)
    if isinstance(cause, SizeRefused | DigestMismatch):
        return OciError(502, "UNAVAILABLE", message)
    return OciError(500, "UNKNOWN", message)
