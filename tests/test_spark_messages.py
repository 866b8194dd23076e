"""The Spark step's checks that need no Spark (pipeline/score_spark.py): a master URL
that is not one, an output that would overwrite the input or a folder the step did not
write, and a failed job's message turned into one line naming the table's row."""

import pytest

from pipeline.score_spark import checked_output, job_error, spark_session, table_row

WORKER = """An exception was thrown from the Python worker:
Traceback (most recent call last):
  File "/x/pyspark/worker.py", line 4327, in invoke_udf
    run_process()
  File "/x/models/price_model.py", line 144, in _value_error
    raise bad(f"row {i}, column '{name}': {rule}, got {value} at position {k}")
mlflow.exceptions.MlflowException: row 50, column 'close': must be > 0, got -1.0 at position \
3 (series_id '1050')
 SQLSTATE: 38000"""


def test_a_failed_job_is_one_line_naming_the_table_s_row():
    message = job_error(Exception(WORKER))
    assert message == "row 50, column 'close': must be > 0, got -1.0 at position 3 " \
                      "(series_id '1050')"
    # the table sent no ids: the ids Spark's rows got are the table's row numbers
    assert table_row(message, "series_id", ids_given=False) == \
        "row 1050, column 'close': must be > 0, got -1.0 at position 3"
    assert table_row(message, "series_id", ids_given=True) == \
        "row with series_id '1050', column 'close': must be > 0, got -1.0 at position 3"
    assert table_row("row 3: the model produced a non-finite forecast (series_id '7')",
                     "series_id", False) == "row 7: the model produced a non-finite forecast"
    quoted = 'row 4, column \'close\': must be > 0 (series_id "it\'s")'
    assert table_row(quoted, "series_id", ids_given=True) == \
        'row with series_id "it\'s", column \'close\': must be > 0'
    # a model's message without an id, or a model without an id column, is kept
    assert table_row("empty batch", "series_id", False) == "empty batch"
    assert table_row(message, None, False) == message


def test_a_worker_s_own_exception_and_spark_s_own_message_stay_readable():
    crash = WORKER.replace("mlflow.exceptions.MlflowException: row 50", "IndexError: list")
    assert job_error(Exception(crash)).startswith("IndexError: list")
    assert job_error(Exception("[PATH_NOT_FOUND] Path does not exist: /x.\n  at ...")) == \
        "[PATH_NOT_FOUND] Path does not exist: /x."
    assert job_error(Exception("")) == "Exception"


def test_an_output_over_the_input_or_a_foreign_folder_is_refused(tmp_path):
    table = tmp_path / "t.parquet"
    for output in (table, table / "out", tmp_path):
        with pytest.raises(ValueError, match="overlaps the input"):
            checked_output(table, output)
    (tmp_path / "notes").mkdir()
    with pytest.raises(ValueError, match="exists and is not a table written by Spark"):
        checked_output(table, tmp_path / "notes")
    scored = tmp_path / "scored"
    scored.mkdir()
    part = "part-00000-5f0e7a34-60c1-4c57-9a33-4d5f05c4c2a9-c000.snappy.parquet"
    for name in ("_SUCCESS", "._SUCCESS.crc", part, f".{part}.crc"):
        (scored / name).touch()
    checked_output(table, scored)  # an earlier score-spark's: replaced
    for name in ("notes.txt", "part-notes.docx", "part-00001-mine"):  # a user's: refused
        (scored / name).touch()
        with pytest.raises(ValueError, match=rf"is not a table written by Spark \(it holds "
                                             rf"{name}\)"):
            checked_output(table, scored)
        (scored / name).unlink()
    (scored / "part-00002-x.parquet").mkdir()  # a folder, even one named like a part
    with pytest.raises(ValueError, match="it holds part-00002-x.parquet"):
        checked_output(table, scored)
    checked_output(table, tmp_path / "new")


@pytest.mark.parametrize("master", ["foo", "local[two]", "spark://", "local[2", "local[0]"])
def test_a_master_that_is_not_a_spark_url_is_refused_before_spark_starts(master):
    with pytest.raises(ValueError, match=r"master: .* is not a Spark master URL"):
        spark_session(master, ui=False)
