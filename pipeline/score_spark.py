"""Step `score-spark`: batch scoring with Spark, through `mlflow.pyfunc.spark_udf`.

Reads: `input`, a Parquet table of requests, one row per series (price histories:
array columns `close`, `high`, `low`, `volume`, optional `dates` and `series_id`) or
per clip (`audio`, the file's bytes, binary, and optional `utterance_id`), exactly the
columns the REST endpoint takes; and the model at `model_uri`. Writes: `output`, a
Parquet table with one row per input row, the model's response columns (the same
values the REST endpoint returns for the same rows). Prices: `mode=last` only, since
Spark's UDF gives one result per row (rolling forecasts: `python -m pipeline.predict
--mode rolling`).

Inside Spark, array columns reach the model's `predict` as NumPy arrays (over REST,
as lists) and binary ones as bytes (over REST, base64 text). The table is split into
partitions of rows within the model's per-request limits (`bounded`), so no batch is
refused for its size.

    python -m pipeline.score_spark --input prices.parquet --output scored.parquet \\
        --model_uri models:/prices-volatility-h5-gaussian@champion
    mlflow run . -e score-spark --env-manager local -P input=$PWD/prices.parquet \\
        -P output=$PWD/scored.parquet -P model_uri=models:/prices-returns-h1@champion

Needs the `spark` extra (pip install -e '.[spark]') and Java 17 (Debian:
openjdk-17-jre-headless; `make system`). `master` is where Spark runs (default
local[*]: this machine's cores); PYSPARK_PYTHON defaults to this Python.
"""

from __future__ import annotations

import os
import shutil
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

from pipeline import cli
from pipeline.config import param


@dataclass
class ScoreParams:
    input: str = param("", "a Parquet table of requests (a file or a folder of parts)",
                       required=True)
    output: str = param("", "where to write the scored Parquet table (a folder, replaced)",
                        required=True)
    model_uri: str = param("", "the model: models:/NAME@ALIAS, models:/NAME/VERSION or "
                               "runs:/RUN_ID/model", required=True)
    master: str = param("local[*]", "Spark master URL (local[N]: N cores of this machine)")
    spark_ui: bool = param(False, "start Spark's web UI (port 4040)")


PANDAS_WARNING = "PySpark does not yet fully support pandas"
SPARK_TYPES = {"string": "string", "long": "long", "double": "double", "integer": "int",
               "float": "float", "boolean": "boolean"}


def result_type(model) -> str:
    """The model's response columns as a Spark struct type, from its signature."""
    from mlflow.types.schema import Array

    def spark_type(t) -> str:
        return f"array<{spark_type(t.dtype)}>" if isinstance(t, Array) else SPARK_TYPES[t.name]

    return ", ".join(f"`{c.name}` {spark_type(c.type)}"
                     for c in model.metadata.get_output_schema().inputs)


def rows_per_batch(own, table) -> int:
    """Rows Spark may hand the model at once: within its row limit and its per-request
    budget for the largest row of the table (prices: the longest history; speech: the
    most audio one clip may hold)."""
    from pyspark.sql import functions as F

    most = getattr(own, "most_per_row", 0.0)
    if column := getattr(own, "size_column", None):
        most = table.agg(F.max(F.size(column))).first()[0] or 1
    if not most or most == float("inf"):
        return own.max_rows
    return max(1, min(own.max_rows, int(own.budget() // most)))


def bounded(spark, table, per: int):
    """The table in partitions of at most `per` rows (row i in partition i // per): the
    model gets each partition's rows in one batch (PySpark 4.3 was seen to hand a
    partition over whole whatever maxRecordsPerBatch says), so no batch is over its
    per-request limits."""
    n = table.count()
    if n <= per:
        return table
    rows = table.rdd.zipWithIndex().map(lambda pair: (pair[1] // per, pair[0]))
    parts = rows.partitionBy(-(-n // per), lambda k: k).values()
    return spark.createDataFrame(parts, table.schema)


def spark_session(master: str, ui: bool):
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
    spark = (SparkSession.builder.master(master).appName("seqpredict score-spark")
             .config("spark.ui.enabled", str(ui).lower())
             .config("spark.ui.showConsoleProgress", "false")
             .config("spark.sql.execution.arrow.pyspark.enabled", "true").getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def score(spark, input_path: str, output_path: str, model_uri: str) -> int:
    """Score `input_path` into `output_path`; returns the number of rows written."""
    import mlflow
    from pyspark.sql import functions as F

    from pipeline.tracking import load_model

    model = load_model(model_uri)
    own = model.unwrap_python_model()
    table = spark.read.parquet(input_path)
    known = {c.name for c in model.metadata.get_input_schema().inputs}
    columns = [c for c in table.columns if c in known]
    if not columns:
        raise ValueError(f"input: {input_path} has none of the columns the model takes "
                         f"({', '.join(sorted(known))}); it has {', '.join(table.columns)}")
    per = rows_per_batch(own, table)
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(per))
    table = bounded(spark, table, per)
    udf = mlflow.pyfunc.spark_udf(spark, model_uri, result_type=result_type(model),
                                  env_manager="local")
    # one struct argument: the model gets a frame with the columns by name
    scored = table.select(udf(F.struct(*columns)).alias("out")).select("out.*")
    scored.write.mode("overwrite").parquet(output_path)
    return spark.read.parquet(output_path).count()


def main(argv=None) -> None:
    p = cli.parse_params(argv, __doc__, ScoreParams)
    source = Path(p.input).expanduser().resolve()
    if not source.exists():
        raise FileNotFoundError(f"input: {source} does not exist")
    spark = spark_session(p.master, p.spark_ui)
    try:
        n = score(spark, str(source), str(Path(p.output).expanduser().resolve()), p.model_uri)
    finally:
        spark.stop()
    print(f"{n} predictions of {p.model_uri} -> {p.output}")

if __name__ == "__main__":
    cli.run(main)
