"""``python -m polyglot_adapters.kg fetch|build|stats [--kg cldr|nations|kinships|umls]``."""

from __future__ import annotations

import sys

from .datasets import main

sys.exit(main())
