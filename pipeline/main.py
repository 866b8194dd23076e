"""Entry point `main`: prepare, train, evaluate and register, in one MLflow run.

    python -m pipeline.main --cell gru --bptt truncated --k1 50 --k2 100
    python -m pipeline.main --preset speech-fsdd
    mlflow run . --env-manager local --experiment-name prices -P cell=gru -P bptt=truncated
    torchrun --standalone --nproc_per_node=2 -m pipeline.main --bptt truncated

Reads and writes what the steps `train`, `evaluate` and `register` do, for any
task (`--task`; the options listed below are the common ones and the chosen
task's).
"""

from __future__ import annotations

from pipeline import tasks
from pipeline.core import cli


def run(cfg, run_name: str | None = None, nested: bool = False) -> dict:
    """One run of any task: train, evaluate, and register unless register=false or the
    run is nested (a sweep's child); or, when the task's config asks for folds, a
    cross-validation (pipeline/core/crossval.py). Returns its run_id, test table and
    history."""
    from pipeline.core import registry
    from pipeline.core.report import report_text
    from pipeline.core.tracking import start_run, tracking_uri
    from pipeline.evaluate import evaluate_and_log
    from pipeline.register import register_run
    from pipeline.train import report, train_and_log

    task = tasks.load(cfg.task_name)
    if folds := task.folds(cfg):
        from pipeline.core.crossval import run_folds

        if cfg.tracking.register and not nested:
            print("cross-validation: the folds' models are not registered; to register a "
                  "model to serve, train it on all the data (speech: split=index or "
                  "split=random; prices: without folds)")
        return run_folds(cfg, folds, run, run_name or task.run_name(cfg), nested)
    data = task.prepare(cfg)
    print(data.summary())
    asked = cfg.tracking.register and not nested
    registering = asked and task.serves(cfg)
    if asked and not registering:
        print("a cross-validation fold's model is not registered; to register a model to "
              "serve, train it on all the data")
    if registering:  # refuse a model the name cannot take before training it
        import mlflow

        mlflow.set_tracking_uri(tracking_uri())
        registry.check_compatible(cfg.tracking.registered_model,
                                  registry.identity(task, task.network(cfg, data)))
    with start_run(cfg, run_name or task.run_name(cfg), nested=nested) as active:
        net, history = train_and_log(cfg, task, data)
        result = evaluate_and_log(net, cfg, task, data)
    print(f"\n{report(active, cfg, history)}\ntest metrics:\n{report_text(result)}")
    if registering:
        register_run(active.info.run_id, cfg, data)
    return {"run_id": active.info.run_id, "table": result.table, "history": history}


def parse(argv=None):
    """The config this command line would run, checked (every step has `parse`; the
    docs' commands are checked with it)."""
    return cli.parse_config(argv, __doc__)[0]


def main(argv=None) -> dict | None:
    cfg = parse(argv)
    from pipeline.core.tracking import resume_config  # after parsing: --help stays fast
    from pipeline.train import other_rank

    cfg = resume_config(cfg)
    if other_rank(cfg):  # under torchrun, ranks other than 0 only train
        return None
    return run(cfg)

if __name__ == "__main__":
    cli.run(main)
