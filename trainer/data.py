"""Ray Data ingestion: which rows to train on, and the decode + log-mel pipeline.

Two sources feed the same pipeline:

* the labeler's **labels table** — :func:`select_labels_run` picks one
  ``taxonomy=/taxonomy_version=/run_id=`` partition and counts its rows by streaming two
  columns; :func:`labels_rows` reads it with ``ray.data.read_parquet`` and keeps
  ``status = labeled`` rows at or above ``min_confidence`` (abstained and error rows never
  reach training);
* a **labeled corpus** (:mod:`trainer.datasets`) — a small table of file names and labels,
  handed to Ray Data as blocks by :func:`corpus_rows`.

:func:`featurize` then streams every row's audio through decode + log-mel on CPU tasks
(``map_batches``); Ray Train hands each worker its shard with
``ray.train.get_dataset_shard``. No process ever holds the corpus.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field

import pyarrow as pa

from trainer.datasets import stable_unit

LABEL_COLUMNS = ["utt_id", "uri", "status", "label_index", "confidence", "scores"]


class DataError(ValueError):
    """The requested data does not exist or cannot be used; the message says what exists."""


@dataclass
class LabelsSelection:
    """One partition of the labels table, chosen for training."""

    root: str
    taxonomy: str
    taxonomy_version: str
    run_id: str
    path: str  # the run_id=... directory (local path or URI)
    committed: bool
    other_runs: list[str] = field(default_factory=list)
    counts: dict = field(default_factory=dict)

    def summary(self) -> dict:
        return {
            "root": self.root,
            "taxonomy": self.taxonomy,
            "taxonomy_version": self.taxonomy_version,
            "run_id": self.run_id,
            "committed": self.committed,
            "other_runs": self.other_runs,
            "counts": self.counts,
        }


def _list_partitions(fs, path: str, key: str) -> dict[str, str]:
    """``{value: subdirectory}`` for the ``key=value`` directories under ``path``."""
    import pyarrow.fs as pafs

    info = fs.get_file_info(path)
    if info.type != pafs.FileType.Directory:
        return {}
    out = {}
    for entry in fs.get_file_info(pafs.FileSelector(path, recursive=False)):
        name = entry.base_name
        if entry.type == pafs.FileType.Directory and name.startswith(key + "="):
            out[name.split("=", 1)[1]] = entry.path
    return out


def _latest_mtime(fs, path: str) -> float:
    import pyarrow.fs as pafs

    times = [
        e.mtime.timestamp()
        for e in fs.get_file_info(pafs.FileSelector(path, recursive=True))
        if e.type == pafs.FileType.File and e.mtime is not None
    ]
    return max(times, default=0.0)


def select_labels_run(
    root: str,
    taxonomy,
    taxonomy_version: str | None = None,
    run_id: str | None = None,
    min_confidence: float = 0.0,
    val_fraction: float = 0.1,
) -> LabelsSelection:
    """Choose the partition to train on and count its rows.

    Without ``run_id``, the newest *committed* run (one with ``<root>/runs/<run>.json``) is
    taken, else the newest run by file time; the others are listed in ``other_runs``.
    Counting streams ``status, confidence, label_index`` in record batches.
    """
    import pyarrow.dataset as pads
    import pyarrow.fs as pafs

    from labeler.io import filesystem, join

    fs, base = filesystem(root)
    labels_dir = join(base, "labels")
    taxa = _list_partitions(fs, labels_dir, "taxonomy")
    if taxonomy.name not in taxa:
        raise DataError(
            f"no labels for taxonomy {taxonomy.name!r} under {join(root, 'labels')} "
            f"(taxonomies there: {sorted(taxa) or 'none'}); run lanser-label with --taxonomy {taxonomy.name}"
        )
    versions = _list_partitions(fs, taxa[taxonomy.name], "taxonomy_version")
    version = taxonomy_version or taxonomy.version
    if version not in versions:
        raise DataError(
            f"taxonomy {taxonomy.name!r} has no taxonomy_version={version} partition (versions there: {sorted(versions)}); "
            "set data.taxonomy_version, or point data.taxonomy at the YAML of that version"
        )
    runs = _list_partitions(fs, versions[version], "run_id")
    if not runs:
        raise DataError(f"no runs under {versions[version]}")
    committed = {
        r for r in runs if fs.get_file_info(join(base, "runs", f"{r}.json")).type == pafs.FileType.File
    }
    if run_id is not None:
        if run_id not in runs:
            raise DataError(f"run_id {run_id!r} not found for {taxonomy.name} {version} (runs: {sorted(runs)})")
        chosen = run_id
    else:
        pool = sorted(committed or runs)
        chosen = max(pool, key=lambda r: (_latest_mtime(fs, runs[r]), r))
    counts: Counter = Counter()
    per_label: Counter = Counter()  # training split only: what class weights are computed from
    dataset = pads.dataset(runs[chosen], filesystem=fs, format="parquet")
    for batch in dataset.to_batches(columns=["utt_id", "status", "confidence", "label_index"], batch_size=1 << 16):
        cols = [batch.column(c).to_pylist() for c in ("utt_id", "status", "confidence", "label_index")]
        for utt, s, c, i in zip(*cols):
            counts["rows"] += 1
            counts[s] += 1
            if s != "labeled":
                continue
            if i is None or c is None or c < min_confidence:
                counts["below_min_confidence"] += 1
            elif stable_unit(utt) < val_fraction:
                counts["val"] += 1
            else:
                counts["train"] += 1
                per_label[i] += 1
    if not counts["train"] or not counts["val"]:
        raise DataError(
            f"run {chosen} of {taxonomy.name} {version} leaves {counts['train']} training and {counts['val']} validation rows "
            f"({dict(counts)}); lower data.min_confidence, change data.val_fraction or choose another run_id"
        )
    names = taxonomy.label_names
    summary = {
        "rows": counts["rows"],
        "labeled": counts["labeled"],
        "abstained": counts["abstained"],
        "error": counts["error"],
        "below_min_confidence": counts["below_min_confidence"],
        "train": counts["train"],
        "val": counts["val"],
        "train_per_label": {names[i] if 0 <= i < len(names) else str(i): per_label[i] for i in sorted(per_label)},
    }
    if any(not 0 <= i < len(names) for i in per_label):
        raise DataError(
            f"run {chosen} has label_index values outside the {len(names)} labels of taxonomy {taxonomy.name} {taxonomy.version}: "
            "it was labeled with a different taxonomy file"
        )
    return LabelsSelection(
        root=root,
        taxonomy=taxonomy.name,
        taxonomy_version=version,
        run_id=chosen,
        path=runs[chosen] if "://" not in root else join(root, os.path.relpath(runs[chosen], base)),
        committed=chosen in committed,
        other_runs=sorted(set(runs) - {chosen}),
        counts=summary,
    )


def _keep_labeled(table: pa.Table, *, min_confidence: float, val_fraction: float, split: str) -> pa.Table:
    """map_batches (pyarrow): labeled rows above the threshold, in the requested split."""
    import pyarrow.compute as pc

    mask = pc.and_(
        pc.equal(table.column("status"), "labeled"),
        pc.and_(pc.is_valid(table.column("label_index")), pc.greater_equal(pc.fill_null(table.column("confidence"), -1.0), min_confidence)),
    )
    table = table.filter(mask)
    if split != "all":
        in_val = pa.array([stable_unit(u) < val_fraction for u in table.column("utt_id").to_pylist()], pa.bool_())
        want = in_val if split == "val" else pc.invert(in_val)
        table = table.filter(want)
    return table.select(["utt_id", "uri", "label_index", "scores"])


def labels_rows(selection: LabelsSelection, *, split: str, min_confidence: float, val_fraction: float):
    """Ray Dataset of ``utt_id, uri, label_index, scores`` for ``split`` (train | val | all)."""
    import ray.data

    from labeler.io import filesystem

    fs, path = filesystem(selection.path)
    ds = ray.data.read_parquet(
        path,
        filesystem=fs,
        partitioning=None,  # the run_id=... directory itself: its partition values are known
        shuffle="files" if split == "train" else None,
    ).select_columns(LABEL_COLUMNS)  # pushed down into the Parquet read
    return ds.map_batches(
        _keep_labeled,
        batch_format="pyarrow",
        fn_kwargs={"min_confidence": min_confidence, "val_fraction": val_fraction, "split": split},
        batch_size=None,
    )


def corpus_rows(table: pa.Table, *, split: str, block_rows: int = 64):
    """Ray Dataset of a corpus table's rows in ``split`` (train | val | test | all)."""
    import pyarrow.compute as pc
    import ray.data

    if split != "all":
        table = table.filter(pc.equal(table.column("split"), split))
    table = table.select(["utt_id", "uri", "label_index"])
    if table.num_rows == 0:
        raise DataError(f"the {split} split is empty")
    blocks = [table.slice(i, block_rows) for i in range(0, table.num_rows, block_rows)]
    ds = ray.data.from_arrow(blocks)
    return ds.randomize_block_order() if split == "train" else ds


