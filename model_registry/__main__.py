"""Allow `python -m model_registry`."""

import sys

from model_registry.cli import main

sys.exit(main())
