"""Batch preprocessing with tensorflow-transform: analyse historical data, transform it, fit once.

::

    ReadRawRecords | ValidateRows --(lists of rows)--> ToRecordBatches (train / eval) | GateOnBadRows
                                 --(bad rows, with the reason)--> WriteBadRows   (errors/bad_rows-*.jsonl)
    train --> AnalyzeAndTransformDataset --> WriteTransformedData             (data/train-*.tfrecord|.parquet)
                      \\--transform_fn--> TransformDataset(eval) --> WriteTransformedData  (data/eval-*)
                      \\--transform_fn--> WriteTransformFn --> PublishFittedTransform
                                            (transform_fn/, transformed_metadata/, fitted_transforms.json)

Validated rows travel as Arrow RecordBatches in TFXIO's ``tf.Example`` layout (one
``large_list`` column per raw column, described by TFXIO's ``TensorAdapterConfig``): TFT analyses
and transforms them batch by batch (``output_record_batches=True``), the TFRecord output is
encoded from the transformed batches by tfx-bsl's C++ encoder and written a batch at a time, and
the Parquet output is written batch by batch. CSV files are read in byte ranges, a block of whole
lines at a time, and a block pyarrow can decode exactly as the per-line path would (no quotes,
every value of its type) becomes typed Arrow columns with no Python work per row
(`csv_block_columns`); any other block, and the other formats, are parsed and validated record by
record inside batches of `BATCH_SIZE`: that is what gives every bad row its reason (TFXIO's own
CSV source parses in Python, and fails the job on a malformed line instead). The instance-dict path of
earlier versions remains only as ``batch_format="instance_dicts"``, the reference the tests and
``benchmarks/bench_preprocess.py`` compare against.

The output directory has the ``TFTransformOutput`` layout, so ``tft.TFTransformOutput(dir)``
serves the fitted graph, and ``fitted_transforms.json`` holds the same fitted constants for
`transforms.fitted.FittedTransform`, which applies them online without TensorFlow.

Run it locally (the default runner is the download-free ``FnApiRunner``), on Dataflow or Flink::

    python -m pipelines.preprocess --config preprocess.yaml
    python -m pipelines.preprocess --config gs://b/preprocess.yaml --runner=DataflowRunner \\
        --project=P --region=R --temp_location=gs://b/tmp --staging_location=gs://b/staging \\
        --setup_file=./setup.py
    python -m pipelines.preprocess --config preprocess.yaml --runner=FlinkRunner --flink_master=host:8081

>>> split_of({"x": 1.0}, 0.0), split_of({"x": 1.0}, 0.999999)
('train', 'eval')
>>> parse_csv_line('1.5,"a,b"', ["x", "s"])
{'x': '1.5', 's': 'a,b'}
"""

from __future__ import annotations

import csv
import functools
import logging
import os
import struct
import sys
import tempfile
from typing import Any, Iterable

import apache_beam as beam
import crc32c
import farmhash
import orjson
import yaml
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindows
from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions, PortableOptions, StandardOptions

from pipelines.options import add_required_argument, check_required, waits_for_result
from pipelines.filesystems import configure_filesystems
from core.configuration import parse_config
from core.storage import parse_uri
from core.errors import ConfigError, RiverbeamError, UsageError, run_main
from transforms.config import PreprocessJobConfig
from transforms.fitted import FITTED_FILENAME, fitted_document
from transforms.spec import FeatureSpec, InvalidFeatureError, LabelSpec, consumed_features, raw_columns, value_reader

BAD_ROWS = "bad_rows"
DEFAULT_RUNNER = "FnApiRunner"
_TOO_MANY = "too many bad rows"


class TooManyBadRowsError(RiverbeamError):
    """More rows failed validation than the configuration's ``max_bad_rows`` allows."""


class PreprocessOptions(PipelineOptions):
    """Analyse and transform historical data with tensorflow-transform; write the fitted transform for online use.

    The job is described by a YAML file (``--config``); the other flags override its input and
    output settings, for templates and one-off runs.
    """

    # Dataflow template parameter types of the text flags (choices and numbers are inferred)
    TEMPLATE_PARAM_TYPES = {"config": "GCS_READ_FILE", "input_pattern": "GCS_READ_FILE", "output_dir": "GCS_WRITE_FOLDER"}

    @classmethod
    def _add_argparse_args(cls, parser):
        add_required_argument(
            parser, "--config",
            help="The preprocess job's YAML file (local or gs://): features, label, input, output.",
        )
        parser.add_argument("--input_pattern", default=None, help="Overrides input.pattern: files to read (local or gs:// glob).")
        parser.add_argument(
            "--input_format", default=None, choices=["csv", "jsonl", "parquet", "tfrecord"],
            help="Overrides input.format.",
        )
        parser.add_argument("--output_dir", default=None, help="Overrides output.dir: where data, errors and the fitted transform go.")
        parser.add_argument("--eval_fraction", default=None, type=float, help="Overrides output.split.eval_fraction (0 for no eval split).")
        parser.add_argument("--max_bad_rows", default=None, type=int, help="Overrides max_bad_rows: bad rows tolerated before the job fails.")


def read_text(uri: str) -> str:
    """The text of a local or ``gs://`` file (through Beam's filesystems)."""
    try:
        with FileSystems.open(uri, compression_type="uncompressed") as file:
            return file.read().decode("utf-8")
    except Exception as error:  # Beam raises IOError, BeamIOError or FileNotFoundError by filesystem
        raise ConfigError("", f"cannot read: {error}", source=uri) from None


