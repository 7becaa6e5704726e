import sys

from vhostfs.cli import main

sys.exit(main())
