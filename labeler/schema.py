"""The public table contracts of lanser, defined once.

Every table lanser writes is Parquet with Hive-style partition directories.
Partition columns are *not* stored inside the files (the Hive/Spark/Trino
convention); readers get them back from the path (DuckDB
``hive_partitioning=true``, ``pyarrow.dataset(..., partitioning="hive")``,
Spark/Trino partitioned tables).

Layout under an output root::

    <root>/labels/taxonomy=<name>/taxonomy_version=<v>/run_id=<run>/part-*.parquet
    <root>/transcripts/run_id=<run>/part-*.parquet   # transcript cache: new transcripts of each run
    <root>/scores/scorer_key=<k>/run_id=<run>/part-*.parquet   # score cache: new (text, hypothesis) scores
    <root>/sources/run_id=<run>/part-*.parquet       # what each source read looked like: uri, size, version -> sha256
    <root>/runs/<run>.json              # run manifest, written last (the commit)
    <root>/reports/<run>.json           # run report (labeler/report.py), written after the commit
    <root>/reports/<run>.png            # the same report as a figure

Writers call :func:`conform` so a file never drifts from these schemas.
"""

from __future__ import annotations

import pyarrow as pa

from labeler.io import join

#: Outcome of one input row, in the ``status`` column.
STATUS_LABELED = "labeled"
STATUS_ABSTAINED = "abstained"
STATUS_ERROR = "error"
STATUSES = (STATUS_LABELED, STATUS_ABSTAINED, STATUS_ERROR)

#: Abstain reasons (``abstain_reason``): the row has audio but no label is made up for it.
ABSTAIN_NO_SPEECH = "no_speech"
ABSTAIN_EMPTY_TRANSCRIPT = "empty_transcript"
ABSTAIN_LOW_CONFIDENCE = "low_confidence"

TIMESTAMP = pa.timestamp("us", tz="UTC")

#: Columns of the labels table stored in the files, in order.
LABELS_FILE_SCHEMA = pa.schema(
    [
        pa.field("utt_id", pa.string(), nullable=False, metadata={"doc": "stable utterance id: the source_id for a file that is one utterance (a short clip, an error row), {source_id}@{start_ms}-{end_ms} for an utterance of a segmented recording"}),
        pa.field("uri", pa.string(), nullable=False, metadata={"doc": "where the audio was read from (credentials stripped)"}),
        pa.field("source_id", pa.string(), nullable=False, metadata={"doc": "stable id of the input file (given in the manifest, or derived from the URI); a file's utterances share it"}),
        pa.field("segment_index", pa.int32(), metadata={"doc": "0-based order of the utterance in its file; null on a file's error or no-speech row"}),
        pa.field("start_s", pa.float64(), metadata={"doc": "utterance start in the file, seconds (0 for a short clip)"}),
        pa.field("end_s", pa.float64(), metadata={"doc": "utterance end in the file, seconds (the duration for a short clip)"}),
        pa.field("audio_sha256", pa.string(), metadata={"doc": "sha256 of the audio file's bytes; null when it could not be read"}),
        pa.field("duration_s", pa.float64(), metadata={"doc": "duration of the whole file after decoding, seconds (the utterance's is end_s - start_s)"}),
        pa.field("text", pa.string(), metadata={"doc": "ASR transcript (the entailment premise)"}),
        pa.field("language", pa.string(), metadata={"doc": "spoken language (given or detected)"}),
        pa.field("language_prob", pa.float32(), metadata={"doc": "ASR language-detection probability"}),
        pa.field("avg_logprob", pa.float32(), metadata={"doc": "ASR average token log-probability (duration-weighted over segments)"}),
        pa.field("no_speech_prob", pa.float32(), metadata={"doc": "ASR no-speech probability (duration-weighted over segments)"}),
        pa.field("status", pa.string(), nullable=False, metadata={"doc": "labeled | abstained | error"}),
        pa.field("label", pa.string(), metadata={"doc": "weak label: the taxonomy label with the highest score; null unless status = labeled"}),
        pa.field("label_index", pa.int32(), metadata={"doc": "index of label in the taxonomy's label order"}),
        pa.field("confidence", pa.float32(), metadata={"doc": "probability of the top label (max of scores)"}),
        pa.field("margin", pa.float32(), metadata={"doc": "top score minus the runner-up's"}),
        pa.field("scores", pa.list_(pa.float32()), metadata={"doc": "probability per label, taxonomy order, sums to 1"}),
        pa.field("raw_scores", pa.list_(pa.float32()), metadata={"doc": "scorer's raw per-label score (NLI entailment logit, embedding cosine, LLM log-odds), taxonomy order"}),
        pa.field("abstain_reason", pa.string(), metadata={"doc": "no_speech | empty_transcript | low_confidence; null otherwise"}),
        pa.field("error", pa.string(), metadata={"doc": "why this row has no label (stage: message); null when fine"}),
        pa.field("asr_model", pa.string(), metadata={"doc": "ASR model name or path"}),
        pa.field("asr_config_hash", pa.string(), metadata={"doc": "hash of every ASR setting that changes the transcript"}),
        pa.field("scorer", pa.string(), metadata={"doc": "backend:model, e.g. nli:MoritzLaurer/deberta-v3-base-zeroshot-v2.0"}),
        pa.field("template_hash", pa.string(), metadata={"doc": "hash of the taxonomy's hypotheses (template and per-label overrides)"}),
        pa.field("created_at", TIMESTAMP, nullable=False, metadata={"doc": "when the row was produced (UTC)"}),
    ]
)

