"""The parts of `scripts/demo.py`, one concern each (the story itself stays in demo.py)."""
