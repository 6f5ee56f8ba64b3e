"""The two pipelines, as plans for :func:`labeler.runs.run`:

- **label**: input files (:mod:`labeler.sources`) -> decode -> ASR -> entail -> labels table;
- **relabel**: the stored rows of a committed run -> entail -> labels table (no audio read,
  no ASR stage).

    >>> from labeler import LabelConfig, run_labeling                      # doctest: +SKIP
    >>> cfg = LabelConfig(input="clips/", output="out/", taxonomy="ekman")  # doctest: +SKIP
    >>> result = run_labeling(cfg)                                          # doctest: +SKIP
    >>> result.manifest["counts"]["status"]                                 # doctest: +SKIP
    {'labeled': 6, 'abstained': 1}
"""

from __future__ import annotations

from typing import Optional

from labeler import schema as S
from labeler.config import LabelConfig
from labeler.runs import RunPlan, RunResult, find_committed, init_ray, known_inputs, run, stream_run_rows


def run_labeling(cfg: LabelConfig) -> RunResult:
    """Label ``cfg.input`` into ``cfg.output``; returns the committed run's manifest.

    Re-running the same configuration after a crash resumes the unfinished run; audio
    already transcribed with the same ASR settings is not transcribed again.
    """
    from labeler.sources import list_input
    from labeler.stages.asr import ASRStage
    from labeler.stages.decode import DecodeStage
    from labeler.stages.entail import EntailStage
    from labeler.taxonomy import load_taxonomy

    cfg.require_io()
    taxonomy = load_taxonomy(cfg.taxonomy)
    plan = RunPlan(
        kind="label",
        taxonomy=taxonomy,
        key=cfg.run_key(taxonomy),
        # checked here, then listed by Ray tasks (each a run of sub-folders or sub-prefixes), whose parts stay in the object store
        read_inputs=lambda: list_input(cfg.input, start_ray=lambda: init_ray(cfg)),
        stages=(DecodeStage, ASRStage, EntailStage),
        # a file read before with the same URI, size and mtime/ETag is not read again (cache.rehash
        # reads it); sources/ is joined with the listing part by part by Ray tasks, never on the driver
        prepare=lambda todo: known_inputs(cfg.output, todo, cfg.cache.rehash or not cfg.cache.transcripts),
    )
    return run(cfg, plan)


#: What a relabel takes from its source run: the utterance, its audio identity and its
#: transcript, as stored in the labels table.
RELABEL_COLUMNS = ["utt_id", "uri", *S.SPAN_COLUMNS, "audio_sha256", "duration_s", *S.TRANSCRIPT_COLUMNS, "error", "asr_model", "asr_config_hash"]


def run_relabel(cfg: LabelConfig, from_run: Optional[str] = None) -> RunResult:
    """A new labels partition for ``cfg.taxonomy`` from stored transcripts alone: no audio is
    read and no ASR model is loaded. The utterances are those of ``from_run`` (default: the
    newest committed run under ``cfg.output``); rows that failed before ASR stay error rows."""
    from labeler.errors import InputError
    from labeler.stages.entail import EntailStage
    from labeler.taxonomy import load_taxonomy

    if not cfg.output:
        raise InputError("relabel needs --output, the root of earlier runs")
    taxonomy = load_taxonomy(cfg.taxonomy)
    source = find_committed(cfg.output, from_run)
    plan = RunPlan(
        kind="relabel",
        taxonomy=taxonomy,
        key=cfg.run_key(taxonomy, kind="relabel", source=source["run_id"]),
        # streamed from the source run's Parquet by the workers: its transcripts never gather on the driver
        read_inputs=lambda: stream_run_rows(cfg.output, source, RELABEL_COLUMNS, EntailStage.resources(cfg)["batch_size"]),
        stages=(EntailStage,),
        unit="utt_id",  # one row per stored utterance
        caches=("scores",),
        # every transcript of a relabel is a stored one
        preset_cache_counts=lambda rows: {"transcripts_from_cache": rows, "transcribed": 0},
        manifest={
            "input": f"run:{source['run_id']}",
            "source_run": source["run_id"],
            "asr_model_loaded": False,
            "models": {"asr": source["models"]["asr"], "asr_config_hash": source["models"]["asr_config_hash"]},
        },
    )
    return run(cfg, plan)

