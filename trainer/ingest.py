"""Ray Data ingestion: which rows a job trains on, and the decode + log-mel stream that feeds
the Ray Train workers.

Rows come from one committed run of the labeler's labels table (:func:`select_labels_run`,
:func:`labels_rows`) or from a labeled corpus (:mod:`trainer.corpora`, :func:`corpus_rows`);
:func:`prepare_data` resolves a data config to either, and :func:`featurize` streams them
through decode + log-mel CPU tasks.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from trainer.corpora import stable_unit
from trainer.errors import DataError

if TYPE_CHECKING:
    import ray.data

    from labeler.taxonomy import Taxonomy
    from trainer.config import CorpusData, LabelsData
    from trainer.features import FeatureSpec

#: Columns of the labels table a job reads (pushed down into the Parquet read).
LABEL_COLUMNS = ["utt_id", "source_id", "uri", "start_s", "end_s", "status", "label_index", "confidence", "scores"]
#: Columns a labels table written before utterances had spans lacks: a missing ``source_id``
#: is the ``utt_id`` (one file, one row), a missing ``start_s`` / ``end_s`` the whole file.
SPAN_COLUMNS = ("source_id", "start_s", "end_s")
#: Columns of the rows :func:`labels_rows` gives.
ROW_COLUMNS = ["utt_id", "source_id", "uri", "start_s", "end_s", "label_index", "scores"]


@dataclass
class LabelsSelection:
    """One committed run's partition of the labels table, chosen for training."""

    root: str
    taxonomy: str
    taxonomy_version: str
    run_id: str
    path: str  # the partition's URI (labeler.schema.labels_partition)
    run_kind: str  # "label" or "relabel"
    committed_at: str | None = None
    other_runs: list[str] = field(default_factory=list)  # the other committed runs of this taxonomy version
    counts: dict = field(default_factory=dict)

    def summary(self) -> dict:
        return {
            "root": self.root,
            "taxonomy": self.taxonomy,
            "taxonomy_version": self.taxonomy_version,
            "run_id": self.run_id,
            "run_kind": self.run_kind,
            "committed_at": self.committed_at,
            "other_runs": self.other_runs,
            "counts": self.counts,
        }


def _labels_runs(root: str) -> list[dict[str, Any]]:
    """Manifests of the committed runs under ``root`` that published a labels partition,
    oldest first (a run of no rows publishes none)."""
    from labeler.runs import committed_runs

    return [m for m in committed_runs(root) if "labels" in (m.get("tables") or {})]


def _taxonomy_of(manifest: dict[str, Any]) -> tuple[str, str]:
    tax = manifest.get("taxonomy") or {}
    return str(tax.get("name")), str(tax.get("version"))


def _uncommitted_run_error(root: str, name: str, version: str, run_id: str, candidates: list[str]) -> DataError | None:
    """The error for an explicit ``run_id`` that has no committed manifest, when its labels
    partition exists (a run still staging, failed, or written by hand); None when it does not."""
    import pyarrow.fs as pafs

    from labeler.io import filesystem, redact
    from labeler.runs import read_manifest
    from labeler.schema import labels_partition

    partition = labels_partition(root, name, version, run_id)
    fs, path = filesystem(partition)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return None
    manifest = read_manifest(root, run_id)
    state = "it has no manifest runs/" + run_id + ".json" if manifest is None else f"its manifest says status {manifest.get('status')!r}"
    return DataError(
        f"run_id {run_id!r} of {name} {version} is not a committed run: {redact(partition)} exists but {state}. "
        f"An uncommitted partition is not training data: let that lanser-label run finish (rerun its command), "
        f"or choose a committed run (committed runs of {name} {version}: {candidates})"
    )


def _label_columns(fs, path: str) -> list[str]:
    """The :data:`LABEL_COLUMNS` the partition at ``path`` has: all of them, or without
    :data:`SPAN_COLUMNS` for a table written before utterances had spans."""
    import pyarrow.dataset as pads

    names = set(pads.dataset(path, filesystem=fs, format="parquet").schema.names)
    return [c for c in LABEL_COLUMNS if c in names or c not in SPAN_COLUMNS]


def split_key(utt_id: str, source_id: str | None) -> str:
    """What the train/val split hashes: the source file's id, so every utterance of one
    recording lands in the same split (no recording is in both train and validation);
    the ``utt_id`` for a row without one (a table written before utterances had spans)."""
    return utt_id if source_id is None else source_id


def in_val(utt_id: str, source_id: str | None, val_fraction: float) -> bool:
    return stable_unit(split_key(utt_id, source_id)) < val_fraction


