"""Step `predict`: batch predictions from a logged or registered model, without a server.

Reads: a model (`model_uri`: `models:/NAME@ALIAS`, `models:/NAME/VERSION` or
`runs:/RUN_ID/model`) and the inputs its task takes (`input`): for prices a
Yahoo-style CSV file, a folder of them, or a Parquet file (several series in a
`series_id` column); for speech an audio file or a folder of them. Writes:
`output` (CSV, or Parquet by its suffix), one row per prediction, written to a
temporary file and renamed into place, so a failure leaves no half file. The rows
are exactly what the REST endpoint returns for the same inputs.

    python -m pipeline.predict --input data/prices --output predictions.csv --mode rolling
    python -m pipeline.predict --input today.parquet --output p.parquet --mode stream \\
        --states states.parquet
    mlflow run . -e predict --env-manager local -P input=$PWD/data/prices -P output=$PWD/p.parquet
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from pipeline import tasks
from pipeline.core import cli
from pipeline.core.params import param
from pipeline.tasks import calls


@dataclass
class PredictParams:
    model_uri: str = param("models:/prices-returns-h1@champion",
                           "the model: models:/NAME@ALIAS, models:/NAME/VERSION or "
                           "runs:/RUN_ID/model")
    input: str = param("", "what the model's task takes: prices (CSV file, folder, Parquet) "
                           "or audio (file or folder); empty: the task's bundled sample")
    output: str = param("predictions.csv", "a .csv or .parquet file, written atomically")
    mode: str = param("last", "prices: last (after the last price), rolling (at every step) "
                              "or stream (every new step, continuing from `states`)",
                      ("last", "rolling", "stream"))
    states: str = param("", "prices, mode stream: a Parquet table of series_id and state, "
                            "read before (a series not in it starts afresh) and rewritten "
                            "after with each series' new state")
    repair: str = param("none", "prices: bad rows in the input: none (error), drop, ffill",
                        ("none", "drop", "ffill"))
    market: str = param("", "prices, a model trained with a market table: the table (CSV) "
                            "with a row for every day of the input (python -m "
                            "data_loaders.market)")
    skip_bad: bool = param(False, "leave out the inputs that cannot be read or that the "
                                  "model refuses (each named on stderr, counted at the "
                                  "end) instead of stopping at the first")


class Refused(ValueError):
    """A request row the model refused: "input NAME: why"."""

    def __init__(self, name, why: str):
        super().__init__(f"input {name}: {why}")
        self.name, self.why = name, why


def predict_rows(model, requests, params: dict | None = None, progress: bool | None = None,
                 skip_bad: bool = False):
    """Predictions for every request row, sent to the pyfunc in `calls`, and the inputs
    left out as [(input, why)]. A bad row's error names its input (`series_id` or
    `utterance_id`: the file); with skip_bad its call is sent again a row at a time, and
    each row refused is left out and said on stderr."""
    import pandas as pd
    from tqdm.auto import tqdm

    ids = requests.get("series_id", requests.get("utterance_id"))
    parts, skipped = [], []
    with tqdm(total=len(requests), desc="rows", unit="row",
              disable=None if progress is None else not progress) as bar:
        for rows in calls(model.unwrap_python_model(), requests):
            try:
                parts.append(predict_call(model, requests, rows, ids, params))
            except Refused:
                if not skip_bad:
                    raise
                for i in range(rows.start, rows.stop):  # the good rows of the call kept
                    try:
                        parts.append(predict_call(model, requests, slice(i, i + 1), ids,
                                                  params))
                    except Refused as bad:
                        skipped.append((bad.name, bad.why))
                        print(f"skipped {bad}", file=sys.stderr, flush=True)
            bar.update(rows.stop - rows.start)
    if not parts:
        raise ValueError(f"input: the model refused every input ({len(requests)}; the "
                         f"first: {skipped[0][0]}: {skipped[0][1]})")
    return pd.concat(parts, ignore_index=True), skipped


def predict_call(model, requests, rows: slice, ids, params: dict | None):
    """One call's predictions; Refused for a row the model refuses, where it can be
    named."""
    import re

    from mlflow.exceptions import MlflowException

    chunk = requests.iloc[rows].reset_index(drop=True)
    try:
        return model.predict(chunk, params=params or None)
    except MlflowException as err:
        row = re.match(r"row (\d+)", err.message)
        if ids is None or (row is None and len(chunk) > 1):
            raise
        name = ids.iloc[rows.start + int(row[1]) if row else rows.start]
        why = re.sub(r"^row \d+(, |: )", "", err.message)
        raise Refused(name, why.removesuffix(f" ({ids.name} {name!r})")) from None  # once


def write_table(frame, path) -> None:
    from data_loaders.files import atomic_write

    atomic_write(path, lambda tmp: frame.to_parquet(tmp, index=False)
                 if str(path).endswith(".parquet") else frame.to_csv(tmp, index=False))


def parse(argv=None) -> PredictParams:
    """The parameters this command line would run with, checked (every step has `parse`;
    the docs' commands are checked with it)."""
    p = cli.parse_params(argv, __doc__, PredictParams)
    if Path(p.output).suffix not in (".csv", ".parquet"):
        raise cli.UsageError(f"output must end in .csv or .parquet, got {p.output!r}")
    if why := unwritable(Path(p.output).expanduser().resolve()):  # before the work, not after
        raise cli.UsageError(f"output: {p.output}: {why}")
    if (p.mode == "stream") != bool(p.states):
        raise cli.UsageError("--mode stream and --states go together (price models only: "
                             "a stream reads and writes its series' states): give both "
                             "--mode stream and --states FILE.parquet")
    if p.states and Path(p.states).suffix != ".parquet":
        raise cli.UsageError(f"states must end in .parquet, got {p.states!r}")
    if p.states and Path(p.states).resolve() == Path(p.output).resolve():
        raise cli.UsageError("states and output are one file: give each its own")
    return p


def unwritable(path: Path) -> str | None:
    """Why a file cannot be written at `path`, or None: tried with a temporary file
    beside it (a folder still to be made is made when the output is written)."""
    import tempfile

    if path.is_dir():
        return "is a folder"
    if path.parent.is_dir():
        try:
            tempfile.TemporaryFile(dir=path.parent).close()
        except OSError as err:
            return f"cannot write in {path.parent} ({err.strerror})"
    return None


def read_states(path: Path, requests) -> None:
    """Each request row's `state` from the table at `path` (none where the series is not
    in it, or the table does not exist yet)."""
    import pandas as pd

    if not path.exists():
        requests["state"] = None
        return
    try:
        table = pd.read_parquet(path)
    except (OSError, ValueError) as err:  # pyarrow's errors are both
        raise ValueError(f"states: {path}: not a Parquet table ({err})") from None
    if not {"series_id", "state"} <= set(table.columns) or table.series_id.duplicated().any():
        raise ValueError(f"states: {path} is not a states table (one row per series_id, "
                         "with a state column)")
    known = dict(zip(table.series_id, table.state, strict=True))
    requests["state"] = [known.get(s) for s in requests["series_id"]]


def write_states(path: Path, out) -> None:
    """The states table after a stream: the old rows, each streamed series' replaced."""
    import pandas as pd

    new = out.loc[out.state != "", ["series_id", "state"]]
    if path.exists():
        old = pd.read_parquet(path)
        new = pd.concat([old[~old.series_id.isin(new.series_id)], new], ignore_index=True)
    write_table(new.reset_index(drop=True), path)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    p = parse(argv)
    from pipeline.core.tracking import load_model, note_launcher  # after parsing: fast --help

    model = load_model(p.model_uri)
    spec = model.unwrap_python_model().spec
    task = tasks.load(spec["task"])
    source = Path(p.input).expanduser().resolve() if p.input else task.sample
    if not source.exists():
        raise FileNotFoundError(f"input: {source} does not exist")
    given = [o for o in ("market", "mode", "repair", "states")
             if any(a == f"--{o}" or a.startswith(f"--{o}=") for a in argv)]
    if task.name != "prices" and given:
        raise cli.UsageError(f"{', '.join(given)}: options of price models; {p.model_uri} is "
                             f"a {task.name} model, and predict reads each audio file whole "
                             "(frame by frame is served: docs/speech.md)")
    requests, unread = task.requests(source, spec, p.repair, p.market, p.skip_bad)
    for name, why in unread:
        print(f"skipped input {name}: {why}", file=sys.stderr, flush=True)
    states = Path(p.states).expanduser().resolve() if p.states else None
    if states:
        read_states(states, requests)
    # the mode only when given: else the model's own
    out, skipped = predict_rows(model, requests, {"mode": p.mode} if "mode" in given else None,
                                skip_bad=p.skip_bad)
    write_table(out, Path(p.output).expanduser().resolve())
    if states:  # after the predictions: a failure before leaves the old states
        write_states(states, out)
    note_launcher(f"This launch wrote {len(out)} predictions of {p.model_uri} to {p.output}.")
    left = len(unread) + len(skipped)
    said = f" ({left} left out: see 'skipped' above)" if left else ""
    print(f"{len(out)} predictions for {len(requests) - len(skipped)} inputs{said} -> "
          f"{p.output}")
    return out

if __name__ == "__main__":
    cli.run(main)