def featurize(ds, *, spec, num_classes: int, train: bool, data_cpus: float, batch_size: int, base_dir: str | None, keep_ids: bool = False):
    """decode + log-mel on CPU tasks; one output row per input row (see
    :func:`trainer.features.featurize_batch`)."""
    from trainer.features import featurize_batch

    return ds.map_batches(
        featurize_batch,
        batch_format="numpy",
        batch_size=batch_size,
        num_cpus=data_cpus,
        fn_kwargs={
            "spec": spec.to_dict(),
            "num_classes": num_classes,
            "crop": "random" if train else "start",
            "base_dir": base_dir,
            "keep_ids": keep_ids,
        },
    )


@dataclass
class PreparedData:
    """A data config resolved to rows with splits: a labels-table run or a corpus table.

    ``rows(split)`` gives the Ray Dataset of ``utt_id, uri, label_index[, scores]`` for a
    split; ``summary`` goes into reports.
    """

    kind: str
    taxonomy: object  # labeler.taxonomy.Taxonomy
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

    def rows(self, split: str):
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

        from trainer.datasets import subsample

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


def prepare_data(cfg) -> PreparedData:
    """Resolve a :class:`trainer.config.LabelsData` or :class:`~trainer.config.CorpusData`."""
    from labeler.taxonomy import load_taxonomy

    from trainer.datasets import assign_splits, load_corpus

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