def select_labels_run(
    root: str,
    taxonomy: Taxonomy,
    taxonomy_version: str | None = None,
    run_id: str | None = None,
    min_confidence: float = 0.0,
    val_fraction: float = 0.1,
) -> LabelsSelection:
    """Choose the committed run to train on and count its rows.

    Only committed runs (``runs/<run_id>.json`` with ``status: committed``, found with
    :func:`labeler.runs.committed_runs`) are candidates. Without ``run_id`` the newest
    committed run of the taxonomy version is taken (run ids sort by time); the others are
    listed in ``other_runs``. Counting streams ``utt_id, source_id, status, confidence,
    label_index`` in record batches; the split is by :func:`split_key`, as :func:`labels_rows`
    makes it.
    """
    import pyarrow.dataset as pads

    from labeler.io import filesystem, redact
    from labeler.schema import labels_partition

    name = taxonomy.name
    version = taxonomy_version or taxonomy.version
    runs = _labels_runs(root)
    of_taxonomy = [m for m in runs if _taxonomy_of(m)[0] == name]
    of_version = [m for m in of_taxonomy if _taxonomy_of(m)[1] == version]
    candidates = [m["run_id"] for m in of_version]

    def no_taxonomy() -> DataError:
        there = sorted({_taxonomy_of(m)[0] for m in runs})
        return DataError(
            f"no labels for taxonomy {name!r} in the committed runs under {redact(root)} "
            f"(taxonomies there: {there or 'none'}); run lanser-label with --taxonomy {name}"
        )

    def no_version() -> DataError:
        return DataError(
            f"taxonomy {name!r} has no taxonomy_version={version} partition "
            f"(versions there: {sorted({_taxonomy_of(m)[1] for m in of_taxonomy})}) among the committed runs under {redact(root)}; "
            "set data.taxonomy_version, or point data.taxonomy at the YAML of that version"
        )

    if run_id is None:
        if not of_taxonomy:
            raise no_taxonomy()
        if not of_version:
            raise no_version()
        manifest = of_version[-1]
    else:
        manifest = next((m for m in runs if m["run_id"] == run_id), None)
        if manifest is None:
            error = _uncommitted_run_error(root, name, version, run_id, candidates)
            if error is not None:
                raise error
            if not of_taxonomy:
                raise no_taxonomy()
            if not of_version:
                raise no_version()
            raise DataError(f"run_id {run_id!r} not found for {name} {version} (committed runs: {candidates})")
        if _taxonomy_of(manifest) != (name, version):
            got = " ".join(_taxonomy_of(manifest))
            raise DataError(
                f"run_id {run_id!r} labeled taxonomy {got}, not {name} {version}; set data.taxonomy and "
                f"data.taxonomy_version to match, or choose one of the committed runs of {name} {version}: {candidates}"
            )
    chosen = manifest["run_id"]
    stored_labels = (manifest.get("taxonomy") or {}).get("labels")
    if stored_labels is not None and list(stored_labels) != taxonomy.label_names:
        raise DataError(
            f"run {chosen} was labeled with {name} {version} labels {list(stored_labels)}, but the taxonomy file "
            f"has {taxonomy.label_names}: label indices would not match; use that run's taxonomy file"
        )
    partition = labels_partition(root, name, version, chosen)
    fs, path = filesystem(partition)
    counts: Counter = Counter()
    per_label: Counter = Counter()  # training split only: what class weights are computed from
    dataset = pads.dataset(path, filesystem=fs, format="parquet")
    columns = ["utt_id", "status", "confidence", "label_index"] + (["source_id"] if "source_id" in dataset.schema.names else [])
    for batch in dataset.to_batches(columns=columns, batch_size=1 << 16):
        cols = [batch.column(c).to_pylist() for c in ("utt_id", "status", "confidence", "label_index")]
        sources = batch.column("source_id").to_pylist() if "source_id" in columns else [None] * batch.num_rows
        for utt, s, c, i, src in zip(*cols, sources):
            counts["rows"] += 1
            counts[s] += 1
            if s != "labeled":
                continue
            if i is None or c is None or c < min_confidence:
                counts["below_min_confidence"] += 1
            elif in_val(utt, src, val_fraction):
                counts["val"] += 1
            else:
                counts["train"] += 1
                per_label[i] += 1
    if not counts["train"] or not counts["val"]:
        raise DataError(
            f"run {chosen} of {name} {version} leaves {counts['train']} training and {counts['val']} validation rows "
            f"({dict(counts)}); lower data.min_confidence, change data.val_fraction or choose another run_id"
        )
    names = taxonomy.label_names
    if any(not 0 <= i < len(names) for i in per_label):
        raise DataError(
            f"run {chosen} has label_index values outside the {len(names)} labels of taxonomy {name} {taxonomy.version}: "
            "it was labeled with a different taxonomy file"
        )
    summary = {
        "rows": counts["rows"],
        "labeled": counts["labeled"],
        "abstained": counts["abstained"],
        "error": counts["error"],
        "below_min_confidence": counts["below_min_confidence"],
        "train": counts["train"],
        "val": counts["val"],
        "train_per_label": {names[i]: per_label[i] for i in sorted(per_label)},
    }
    return LabelsSelection(
        root=root,
        taxonomy=name,
        taxonomy_version=version,
        run_id=chosen,
        path=partition,
        run_kind=manifest.get("kind", "label"),
        committed_at=manifest.get("committed_at"),
        other_runs=[r for r in candidates if r != chosen],
        counts=summary,
    )