def load_job(options: PipelineOptions) -> PreprocessJobConfig:
    """The job configuration from ``--config``, with the flags' overrides applied and validated."""
    view = options.view_as(PreprocessOptions)
    check_required(options, PreprocessOptions)
    try:
        data = yaml.safe_load(read_text(view.config))
    except yaml.YAMLError as error:
        raise ConfigError("", f"invalid YAML: {getattr(error, 'problem', error)}", source=view.config) from None
    if isinstance(data, dict):
        if view.input_pattern is not None:
            data.setdefault("input", {})["pattern"] = view.input_pattern
        if view.input_format is not None:
            data.setdefault("input", {})["format"] = view.input_format
        if view.output_dir is not None:
            data.setdefault("output", {})["dir"] = view.output_dir
        if view.eval_fraction is not None:
            data.setdefault("output", {}).setdefault("split", {})["eval_fraction"] = view.eval_fraction
        if view.max_bad_rows is not None:
            data["max_bad_rows"] = view.max_bad_rows
    return parse_config(data, PreprocessJobConfig, source=view.config)


# ---------------------------------------------------------------------------------------- reading


def parse_csv_line(line: str, header: list[str]) -> dict[str, str]:
    """One CSV line as a dict keyed by the header; raises ``ValueError`` on a wrong field count.

    A line without quotes (or NUL) is split on commas, which is what the `csv` module does with it.

    >>> parse_csv_line("1,,x y", ["a", "b", "c"]) == parse_csv_line('1,"",x y', ["a", "b", "c"]) == {"a": "1", "b": "", "c": "x y"}
    True
    """
    fields = line.split(",") if '"' not in line and "\x00" not in line else next(csv.reader([line]))
    if len(fields) != len(header):
        raise ValueError(f"expected {len(header)} fields, got {len(fields)}")
    return dict(zip(header, fields))


def csv_header(pattern: str) -> list[str]:
    """The header row of the first file matching `pattern` (every file must share it)."""
    matches = FileSystems.match([pattern])[0].metadata_list
    if not matches:
        raise UsageError(f"input.pattern {pattern!r} matches no files")
    with FileSystems.open(sorted(m.path for m in matches)[0]) as file:
        first = file.readline().decode("utf-8-sig").rstrip("\r\n")
    if not first:
        raise UsageError(f"{matches[0].path}: the CSV file has no header row")
    return next(csv.reader([first]))


class _Malformed:
    """A record that could not be parsed into a row: its text and why."""

    def __init__(self, text: str, reason: str):
        self.text, self.reason = text, reason


def _parse_csv(line: str, header: list[str]):
    try:
        return parse_csv_line(line, header)
    except (ValueError, csv.Error) as error:
        return _Malformed(line, f"malformed CSV: {error}")


def _parse_json(line: str):
    try:
        row = orjson.loads(line)
    except orjson.JSONDecodeError as error:
        return _Malformed(line, f"malformed JSON: {error}")
    return row if isinstance(row, dict) else _Malformed(line, "expected a JSON object")


def _parse_example(record: bytes):
    from tensorflow.core.example import example_pb2

    try:
        example = example_pb2.Example.FromString(record)
    except Exception as error:  # protobuf's DecodeError
        return _Malformed(repr(record[:200]), f"malformed tf.Example: {error}")
    row = {}
    for name, feature in example.features.feature.items():
        kind = feature.WhichOneof("kind")
        values = list(getattr(feature, kind).value) if kind else []
        if len(values) > 1:
            return _Malformed(str(example)[:500], f"{name}: expected one value, got {len(values)}")
        row[name] = values[0] if values else None
    return row


def _parse_parquet(row: dict):
    return row


class ReadRawRecords(beam.PTransform):
    """The input files' records, unparsed: text lines (CSV without its header, JSON lines), Parquet rows, TFRecords.

    `parser` turns one record into a dict of raw values or a `_Malformed` record with the reason;
    `ValidateRows` applies it, batch by batch. With `csv_blocks`, CSV files are read as blocks of
    whole lines instead (`read_csv_range`), which `ValidateRows` decodes a block at a time.
    """

    def __init__(self, pattern: str, file_format: str, csv_blocks: bool = False):
        super().__init__()
        self.pattern, self.file_format = pattern, file_format
        if file_format not in ("csv", "jsonl", "parquet", "tfrecord"):
            raise UsageError(f"input.format: unknown format {file_format!r}")
        self.text = file_format in ("csv", "jsonl")
        self.csv_blocks = csv_blocks and file_format == "csv"

    def parser(self):
        if self.file_format == "csv":
            return functools.partial(_parse_csv, header=csv_header(self.pattern))
        return {"jsonl": _parse_json, "parquet": _parse_parquet, "tfrecord": _parse_example}[self.file_format]

    def expand(self, pbegin):
        if not FileSystems.match([self.pattern])[0].metadata_list:  # Beam's own check is an OSError traceback
            raise UsageError(f"input.pattern {self.pattern!r} matches no files")
        if self.csv_blocks:
            return (
                pbegin
                | "MatchCsv" >> fileio.MatchFiles(self.pattern)
                | "SplitCsv" >> beam.FlatMap(csv_ranges)
                | "SpreadRanges" >> beam.Reshuffle()
                | "ReadCsvBlocks" >> beam.FlatMap(read_csv_range)
            )
        if self.file_format == "csv":
            return pbegin | "ReadCsv" >> beam.io.ReadFromText(self.pattern, skip_header_lines=1)
        if self.file_format == "jsonl":
            return pbegin | "ReadJsonLines" >> beam.io.ReadFromText(self.pattern)
        if self.file_format == "parquet":
            return pbegin | "ReadParquet" >> beam.io.ReadFromParquet(self.pattern)
        return pbegin | "ReadTFRecord" >> beam.io.ReadFromTFRecord(self.pattern)


