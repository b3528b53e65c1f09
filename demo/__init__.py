"""The Quick-start demo: `python -m demo.run` from the repository root."""
