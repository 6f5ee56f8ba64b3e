"""Weak labels against gold: ``lanser-label evaluate``.

A committed run's labels are matched to a small human-labeled **gold** file (CSV, Parquet
or JSONL) and measured: where each gold row went (labeled, abstained, error, unmatched),
how often the weak label is right (accuracy, unweighted accuracy, macro-F1, per label), how
far ``confidence`` can be trusted (expected calibration error, reliability bins), and which
``confidence`` or ``margin`` threshold reaches a target accuracy at what coverage, so
``abstain.min_confidence`` is set from evidence. With a ``text`` column in the gold file,
the run's scorer also labels the reference transcripts (the *text-only ceiling*), so the
report says how many points ASR costs against the scorer. Nothing is transcribed again.

    >>> from labeler.evaluate import evaluate_run, write_evaluation        # doctest: +SKIP
    >>> report = evaluate_run("out/", "gold.csv", label_map={"happy": "joy"})  # doctest: +SKIP
    >>> report["metrics"]["accuracy"], report["accuracy_coverage"]["confidence"]["threshold"]  # doctest: +SKIP
    (0.929, 0.5614)
    >>> write_evaluation("out/", report)                                  # doctest: +SKIP
    {'json': 'out/reports/<run_id>.eval.json', 'png': 'out/reports/<run_id>.eval.png'}

Gold rows are matched, in this order: by ``utt_id``; for a row with ``start_s``/``end_s``,
the run's utterance of the same ``uri`` (or ``source_id``, or the ``utt_id`` read as the
recording's id) that overlaps the gold span most, if the overlap is at least half the gold
span; else by ``uri`` (or ``source_id``) when the file is one row in the run. Each gold
row is counted exactly once in ``coverage``.

The functions below the entry points are pure (NumPy arrays in, numbers out) and tested
on hand-made arrays. matplotlib and the scorer's model are imported only when used.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import os
from collections import Counter
from decimal import ROUND_FLOOR, Decimal
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import pyarrow as pa

from labeler.errors import InputError
from labeler.io import is_local, join, local_path, redact

EVAL_VERSION = 1
GOLD_EXTENSIONS = (".csv", ".parquet", ".jsonl", ".json", ".ndjson")
#: Gold columns read as text (whatever a CSV or JSON reader guessed) and as seconds.
GOLD_TEXT_COLUMNS = ("utt_id", "uri", "source_id", "label", "text")
GOLD_SPAN_COLUMNS = ("start_s", "end_s")
#: Outcomes of a gold row, in the order they are decided (each row gets exactly one).
OUTCOMES = ("gold_label_unknown", "unmatched", "labeled", "abstained", "error")
#: The labels-table columns an evaluation reads.
RUN_COLUMNS = ["utt_id", "uri", "source_id", "start_s", "end_s", "status", "label", "confidence", "margin", "scores",
               "abstain_reason", "error", "text"]
MIN_OVERLAP = 0.5  # of the gold span, for a gold row with start_s/end_s
ECE_BINS = 10


# ----------------------------------------------------------------------------- entry points


def evaluate_run(root: str, gold_path: str, run_id: Optional[str] = None, taxonomy: Optional[str] = None,
                 label_map: Optional[Mapping[str, str]] = None, target_accuracy: float = 0.8,
                 text_ceiling: Optional[bool] = None, device: Optional[str] = None, text_scorer=None) -> dict[str, Any]:
    """Evaluate a committed run under ``root`` against the gold file ``gold_path``.

    ``run_id`` names the run (default: the newest committed label or relabel run, of
    ``taxonomy`` when given: a name, or a taxonomy YAML whose name and version must match).
    ``label_map`` maps gold label names to taxonomy labels (case-insensitive on both sides).
    ``text_ceiling``: None = when the gold file has a ``text`` column; the run's scorer is
    built from its manifest (``device`` overrides ``scorer.device``), or ``text_scorer`` (a
    :class:`~labeler.models.base.Scorer`) is used as given. Returns the report (a dict that
    :func:`write_evaluation` writes and :func:`summary_lines` prints); problems of the
    inputs as a whole raise :class:`~labeler.errors.InputError` (one line).
    """
    from labeler.runs import read_run_rows

    if not 0.0 < float(target_accuracy) <= 1.0:
        raise InputError(f"--target-accuracy must be in (0, 1], got {target_accuracy}")
    manifest = find_run(root, run_id, taxonomy)
    tax = manifest["taxonomy"]
    names: list[str] = list(tax["labels"])
    gold = read_gold(gold_path)
    mapping = resolve_label_map(label_map or {}, names)
    if text_ceiling and "text" not in gold.column_names:
        raise InputError(f"--text-ceiling needs a 'text' column (the reference transcript) in the gold file {redact(gold_path)}; "
                         f"its columns: {gold.column_names}")
    use_text = ("text" in gold.column_names) if text_ceiling is None else bool(text_ceiling)

    gold_true, unknown = map_gold_labels(gold.column("label").to_pylist(), names, mapping)
    rows = read_run_rows(root, manifest, RUN_COLUMNS)
    match, reasons = match_gold(gold, rows, base=_parent(gold_path))

    n_gold = gold.num_rows
    status = rows.column("status").to_pylist()
    outcome: list[str] = []
    for g in range(n_gold):
        if gold_true[g] < 0:
            outcome.append("gold_label_unknown")
        elif match[g] < 0:
            outcome.append("unmatched")
        else:
            outcome.append(status[match[g]])
    evaluated = np.array([o in ("labeled", "abstained", "error") for o in outcome])
    labeled = np.array([o == "labeled" for o in outcome])

    index = {n: i for i, n in enumerate(names)}
    row_label = rows.column("label").to_pylist()
    conf_col = rows.column("confidence").to_pylist()
    scores_col = rows.column("scores").to_pylist()
    lab = np.flatnonzero(labeled)
    y_true = np.array([gold_true[g] for g in lab], dtype=np.int64)
    y_pred = np.array([index[row_label[match[g]]] for g in lab], dtype=np.int64)
    conf = np.array([conf_col[match[g]] for g in lab], dtype=np.float32)
    cm = confusion_matrix(y_true, y_pred, len(names))

    # Rows the scorer scored: labeled, and abstained for low confidence (their scores are
    # kept), so the curve also shows what a lower abstain.min_confidence would give.
    scored = [g for g in np.flatnonzero(evaluated) if scores_col[match[g]] is not None]
    probs = np.array([scores_col[match[g]] for g in scored], dtype=np.float32).reshape(len(scored), len(names))
    s_top, s_margin = top_and_margin(probs)
    s_correct = probs.argmax(axis=1) == np.array([gold_true[g] for g in scored], dtype=np.int64) if scored else np.zeros(0, bool)
    n_eval = int(evaluated.sum())

    reason_col, error_col = rows.column("abstain_reason").to_pylist(), rows.column("error").to_pylist()
    abstain_reasons = Counter(reason_col[match[g]] or "other" for g in range(n_gold) if outcome[g] == "abstained")
    error_stages = Counter(_error_stage(error_col[match[g]]) for g in range(n_gold) if outcome[g] == "error")
    warnings = []
    if unknown:
        listed = ", ".join(f"{k} {v}" for k, v in unknown.most_common())
        warnings.append(f"{sum(unknown.values())} gold row(s) have a label that is not in taxonomy {tax['name']} v{tax['version']} "
                        f"and not mapped ({listed}); they are left out: map them with --map GOLD=LABEL (labels: {', '.join(names)})")
    n_unmatched = outcome.count("unmatched")
    if n_unmatched:
        why = Counter(r for g, r in enumerate(reasons) if outcome[g] == "unmatched")
        warnings.append(f"{n_unmatched} of {n_gold} gold row(s) match no row of run {manifest['run_id']} "
                        f"({', '.join(f'{k} {v}' for k, v in why.most_common())})")

    report: dict[str, Any] = {
        "eval_version": EVAL_VERSION,
        "run_id": manifest["run_id"],
        "kind": manifest.get("kind"),
        "taxonomy": {"name": tax["name"], "version": tax["version"], "labels": names},
        "models": {"asr": manifest.get("models", {}).get("asr"), "scorer": manifest.get("models", {}).get("scorer")},
        "gold": {"path": redact(gold_path), "sha256": _sha256(gold_path), "rows": n_gold, "columns": gold.column_names,
                 "label_map": mapping},
        "coverage": {
            "gold_rows": n_gold,
            **{k: outcome.count(k) for k in ("labeled", "abstained", "error", "unmatched", "gold_label_unknown")},
            "evaluated_rows": n_eval,
            "abstain_reasons": dict(abstain_reasons.most_common()),
            "error_stages": dict(error_stages.most_common()),
            "unmatched_reasons": dict(Counter(r for g, r in enumerate(reasons) if outcome[g] == "unmatched").most_common()),
            "unknown_gold_labels": dict(unknown.most_common()),
        },
        "metrics": {**classification_metrics(cm, names), "confusion_matrix": {"labels": names, "rows": "gold", "columns": "predicted",
                                                                               "counts": cm.tolist()}},
        "calibration": calibration(conf, y_true == y_pred, ECE_BINS),
        "accuracy_coverage": {
            "target_accuracy": float(target_accuracy),
            "evaluated_rows": n_eval,
            "scored_rows": len(scored),
            "confidence": accuracy_coverage(s_top, s_correct, n_eval, target_accuracy),
            "margin": accuracy_coverage(s_margin, s_correct, n_eval, target_accuracy),
        },
        "text_ceiling": None,
        "warnings": warnings,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(),
    }
    text_labels: dict[int, str] = {}
    if use_text:
        audio_pred = [index[row_label[m]] if m >= 0 and row_label[m] is not None else None for m in match]
        report["text_ceiling"], text_labels = text_ceiling_report(manifest, gold.column("text").to_pylist(), gold_true, outcome,
                                                                  audio_pred, device=device, scorer=text_scorer)
    report["rows"] = _row_details(gold, rows, names, gold_true, outcome, match, reasons, text_labels)
    return report


def write_evaluation(root: str, report: dict[str, Any], json_path: Optional[str] = None) -> dict[str, str]:
    """Write the evaluation JSON and PNG: ``reports/<run_id>.eval.json`` and ``.eval.png``
    under ``root``, or ``json_path`` and the PNG beside it. Returns both paths."""
    from labeler.io import write_bytes_atomic, write_json_atomic

    paths = eval_paths(root, report["run_id"]) if json_path is None else {
        "json": json_path, "png": (json_path[:-5] if json_path.endswith(".json") else json_path) + ".png"}
    write_json_atomic(paths["json"], report)
    write_bytes_atomic(paths["png"], render_png(report))
    return paths


def eval_paths(root: str, run_id: str) -> dict[str, str]:
    return {"json": join(root, "reports", f"{run_id}.eval.json"), "png": join(root, "reports", f"{run_id}.eval.png")}


# ----------------------------------------------------------------------------- inputs


def find_run(root: str, run_id: Optional[str] = None, taxonomy: Optional[str] = None) -> dict[str, Any]:
    """The committed label/relabel run to evaluate: ``run_id``, or the newest (of ``taxonomy``)."""
    from labeler.runs import committed_runs, find_committed

    want = _taxonomy_wanted(taxonomy) if taxonomy else None
    if run_id:
        m = find_committed(root, run_id)
        if want and not _taxonomy_matches(m["taxonomy"], want):
            raise InputError(f"run {run_id} is of taxonomy {m['taxonomy']['name']} v{m['taxonomy']['version']}, not {taxonomy}")
        return m
    runs = [m for m in committed_runs(root) if not want or _taxonomy_matches(m["taxonomy"], want)]
    if not runs:
        raise InputError(f"no committed run{' of taxonomy ' + taxonomy if taxonomy else ''} under {redact(root)}")
    return runs[-1]


def _taxonomy_wanted(taxonomy: str) -> tuple[str, Optional[str]]:
    """(name, version or None): a name matches any version, a taxonomy file its name and version."""
    if taxonomy.endswith((".yaml", ".yml")) or os.sep in taxonomy:
        from labeler.taxonomy import load_taxonomy

        t = load_taxonomy(taxonomy)
        return t.name, t.version
    return taxonomy, None


def _taxonomy_matches(run_tax: dict[str, Any], want: tuple[str, Optional[str]]) -> bool:
    return run_tax["name"] == want[0] and (want[1] is None or str(run_tax["version"]) == want[1])


def read_gold(path: str) -> pa.Table:
    """The gold file as a table: ``label``, one of ``utt_id``/``uri``/``source_id``, optional
    ``start_s``/``end_s`` (both) and ``text``; ids and labels as strings, spans as seconds.
    Whatever makes it unusable as a whole is one :class:`InputError`."""
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv
    import pyarrow.json as pajson
    import pyarrow.parquet as pq

    from labeler.io import read_small_file

    lower = path.lower().split("?")[0]
    if not lower.endswith(GOLD_EXTENSIONS):
        raise InputError(f"gold file {redact(path)}: expected {', '.join(GOLD_EXTENSIONS)}")
    data = read_small_file(path, "gold file")
    if not data.strip():
        raise InputError(f"gold file {redact(path)} is empty: it needs a 'label' column and 'utt_id' or 'uri' (see README, Measuring label quality)")
    buf = pa.BufferReader(data)
    try:
        if lower.endswith(".parquet"):
            table = pq.read_table(buf)
        elif lower.endswith(".csv"):
            table = pacsv.read_csv(buf, convert_options=pacsv.ConvertOptions(
                column_types={**{c: pa.string() for c in GOLD_TEXT_COLUMNS}, **{c: pa.float64() for c in GOLD_SPAN_COLUMNS}}))
        else:
            table = pajson.read_json(buf)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"malformed gold file {redact(path)}: {' '.join(str(exc).split())}") from None
    cols = table.column_names
    if "label" not in cols:
        raise InputError(f"gold file {redact(path)} has no 'label' column (columns: {cols})")
    if not {"utt_id", "uri", "source_id"} & set(cols):
        raise InputError(f"gold file {redact(path)} needs a 'utt_id' or 'uri' column to match the run's rows (columns: {cols})")
    if ("start_s" in cols) != ("end_s" in cols):
        raise InputError(f"gold file {redact(path)}: 'start_s' and 'end_s' go together (columns: {cols})")
    if table.num_rows == 0:
        raise InputError(f"gold file {redact(path)} has no rows")
    out = {}
    for c in cols:
        col = table.column(c)
        try:
            if c in GOLD_TEXT_COLUMNS:
                col = col.cast(pa.string())
            elif c in GOLD_SPAN_COLUMNS:
                col = col.cast(pa.float64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise InputError(f"gold file {redact(path)}: column {c!r} ({col.type}) cannot be read as "
                             f"{'text' if c in GOLD_TEXT_COLUMNS else 'seconds'}: {exc}") from None
        if c in GOLD_TEXT_COLUMNS and c != "text":  # "" and "  " are missing values
            col = pc.if_else(pc.equal(pc.utf8_trim_whitespace(col), ""), pa.scalar(None, pa.string()), pc.utf8_trim_whitespace(col))
        out[c] = col
    return pa.table(out)


def parse_label_map(pairs: Sequence[str] = (), file: Optional[str] = None) -> dict[str, str]:
    """``--map happy=joy,angry=anger`` (repeatable) and ``--map-file`` (a YAML or JSON
    mapping, gold name -> taxonomy label) as one dict; the flags win over the file."""
    import yaml

    out: dict[str, str] = {}
    if file:
        try:
            with open(local_path(file), encoding="utf-8") as f:
                data = yaml.safe_load(f)
        except FileNotFoundError:
            raise InputError(f"label map file not found: {file}") from None
        except (OSError, yaml.YAMLError) as exc:
            raise InputError(f"label map file {file}: not valid YAML or JSON: {' '.join(str(exc).split())}") from None
        if not isinstance(data, dict) or not all(isinstance(k, (str, int)) and isinstance(v, (str, int)) for k, v in data.items()):
            raise InputError(f"label map file {file}: must be a mapping of gold label -> taxonomy label, got {data!r}"[:300])
        out.update({str(k): str(v) for k, v in data.items()})
    for text in pairs:
        for item in filter(None, (p.strip() for p in text.split(","))):
            key, sep, val = item.partition("=")
            if not sep or not key.strip() or not val.strip():
                raise InputError(f"--map expects GOLD=LABEL[,GOLD=LABEL...], got {item!r}")
            out[key.strip()] = val.strip()
    return out


def resolve_label_map(mapping: Mapping[str, str], names: Sequence[str]) -> dict[str, str]:
    """Lower-cased gold name -> taxonomy label; a target not in the taxonomy is an error."""
    by_lower = {n.lower(): n for n in names}
    bad = sorted(v for v in mapping.values() if v.strip().lower() not in by_lower)
    if bad:
        raise InputError(f"--map targets not in the run's taxonomy: {', '.join(bad)} (its labels: {', '.join(names)})")
    return {k.strip().lower(): by_lower[v.strip().lower()] for k, v in mapping.items()}


def map_gold_labels(labels: Sequence[Optional[str]], names: Sequence[str], mapping: Mapping[str, str]) -> tuple[list[int], Counter]:
    """Each gold label's index in ``names`` (mapped first, then by name; case-insensitive),
    or -1; and the unknown gold labels with their counts (a missing label is ``(empty)``)."""
    index = {n.lower(): i for i, n in enumerate(names)}
    out, unknown = [], Counter()
    for raw in labels:
        key = (raw or "").strip().lower()
        name = mapping.get(key, key)
        i = index.get(name.lower(), -1)
        out.append(i)
        if i < 0:
            unknown[(raw or "").strip() or "(empty)"] += 1
    return out, unknown


# ----------------------------------------------------------------------------- matching


def match_gold(gold: pa.Table, rows: pa.Table, base: Optional[str] = None, min_overlap: float = MIN_OVERLAP) -> tuple[list[int], list[Optional[str]]]:
    """For each gold row, the index of its row in ``rows`` (a run's labels) or -1, and why
    not: ``not_in_run``, ``recording_has_utterances`` (a whole-file gold row for a recording
    cut into several utterances: give ``start_s``/``end_s``), ``overlap_below_half``,
    ``invalid_span``, ``no_id``. Relative local gold URIs are read against ``base``.

    A run row without a span (a file's error row) covers the whole file."""
    def col(t: pa.Table, name: str) -> list:
        return t.column(name).to_pylist() if name in t.column_names else [None] * t.num_rows

    r_utt, r_uri, r_src = col(rows, "utt_id"), col(rows, "uri"), col(rows, "source_id")
    r_start, r_end = col(rows, "start_s"), col(rows, "end_s")
    by_utt = {u: i for i, u in enumerate(r_utt)}
    by_uri: dict[str, list[int]] = {}
    by_src: dict[str, list[int]] = {}
    for i, (u, s) in enumerate(zip(r_uri, r_src)):
        if u is not None:
            by_uri.setdefault(_norm_uri(u), []).append(i)
        if s is not None:
            by_src.setdefault(s, []).append(i)

    g_utt, g_uri, g_src = col(gold, "utt_id"), col(gold, "uri"), col(gold, "source_id")
    g_start, g_end = col(gold, "start_s"), col(gold, "end_s")
    found, why = [], []
    for g in range(gold.num_rows):
        if g_utt[g] is not None and g_utt[g] in by_utt:
            found.append(by_utt[g_utt[g]])
            why.append(None)
            continue
        if g_uri[g] is not None:
            cands = by_uri.get(_norm_uri(g_uri[g], base), [])
        elif g_src[g] is not None:
            cands = by_src.get(g_src[g], [])
        elif g_utt[g] is not None:
            cands = by_src.get(g_utt[g], []) if g_start[g] is not None else []
        else:
            found.append(-1)
            why.append("no_id")
            continue
        if not cands:
            found.append(-1)
            why.append("not_in_run")
        elif g_start[g] is not None or g_end[g] is not None:
            s, e = g_start[g], g_end[g]
            if s is None or e is None or not e > s:
                found.append(-1)
                why.append("invalid_span")
                continue
            best, best_ov = -1, 0.0
            for i in sorted(cands, key=lambda i: (r_start[i] if r_start[i] is not None else 0.0)):
                rs = r_start[i] if r_start[i] is not None else 0.0
                re_ = r_end[i] if r_end[i] is not None else float("inf")
                ov = min(e, re_) - max(s, rs)
                if ov > best_ov:
                    best, best_ov = i, ov
            if best >= 0 and best_ov >= min_overlap * (e - s):
                found.append(best)
                why.append(None)
            else:
                found.append(-1)
                why.append("overlap_below_half")
        elif len(cands) == 1:
            found.append(cands[0])
            why.append(None)
        else:
            found.append(-1)
            why.append("recording_has_utterances")
    return found, why


def _norm_uri(uri: str, base: Optional[str] = None) -> str:
    """Local paths absolute and normalized (a relative one read against ``base``); other
    URIs redacted, as the labels table stores them."""
    u = uri.strip()
    if is_local(u):
        p = local_path(u)
        if not os.path.isabs(p) and base is not None:
            if not is_local(base):
                return redact(base.rstrip("/") + "/" + p)
            p = os.path.join(base, p)
        return os.path.normpath(os.path.abspath(p))
    return redact(u)


def _parent(path: str) -> str:
    if is_local(path):
        return os.path.dirname(os.path.abspath(local_path(path)))
    return path.rsplit("/", 1)[0]


# ----------------------------------------------------------------------------- metrics (pure)


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, k: int) -> np.ndarray:
    """``cm[i, j]``: rows of gold label ``i`` given label ``j`` (int64, ``k`` x ``k``)."""
    y_true = np.asarray(y_true, dtype=np.int64).reshape(-1)
    y_pred = np.asarray(y_pred, dtype=np.int64).reshape(-1)
    return np.bincount(y_true * k + y_pred, minlength=k * k).reshape(k, k)


def classification_metrics(cm: np.ndarray, names: Sequence[str]) -> dict[str, Any]:
    """Accuracy, unweighted accuracy (mean recall over labels present in gold), macro-F1
    (over labels present in gold or predictions: scikit-learn's convention) and per label
    precision, recall, F1, gold support and predicted count. Labels absent from both
    count nowhere, so a taxonomy label the gold set never uses does not drag scores down."""
    cm = np.asarray(cm, dtype=np.int64)
    support, predicted, tp = cm.sum(axis=1), cm.sum(axis=0), np.diag(cm)
    total = int(cm.sum())
    recall = np.divide(tp, support, out=np.zeros(len(tp)), where=support > 0)
    precision = np.divide(tp, predicted, out=np.zeros(len(tp)), where=predicted > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(len(tp)), where=denom > 0)
    present, seen = support > 0, (support > 0) | (predicted > 0)
    return {
        "n": total,
        "correct": int(tp.sum()),
        "accuracy": float(tp.sum() / total) if total else None,
        "unweighted_accuracy": float(recall[present].mean()) if present.any() else None,
        "macro_f1": float(f1[seen].mean()) if seen.any() else None,
        "per_label": {n: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                          "support": int(support[i]), "predicted": int(predicted[i])} for i, n in enumerate(names)},
    }