#: Partition columns of the labels table, outermost first.
LABELS_PARTITIONING = pa.schema(
    [
        pa.field("taxonomy", pa.string()),
        pa.field("taxonomy_version", pa.string()),
        pa.field("run_id", pa.string()),
    ]
)

#: Columns of the transcripts table stored in the files, in order.
TRANSCRIPTS_FILE_SCHEMA = pa.schema(
    [
        pa.field("audio_sha256", pa.string(), nullable=False),
        pa.field("utt_id", pa.string(), nullable=False),
        pa.field("uri", pa.string(), nullable=False),
        pa.field("source_id", pa.string()),
        pa.field("segment_index", pa.int32()),
        pa.field("segment_count", pa.int32()),  # utterance rows of the file (1 for a short clip or a no-speech file)
        pa.field("start_s", pa.float64()),
        pa.field("end_s", pa.float64()),
        pa.field("duration_s", pa.float64()),
        pa.field("asr_model", pa.string()),
        pa.field("asr_config_hash", pa.string()),
        pa.field("language", pa.string()),
        pa.field("language_prob", pa.float32()),
        pa.field("text", pa.string()),
        pa.field("avg_logprob", pa.float32()),
        pa.field("no_speech_prob", pa.float32()),
        pa.field("error", pa.string()),
        pa.field("created_at", TIMESTAMP, nullable=False),
    ]
)

TRANSCRIPTS_PARTITIONING = pa.schema([pa.field("run_id", pa.string())])

#: What ASR gives an utterance: the columns a transcript fills, in the labels and
#: transcripts tables alike (types from the transcripts schema above).
TRANSCRIPT_COLUMNS = ("text", "language", "language_prob", "avg_logprob", "no_speech_prob")

#: The score cache: one raw entailment score per (transcript text, hypothesis, scorer).
SCORES_FILE_SCHEMA = pa.schema(
    [
        pa.field("pair_key", pa.uint64(), nullable=False, metadata={"doc": "64-bit hash of (scorer key, text, hypothesis): the lookup key"}),
        pa.field("text_sha256", pa.string(), nullable=False, metadata={"doc": "sha256 of the transcript text"}),
        pa.field("hypothesis", pa.string(), nullable=False),
        pa.field("raw_score", pa.float32(), nullable=False),
        pa.field("scorer", pa.string(), nullable=False),
        pa.field("created_at", TIMESTAMP, nullable=False),
    ]
)

SCORES_PARTITIONING = pa.schema([pa.field("scorer_key", pa.string()), pa.field("run_id", pa.string())])

#: The source-metadata table: one row per file a run read and hashed, with what its input
#: listing said about the file. A later label run trusts a file whose URI, size and version
#: are the same (it takes the sha256 from here and does not read the file again).
SOURCES_FILE_SCHEMA = pa.schema(
    [
        pa.field("uri", pa.string(), nullable=False, metadata={"doc": "the file's URI as listed (credentials stripped)"}),
        pa.field("source_size", pa.int64(), nullable=False, metadata={"doc": "size in bytes, from the listing"}),
        pa.field("source_version", pa.string(), nullable=False, metadata={"doc": "mtime_ns:<n> (local, pyarrow listings) or the object's etag/version id/generation (fsspec listings)"}),
        pa.field("audio_sha256", pa.string(), nullable=False, metadata={"doc": "sha256 of the bytes the run read"}),
        pa.field("created_at", TIMESTAMP, nullable=False, metadata={"doc": "when the file was read (UTC)"}),
    ]
)

