"""Step `score-spark`: batch scoring with Spark, through `mlflow.pyfunc.spark_udf`.

Reads: `input`, a Parquet table of requests, one row per series (price histories:
array columns `close`, `high`, `low`, `volume`, optional `dates` and `series_id`) or
per clip (`audio`, the file's bytes, binary, and optional `utterance_id`), exactly the
columns the REST endpoint takes; and the model at `model_uri`. Writes: `output`, a
Parquet table with one row per input row, the model's response columns (the same
values the REST endpoint returns for the same rows). Prices: `mode=last`, or
`mode=stream`: each row sends its series' new prices and the `state` column of the
previous day's output (null: the series starts), and gets its series' last forecast and
new `state`, one row per series, as the REST endpoint's `last_only` gives them (Spark's
UDF gives one result per row; rolling forecasts: `python -m pipeline.predict --mode
rolling`).

Inside Spark, array columns reach the model's `predict` as NumPy arrays (over REST,
as lists) and binary ones as bytes (over REST, base64 text). The table is split into
partitions of rows within the model's per-request limits (`numbered`), so no batch is
refused for its size.

    python -m pipeline.score_spark --input prices.parquet --output scored.parquet \\
        --model_uri models:/prices-volatility-h5-gaussian@champion
    mlflow run . -e score-spark --env-manager local --experiment-name prices \\
        -P input=$PWD/prices.parquet -P output=$PWD/scored.parquet \\
        -P model_uri=models:/prices-returns-h1@champion

Needs the `spark` extra (pip install -e '.[spark]') and Java 17 (Debian:
openjdk-17-jre-headless; `make system`). `master` is where Spark runs (default
local[*]: this machine's cores); PYSPARK_PYTHON defaults to this Python.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

from pipeline.core import cli
from pipeline.core.params import param


@dataclass
class ScoreParams:
    input: str = param("", "a Parquet table of requests (a file or a folder of parts)",
                       required=True)
    output: str = param("", "where to write the scored Parquet table (a new folder, or one "
                            "an earlier score-spark wrote, replaced)",
                        required=True)
    model_uri: str = param("", "the model: models:/NAME@ALIAS, models:/NAME/VERSION or "
                               "runs:/RUN_ID/model", required=True)
    mode: str = param("last", "prices: last (after each row's last price) or stream (each "
                              "row continues its series from its `state` column)",
                      ("last", "stream"))
    master: str = param("local[*]", "Spark master URL (local[N]: N cores of this machine)")
    spark_ui: bool = param(False, "start Spark's web UI (port 4040)")


PANDAS_WARNING = "PySpark does not yet fully support pandas"
SPARK_TYPES = {"string": "string", "long": "long", "double": "double", "integer": "int",
               "float": "float", "boolean": "boolean"}


def result_type(model, mode: str) -> str:
    """The model's response columns in `mode` as a Spark struct type, from its signature
    (a price model's `state` in mode stream only)."""
    from mlflow.types.schema import Array

    def spark_type(t) -> str:
        return f"array<{spark_type(t.dtype)}>" if isinstance(t, Array) else SPARK_TYPES[t.name]

    return ", ".join(f"`{c.name}` {spark_type(c.type)}"
                     for c in model.metadata.get_output_schema().inputs
                     if c.required or mode == "stream")


def rows_per_batch(own, table, source: Path) -> int:
    """Rows Spark may hand the model at once: within its row limit and its per-request
    budget for the largest row of the table (prices: the longest history; speech: the
    most audio one clip may hold)."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import ArrayType

    most = getattr(own, "most_per_row", 0.0)
    if (column := getattr(own, "size_column", None)) in table.columns:
        got = table.schema[column].dataType
        if not isinstance(got, ArrayType):
            raise ValueError(f"input: {source}, column '{column}': expected an array per row "
                             f"(one request row each), got {got.simpleString()}")
        most = table.agg(F.max(F.size(column))).first()[0] or 1
    if not most or most == float("inf"):
        return own.max_rows
    return max(1, min(own.max_rows, int(own.budget() // most)))


def numbered(spark, table, n: int, per: int, id_column: str | None):
    """The table (`n` rows) in partitions of at most `per` rows, in the table's order
    (row i in partition i // per): the model gets each partition's rows in one batch
    (PySpark 4.3 was seen to hand a partition over whole whatever maxRecordsPerBatch
    says), so no batch is over its per-request limits. A row without an id gets its
    row number, as over REST (where each request numbers its own rows)."""
    from pyspark.sql.types import StringType, StructField, StructType

    fields = list(table.schema.fields)  # a copy: StructType.add would change the table's
    at = table.columns.index(id_column) if id_column in table.columns else None
    if id_column and at is None:
        fields, at = [*fields, StructField(id_column, StringType())], len(fields)
    schema = StructType(fields)

    def keyed(pair):
        row, i = pair
        values = list(row) + [None] * (len(schema) - len(row))
        if at is not None and values[at] is None:
            values[at] = str(i)
        return i // per, (i, values)

    parts = (table.rdd.zipWithIndex().map(keyed)
             .partitionBy(max(1, -(-n // per)), lambda k: k)
             .mapPartitions(lambda rows: [v for _, (_, v) in sorted(rows, key=lambda r: r[1][0])]))
    return spark.createDataFrame(parts, schema)


def check_ids(table, id_column: str | None, source: Path) -> None:
    """The ids a table sends, checked here as the model checks them, so that a bad one is
    named by its table row (the model sees only its batch's row number)."""
    from pyspark.sql.types import StringType

    from models.served import MAX_ID

    if id_column not in table.columns:
        return
    kind = table.schema[id_column].dataType
    if not isinstance(kind, StringType):
        raise ValueError(f"input: {source}, column '{id_column}': expected strings, got "
                         f"{kind.simpleString()}")
    long = (table.rdd.map(lambda row: row[id_column]).zipWithIndex()
            .filter(lambda pair: pair[0] is not None and len(pair[0]) > MAX_ID).take(1))
    if long:
        raise ValueError(f"input: {source}: row {long[0][1]}, column '{id_column}': "
                         f"{len(long[0][0])} characters; the limit is {MAX_ID}")


def job_error(err: Exception) -> str:
    """The one line that says why a Spark job failed: the model's own message (a row's
    error ends with the row's id, see ServedModel.named), else the last exception a
    Python worker raised, else Spark's first line."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    raised = [line for line in lines if re.match(r"[\w.]+(Error|Exception): ", line)]
    if not raised:
        return lines[0] if lines else type(err).__name__
    own = re.match(r"(mlflow\.exceptions\.)?MlflowException: (.*)", raised[-1])
    return own[2] if own else raised[-1]


def table_row(message: str, id_column: str | None, ids_given: bool) -> str:
    """A row's error as the table's: `row 7 of a batch ... (series_id 'X')` becomes
    `row X ...` where the ids are the table's row numbers (the table sends none, see
    `numbered`), else `row with series_id 'X' ...`."""
    found = re.fullmatch(rf"row \d+([,:] .*) \({id_column} (['\"])(.*)\2\)", message, re.S)
    if not id_column or not found:
        return message
    return (f"row with {id_column} {found[2]}{found[3]}{found[2]}" if ids_given
            else f"row {found[3]}") + found[1]


MASTER = re.compile(r"local(\[([1-9]\d*|\*)(,\d+)?\])?|(spark|k8s|mesos)://\S+|yarn")


def spark_session(master: str, ui: bool):
    if not MASTER.fullmatch(master):
        raise ValueError(f"master: {master!r} is not a Spark master URL (local, local[N], "
                         "local[*], spark://HOST:PORT, yarn, k8s://...)")
    if not shutil.which("java") and not os.environ.get("JAVA_HOME"):
        raise OSError("score-spark needs Java 17 (Debian: apt-get install "
                      "openjdk-17-jre-headless, or make system)")
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise OSError("score-spark needs pyspark: pip install -e '.[spark]'") from None
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    # PySpark 4.3 warns that it "does not yet fully support pandas >= 3.0.0" (here and in
    # its Python workers); what this step uses of it gives the REST endpoint's rows
    # (tests/test_spark.py)
    quiet = f"ignore:{PANDAS_WARNING}:FutureWarning"
    os.environ["PYTHONWARNINGS"] = ",".join(filter(None, [os.environ.get("PYTHONWARNINGS"),
                                                           quiet]))
    warnings.filterwarnings("ignore", PANDAS_WARNING, FutureWarning)
    builder = (SparkSession.builder.master(master).appName("seqpredict score-spark")
               .config("spark.ui.enabled", str(ui).lower())
               .config("spark.ui.showConsoleProgress", "false")
               .config("spark.sql.execution.arrow.pyspark.enabled", "true"))
    try:
        spark = builder.getOrCreate()
    except spark_errors() as err:
        raise ValueError(f"master: cannot start Spark at {master!r} "
                         f"({job_error(err)})") from None
    # a failed job is one line of ours (`job_error`), not Spark's hundreds of log lines
    spark.sparkContext.setLogLevel("FATAL")
    return spark


def spark_errors():
    """What a failed Spark job or session raises (Spark's own and the JVM's)."""
    from py4j.protocol import Py4JError
    from pyspark.errors import PySparkException

    return PySparkException, Py4JError


# what Spark's Parquet writer leaves in a folder (part-00000-<uuid>-c000.snappy.parquet)
SPARK_FILES = re.compile(r"\.?(part-\d{5}-[\w-]+(\.\w+)?\.parquet|_SUCCESS)(\.crc)?")


def checked_output(source: Path, output: Path) -> None:
    """Refuse an output that would overwrite the input or a folder this step did not
    write (Spark's overwrite deletes the whole folder first)."""
    if output == source or source in output.parents or output in source.parents:
        raise ValueError(f"output: {output} overlaps the input {source}; choose another path")
    if not output.exists():
        return
    others = [p.name for p in output.iterdir()
              if not (p.is_file() and SPARK_FILES.fullmatch(p.name))]
    if not (output / "_SUCCESS").is_file() or others:
        raise ValueError(f"output: {output} exists and is not a table written by Spark ("
                         + (f"it holds {', '.join(sorted(others)[:3])}" if others else
                            "no _SUCCESS file in it") + "); choose another path or remove it")


def score(spark, model, model_uri: str, source: Path, output: Path, mode: str = "last") -> int:
    """Score the table at `source` into `output` (written beside it, then moved in, so
    a failed job leaves the previous output as it was); returns the rows written."""
    import mlflow
    from pyspark.sql import functions as F

    own = model.unwrap_python_model()
    failed = spark_errors()
    try:
        table = spark.read.parquet(str(source))
    except failed as err:
        raise ValueError(f"input: {source}: not a Parquet table ({job_error(err)})") from None
    known = {c.name for c in model.metadata.get_input_schema().inputs}
    columns = [c for c in table.columns if c in known]
    if not columns:
        raise ValueError(f"input: {source} has none of the columns the model takes "
                         f"({', '.join(sorted(known))}); it has "
                         f"{', '.join(table.columns) or 'no columns'}")
    n = table.count()
    if n == 0:
        raise ValueError(f"input: {source} has no rows: nothing to score")
    per = rows_per_batch(own, table, source)
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(per))
    id_column = getattr(own, "id_column", None)  # None in models logged before it
    ids_given = id_column in table.columns
    check_ids(table, id_column, source)
    table = numbered(spark, table, n, per, id_column)
    columns += [id_column] if id_column and id_column not in columns else []
    params = {"mode": "stream", "last_only": True} if mode == "stream" else None
    udf = mlflow.pyfunc.spark_udf(spark, model_uri, result_type=result_type(model, mode),
                                  params=params,
                                  env_manager="local")
    # one struct argument: the model gets a frame with the columns by name
    scored = table.select(udf(F.struct(*columns)).alias("out")).select("out.*")
    partial = output.with_name(f".{output.name}.partial-{os.getpid()}")
    try:
        scored.write.mode("overwrite").parquet(str(partial))
    except failed as err:
        shutil.rmtree(partial, ignore_errors=True)
        message = table_row(job_error(err), id_column, ids_given)
        raise ValueError(f"input: {source}: {message}") from None
    if output.exists():
        old = output.with_name(f".{output.name}.old-{os.getpid()}")
        output.rename(old)
        partial.rename(output)
        shutil.rmtree(old)
    else:
        partial.rename(output)
    return spark.read.parquet(str(output)).count()


def parse(argv=None) -> ScoreParams:
    """The parameters this command line would run with, checked (every step has `parse`;
    the docs' commands are checked with it)."""
    return cli.parse_params(argv, __doc__, ScoreParams)


def main(argv=None) -> None:
    from pipeline.core.tracking import load_model

    p = parse(argv)
    source = Path(p.input).expanduser().resolve()
    output = Path(p.output).expanduser().resolve()
    if not source.exists():
        raise FileNotFoundError(f"input: {source} does not exist")
    checked_output(source, output)
    model = load_model(p.model_uri)  # a wrong URI fails before Spark starts
    if p.mode == "stream" and "last_only" not in {
            s.name for s in getattr(model.metadata.get_params_schema(), "params", [])}:
        raise ValueError(f"mode: {p.model_uri} does not stream (a price model logged "
                         "before mode stream was added, or not a price model)")
    spark = spark_session(p.master, p.spark_ui)
    try:
        n = score(spark, model, p.model_uri, source, output, p.mode)
    finally:
        spark.stop()
    print(f"{n} predictions of {p.model_uri} -> {output}")


if __name__ == "__main__":
    cli.run(main)
