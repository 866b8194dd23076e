"""The steps of the sequence-prediction pipeline, one module each at this folder's root
(docs/getting-started.md: the steps; docs/layout.md: where the rest lives)."""

__version__ = "0.6.0.dev0"  # the one place: pyproject.toml reads it, every run's tags carry it