CSV_RANGE_BYTES = 64 << 20  # a CSV file is read in ranges of this size, spread over the workers
CSV_BLOCK_BYTES = 1 << 20  # and decoded a block of whole lines of about this size at a time


def csv_ranges(file, range_bytes: int | None = None) -> list[tuple[str, int, int]]:
    """``(path, start, stop)`` byte ranges covering one matched file (Beam's ``FileMetadata``).

    A compressed file cannot be read from the middle: it is one range.

    >>> from apache_beam.io.filesystem import FileMetadata
    >>> csv_ranges(FileMetadata("a.csv", 250), range_bytes=100)
    [('a.csv', 0, 100), ('a.csv', 100, 200), ('a.csv', 200, 250)]
    >>> csv_ranges(FileMetadata("a.csv.gz", 250), range_bytes=100)
    [('a.csv.gz', 0, 9223372036854775807)]
    """
    from apache_beam.io.filesystem import CompressionTypes

    if CompressionTypes.detect_compression_type(file.path) != CompressionTypes.UNCOMPRESSED:
        return [(file.path, 0, sys.maxsize)]
    range_bytes = range_bytes or CSV_RANGE_BYTES
    return [(file.path, start, min(start + range_bytes, file.size_in_bytes)) for start in range(0, max(file.size_in_bytes, 1), range_bytes)]


def read_csv_range(file_range: tuple[str, int, int], block_bytes: int | None = None) -> Iterable[bytes]:
    """The lines that start inside one byte range of a CSV file, as blocks of whole lines (bytes).

    The records of ``ReadFromText(skip_header_lines=1)``, a block at a time: a line belongs to the
    range it starts in, and the file's first line (the header) is dropped.
    """
    from apache_beam.io.filesystem import CompressionTypes

    path, start, stop = file_range
    block_bytes = block_bytes or CSV_BLOCK_BYTES
    with FileSystems.open(path, compression_type=CompressionTypes.AUTO if stop == sys.maxsize else CompressionTypes.UNCOMPRESSED) as file:
        if start > 0:
            file.seek(start - 1)
        position = max(start - 1, 0) + len(file.readline())  # the header, or the line in progress at `start` (the range before's)
        while position < stop:
            block = file.read(min(block_bytes, stop - position))
            if not block:
                return
            if not block.endswith(b"\n"):
                block += file.readline()  # the last line started inside the range: finish it
            position += len(block)
            yield block


# ------------------------------------------------------------------------------------- validation


def _raw_text(record: Any) -> str:
    if isinstance(record, _Malformed):
        return record.text
    return orjson.dumps(record, default=str).decode()


class ValidateRowsFn(beam.DoFn):
    """Raw records, gathered into batches of `batch_size` -> one list of typed rows (features and label
    only) per batch to the main output; each bad row, with the reason, to ``bad_rows``. Blank text
    lines are skipped."""

    def __init__(self, parser, text: bool, features: list[FeatureSpec], label: LabelSpec | None, batch_size: int = 4096):
        self.parser, self.text, self.batch_size = parser, text, batch_size
        self.features, self.label = features, label
        self.columns = raw_columns(features, label)
        self.rows = Metrics.counter("preprocess", "rows")
        self.bad_rows = Metrics.counter("preprocess", "bad_rows")

    def setup(self):
        self.readers = [(name, value_reader(name, kind)) for name, kind in self.columns]

    def start_bundle(self):
        self.buffer: list = []

    def process(self, record: Any) -> Iterable:
        self.buffer.append(record)
        if len(self.buffer) >= self.batch_size:
            yield from self.validate(self.buffer)
            self.buffer = []

    def finish_bundle(self) -> Iterable:
        if self.buffer:  # a batch-only pipeline: everything is in the global window
            for output in self.validate(self.buffer):
                if isinstance(output, beam.pvalue.TaggedOutput):
                    yield beam.pvalue.TaggedOutput(output.tag, GlobalWindows.windowed_value(output.value))
                else:
                    yield GlobalWindows.windowed_value(output)
            self.buffer = []

    def validate(self, records: list) -> Iterable:
        parse, readers, text = self.parser, self.readers, self.text
        rows, bad = [], 0
        for raw in records:
            if text and raw.strip() == "":
                continue
            record = parse(raw)
            reason = record.reason if isinstance(record, _Malformed) else None
            if reason is None:
                row: dict[str, Any] = {}
                try:
                    for name, read in readers:
                        if name not in record:
                            raise InvalidFeatureError(name, "missing")
                        row[name] = read(record[name])
                except InvalidFeatureError as error:
                    reason = str(error)
                else:
                    rows.append(row)
                    continue
            bad += 1
            yield beam.pvalue.TaggedOutput(BAD_ROWS, {"reason": reason, "row": _raw_text(record)})
        if bad:
            self.bad_rows.inc(bad)
        if rows:
            self.rows.inc(len(rows))
            yield rows


