"""The steps of the sequence-prediction pipeline (README: "The pipeline's steps")."""

__version__ = "0.6.0.dev0"  # the one place: pyproject.toml reads it, every run's tags carry it
