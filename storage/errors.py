"""Errors of the storage layer, and the root of every Tributary error."""

from __future__ import annotations

__all__ = ["ManifestCorrupt", "StorageError", "TributaryError"]


class TributaryError(Exception):
    """Root of every error Tributary raises on purpose; anything else is a bug."""


class StorageError(TributaryError):
    """A partition or manifest operation failed; the data directory is left as it was."""


class ManifestCorrupt(StorageError):
    """The manifest cannot be read. Restore DATA/manifest.json from a replica or backup; the
    Parquet files themselves are intact and can be re-listed by hand."""