def _keep_labeled(table: pa.Table, *, min_confidence: float, val_fraction: float, split: str) -> pa.Table:
    """map_batches (pyarrow): labeled rows above the threshold, in the requested split, as
    :data:`ROW_COLUMNS`. The split is by source file (:func:`split_key`). A table without
    :data:`SPAN_COLUMNS` gets ``source_id = utt_id`` and null spans (whole files)."""
    import pyarrow.compute as pc

    mask = pc.and_(
        pc.equal(table.column("status"), "labeled"),
        pc.and_(pc.is_valid(table.column("label_index")), pc.greater_equal(pc.fill_null(table.column("confidence"), -1.0), min_confidence)),
    )
    table = table.filter(mask)
    utt = table.column("utt_id")
    names = table.column_names
    source = pc.coalesce(table.column("source_id"), utt) if "source_id" in names else utt
    spans = {c: table.column(c).cast(pa.float64()) if c in names else pa.nulls(table.num_rows, pa.float64()) for c in ("start_s", "end_s")}
    table = pa.table({
        "utt_id": utt, "source_id": source, "uri": table.column("uri"), **spans,
        "label_index": table.column("label_index"), "scores": table.column("scores"),
    })
    if split != "all":
        val = pa.array([stable_unit(k) < val_fraction for k in source.to_pylist()], pa.bool_())
        table = table.filter(val if split == "val" else pc.invert(val))
    return table


def labels_rows(selection: LabelsSelection, *, split: str, min_confidence: float, val_fraction: float) -> ray.data.Dataset:
    """Ray Dataset of :data:`ROW_COLUMNS` (``utt_id, source_id, uri, start_s, end_s,
    label_index, scores``) for ``split`` (train | val | all). ``start_s`` / ``end_s`` is the
    utterance's span in its source file (null: the whole file), which featurizing cuts by
    seeking (:func:`trainer.features.load_span`)."""
    import ray.data

    from labeler.io import filesystem

    fs, path = filesystem(selection.path)
    ds = ray.data.read_parquet(
        path,
        filesystem=fs,
        partitioning=None,  # the run_id=... directory itself: its partition values are known
        shuffle="files" if split == "train" else None,
    ).select_columns(_label_columns(fs, path))  # pushed down into the Parquet read
    return ds.map_batches(
        _keep_labeled,
        batch_format="pyarrow",
        fn_kwargs={"min_confidence": min_confidence, "val_fraction": val_fraction, "split": split},
        batch_size=None,
    )


