"""A committed run's report: ``reports/<run_id>.json`` and ``reports/<run_id>.png``.

Both are derived from the run manifest alone (no table is read), so they cost nothing
next to the run and can be rebuilt from any manifest. The JSON holds the numbers a
dashboard or a nightly check wants (counts per outcome, label distribution, confidence
histogram, per-stage busy time and throughput); the PNG shows the same for a person:

    >>> from labeler.report import write_report                          # doctest: +SKIP
    >>> write_report("out/", result.manifest)                             # doctest: +SKIP
    {'json': 'out/reports/20261124T232823Z-dbda353e.json', 'png': 'out/reports/20261124T232823Z-dbda353e.png'}

The manifest is already free of credentials (URIs are redacted before it is written);
the report copies no path or URI from it except the redacted table locations.
matplotlib is imported only here, and only when the figure is drawn.
"""

from __future__ import annotations

import io
from typing import Any

from labeler.io import join

REPORT_VERSION = 1
STAGES = ("decode", "asr", "score")


def report_paths(root: str, run_id: str) -> dict[str, str]:
    return {"json": join(root, "reports", f"{run_id}.json"), "png": join(root, "reports", f"{run_id}.png")}


def outcomes(counts: dict[str, Any]) -> dict[str, int]:
    """``labeled``, ``abstained: <reason>`` and ``error: <stage>`` counts (zero counts left out)."""
    status = counts.get("status", {})
    out = {"labeled": int(status.get("labeled", 0))}
    reasons = counts.get("abstain_reasons", {})
    out.update({f"abstained: {k}": int(v) for k, v in sorted(reasons.items())})
    if status.get("abstained", 0) > sum(reasons.values()):
        out["abstained: other"] = int(status["abstained"] - sum(reasons.values()))
    stages = counts.get("error_stages", {})
    out.update({f"error: {k}": int(v) for k, v in sorted(stages.items())})
    if status.get("error", 0) > sum(stages.values()):
        out["error: other"] = int(status["error"] - sum(stages.values()))
    return {k: v for k, v in out.items() if v}


def build_report(manifest: dict[str, Any]) -> dict[str, Any]:
    """The report's numbers, from a committed run's manifest."""
    counts = manifest.get("counts", {})
    wall = float(manifest.get("wall_seconds") or 0.0)
    processed = int(counts.get("processed_rows", 0))
    busy = manifest.get("stage_busy_seconds", {})
    total_busy = sum(busy.values()) or 0.0
    stages = {}
    for name in [s for s in STAGES if s in busy] + sorted(set(busy) - set(STAGES)):
        secs = float(busy[name])
        stages[name] = {
            "busy_seconds": round(secs, 3),
            "share_of_busy": round(secs / total_busy, 4) if total_busy else None,
            # rows that went through the stage in this attempt (cache hits included)
            "rows": processed,
            "rows_per_busy_second": round(processed / secs, 3) if secs > 0 else None,
        }
    tax = manifest.get("taxonomy", {})
    labels = counts.get("labels", {})
    hist = manifest.get("confidence_histogram", {"bins": [i / 10 for i in range(11)], "counts": [0] * 10})
    return {
        "report_version": REPORT_VERSION,
        "run_id": manifest.get("run_id"),
        "kind": manifest.get("kind"),
        "status": manifest.get("status"),
        "committed_at": manifest.get("committed_at"),
        "taxonomy": {"name": tax.get("name"), "version": tax.get("version")},
        "models": manifest.get("models", {}),
        "rows": {k: counts.get(k) for k in ("input_rows", "output_rows", "processed_rows", "resumed_rows",
                                            "sources", "utterances", "segmented_sources")},
        "utterance_length_histogram": manifest.get("utterance_length_histogram"),
        "segments_dropped": {k[len("dropped_"):]: v for k, v in (manifest.get("stage_counters", {}).get("asr") or {}).items()
                             if k.startswith("dropped_")},
        "outcomes": outcomes(counts),
        # every label of the taxonomy, in its order, zeros included
        "label_distribution": {name: int(labels.get(name, 0)) for name in tax.get("labels", sorted(labels))},
        "confidence_histogram": hist,
        "throughput": {
            "wall_seconds": wall,
            "audio_seconds": manifest.get("audio_seconds"),
            "audio_seconds_per_wall_second": manifest.get("throughput_audio_s_per_s"),
            "rows_per_wall_second": round(processed / wall, 3) if wall > 0 else None,
        },
        "stages": stages,
        "cache": manifest.get("cache", {}),
        "tables": manifest.get("tables", {}),
    }


def write_report(root: str, manifest: dict[str, Any]) -> dict[str, str]:
    """Write the run's report JSON and PNG beside its manifest; returns their paths."""
    from labeler.io import write_bytes_atomic, write_json_atomic

    report = build_report(manifest)
    paths = report_paths(root, manifest["run_id"])
    write_json_atomic(paths["json"], report)
    write_bytes_atomic(paths["png"], render_png(report))
    return paths