SOURCES_PARTITIONING = pa.schema([pa.field("run_id", pa.string())])


#: Where an utterance is in its file: the columns a segmented recording's rows add.
SPAN_COLUMNS = ("source_id", "segment_index", "start_s", "end_s")

#: Columns that only travel between stages, never stored: ``audio``, the decoded waveform
#: (raw float32 little-endian samples at 16 kHz; dropped by ASR, tables keep the URI);
#: ``speech``, a recording's speech regions (start_s, end_s) to segment, null for a file
#: transcribed whole; ``source_utterances``, how many rows the row's file gives in all (the
#: commit checks every file is complete); ``deferred``, a copy of audio that another input
#: of the run transcribes, held back from the sink until the run's second pass; and
#: ``parent_row``, with which a stage that splits
#: rows (1 -> N) names each output row's input row.
INTERNAL_COLUMNS = pa.schema([
    pa.field("audio", pa.large_binary()),
    pa.field("speech", pa.list_(pa.list_(pa.float64(), 2))),
    pa.field("source_utterances", pa.int32()),
    pa.field("deferred", pa.bool_()),
    pa.field("parent_row", pa.int64()),
])


def column_type(name: str) -> pa.DataType:
    """The Arrow type of a pipeline column: stages declare the columns they read and write
    by name, and their types come from here (the tables above, then the internal ones)."""
    for schema in (LABELS_FILE_SCHEMA, INTERNAL_COLUMNS):
        if name in schema.names:
            return schema.field(name).type
    raise KeyError(f"{name!r} is not a pipeline column (labeler/schema.py defines them)")


def full_schema(file_schema: pa.Schema, partitioning: pa.Schema) -> pa.Schema:
    """The schema a Hive-aware reader sees: file columns, then partition columns."""
    return pa.schema(list(file_schema) + list(partitioning))


LABELS_SCHEMA = full_schema(LABELS_FILE_SCHEMA, LABELS_PARTITIONING)
TRANSCRIPTS_SCHEMA = full_schema(TRANSCRIPTS_FILE_SCHEMA, TRANSCRIPTS_PARTITIONING)


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Select and cast ``table``'s columns to ``schema``, in schema order.

    Raises ``ValueError`` naming every missing column or non-null violation,
    so a writer never produces a file that drifts from the contract.
    """
    missing = [f.name for f in schema if f.name not in table.column_names]
    if missing:
        raise ValueError(f"table is missing columns {missing} required by the schema")
    arrays = []
    problems = []
    for field in schema:
        col = table.column(field.name)
        try:
            col = col.cast(field.type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            problems.append(f"{field.name}: cannot cast {col.type} to {field.type} ({exc})")
            continue
        if not field.nullable and col.null_count:
            problems.append(f"{field.name}: {col.null_count} null value(s) in a non-nullable column")
        arrays.append(col)
    if problems:
        raise ValueError("table does not conform to the schema: " + "; ".join(problems))
    return pa.Table.from_arrays(arrays, schema=schema)


def describe(schema: pa.Schema) -> list[tuple[str, str, str]]:
    """(name, type, doc) per column, for README tables and ``lanser-label schema``."""
    return [
        (f.name, str(f.type), (f.metadata or {}).get(b"doc", b"").decode())
        for f in schema
    ]


# Layout under an output root (see the module docstring).


def scores_partition(root: str, scorer_key: str, run_id: str) -> str:
    return join(root, "scores", f"scorer_key={scorer_key}", f"run_id={run_id}")


def sources_partition(root: str, run_id: str) -> str:
    return join(root, "sources", f"run_id={run_id}")


def labels_partition(root: str, taxonomy: str, version: str, run_id: str) -> str:
    return join(root, "labels", f"taxonomy={taxonomy}", f"taxonomy_version={version}", f"run_id={run_id}")


def transcripts_partition(root: str, run_id: str) -> str:
    return join(root, "transcripts", f"run_id={run_id}")


def manifest_path(root: str, run_id: str) -> str:
    return join(root, "runs", f"{run_id}.json")


def staging_dir(root: str, run_id: str) -> str:
    return join(root, "_staging", run_id)