class ValidateCsvBlocksFn(ValidateRowsFn):
    """Blocks of CSV lines (`read_csv_range`) -> typed rows and bad rows, as `ValidateRowsFn` gives them.

    A block whose lines the per-line path would split on commas (no quote, NUL or lone ``\\r``)
    and whose values all read as their types is decoded by pyarrow's CSV reader and cast column by
    column: the main output is then a ``pyarrow.RecordBatch`` of typed columns (float64, int64,
    string) of at most `batch_size` rows. Any other block goes line by line through
    `ValidateRowsFn.validate`, which gives every bad row its reason.
    """

    def __init__(self, header: list[str], features: list[FeatureSpec], label: LabelSpec | None, batch_size: int = 4096):
        super().__init__(functools.partial(_parse_csv, header=header), True, features, label, batch_size)
        self.header = header

    def process(self, block: bytes) -> Iterable:
        table = csv_block_columns(block, self.header, self.columns)
        if table is None:
            lines = block.decode("utf-8").split("\n")  # ReadFromText's lines: split on \n, a \r before it dropped
            yield from self.validate([line[:-1] if line.endswith("\r") else line for line in lines[:-1]] + [lines[-1]])
            return
        if table.num_rows:
            self.rows.inc(table.num_rows)
            yield from table.to_batches(max_chunksize=self.batch_size)

    def finish_bundle(self) -> Iterable:
        return ()


def csv_block_columns(block: bytes, header: list[str], columns: list[tuple[str, str]]):
    """A block of CSV lines as a table of typed columns, or None when a line needs the per-line path.

    The fast path of `ValidateCsvBlocksFn`: it decodes exactly what `parse_csv_line` splits on
    commas and what the columns' `value_reader` accepts unchanged; floats are parsed as float64
    (as Python's ``float``), so the later cast to float32 rounds as the per-line path does.

    >>> table = csv_block_columns(b"1.5,a,7\\n2e3,b,-1\\n", ["x", "s", "n"], [("x", "float"), ("n", "int"), ("s", "string")])
    >>> table.to_pylist()
    [{'x': 1.5, 'n': 7, 's': 'a'}, {'x': 2000.0, 'n': -1, 's': 'b'}]
    >>> [csv_block_columns(b, ["x", "s"], [("x", "float")]) for b in (b"1,a\\n2\\n", b" 1,a\\n", b"nan,a\\n", b'1,"a"\\n')]
    [None, None, None, None]
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pa_csv

    if b"\r" in block:
        block = block.replace(b"\r\n", b"\n")
    if b'"' in block or b"\x00" in block or b"\r" in block or len(header) < 2 or len(set(header)) != len(header):
        return None
    names = [name for name, _ in columns]
    try:
        table = pa_csv.read_csv(
            pa.py_buffer(block),
            read_options=pa_csv.ReadOptions(column_names=header, use_threads=False, block_size=max(len(block), 1 << 16)),
            parse_options=pa_csv.ParseOptions(quote_char=False, escape_char=False, newlines_in_values=False, ignore_empty_lines=True),
            convert_options=pa_csv.ConvertOptions(column_types={name: pa.string() for name in names}, include_columns=names,
                                                  strings_can_be_null=False, quoted_strings_can_be_null=False),
        )
        arrays = []
        for name, kind in columns:
            column = table.column(name)
            if kind == "float":
                column = pc.cast(column, pa.float64())
                if not pc.all(pc.is_finite(column)).as_py():  # the per-line path refuses nan and inf
                    return None
            elif kind == "int":
                column = pc.cast(column, pa.int64())
            arrays.append(column)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    return pa.Table.from_arrays(arrays, names=names).combine_chunks()


class ValidateRows(beam.PTransform):
    """Raw records (from `ReadRawRecords`) -> lists of typed rows (main output) and bad rows (``bad_rows`` output).

    From a `ReadRawRecords` with ``csv_blocks``, the main output also holds ``pyarrow.RecordBatch``es
    of typed columns (see `ValidateCsvBlocksFn`).
    """

    def __init__(self, reader: ReadRawRecords, features: list[FeatureSpec], label: LabelSpec | None, batch_size: int = 4096):
        super().__init__()
        self.reader, self.features, self.label_spec, self.batch_size = reader, features, label, batch_size

    def expand(self, records):
        if self.reader.csv_blocks:
            validate = ValidateCsvBlocksFn(csv_header(self.reader.pattern), self.features, self.label_spec, self.batch_size)
            return records | "Validate" >> beam.ParDo(validate).with_outputs(BAD_ROWS, main="rows")
        validate = ValidateRowsFn(self.reader.parser(), self.reader.text, self.features, self.label_spec, self.batch_size)
        return records | "Validate" >> beam.ParDo(validate).with_outputs(BAD_ROWS, main="rows")


def _check_bad_rows(row: dict, bad_rows: int, limit: int, where: str) -> dict:
    if bad_rows > limit:
        raise TooManyBadRowsError(f"{_TOO_MANY}: {bad_rows} rows failed validation, max_bad_rows is {limit} (reasons in {where})")
    return row


class GateOnBadRows(beam.PTransform):
    """Pass the rows on only if the bad rows are at most `limit`; otherwise fail the job."""

    def __init__(self, bad_rows, limit: int, where: str):
        super().__init__()
        self.bad_rows, self.limit, self.where = bad_rows, limit, where

    def expand(self, rows):
        count = self.bad_rows | "CountBadRows" >> beam.combiners.Count.Globally()
        return rows | "CheckBadRows" >> beam.Map(_check_bad_rows, beam.pvalue.AsSingleton(count), self.limit, self.where)


def split_of(row: dict, eval_fraction: float) -> str:
    """``"eval"`` or ``"train"``, decided by a fingerprint of the row (the same on every run)."""
    if eval_fraction <= 0:
        return "train"
    bucket = farmhash.fingerprint64(orjson.dumps(row, option=orjson.OPT_SORT_KEYS)) % 1_000_000
    return "eval" if bucket < eval_fraction * 1_000_000 else "train"


class WriteBadRows(beam.PTransform):
    """Bad rows as JSON lines ``{"reason": ..., "row": ...}`` under ``<dir>/errors/``."""

    def __init__(self, output_dir: str):
        super().__init__()
        self.output_dir = output_dir

    def expand(self, bad_rows):
        return (
            bad_rows
            | "ToJson" >> beam.Map(lambda bad: orjson.dumps(bad).decode())
            # no empty file when no row is bad: Beam's S3 writer cannot complete an empty upload (apache/beam#21427)
            | "Write" >> beam.io.WriteToText(join(self.output_dir, "errors", "bad_rows"), file_name_suffix=".jsonl", skip_if_empty=True)
        )


# ---------------------------------------------------------------------------------------- writing


def join(base: str, *parts: str) -> str:
    """Join path parts for local and ``gs://`` paths alike."""
    return "/".join([base.rstrip("/"), *parts])


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return value.item() if hasattr(value, "item") else value