def render_png(report: dict[str, Any]) -> bytes:
    """A 3x2 figure: label distribution, confidence histogram, outcomes, per-stage busy time,
    utterance lengths, and the segments dropped as junk (by reason)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    labels = report["label_distribution"]
    n_labels = max(len(labels), 1)
    fig = Figure(figsize=(13, max(11, 7.5 + 0.26 * n_labels)), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    tp = report["throughput"]
    rows = report["rows"]
    speed = tp.get("audio_seconds_per_wall_second")
    files = f"{rows['sources']} files -> " if rows.get("sources") is not None and report["kind"] != "relabel" else ""
    subtitle = (f"{files}{rows.get('output_rows')} rows  |  {tp.get('audio_seconds') or 0:.1f} s audio in {tp['wall_seconds']:.1f} s wall"
                + (f" ({speed:.1f}x realtime)" if speed else "")
                + f"  |  ASR {report['models'].get('asr')}  |  scorer {report['models'].get('scorer')}")
    fig.suptitle(f"lanser {report['kind']} run {report['run_id']}  -  {report['taxonomy']['name']} "
                 f"v{report['taxonomy']['version']}\n{subtitle}", fontsize=11)
    ax_lab, ax_conf, ax_out, ax_stage, ax_len, ax_drop = fig.subplots(3, 2).ravel()

    names = list(labels)[::-1]  # taxonomy order, top to bottom
    values = [labels[n] for n in names]
    _barh(ax_lab, names, values, "#4C72B0", [str(v) for v in values])
    ax_lab.set_title(f"Label distribution ({sum(values)} labeled)")
    ax_lab.set_xlabel("rows")

    hist = report["confidence_histogram"]
    edges, counts = hist["bins"], hist["counts"]
    width = edges[1] - edges[0] if len(edges) > 1 else 0.1
    ax_conf.bar(edges[:-1], counts, width=width * 0.95, align="edge", color="#55A868")
    for x, c in zip(edges[:-1], counts):
        if c:
            ax_conf.annotate(str(c), (x + width / 2, c), ha="center", va="bottom", fontsize=8)
    ax_conf.set_xlim(0, 1)
    ax_conf.set_xticks(edges)
    ax_conf.tick_params(axis="x", labelsize=8)
    ax_conf.set_title("Confidence of labeled rows (probability of the top label)")
    ax_conf.set_xlabel("confidence")
    ax_conf.set_ylabel("rows")
    ax_conf.set_ylim(0, max(counts + [1]) * 1.15)
    ax_conf.yaxis.set_major_locator(MaxNLocator(integer=True))

    out = report["outcomes"] or {"(no rows)": 0}
    colors = ["#55A868" if k == "labeled" else "#DD8452" if k.startswith("abstained") else "#C44E52" for k in out]
    total = sum(out.values()) or 1
    ovals = list(out.values())[::-1]
    _barh(ax_out, list(out)[::-1], ovals, colors[::-1], [f"{v} ({_percent(v, total)})" for v in ovals])
    ax_out.set_title("Outcome of every row")
    ax_out.set_xlabel("rows")

    stages = report["stages"] or {"(none)": {"busy_seconds": 0, "rows_per_busy_second": None}}
    snames = list(stages)[::-1]
    busy = [stages[s]["busy_seconds"] for s in snames]
    rates = [stages[s].get("rows_per_busy_second") for s in snames]
    notes = [f"{b:.1f} s" + (f"  ({r:.1f} rows/s)" if r else "") for b, r in zip(busy, rates)]
    _barh(ax_stage, snames, busy, "#8172B3", notes, integer=False)
    ax_stage.set_title("Busy time per stage, summed over workers")
    ax_stage.set_xlabel("seconds")

    lengths = report.get("utterance_length_histogram") or {"bins_s": [0, None], "counts": [0]}
    edges, counts = lengths["bins_s"], lengths["counts"]
    ax_len.bar(range(len(counts)), counts, width=0.9, align="edge", color="#64B5CD")
    ax_len.set_xticks(range(len(counts) + 1), [str(e) if e is not None else "" for e in edges[:-1]] + ["+"], fontsize=8)
    ax_len.set_title(f"Utterance length ({sum(counts)} utterances)")
    ax_len.set_xlabel("seconds")
    ax_len.set_ylabel("utterances")
    ax_len.yaxis.set_major_locator(MaxNLocator(integer=True))

    drops = report.get("segments_dropped") or {"(none)": 0}
    dvals = list(drops.values())[::-1]
    _barh(ax_drop, list(drops)[::-1], dvals, "#937860", [str(v) for v in dvals])
    ax_drop.set_title("Segments of long recordings dropped as junk, by reason")
    ax_drop.set_xlabel("segments")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _percent(part: int, total: int) -> str:
    share = 100 * part / total
    return "<1%" if 0 < share < 1 else f"{share:.0f}%"


def _barh(ax, names: list[str], values: list[float], color, notes: list[str], integer: bool = True) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.barh(names, values, color=color, height=0.6 if len(names) < 4 else 0.8)
    top = max(values + [1])
    for y, (v, note) in enumerate(zip(values, notes)):
        ax.annotate(note, (v, y), xytext=(3, 0), textcoords="offset points", va="center", fontsize=8)
    ax.set_xlim(0, top * 1.45)
    if integer:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.tick_params(axis="y", labelsize=8 if len(names) > 12 else 9)
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)


def existing_report(root: str, run_id: str) -> dict[str, str]:
    """The report files of ``run_id`` under ``root`` that exist (a report is best effort)."""
    import pyarrow.fs as pafs

    from labeler.io import filesystem

    found = {}
    for kind, uri in report_paths(root, run_id).items():
        fs, path = filesystem(uri)
        if fs.get_file_info(path).type == pafs.FileType.File:
            found[kind] = uri
    return found