def corpus_rows(table: pa.Table, *, split: str, block_rows: int = 64) -> ray.data.Dataset:
    """Ray Dataset of a corpus table's rows in ``split`` (train | val | test | all)."""
    import pyarrow.compute as pc
    import ray.data

    if split != "all":
        table = table.filter(pc.equal(table.column("split"), split))
    table = table.select(["utt_id", "uri", "label_index"])
    if table.num_rows == 0:
        raise DataError(f"the {split} split is empty")
    # Blocks of block_rows rows (a decode + log-mel task each), built in this process.
    # Not ray.data.from_arrow: it runs a 1-CPU task per block to read the blocks' metadata,
    # and right after those tasks Ray's view of the cluster still shows their CPUs taken, so
    # the first materialize() (cache_features) warned "The Ray cluster currently does not
    # have any available CPUs. The Dataset job will hang ..." although nothing else held a CPU.
    ds = ray.data.from_items(table.to_pylist(), override_num_blocks=-(-table.num_rows // block_rows))
    return ds.randomize_block_order() if split == "train" else ds


def featurize(
    ds: ray.data.Dataset,
    *,
    spec: FeatureSpec,
    num_classes: int,
    train: bool,
    data_cpus: float,
    batch_size: int,
    base_dir: str | None,
    keep_ids: bool = False,
    whole: bool = False,
) -> ray.data.Dataset:
    """decode + log-mel on CPU tasks; one output row per input row (see
    :func:`trainer.features.featurize_batch`). Crops are random windows for ``train``, the
    start otherwise; ``whole`` keeps each clip's whole features (the training cache, cropped
    afresh every epoch by :func:`trainer.features.crop_collate`)."""
    from trainer.features import featurize_batch

    return ds.map_batches(
        featurize_batch,
        batch_format="numpy",
        batch_size=batch_size,
        num_cpus=data_cpus,
        fn_kwargs={
            "spec": spec.to_dict(),
            "num_classes": num_classes,
            "crop": "none" if whole else "random" if train else "start",
            "base_dir": base_dir,
            "keep_ids": keep_ids,
        },
    )


@dataclass
class PreparedData:
    """A data config resolved to rows with splits: a labels-table run or a corpus table.

    ``rows(split)`` gives the Ray Dataset of ``utt_id, uri, label_index`` for a split (for a
    labels table also ``source_id, start_s, end_s, scores``: see :func:`labels_rows`);
    ``summary`` goes into reports.
    """

    kind: str
    taxonomy: Taxonomy
    summary: dict
    selection: LabelsSelection | None = None
    table: pa.Table | None = None  # corpus rows with a split column
    base_dir: str | None = None
    min_confidence: float = 0.0
    val_fraction: float = 0.1
    cache_features: bool = False

    @property
    def label_names(self) -> list[str]:
        return self.taxonomy.label_names

    def split_size(self, split: str) -> int:
        if self.selection is not None:
            counts = self.selection.counts
            return counts["train"] + counts["val"] if split == "all" else counts.get("val" if split == "test" else split, 0)
        if split == "all":
            return self.table.num_rows
        return sum(1 for s in self.table.column("split").to_pylist() if s == split)

    def class_counts(self, split: str = "train") -> list[int]:
        names = self.label_names
        if self.selection is not None:
            per = self.selection.counts["train_per_label"]
            return [int(per.get(n, 0)) for n in names]
        labels = [l for l, s in zip(self.table.column("label_index").to_pylist(), self.table.column("split").to_pylist()) if s == split]
        return [labels.count(i) for i in range(len(names))]

    def rows(self, split: str) -> ray.data.Dataset:
        if self.selection is not None:
            # A weak-labels table has no test split: its held-out rows are the validation split.
            return labels_rows(
                self.selection,
                split="val" if split == "test" else split,
                min_confidence=self.min_confidence,
                val_fraction=self.val_fraction,
            )
        return corpus_rows(self.table, split=split)

    def with_train_fraction(self, fraction: float, seed: int = 0) -> "PreparedData":
        """The same data with a class-stratified share of the training split (corpora only)."""
        import pyarrow.compute as pc

        from trainer.corpora import subsample

        if fraction >= 1.0:
            return self
        if self.table is None:
            raise DataError("train_fraction < 1 is supported for labeled corpora, not for a weak-labels table")
        is_train = pc.equal(self.table.column("split"), "train")
        train = subsample(self.table.filter(is_train), fraction, seed)
        table = pa.concat_tables([train, self.table.filter(pc.invert(is_train))])
        summary = {**self.summary, "train_fraction": fraction}
        prepared = PreparedData(**{**self.__dict__, "table": table, "summary": summary})
        prepared.summary["splits"] = {s: prepared.split_size(s) for s in ("train", "val", "test")}
        return prepared


def prepare_data(cfg: LabelsData | CorpusData) -> PreparedData:
    """Resolve a :class:`trainer.config.LabelsData` or :class:`~trainer.config.CorpusData`."""
    from labeler.taxonomy import load_taxonomy

    from trainer.corpora import assign_splits, load_corpus

    taxonomy = load_taxonomy(cfg.taxonomy)
    if cfg.kind == "labels":
        selection = select_labels_run(
            cfg.root, taxonomy, cfg.taxonomy_version, cfg.run_id, cfg.min_confidence, cfg.val_fraction
        )
        return PreparedData(
            kind="labels",
            taxonomy=taxonomy,
            summary={"kind": "labels", **selection.summary(), "min_confidence": cfg.min_confidence, "val_fraction": cfg.val_fraction},
            selection=selection,
            base_dir=os.path.abspath(cfg.audio_root) if cfg.audio_root else os.getcwd(),
            min_confidence=cfg.min_confidence,
            val_fraction=cfg.val_fraction,
            cache_features=cfg.cache_features,
        )
    corpus = load_corpus(cfg.kind, cfg.path, taxonomy, cfg.label_map, cfg.include_song)
    table = assign_splits(corpus.table, cfg.test_groups, cfg.val_groups, cfg.test_fraction, cfg.val_fraction, cfg.seed)
    prepared = PreparedData(kind=cfg.kind, taxonomy=taxonomy, summary=corpus.summary(), table=table, cache_features=cfg.cache_features)
    groups = {s: sorted({g for g, sp in zip(table.column("group").to_pylist(), table.column("split").to_pylist()) if sp == s and g}) for s in ("train", "val", "test")}
    prepared.summary.update({
        "taxonomy": taxonomy.name,
        "taxonomy_version": taxonomy.version,
        "splits": {s: prepared.split_size(s) for s in ("train", "val", "test")},
        "split_groups": groups,
    })
    return prepared
