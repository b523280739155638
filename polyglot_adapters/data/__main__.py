"""``python -m polyglot_adapters.data fetch|stats``."""

from __future__ import annotations

import sys

from .udhr import main

sys.exit(main())
