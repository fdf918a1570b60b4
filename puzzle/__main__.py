from __future__ import annotations

import sys

from puzzle.cli import main

sys.exit(main())