def parquet_schema(features: list[FeatureSpec], label: LabelSpec | None):
    """The pyarrow schema of transformed rows (float outputs are float32, as in TFT)."""
    import pyarrow as pa

    types = {"float": pa.float32(), "int": pa.int64(), "string": pa.string()}
    consumed = consumed_features(features)
    fields = [pa.field(name, types[f.output_kind], nullable=False)
              for i, f in enumerate(features) if i not in consumed for name in f.output_names]
    if label is not None:
        fields.append(pa.field(label.name, types[label.type], nullable=False))
    return pa.schema(fields)


class WriteTransformedData(beam.PTransform):
    """Transformed data of one split as sharded TFRecord files of ``tf.Example`` and/or Parquet.

    Takes TFT's output with its metadata: record batches (``output_record_batches=True``) or
    instance dicts (the reference path); both write the same files.
    """

    def __init__(self, output_dir: str, split: str, formats: list[str], features, label, record_batches: bool = True):
        super().__init__()
        self.output_dir, self.split, self.formats = output_dir, split, formats
        self.features, self.label_spec, self.record_batches = features, label, record_batches

    def _extract_input_pvalues(self, data_and_metadata):  # the metadata is not a PCollection
        return data_and_metadata, [data_and_metadata[0]]

    def expand(self, data_and_metadata):
        import tensorflow_transform.beam as tft_beam

        data, _ = data_and_metadata
        prefix = join(self.output_dir, "data", self.split)
        schema = parquet_schema(self.features, self.label_spec)
        written = []
        if "tfrecord" in self.formats and self.record_batches:
            from tfx_bsl.coders import example_coder

            encoder = (
                data_and_metadata[1].deferred_metadata
                | "GetSchema" >> beam.Map(lambda metadata: metadata.schema)
                | "ExampleEncoder" >> beam.Map(example_coder.RecordBatchToExamplesEncoder)
            )
            written.append(
                data
                | "EncodeExamples" >> beam.Map(lambda batch, coder: coder.encode(batch[0]), coder=beam.pvalue.AsSingleton(encoder))
                | "WriteTFRecord" >> beam.io.Write(TFRecordBatchSink(prefix, ".tfrecord"))
            )
        elif "tfrecord" in self.formats:
            written.append(
                data_and_metadata
                | "EncodeExamples" >> tft_beam.EncodeTransformedDataset()
                | "WriteTFRecord" >> beam.io.WriteToTFRecord(prefix, file_name_suffix=".tfrecord")
            )
        if "parquet" in self.formats and self.record_batches:
            written.append(
                data
                | "ToArrowTables" >> beam.Map(_parquet_table, schema)
                | "WriteParquet" >> beam.io.WriteToParquetBatched(prefix, schema, file_name_suffix=".parquet")
            )
        elif "parquet" in self.formats:
            written.append(
                data
                | "ToPlain" >> beam.Map(lambda row: {k: _plain(v) for k, v in row.items()})
                | "WriteParquet" >> beam.io.WriteToParquet(prefix, schema, file_name_suffix=".parquet")
            )
        return written


def tfrecord_frame(record: bytes) -> bytes:
    """One record in the TFRecord framing: length (8 bytes, little-endian), masked CRC-32C of the
    length, the record, masked CRC-32C of the record (TensorFlow's format, as `WriteToTFRecord` writes it).

    >>> tfrecord_frame(b"ab").hex()
    '020000000000000078270b3461621cb0f0f4'
    """
    length = struct.pack("<Q", len(record))
    return b"".join((length, struct.pack("<I", _masked_crc32c(length)), record, struct.pack("<I", _masked_crc32c(record))))


def _masked_crc32c(data: bytes) -> int:
    crc = crc32c.crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


class TFRecordFramesCoder(beam.coders.Coder):
    """A list of serialized records as the bytes of their TFRecord frames (one write per record batch)."""

    def encode(self, records: list[bytes]) -> bytes:
        return b"".join(map(tfrecord_frame, records))

    def decode(self, encoded: bytes) -> list[bytes]:
        raise NotImplementedError("TFRecordFramesCoder only writes")

    def is_deterministic(self) -> bool:
        return True


