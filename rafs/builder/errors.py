"""Errors of the RAFS builder.

    RafsError (rafs.errors)
    └── BuildError             the source cannot be turned into an image (I/O, limits...)
        └── UnsafeEntry        a tar entry or link that would escape the tree (`..`, `/abs`)

Errors of lower libraries (OSError, tarfile, zstandard) are translated where they enter
the builder, so callers of `rafs.builder` only see RafsError subclasses.
"""

from __future__ import annotations

from ..errors import RafsError


class BuildError(RafsError):
    """The image cannot be built from this source."""


class UnsafeEntry(BuildError):
    """A source entry whose path or link target would leave the image tree."""