def calibration(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> dict[str, Any]:
    """Expected calibration error over ``bins`` equal-width confidence bins (the last one
    closed: a confidence of 1.0 falls in it): the row-weighted mean of
    ``|accuracy - mean confidence|`` per bin; and each bin's rows, accuracy, mean confidence
    (the reliability diagram)."""
    conf = np.asarray(confidence, dtype=np.float64).reshape(-1)
    ok = np.asarray(correct, dtype=bool).reshape(-1)
    which = np.clip(np.floor(conf * bins).astype(np.int64), 0, bins - 1)
    out, ece = [], 0.0
    for b in range(bins):
        sel = which == b
        n = int(sel.sum())
        acc = float(ok[sel].mean()) if n else None
        mean = float(conf[sel].mean()) if n else None
        if n:
            ece += n / len(conf) * abs(acc - mean)
        out.append({"low": b / bins, "high": (b + 1) / bins, "rows": n, "accuracy": acc, "mean_confidence": mean})
    return {"bins": bins, "rows": int(len(conf)), "ece": float(ece) if len(conf) else None, "reliability": out}


def top_and_margin(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Top probability and top minus runner-up per row (float32, as the labels table has them)."""
    probs = np.asarray(probs, dtype=np.float32)
    if probs.shape[0] == 0:
        return np.zeros(0, np.float32), np.zeros(0, np.float32)
    part = np.sort(probs, axis=1)
    second = part[:, -2] if probs.shape[1] > 1 else np.zeros(len(probs), np.float32)
    return part[:, -1], part[:, -1] - second


def accuracy_coverage(values: np.ndarray, correct: np.ndarray, total: int, target: float) -> dict[str, Any]:
    """The accuracy-coverage curve of a per-row score (``confidence`` or ``margin``): rows
    sorted by it, descending; at each distinct value ``t``, the rows with a score >= ``t``,
    their share of ``total`` (coverage) and their accuracy. The threshold for ``target`` is
    the lowest ``t`` whose accuracy reaches it (the most coverage), or none (not reachable).
    ``suggested`` is a short decimal <= ``t`` that keeps exactly the same rows."""
    v = np.asarray(values, dtype=np.float32).reshape(-1)
    ok = np.asarray(correct, dtype=bool).reshape(-1)
    order = np.argsort(-v, kind="stable")
    v, ok = v[order], ok[order]
    hits = np.cumsum(ok)
    last = np.flatnonzero(np.r_[v[1:] != v[:-1], True]) if len(v) else np.zeros(0, np.int64)
    points = [{"threshold": float(v[i]), "rows": int(i + 1), "coverage": (i + 1) / total if total else None,
               "accuracy": float(hits[i] / (i + 1))} for i in last]
    out: dict[str, Any] = {"points": points, "reachable": False, "threshold": None, "rows": 0, "coverage": None,
                           "accuracy": None, "suggested": None}
    reach = [k for k, p in enumerate(points) if p["accuracy"] >= target - 1e-12]
    if reach:
        k = reach[-1]
        below = float(v[last[k] + 1]) if last[k] + 1 < len(v) else None
        out.update(reachable=True, threshold=points[k]["threshold"], rows=points[k]["rows"], coverage=points[k]["coverage"],
                   accuracy=points[k]["accuracy"], suggested=short_threshold(points[k]["threshold"], below))
    return out


def short_threshold(t: float, below: Optional[float]) -> float:
    """The shortest decimal ``x <= t`` (two places at least) with no value in ``[x, t)``: ``score >= x`` keeps the
    same rows as ``score >= t`` (``below`` is the next lower value), compared in float32 as
    the entail stage compares ``abstain.min_confidence`` and in float64 as SQL does."""
    exact = Decimal(float(t))
    for digits in range(2, 10):
        x = float(exact.quantize(Decimal(1).scaleb(-digits), rounding=ROUND_FLOOR))
        if below is None or (x > below and np.float32(x) > np.float32(below)):
            return x
    return float(t)


# ----------------------------------------------------------------------------- text ceiling


def text_ceiling_report(manifest: dict[str, Any], texts: Sequence[Optional[str]], gold_true: Sequence[int], outcome: Sequence[str],
                        audio_pred: Sequence[Optional[int]], device: Optional[str] = None,
                        scorer=None) -> tuple[dict[str, Any], dict[int, str]]:
    """The run's scorer on the gold rows' reference transcripts (rows with a known gold
    label and a non-empty ``text``): its metrics on all of them, and on the rows also
    labeled on audio, text against audio (the points ASR costs). Also returns the label the
    text got, by gold row."""
    tax = manifest["taxonomy"]
    names = list(tax["labels"])
    rows = [g for g, t in enumerate(texts) if gold_true[g] >= 0 and t is not None and t.strip()]
    premises = [texts[g].strip() for g in rows]  # as the entail stage strips a transcript
    name = manifest.get("models", {}).get("scorer")
    probs = score_texts(manifest, premises, device=device, scorer=scorer) if rows else np.zeros((0, len(names)), np.float32)
    pred = probs.argmax(axis=1) if len(rows) else np.zeros(0, np.int64)
    truth = np.array([gold_true[g] for g in rows], dtype=np.int64)
    all_m = classification_metrics(confusion_matrix(truth, pred, len(names)), names)
    paired = [k for k, g in enumerate(rows) if outcome[g] == "labeled"]
    t_m = classification_metrics(confusion_matrix(truth[paired], pred[paired], len(names)), names)
    a_pred = np.array([audio_pred[rows[k]] for k in paired], dtype=np.int64)
    a_m = classification_metrics(confusion_matrix(truth[paired], a_pred, len(names)), names)

    def pts(a, b):
        return round(100 * (a - b), 2) if a is not None and b is not None else None

    keep = ("n", "correct", "accuracy", "unweighted_accuracy", "macro_f1")
    report = {
        "scorer": name,
        "rows_with_text": len(rows),
        "text": {k: all_m[k] for k in (*keep, "per_label")},
        "paired": {
            "rows": len(paired),
            "text": {k: t_m[k] for k in keep},
            "audio": {k: a_m[k] for k in keep},
            # text minus audio, in percentage points: what ASR costs on these rows
            "asr_cost_points": {k: pts(t_m[k], a_m[k]) for k in ("accuracy", "unweighted_accuracy", "macro_f1")},
        },
    }
    return report, {g: names[int(p)] for g, p in zip(rows, pred)}


def score_texts(manifest: dict[str, Any], texts: Sequence[str], device: Optional[str] = None, scorer=None) -> np.ndarray:
    """Label probabilities of ``texts`` against the run's hypotheses, in-process (no Ray):
    ``scorer`` as given, or the run's own scorer rebuilt from its manifest's ``config.scorer``."""
    tax = manifest["taxonomy"]
    owned = scorer is None
    if owned:
        from labeler.config import ScorerConfig
        from labeler.errors import ConfigError
        from labeler.models.factory import make_scorer
        from pydantic import ValidationError

        data = dict((manifest.get("config") or {}).get("scorer") or {})
        if not data:
            raise InputError(f"run {manifest['run_id']}: its manifest has no scorer config to build the text ceiling from "
                             "(use --no-text-ceiling)")
        if device:
            data["device"] = device
        try:
            cfg = ScorerConfig.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(f"run {manifest['run_id']}: its scorer config cannot be rebuilt: {' '.join(str(exc).split())}") from None
        scorer = make_scorer(cfg)
    try:
        from labeler.models.base import ensemble_probs, flatten_sets
        from labeler.taxonomy import hypothesis_sets_of

        flat, index = flatten_sets(hypothesis_sets_of(tax))  # a template ensemble's templates averaged, as the run did
        raw = scorer.score(list(texts), flat).raw
        return ensemble_probs(scorer.backend, raw, index, scorer.temperature)[0]
    finally:
        if owned:
            scorer.close()


# ----------------------------------------------------------------------------- details, summary, figure


def _row_details(gold: pa.Table, rows: pa.Table, names: Sequence[str], gold_true: Sequence[int], outcome: Sequence[str],
                 match: Sequence[int], reasons: Sequence[Optional[str]], text_labels: Mapping[int, str]) -> list[dict[str, Any]]:
    """One entry per gold row: its id, gold label, outcome, and the run's row it matched."""
    def col(t: pa.Table, name: str) -> list:
        return t.column(name).to_pylist() if name in t.column_names else [None] * t.num_rows

    g_id = [u or s or (redact(r) if r else None) for u, r, s in zip(col(gold, "utt_id"), col(gold, "uri"), col(gold, "source_id"))]
    g_label, g_text = col(gold, "label"), col(gold, "text")
    g_start, g_end = col(gold, "start_s"), col(gold, "end_s")
    r = {c: rows.column(c).to_pylist() for c in ("utt_id", "label", "confidence", "margin", "text", "abstain_reason", "error")}
    out = []
    for g in range(gold.num_rows):
        m = match[g]
        item = {"gold_row": g, "gold_id": g_id[g], "gold_label": g_label[g], "gold": names[gold_true[g]] if gold_true[g] >= 0 else None,
                "outcome": outcome[g], "unmatched_reason": reasons[g] if outcome[g] == "unmatched" else None}
        if g_start[g] is not None:
            item.update(gold_start_s=g_start[g], gold_end_s=g_end[g])
        if m >= 0:
            conf, marg = r["confidence"][m], r["margin"][m]
            item.update(utt_id=r["utt_id"][m], label=r["label"][m], correct=(r["label"][m] == item["gold"]) if r["label"][m] and item["gold"] else None,
                        confidence=conf, margin=marg, transcript=r["text"][m], abstain_reason=r["abstain_reason"][m], error=r["error"][m])
        if g_text[g] is not None:
            item["reference_text"] = g_text[g]
        if g in text_labels:
            item["text_label"] = text_labels[g]
        out.append(item)
    return out


def _error_stage(error: Optional[str]) -> str:
    return (error or "other").split(":", 1)[0].strip() or "other"


def _sha256(path: str) -> Optional[str]:
    from labeler.io import open_input_stream

    try:
        with open_input_stream(path) as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return None


def _f(x: Optional[float], digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def summary_lines(report: dict[str, Any], paths: Optional[dict[str, str]] = None, mistakes: int = 5) -> list[str]:
    """The evaluation for a person: coverage, the headline numbers, a per-label table, the
    confusion matrix (up to 12 labels), the thresholds, the text ceiling, the most
    confident mistakes, and where the files are."""
    c, m, cal = report["coverage"], report["metrics"], report["calibration"]
    tax = report["taxonomy"]
    names = tax["labels"]
    lines = [f"evaluation of run {report['run_id']} ({tax['name']} v{tax['version']}, scorer {report['models']['scorer']}) "
             f"against {report['gold']['path']}"]

    def part(key: str, detail: dict) -> str:
        inner = ", ".join(f"{k} {v}" for k, v in detail.items())
        return f"{key.replace('_', ' ')} {c[key]}" + (f" ({inner})" if c[key] and inner else "")

    lines.append(f"gold rows: {c['gold_rows']} -> labeled {c['labeled']}, " + ", ".join([
        part("abstained", c["abstain_reasons"]), part("error", c["error_stages"]), part("unmatched", c["unmatched_reasons"]),
        part("gold_label_unknown", c["unknown_gold_labels"])]))
    if not m["n"]:
        lines.append("no gold row was labeled by the run: nothing to measure")
    else:
        lines.append(f"accuracy {_f(m['accuracy'])} ({m['correct']}/{m['n']})   unweighted accuracy {_f(m['unweighted_accuracy'])}   "
                     f"macro-F1 {_f(m['macro_f1'])}   ECE {_f(cal['ece'])} ({cal['bins']} bins)")
        w = max(len("label"), *(len(n) for n in names))
        lines.append(f"  {'label':<{w}}  {'gold':>4}  {'pred':>4}  {'precision':>9}  {'recall':>6}  {'f1':>5}")
        for n in names:
            p = m["per_label"][n]
            lines.append(f"  {n:<{w}}  {p['support']:>4}  {p['predicted']:>4}  {p['precision']:>9.3f}  {p['recall']:>6.3f}  {p['f1']:>5.3f}")
        if len(names) <= 12:
            cm = m["confusion_matrix"]["counts"]
            short = [n[:4] for n in names]
            lines.append("confusion (rows: gold, columns: given label)")
            lines.append(f"  {'':<{w}}  " + " ".join(f"{s:>4}" for s in short))
            for n, row in zip(names, cm):
                lines.append(f"  {n:<{w}}  " + " ".join(f"{(v if v else '.'):>4}" for v in row))
    ac = report["accuracy_coverage"]
    lines.append(f"accuracy-coverage, target accuracy {ac['target_accuracy']:.2f} ({ac['scored_rows']} scored of "
                 f"{ac['evaluated_rows']} evaluated rows):")
    for key, setting in (("confidence", "set abstain.min_confidence: {x}"), ("margin", "keep rows with margin >= {x}")):
        a = ac[key]
        if a["reachable"]:
            lines.append(f"  {key:<10} >= {a['threshold']:.4f}: {a['rows']} rows, coverage {a['coverage']:.1%}, accuracy "
                         f"{a['accuracy']:.3f} -> {setting.format(x=a['suggested'])}")
        else:
            best = max(a["points"], key=lambda p: p["accuracy"], default=None)
            lines.append(f"  {key:<10} not reachable" + (f" (best accuracy {best['accuracy']:.3f}, at >= {best['threshold']:.4f})" if best else ""))
    tc = report.get("text_ceiling")
    if tc is not None:
        p = tc["paired"]
        lines.append(f"text ceiling (the run's scorer on the gold transcripts): {tc['rows_with_text']} rows with text, accuracy "
                     f"{_f(tc['text']['accuracy'])}, unweighted accuracy {_f(tc['text']['unweighted_accuracy'])}")
        if p["rows"]:
            cost = p["asr_cost_points"]
            lines.append(f"  on the {p['rows']} rows also labeled on audio: accuracy text {_f(p['text']['accuracy'])} vs audio "
                         f"{_f(p['audio']['accuracy'])} (ASR costs {cost['accuracy']:+.1f} points), unweighted accuracy text "
                         f"{_f(p['text']['unweighted_accuracy'])} vs audio {_f(p['audio']['unweighted_accuracy'])} "
                         f"({cost['unweighted_accuracy']:+.1f} points)")
    wrong = sorted((r for r in report.get("rows", []) if r.get("correct") is False), key=lambda r: -(r.get("confidence") or 0))
    if wrong and mistakes > 0:
        lines.append("most confident mistakes:")
        wid = min(max(len(str(r["gold_id"])) for r in wrong[:mistakes]), 32)
        for r in wrong[:mistakes]:
            text = r.get("transcript") or ""
            text = text if len(text) <= 60 else text[:57] + "..."
            lines.append(f"  {str(r['gold_id'])[:wid]:<{wid}}  gold {r['gold']:<10} given {r['label']:<10} {r['confidence']:.2f}  {text}")
    if paths:
        lines.append(f"evaluation:  {'  '.join(redact(p) for p in paths.values())}")
    return lines


def render_png(report: dict[str, Any]) -> bytes:
    """A 3x2 figure: confusion matrix, per-label precision/recall, reliability diagram,
    accuracy-coverage curves (confidence, margin) with the target, where the gold rows
    went, and accuracy on audio against the text ceiling."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    tax = report["taxonomy"]
    names = tax["labels"]
    m, c, cal, ac = report["metrics"], report["coverage"], report["calibration"], report["accuracy_coverage"]
    k = len(names)
    fig = Figure(figsize=(14, max(13, 9 + 0.3 * k)), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    fig.suptitle(f"lanser evaluation of run {report['run_id']}  -  {tax['name']} v{tax['version']}  -  scorer {report['models']['scorer']}\n"
                 f"gold {report['gold']['path']}: {c['gold_rows']} rows, {m['n']} labeled  |  accuracy {_f(m['accuracy'])}  "
                 f"UA {_f(m['unweighted_accuracy'])}  macro-F1 {_f(m['macro_f1'])}  ECE {_f(cal['ece'])}", fontsize=11)
    ax_cm, ax_pr, ax_rel, ax_cov, ax_out, ax_txt = fig.subplots(3, 2).ravel()

    cm = np.asarray(m["confusion_matrix"]["counts"], dtype=np.float64)
    share = np.divide(cm, cm.sum(axis=1, keepdims=True), out=np.zeros_like(cm), where=cm.sum(axis=1, keepdims=True) > 0)
    ax_cm.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            if cm[i, j]:
                ax_cm.annotate(str(int(cm[i, j])), (j, i), ha="center", va="center", fontsize=8,
                               color="white" if share[i, j] > 0.6 else "black")
    fs = 8 if k <= 12 else 6
    ax_cm.set_xticks(range(k), names, rotation=45, ha="right", fontsize=fs)
    ax_cm.set_yticks(range(k), names, fontsize=fs)
    ax_cm.set_xlabel("given label")
    ax_cm.set_ylabel("gold label")
    ax_cm.set_title("Confusion matrix (counts; colour = share of the gold row)")

    y = np.arange(k)
    prec = [m["per_label"][n]["precision"] for n in names]
    rec = [m["per_label"][n]["recall"] for n in names]
    ax_pr.barh(y - 0.2, prec, height=0.4, color="#4C72B0", label="precision")
    ax_pr.barh(y + 0.2, rec, height=0.4, color="#DD8452", label="recall")
    ax_pr.set_yticks(y, [f"{n} ({m['per_label'][n]['support']})" for n in names], fontsize=fs)
    ax_pr.invert_yaxis()
    ax_pr.set_xlim(0, 1.05)
    ax_pr.set_title("Precision and recall per label (gold rows)")
    ax_pr.legend(loc="lower right", fontsize=8)
    ax_pr.grid(axis="x", alpha=0.3)

    bins = cal["reliability"]
    width = 1.0 / cal["bins"]
    lows = [b["low"] for b in bins]
    accs = [b["accuracy"] or 0.0 for b in bins]
    ax_rel.bar(lows, accs, width=width * 0.95, align="edge", color="#55A868", label="accuracy in bin")
    ax_rel.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    for b in bins:
        if b["rows"]:
            ax_rel.plot(b["mean_confidence"], b["accuracy"], "o", color="#C44E52", ms=4)
            ax_rel.annotate(str(b["rows"]), (b["low"] + width / 2, (b["accuracy"] or 0) + 0.02), ha="center", fontsize=7)
    ax_rel.set_xlim(0, 1)
    ax_rel.set_ylim(0, 1.1)
    ax_rel.set_xlabel("confidence")
    ax_rel.set_ylabel("accuracy")
    ax_rel.set_title(f"Reliability (labeled rows; ECE {_f(cal['ece'])}; dots: mean confidence, numbers: rows)")
    ax_rel.legend(loc="upper left", fontsize=8)

    lowest = [ac["target_accuracy"]]
    for key, color, style in (("confidence", "#4C72B0", "-"), ("margin", "#C44E52", "--")):
        a = ac[key]
        pts = a["points"]
        if pts:
            ax_cov.step([p["coverage"] for p in pts], [p["accuracy"] for p in pts], where="post", color=color, ls=style, label=key)
            lowest.append(min(p["accuracy"] for p in pts))
        if a["reachable"]:
            ax_cov.plot(a["coverage"], a["accuracy"], "o", color=color, ms=7)
            ax_cov.annotate(f"{key} >= {a['suggested']}", (a["coverage"], a["accuracy"]), xytext=(5, -12 if key == "margin" else 5),
                            textcoords="offset points", fontsize=8, color=color)
    ax_cov.axhline(ac["target_accuracy"], ls="--", color="gray", lw=1, label=f"target {ac['target_accuracy']:.2f}")
    ax_cov.set_xlim(0, 1.02)
    ax_cov.set_ylim(max(0.0, min(lowest) - 0.1), 1.02)
    ax_cov.set_xlabel(f"coverage (share of {ac['evaluated_rows']} evaluated gold rows labeled)")
    ax_cov.set_ylabel("accuracy of the rows kept")
    ax_cov.set_title("Accuracy against coverage, keeping rows at or above a threshold")
    ax_cov.legend(loc="lower left", fontsize=8)
    ax_cov.grid(alpha=0.3)

    outs = {"labeled": c["labeled"], **{f"abstained: {k}": v for k, v in c["abstain_reasons"].items()},
            **{f"error: {k}": v for k, v in c["error_stages"].items()}, **{f"unmatched: {k}": v for k, v in c["unmatched_reasons"].items()},
            "gold label unknown": c["gold_label_unknown"]}
    outs = {k: v for k, v in outs.items() if v} or {"(no rows)": 0}
    colors = ["#55A868" if k == "labeled" else "#DD8452" if k.startswith("abstained") else "#C44E52" if k.startswith("error")
              else "#937860" for k in outs]
    names_o = list(outs)[::-1]
    ax_out.barh(names_o, [outs[n] for n in names_o], color=colors[::-1])
    for i, n in enumerate(names_o):
        ax_out.annotate(str(outs[n]), (outs[n], i), xytext=(3, 0), textcoords="offset points", va="center", fontsize=8)
    ax_out.set_xlim(0, max(list(outs.values()) + [1]) * 1.25)
    ax_out.set_title(f"Where the {c['gold_rows']} gold rows went")
    ax_out.set_xlabel("gold rows")

    tc = report.get("text_ceiling")
    if tc is not None and tc["paired"]["rows"]:
        p = tc["paired"]
        metrics = ("accuracy", "unweighted_accuracy", "macro_f1")
        x = np.arange(len(metrics))
        au = [p["audio"][k] or 0.0 for k in metrics]
        tx = [p["text"][k] or 0.0 for k in metrics]
        ax_txt.bar(x - 0.2, au, width=0.4, color="#4C72B0", label="audio (ASR transcript)")
        ax_txt.bar(x + 0.2, tx, width=0.4, color="#55A868", label="reference text")
        for xi, a, t in zip(x, au, tx):
            ax_txt.annotate(f"{a:.2f}", (xi - 0.2, a), ha="center", va="bottom", fontsize=8)
            ax_txt.annotate(f"{t:.2f}", (xi + 0.2, t), ha="center", va="bottom", fontsize=8)
        ax_txt.set_xticks(x, ["accuracy", "unweighted acc.", "macro-F1"])
        ax_txt.set_ylim(0, 1.15)
        ax_txt.legend(loc="lower right", fontsize=8)
        ax_txt.set_title(f"Text ceiling: same scorer, {p['rows']} rows (ASR costs {p['asr_cost_points']['accuracy']:+.1f} accuracy points)")
    else:
        ax_txt.axis("off")
        ax_txt.text(0.5, 0.5, "no text ceiling\n(the gold file has no 'text' column, or --no-text-ceiling)", ha="center", va="center")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
