"""A test evaluation (`pipeline.tasks.Evaluation`) as a run logs it and as a person reads
it: used by the `evaluate` step and by a cross-validation's parent run."""

from __future__ import annotations


def log_evaluation(result) -> None:
    """Into the active run: `test_*` metrics, the table, figures and files."""
    import tempfile
    from pathlib import Path

    import mlflow
    import pandas as pd

    from pipeline.core import plots
    from pipeline.core.metrics import test_metrics

    table = result.table
    mlflow.log_metrics(test_metrics(table))
    mlflow.set_tag("test_metrics", ",".join(test_metrics({"model": table["model"]})))
    if "best_baseline" in table["model"]:
        mlflow.set_tag("best_baseline", table["model"]["best_baseline"])
    mlflow.log_table(pd.DataFrame(table).T.reset_index(names="method"), "evaluation/test.json")
    for path, figure in result.figures.items():
        plots.log_figure(figure, path)
    with tempfile.TemporaryDirectory() as tmp:
        for path, obj in result.files.items():
            local = Path(tmp) / Path(path).name
            if hasattr(obj, "to_csv"):
                obj.to_csv(local, index=False)
            else:
                obj.save(local)
            mlflow.log_artifact(str(local), str(Path(path).parent))


def report_text(result) -> str:
    return format_table(result.table) + (f"\n\n{result.text}" if result.text else "")


def format_table(table: dict) -> str:
    """The table, methods by metrics; the model's shares of series (`share_*`, a value the
    baselines' rows do not have) on a line of their own under it, not as wide columns."""
    import pandas as pd

    frame = pd.DataFrame(table).T.drop(columns=["best_baseline"], errors="ignore")
    shares = [c for c in frame.columns if c.startswith("share_")]
    text = frame.drop(columns=shares).to_string(float_format=lambda v: f"{v:.6g}", na_rep="")
    model = frame.loc["model", shares].dropna() if shares else []
    return text + ("\nshare of series: " + ", ".join(
        f"{name.removeprefix('share_')} {value:.3g}" for name, value in model.items())
        if len(model) else "")
