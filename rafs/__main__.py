"""`python -m rafs`: the rafs command line (see rafs.cli)."""

from __future__ import annotations

import sys

from .cli import main

sys.exit(main())
