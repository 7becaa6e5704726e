"""Where the shared RAFS fixtures live: `shared/fixtures` beside the repository checkout.

CI clones the repository with `shared/` next to it, as in the development workspace; the
VHOSTFS_FIXTURES environment variable points elsewhere if needed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

REPO_ROOT: Final = Path(__file__).resolve().parents[2]
FIXTURES: Final = Path(os.environ.get("VHOSTFS_FIXTURES", REPO_ROOT.parent / "shared" / "fixtures"))
V5_DIR: Final = FIXTURES / "rafs-v5-sha256"
V6_DIR: Final = FIXTURES / "rafs-v6-zstd"

# Contents listed in fixtures/README.md for the v6 image.
V6_FILES: Final = {
    b"lib.rs": (16931, "1810eba864521293bb0d6b55a3c82318d4d89f294ed761c456d9088a17de0c69"),
    b"sync_io.rs": (13400, "e629ab260ff0dc02a24648a3e0dd8c13a5daf233d535c330e3201925f5eeff96"),
}