class TFRecordBatchSink(beam.io.filebasedsink.FileBasedSink):
    """`beam.io.WriteToTFRecord`'s files, fed lists of serialized records (one per record batch).

    The same bytes (tested against `WriteToTFRecord`), without a Beam element per record: tfx-bsl
    encodes a whole record batch at once and its records are framed and written together. Built on
    Beam's public `FileBasedSink` with a coder (Beam's own TFRecord sink is private).
    """

    def __init__(self, file_path_prefix: str, file_name_suffix: str):
        super().__init__(file_path_prefix, TFRecordFramesCoder(), file_name_suffix=file_name_suffix, num_shards=0,
                         mime_type="application/octet-stream", compression_type=beam.io.filesystem.CompressionTypes.AUTO)

    def write_encoded_record(self, file_handle, encoded: bytes) -> None:
        file_handle.write(encoded)


def _parquet_table(transformed, schema):
    """One transformed record batch (TFT's ``(RecordBatch, passthrough)``) as a table of scalar columns."""
    import pyarrow as pa

    batch = transformed[0]
    columns = []
    for field in schema:
        column = batch.column(batch.schema.get_field_index(field.name))
        if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
            column = column.flatten()
        columns.append(column.cast(field.type))
    return pa.Table.from_arrays(columns, schema=schema)


class RowsToRecordBatches(beam.DoFn):
    """Lists of typed rows, or RecordBatches of typed columns (`ValidateCsvBlocksFn`), as Arrow
    RecordBatches in TFXIO's ``tf.Example`` layout, split into train and eval.

    Each row goes to ``train`` or ``eval`` by `split_of`, as in the instance-dict path.
    """

    def __init__(self, columns: list[tuple[str, str]], arrow_schema, eval_fraction: float):
        self.columns, self.arrow_schema, self.eval_fraction = columns, arrow_schema, eval_fraction

    def process(self, rows) -> Iterable:
        if not isinstance(rows, list):
            yield from self.split_columns(rows)
            return
        if self.eval_fraction > 0:
            parts = {"train": [], "eval": []}
            for row in rows:
                parts[split_of(row, self.eval_fraction)].append(row)
        else:
            parts = {"train": rows}
        for split, part in parts.items():
            if part:
                yield beam.pvalue.TaggedOutput(split, self.record_batch(part))

    def split_columns(self, batch) -> Iterable:
        import pyarrow as pa
        import pyarrow.compute as pc

        if self.eval_fraction > 0:
            evaluation = pa.array([split_of(row, self.eval_fraction) == "eval" for row in batch.to_pylist()])
            parts = {"train": batch.filter(pc.invert(evaluation)), "eval": batch.filter(evaluation)}
        else:
            parts = {"train": batch}
        for split, part in parts.items():
            if part.num_rows:
                yield beam.pvalue.TaggedOutput(split, self.columns_batch(part))

    def columns_batch(self, batch):
        """A RecordBatch of typed columns in the ``tf.Example`` layout (float64 rounded to float32, as `record_batch` does)."""
        import pyarrow as pa

        offsets = pa.array(range(batch.num_rows + 1), type=pa.int64())
        arrays = [pa.LargeListArray.from_arrays(offsets, batch.column(field.name).cast(field.type.value_type)) for field in self.arrow_schema]
        return pa.RecordBatch.from_arrays(arrays, schema=self.arrow_schema)

    def record_batch(self, rows: list[dict]):
        """The rows as one RecordBatch: a ``large_list`` of one value per row and column."""
        import pyarrow as pa

        offsets = pa.array(range(len(rows) + 1), type=pa.int64())
        arrays = []
        for field in self.arrow_schema:
            name = field.name
            values = pa.array([row[name] for row in rows], type=field.type.value_type)
            arrays.append(pa.LargeListArray.from_arrays(offsets, values))
        return pa.RecordBatch.from_arrays(arrays, schema=self.arrow_schema)


def _copy_tree(source_dir: str, target_dir: str) -> None:
    for root, _, files in os.walk(source_dir):
        for name in files:
            local = os.path.join(root, name)
            relative = os.path.relpath(local, source_dir).replace(os.sep, "/")
            with open(local, "rb") as src, FileSystems.create(join(target_dir, relative)) as dst:
                dst.write(src.read())


def publish_fitted_transform(_, artifacts_dir: str, output_dir: str, features: list[dict], label: dict | None, passthrough: bool = False) -> str:
    """Read the fitted constants back from the written ``transform_fn``; write ``fitted_transforms.json``.

    When the TFT artifacts were staged locally (``gs://`` output on the local emulator, which
    TensorFlow's own GCS client cannot reach), copy them to `output_dir` first.
    """
    import json

    from transforms.tft_fn import read_fitted_constants, vocabulary_filename

    specs = [FeatureSpec(**f) for f in features]
    label_spec = LabelSpec(**label) if label else None
    transform_fn = join(artifacts_dir, "transform_fn")
    with FileSystems.open(join(transform_fn, "saved_model.pb"), compression_type="uncompressed") as file:
        constants = read_fitted_constants(file.read())
    vocabularies = {}
    for i, spec in enumerate(specs):
        if spec.transform == "vocabulary":
            with FileSystems.open(join(transform_fn, "assets", vocabulary_filename(i, spec)), compression_type="uncompressed") as file:
                vocabularies[i] = file.read().decode("utf-8").splitlines()
    document = fitted_document(specs, label_spec, constants, vocabularies, passthrough=passthrough)
    if artifacts_dir != output_dir:
        _copy_tree(artifacts_dir, output_dir)
    target = join(output_dir, FITTED_FILENAME)
    with FileSystems.create(target) as file:
        file.write(json.dumps(document, indent=1).encode("utf-8"))
    return target


