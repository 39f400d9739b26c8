"""Runtime backends: one small interface (base.py), one module per runtime, imported lazily."""
