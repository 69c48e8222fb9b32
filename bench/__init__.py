"""The benchmark (run.py)."""