class PublishFittedTransform(beam.PTransform):
    """After `tft_beam.WriteTransformFn`: write the fitted constants as JSON for online use."""

    def __init__(self, artifacts_dir: str, output_dir: str, features: list[FeatureSpec], label: LabelSpec | None, passthrough: bool = False):
        super().__init__()
        self.artifacts_dir, self.output_dir = artifacts_dir, output_dir
        self.features = [f.model_dump() for f in features]
        self.label_spec = label.model_dump() if label is not None else None
        self.passthrough = passthrough

    def expand(self, written):
        return written | "WriteFittedJson" >> beam.Map(
            publish_fitted_transform, self.artifacts_dir, self.output_dir, self.features, self.label_spec, self.passthrough
        )


# ---------------------------------------------------------------------------------------- the job


def working_dirs(job: PreprocessJobConfig, options: PipelineOptions) -> tuple[str, str]:
    """``(temp_dir, artifacts_dir)`` for tensorflow-transform.

    TFT writes through TensorFlow's own file system, which has no ``s3://`` and whose GCS client
    ignores ``STORAGE_EMULATOR_HOST``: with ``s3://`` output, or ``gs://`` output on the local
    emulator, TFT works in a local directory and `publish_fitted_transform` copies its artifacts
    over through Beam.
    """
    output_dir = job.output.dir
    temp_location = options.view_as(GoogleCloudOptions).temp_location
    emulated = bool(os.environ.get("STORAGE_EMULATOR_HOST"))
    output_scheme = parse_uri(output_dir).scheme
    if output_scheme == "s3" or (output_scheme == "gs" and emulated):
        local = tempfile.mkdtemp(prefix="riverbeam-preprocess-")
        return os.path.join(local, "tmp"), os.path.join(local, "artifacts")
    if temp_location and parse_uri(temp_location).scheme != "s3" and not (parse_uri(temp_location).scheme == "gs" and emulated):
        return join(temp_location, "tft"), output_dir
    if output_scheme == "gs":
        return join(output_dir, "tmp"), output_dir
    return tempfile.mkdtemp(prefix="riverbeam-tft-"), output_dir


BATCH_FORMATS = ("record_batches", "instance_dicts")
BATCH_SIZE = 4096  # rows per record batch


def build_preprocess(
    pipeline: beam.Pipeline, job: PreprocessJobConfig, temp_dir: str, artifacts_dir: str, batch_format: str = "record_batches"
) -> dict[str, Any]:
    """Add the preprocess graph to `pipeline`; returns its main collections by name.

    `batch_format` is how rows reach tensorflow-transform: ``record_batches`` (the product path)
    or ``instance_dicts`` (the reference path of earlier versions, for tests and benchmarks).
    """
    import tensorflow_transform.beam as tft_beam

    from transforms.tft_fn import build_preprocessing_fn, raw_metadata

    if batch_format not in BATCH_FORMATS:
        raise UsageError(f"batch_format: expected one of {', '.join(BATCH_FORMATS)}, got {batch_format!r}")
    features, label, output = list(job.features), job.label, job.output
    reader = ReadRawRecords(job.input.pattern, job.input.format, csv_blocks=batch_format == "record_batches")
    records = pipeline | "ReadRawRecords" >> reader
    validated = records | "ValidateRows" >> ValidateRows(reader, features, label, BATCH_SIZE)
    bad_rows = validated[BAD_ROWS]
    errors_where = join(output.dir, "errors")
    bad_rows | "WriteBadRows" >> WriteBadRows(output.dir)
    fraction = output.split.eval_fraction
    metadata = raw_metadata(features, label)
    record_batches = batch_format == "record_batches"
    if record_batches:
        from tfx_bsl.tfxio import tf_example_record

        tfxio = tf_example_record.TFExampleBeamRecord(physical_format="inmem", telemetry_descriptors=["riverbeam"], schema=metadata.schema)
        batches = (
            validated.rows
            | "ToRecordBatches" >> beam.ParDo(RowsToRecordBatches(raw_columns(features, label), tfxio.ArrowSchema(), fraction)).with_outputs(
                "train", "eval"
            )
        )
        train = batches.train | "GateOnBadRows" >> GateOnBadRows(bad_rows, job.max_bad_rows, errors_where)
        evaluation = batches.eval | "GateEvalOnBadRows" >> GateOnBadRows(bad_rows, job.max_bad_rows, errors_where) if fraction > 0 else None
        raw_input = tfxio.TensorAdapterConfig()
        rows = validated.rows
    else:
        rows = validated.rows | "Unbatch" >> beam.FlatMap(lambda rows: rows) | "GateOnBadRows" >> GateOnBadRows(
            bad_rows, job.max_bad_rows, errors_where
        )
        if fraction > 0:
            train, evaluation = rows | "SplitTrainEval" >> beam.Partition(
                lambda row, _n: 0 if split_of(row, fraction) == "train" else 1, 2
            )
        else:
            train, evaluation = rows, None
        raw_input = metadata
    with tft_beam.Context(temp_dir=temp_dir):
        (train_out, train_meta), transform_fn = (train, raw_input) | "AnalyzeAndTransform" >> tft_beam.AnalyzeAndTransformDataset(
            build_preprocessing_fn(features, label), output_record_batches=record_batches
        )
        collections = {"rows": rows, "bad_rows": bad_rows, "train": train_out}
        (train_out, train_meta) | "WriteTrain" >> WriteTransformedData(output.dir, "train", output.formats, features, label, record_batches)
        if evaluation is not None:
            eval_out, eval_meta = ((evaluation, raw_input), transform_fn) | "TransformEval" >> tft_beam.TransformDataset(
                output_record_batches=record_batches
            )
            (eval_out, eval_meta) | "WriteEval" >> WriteTransformedData(output.dir, "eval", output.formats, features, label, record_batches)
            collections["eval"] = eval_out
        written = transform_fn | "WriteTransformFn" >> tft_beam.WriteTransformFn(artifacts_dir)
    collections["fitted"] = written | "PublishFittedTransform" >> PublishFittedTransform(artifacts_dir, output.dir, features, label, job.passthrough)
    return collections


