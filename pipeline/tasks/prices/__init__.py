"""Task `prices` (task.py): forecasts from daily price series, judged by their
evaluation against baselines (evaluation.py) and risk scores (risk.py)."""
