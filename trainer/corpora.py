"""Human-labeled emotion corpora (RAVDESS, CREMA-D, IEMOCAP, a manifest) read from their
published layouts and mapped onto a lanser taxonomy, and their speaker-independent splits.

Only file names and label files are read here, never audio. A loader returns a
:class:`Corpus` with one row per kept utterance; a path that does not look like the claimed
corpus raises :class:`~trainer.errors.DatasetLayoutError` saying what was expected.

    >>> from trainer.corpora import load_corpus
    >>> corpus = load_corpus("ravdess", "/data/RAVDESS", taxonomy="iemocap4")  # doctest: +SKIP
    >>> corpus.dropped                                                          # doctest: +SKIP
    {'calm': 192, 'fearful': 192, 'disgust': 192, 'surprised': 192}
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pyarrow as pa

from trainer.errors import DatasetLayoutError

if TYPE_CHECKING:
    from labeler.taxonomy import Taxonomy

#: Columns of a corpus table, in order.
CORPUS_SCHEMA = pa.schema(
    [
        pa.field("utt_id", pa.string(), nullable=False),
        pa.field("uri", pa.string(), nullable=False),
        pa.field("source_label", pa.string(), nullable=False),
        pa.field("label", pa.string(), nullable=False),
        pa.field("label_index", pa.int32(), nullable=False),
        pa.field("speaker", pa.string()),
        pa.field("group", pa.string()),
    ]
)

RAVDESS_EMOTIONS = {
    "01": "neutral", "02": "calm", "03": "happy", "04": "sad",
    "05": "angry", "06": "fearful", "07": "disgust", "08": "surprised",
}
CREMAD_EMOTIONS = {"ANG": "anger", "DIS": "disgust", "FEA": "fear", "HAP": "happy", "NEU": "neutral", "SAD": "sad"}
CREMAD_SENTENCES = {"IEO", "TIE", "IOM", "IWW", "TAI", "MTI", "IWL", "ITH", "DFA", "ITS", "TSI", "WSI"}
CREMAD_LEVELS = {"LO", "MD", "HI", "XX"}
IEMOCAP_CLASSES = ("ang", "hap", "exc", "sad", "neu", "fru", "sur", "fea", "dis", "oth", "xxx")

# Each corpus class -> its Ekman name (None: no Ekman counterpart). A taxonomy then gets
# the Ekman name itself if it has that label (ekman, goemotions), or the mapping below.
_TO_EKMAN = {
    "ravdess": {
        "neutral": "neutral", "calm": None, "happy": "joy", "sad": "sadness",
        "angry": "anger", "fearful": "fear", "disgust": "disgust", "surprised": "surprise",
    },
    "crema-d": {"ANG": "anger", "DIS": "disgust", "FEA": "fear", "HAP": "joy", "NEU": "neutral", "SAD": "sadness"},
    "iemocap": {
        "ang": "anger", "hap": "joy", "exc": "joy",  # the standard 4-class setup merges excitement into happiness
        "sad": "sadness", "neu": "neutral", "sur": "surprise", "fea": "fear", "dis": "disgust",
        "fru": None, "oth": None, "xxx": None,
    },
}
_EKMAN_TO = {"iemocap4": {"neutral": "neutral", "joy": "happy", "sadness": "sad", "anger": "angry"}}


@dataclass
class Corpus:
    """A loaded corpus: ``table`` (:data:`CORPUS_SCHEMA`) holds the utterances whose class
    maps onto the taxonomy; ``dropped`` counts the rest by corpus class."""

    kind: str
    root: str
    table: pa.Table
    label_names: list[str]
    dropped: dict[str, int] = field(default_factory=dict)  # corpus class -> rows with no taxonomy label
    skipped: dict[str, int] = field(default_factory=dict)  # other reasons rows were left out
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        counts = Counter(self.table.column("label").to_pylist())
        return {
            "kind": self.kind,
            "root": self.root,
            "rows": self.table.num_rows,
            "speakers": len(set(self.table.column("speaker").to_pylist()) - {None}),
            "per_label": {name: counts.get(name, 0) for name in self.label_names},
            "dropped_unmapped": dict(self.dropped),
            "skipped": dict(self.skipped),
            "notes": list(self.notes),
        }


# --------------------------------------------------------------------------- mapping


def class_map(kind: str, source_classes, taxonomy: Taxonomy, overrides: dict[str, str | None]) -> dict[str, str | None]:
    """Corpus class -> taxonomy label (or None to drop) for every class in ``source_classes``."""
    names = taxonomy.label_names
    mapping: dict[str, str | None] = {}
    for cls in source_classes:
        ekman = _TO_EKMAN.get(kind, {}).get(cls, cls)
        if ekman is not None and ekman in names:
            mapping[cls] = ekman
        elif ekman is not None and taxonomy.name in _EKMAN_TO:
            mapping[cls] = _EKMAN_TO[taxonomy.name].get(ekman)
        else:
            mapping[cls] = cls if cls in names else None
    problems = []
    for cls, target in overrides.items():
        if cls not in mapping:
            problems.append(f"label_map: {cls!r} is not a class of this {kind} corpus (classes: {sorted(mapping)})")
        elif target is not None and target not in names:
            problems.append(f"label_map: {cls!r} -> {target!r}, which is not a label of taxonomy {taxonomy.name} (labels: {names})")
        else:
            mapping[cls] = target
    if problems:
        raise DatasetLayoutError("; ".join(problems))
    return mapping


def _finish(kind: str, root: str, rows: list[dict], taxonomy, overrides, skipped, notes=()) -> Corpus:
    source_classes = sorted({r["source_label"] for r in rows})
    if kind == "ravdess":
        source_classes = sorted(set(source_classes) | set(RAVDESS_EMOTIONS.values()))
    elif kind == "crema-d":
        source_classes = sorted(set(source_classes) | set(CREMAD_EMOTIONS))
    elif kind == "iemocap":
        source_classes = sorted(set(source_classes) | set(IEMOCAP_CLASSES))
    mapping = class_map(kind, source_classes, taxonomy, overrides)
    index = {name: i for i, name in enumerate(taxonomy.label_names)}
    kept, dropped = [], Counter()
    for r in rows:
        target = mapping[r["source_label"]]
        if target is None:
            dropped[r["source_label"]] += 1
            continue
        kept.append({**r, "label": target, "label_index": index[target]})
    if not kept:
        raise DatasetLayoutError(
            f"{kind} at {root}: none of the {len(rows)} utterance(s) maps onto taxonomy {taxonomy.name} "
            f"(classes found: {source_classes}); set label_map"
        )
    table = pa.Table.from_pylist(kept, schema=CORPUS_SCHEMA)
    return Corpus(kind, root, table, taxonomy.label_names, dict(sorted(dropped.items())), dict(skipped), list(notes))


def _bad_names(kind: str, bad: list[str], pattern: str, root: str) -> DatasetLayoutError:
    shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
    return DatasetLayoutError(
        f"{root} does not look like {kind}: {len(bad)} file name(s) do not follow its convention {pattern}: {shown}"
    )


def _audio_files(directory: str) -> list[str]:
    return sorted(n for n in os.listdir(directory) if n.lower().endswith(".wav") and not n.startswith("."))


def _check_dir(kind: str, root: str, expected: str) -> str:
    root = os.path.abspath(os.path.expanduser(root))
    if not os.path.isdir(root):
        raise DatasetLayoutError(f"{kind}: {root} is not a directory (expected {expected})")
    return root


def _layout_dirs(kind: str, root: str, pattern: str, expected: str) -> tuple[str, list[str]]:
    """(absolute root, its sub-directories named like ``pattern``); an error if there are none."""
    root = _check_dir(kind, root, expected)
    found = sorted(d for d in os.listdir(root) if re.fullmatch(pattern, d) and os.path.isdir(os.path.join(root, d)))
    if not found:
        raise DatasetLayoutError(f"{root} does not look like {kind}: expected {expected}, found {sorted(os.listdir(root))[:8]}")
    return root, found


# --------------------------------------------------------------------------- loaders


_RAVDESS = re.compile(r"^(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)\.wav$")


def load_ravdess(root: str, taxonomy: Taxonomy, label_map: dict | None = None, include_song: bool = False) -> Corpus:
    """``Actor_NN/03-01-EE-II-SS-RR-NN.wav`` (modality-channel-emotion-intensity-statement-
    repetition-actor; emotion 01 neutral .. 08 surprised). Speaker and split group: the actor."""
    expected = "Actor_01 .. Actor_24 folders holding files like 03-01-05-01-01-01-01.wav"
    root, actors = _layout_dirs("RAVDESS", root, r"Actor_\d\d", expected)
    rows, bad, skipped = [], [], Counter()
    for actor in actors:
        for name in _audio_files(os.path.join(root, actor)):
            m = _RAVDESS.match(name)
            if not m or m.group(3) not in RAVDESS_EMOTIONS or m.group(1) != "03" or m.group(2) not in ("01", "02") or f"Actor_{m.group(7)}" != actor:
                bad.append(f"{actor}/{name}")
                continue
            if m.group(2) == "02" and not include_song:
                skipped["song"] += 1
                continue
            rows.append({
                "utt_id": name[:-4],
                "uri": os.path.join(root, actor, name),
                "source_label": RAVDESS_EMOTIONS[m.group(3)],
                "speaker": actor,
                "group": actor,
            })
    if bad:
        raise _bad_names("RAVDESS", bad, "03-VV-EE-II-SS-RR-AA.wav in Actor_AA (audio-only modality 03, emotion 01-08)", root)
    if not rows and not skipped:
        raise DatasetLayoutError(f"{root} does not look like RAVDESS: the Actor_NN folders hold no .wav files")
    return _finish("ravdess", root, rows, taxonomy, label_map or {}, skipped)


_CREMAD = re.compile(r"^(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{2})\.wav$")


def load_cremad(root: str, taxonomy: Taxonomy, label_map: dict | None = None) -> Corpus:
    """``AudioWAV/1001_DFA_ANG_XX.wav`` (speaker_sentence_emotion_level; emotions ANG DIS FEA
    HAP NEU SAD). Speaker and split group: the 4-digit actor id."""
    expected = "an AudioWAV folder holding files like 1001_DFA_ANG_XX.wav"
    root = _check_dir("CREMA-D", root, expected)
    audio_dir = os.path.join(root, "AudioWAV") if os.path.isdir(os.path.join(root, "AudioWAV")) else root
    names = _audio_files(audio_dir)
    if not names:
        raise DatasetLayoutError(f"{root} does not look like CREMA-D: expected {expected}")
    rows, bad = [], []
    for name in names:
        m = _CREMAD.match(name)
        if not m or m.group(2) not in CREMAD_SENTENCES or m.group(3) not in CREMAD_EMOTIONS or m.group(4) not in CREMAD_LEVELS:
            bad.append(name)
            continue
        rows.append({
            "utt_id": name[:-4],
            "uri": os.path.join(audio_dir, name),
            "source_label": m.group(3),
            "speaker": m.group(1),
            "group": m.group(1),
        })
    if bad:
        raise _bad_names("CREMA-D", bad, "SSSS_SEN_EMO_LV.wav (emotion ANG DIS FEA HAP NEU SAD, level LO MD HI XX)", root)
    return _finish("crema-d", root, rows, taxonomy, label_map or {}, {})


_IEMOCAP_LINE = re.compile(r"^\[(\d+(?:\.\d+)?) - (\d+(?:\.\d+)?)\]\t(\S+)\t(\S+)\t\[")
_IEMOCAP_UTT = re.compile(r"^(Ses0[1-5])[FM]_.+_([FM])[A-Za-z0-9]*$")


def load_iemocap(root: str, taxonomy: Taxonomy, label_map: dict | None = None) -> Corpus:
    """``SessionN/sentences/wav/<dialog>/<utt>.wav`` labeled by
    ``SessionN/dialog/EmoEvaluation/<dialog>.txt`` (``[start - end]<TAB>utt<TAB>class<TAB>[v, a, d]``).
    Speaker: ``Ses01F``; split group: the session (leave-one-session-out)."""
    expected = "Session1..Session5 folders, each with dialog/EmoEvaluation/*.txt and sentences/wav/<dialog>/<utt>.wav"
    root, sessions = _layout_dirs("IEMOCAP", root, r"Session[1-5]", expected)
    rows, bad, skipped = [], [], Counter()
    for session in sessions:
        eval_dir = os.path.join(root, session, "dialog", "EmoEvaluation")
        wav_dir = os.path.join(root, session, "sentences", "wav")
        txts = sorted(n for n in os.listdir(eval_dir) if n.endswith(".txt")) if os.path.isdir(eval_dir) else []
        if not txts or not os.path.isdir(wav_dir):
            raise DatasetLayoutError(
                f"{root} does not look like IEMOCAP: {session} needs dialog/EmoEvaluation/*.txt and sentences/wav/ ({expected})"
            )
        for txt in txts:
            with open(os.path.join(eval_dir, txt), encoding="utf-8", errors="replace") as f:
                for line in f:
                    if not line.startswith("["):
                        continue
                    m = _IEMOCAP_LINE.match(line)
                    utt = m.group(3) if m else None
                    um = _IEMOCAP_UTT.match(utt) if utt else None
                    if not m or not um or m.group(4) not in IEMOCAP_CLASSES:
                        bad.append(f"{session}/dialog/EmoEvaluation/{txt}: {line.strip()[:80]!r}")
                        continue
                    wav = os.path.join(wav_dir, utt.rsplit("_", 1)[0], utt + ".wav")
                    if not os.path.isfile(wav):
                        skipped["missing_audio"] += 1
                        continue
                    rows.append({
                        "utt_id": utt,
                        "uri": wav,
                        "source_label": m.group(4),
                        "speaker": um.group(1) + um.group(2),
                        "group": session,
                    })
    if bad:
        raise DatasetLayoutError(
            f"{root} does not look like IEMOCAP: {len(bad)} EmoEvaluation line(s) are not "
            f"'[start - end]<TAB>SesNN<F|M>_<dialog>_<F|M>NNN<TAB><class>[TAB][v, a, d]' with class in {list(IEMOCAP_CLASSES)}: "
            + "; ".join(bad[:3])
        )
    if not rows:
        raise DatasetLayoutError(f"{root}: IEMOCAP evaluation files list no utterance whose wav exists ({expected})")
    return _finish("iemocap", root, rows, taxonomy, label_map or {}, skipped)


def load_manifest(path: str, taxonomy: Taxonomy, label_map: dict | None = None) -> Corpus:
    """CSV, Parquet or JSONL with ``uri`` and ``label`` (+ optional ``speaker``, ``utt_id``,
    ``split``). Relative URIs are relative to the manifest's directory; labels are taxonomy
    label names or corpus classes mapped by ``label_map``."""
    import pyarrow.csv as pacsv
    import pyarrow.json as pajson
    import pyarrow.parquet as pq

    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isfile(path):
        raise DatasetLayoutError(f"manifest {path} is not a file (expected .csv, .parquet or .jsonl)")
    ext = os.path.splitext(path)[1].lower()
    try:
        if ext == ".csv":
            table = pacsv.read_csv(path)
        elif ext in (".parquet", ".pq"):
            table = pq.read_table(path)
        elif ext in (".jsonl", ".json", ".ndjson"):
            table = pajson.read_json(path)
        else:
            raise DatasetLayoutError(f"manifest {path}: unknown format {ext!r} (expected .csv, .parquet or .jsonl)")
    except (pa.ArrowInvalid, OSError) as exc:
        raise DatasetLayoutError(f"manifest {path}: cannot be read as {ext[1:]} ({exc})") from None
    missing = [c for c in ("uri", "label") if c not in table.column_names]
    if missing:
        raise DatasetLayoutError(f"manifest {path}: missing column(s) {missing}; it has {table.column_names} (needs uri, label; optional speaker, utt_id, split)")
    base = os.path.dirname(path)
    data = table.to_pydict()
    n = table.num_rows
    speakers = [None if s is None else str(s) for s in data.get("speaker", [None] * n)]
    splits = data.get("split")
    rows, skipped, bad_split = [], Counter(), []
    for i in range(n):
        uri, label = data["uri"][i], data["label"][i]
        if uri is None or label is None:
            skipped["null_uri_or_label"] += 1
            continue
        uri = str(uri)
        if "://" not in uri and not os.path.isabs(uri):
            uri = os.path.join(base, uri)
        row = {
            "utt_id": str(data["utt_id"][i]) if "utt_id" in data and data["utt_id"][i] is not None else str(data["uri"][i]),
            "uri": uri,
            "source_label": str(label),
            "speaker": speakers[i],
            "group": speakers[i],
        }
        if splits is not None:
            if splits[i] not in ("train", "val", "test"):
                bad_split.append(repr(splits[i]))
            row["split"] = splits[i]
        rows.append(row)
    if bad_split:
        raise DatasetLayoutError(f"manifest {path}: split must be train, val or test, got {sorted(set(bad_split))[:5]}")
    notes = [] if any(speakers) else ["no speaker column: the split is by utterance, not speaker-independent"]
    corpus = _finish("manifest", path, [{k: v for k, v in r.items() if k != "split"} for r in rows], taxonomy, label_map or {}, skipped, notes)
    if splits is not None:
        split_of = {r["utt_id"]: r["split"] for r in rows}
        corpus.table = corpus.table.append_column("split", pa.array([split_of[u] for u in corpus.table.column("utt_id").to_pylist()], pa.string()))
    return corpus


def load_corpus(kind: str, path: str, taxonomy: Taxonomy | str, label_map: dict | None = None, include_song: bool = False) -> Corpus:
    """Load any supported corpus; ``taxonomy`` is a name, a path or a loaded Taxonomy."""
    if isinstance(taxonomy, str):
        from labeler.taxonomy import load_taxonomy

        taxonomy = load_taxonomy(taxonomy)
    if kind == "ravdess":
        return load_ravdess(path, taxonomy, label_map, include_song)
    if kind == "crema-d":
        return load_cremad(path, taxonomy, label_map)
    if kind == "iemocap":
        return load_iemocap(path, taxonomy, label_map)
    if kind == "manifest":
        return load_manifest(path, taxonomy, label_map)
    raise DatasetLayoutError(f"unknown corpus kind {kind!r} (allowed: ravdess, crema-d, iemocap, manifest)")


# --------------------------------------------------------------------------- splits


def stable_unit(key: str, seed: int = 0) -> float:
    """A deterministic number in [0, 1) for ``key`` (same on every machine and run)."""
    digest = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def assign_splits(
    table: pa.Table,
    test_groups: list[str] | None = None,
    val_groups: list[str] | None = None,
    test_fraction: float = 0.2,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> pa.Table:
    """Add a ``split`` column (train / val / test) that never puts one group (speaker or
    session) in two splits. A table that already has ``split`` is returned unchanged."""
    if "split" in table.column_names:
        return table
    groups_col = table.column("group").to_pylist()
    utts = table.column("utt_id").to_pylist()
    by_utterance = all(g is None for g in groups_col)
    keys = utts if by_utterance else [g if g is not None else u for g, u in zip(groups_col, utts)]
    groups = sorted(set(keys), key=lambda g: stable_unit(g, seed))
    problems = []
    for name, given in (("test_groups", test_groups), ("val_groups", val_groups)):
        unknown = sorted(set(given or ()) - set(groups))
        if unknown:
            problems.append(f"{name}: {unknown} not found (groups: {sorted(groups)[:30]})")
    if problems:
        raise DatasetLayoutError("; ".join(problems))
    test = set(test_groups) if test_groups is not None else set(groups[: _share(len(groups), test_fraction)])
    rest = [g for g in groups if g not in test]
    val = set(val_groups) - test if val_groups is not None else set(rest[: _share(len(rest), val_fraction)])
    split = ["test" if k in test else "val" if k in val else "train" for k in keys]
    if "train" not in split:
        raise DatasetLayoutError(f"no group is left for training ({len(groups)} groups, test={sorted(test)}, val={sorted(val)})")
    return table.append_column("split", pa.array(split, pa.string()))


def _share(n: int, fraction: float) -> int:
    """round(n * fraction), but at least one when fraction > 0 and at least two groups remain."""
    if fraction <= 0 or n < 2:
        return 0
    return min(n - 1, max(1, round(n * fraction)))


def subsample(table: pa.Table, fraction: float, seed: int = 0) -> pa.Table:
    """Class-stratified share of ``table`` (at least one row per class). Deterministic and
    nested: the rows kept for a smaller fraction are among those kept for a larger one."""
    if fraction >= 1.0:
        return table
    labels = table.column("label_index").to_pylist()
    utts = table.column("utt_id").to_pylist()
    keep = []
    for cls in sorted(set(labels)):
        rows = sorted((i for i, lab in enumerate(labels) if lab == cls), key=lambda i: stable_unit(utts[i], seed))
        keep.extend(rows[: max(1, round(len(rows) * fraction))])
    return table.take(sorted(keep))