def pipeline_options(argv: list[str] | None) -> PipelineOptions:
    """Options from `argv`, with the download-free ``FnApiRunner`` when no runner is given."""
    options = PipelineOptions(argv)
    if options.view_as(StandardOptions).runner is None:
        options.view_as(StandardOptions).runner = DEFAULT_RUNNER
    return configure_filesystems(options)  # s3:// through Beam's S3 filesystem, at the configured endpoint


FNAPI_MAX_PHASES = 2


def choose_local_runner(options: PipelineOptions, job: PreprocessJobConfig, explicit: bool) -> None:
    """Keep a spec off Beam's FnApiRunner when it needs more analysis phases than that runner completes.

    With three or more successive TFT analysis phases (e.g. a z-score feeding a scaled pca) the
    FnApiRunner of Beam 2.77 stops with "watermark-pending bundles did not execute" (reproduced with
    plain nested ``tft.scale_to_z_score``, instance dicts and record batches alike). The default
    local runner then becomes ``BundleBasedDirectRunner`` (also download-free); an explicit
    ``--runner=FnApiRunner`` is refused with the reason.
    """
    from transforms.spec import analysis_phases

    standard = options.view_as(StandardOptions)
    phases = analysis_phases(job.features)
    if standard.runner not in ("FnApiRunner", "DirectRunner") or phases <= FNAPI_MAX_PHASES:
        return
    if explicit:
        raise UsageError(
            f"this feature spec needs {phases} successive analysis phases and Beam's local {standard.runner} completes at most "
            f"{FNAPI_MAX_PHASES}: run it with --runner=BundleBasedDirectRunner (or on Dataflow/Flink), or drop pca's scale "
            "or the transform feeding the pca"
        )
    logging.getLogger(__name__).info("%d analysis phases: running on BundleBasedDirectRunner instead of %s", phases, standard.runner)
    standard.runner = "BundleBasedDirectRunner"


def _counter(result, name: str) -> int | None:
    try:
        counters = result.metrics().query(beam.metrics.MetricsFilter().with_name(name))["counters"]
    except Exception:  # some runners do not report metrics
        return None
    values = [c.committed if c.committed is not None else c.attempted for c in counters]
    return int(sum(v for v in values if v is not None)) if values else 0


def run(argv: list[str] | None = None, batch_format: str = "record_batches") -> dict[str, Any]:
    """Build and run the preprocess pipeline from command-line flags (`batch_format`: see `build_preprocess`).

    Waits for the job on a local runner; on Dataflow, Flink and other remote runners it returns
    once the job is submitted (a flex template launcher must not wait for a batch job).
    Returns a summary: the output directory, the fitted transform file, rows and bad rows (None
    when not waited for) and the job's state.
    Raises `core.errors.ConfigError` for a wrong configuration and `TooManyBadRowsError`
    when more rows fail validation than ``max_bad_rows``.
    """
    if os.environ.get("STORAGE_EMULATOR_HOST"):  # the local emulator never needs the GCE metadata probe
        os.environ.setdefault("NO_GCE_CHECK", "true")
    options = pipeline_options(argv)
    job = load_job(options)
    choose_local_runner(options, job, explicit=PipelineOptions(argv).view_as(StandardOptions).runner is not None)
    temp_dir, artifacts_dir = working_dirs(job, options)
    pipeline = beam.Pipeline(options=options)
    build_preprocess(pipeline, job, temp_dir, artifacts_dir, batch_format)
    standard = options.view_as(StandardOptions)
    wait = waits_for_result(standard.runner, options.view_as(PortableOptions).environment_type)
    try:
        result = pipeline.run()
        if wait:  # on Dataflow (a flex template's launcher) or Flink: return once submitted
            result.wait_until_finish()
    except Exception as error:
        text = str(error)
        if _TOO_MANY in text:
            start = text.index(_TOO_MANY)
            raise TooManyBadRowsError(text[start:].splitlines()[0].rstrip("'\"] ")) from None
        raise
    return {
        "output_dir": job.output.dir,
        "fitted_transform": join(job.output.dir, FITTED_FILENAME),
        "rows": _counter(result, "rows") if wait else None,
        "bad_rows": _counter(result, "bad_rows") if wait else None,
        "state": str(result.state),
    }


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m pipelines.preprocess``: user mistakes become one line, not a traceback."""
    def run_and_print() -> int:
        print(orjson.dumps(run(argv)).decode())
        return 0

    return run_main(run_and_print, prog="preprocess")

if __name__ == "__main__":
    logging.getLogger().setLevel(logging.INFO)
    sys.exit(main())
