"""``lanser-label``: weak emotion labels for unlabeled speech, on Ray.

Also ``python -m labeler`` (the form to use with ``ray job submit``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from typing import Any, Optional, Sequence

PROG = "lanser-label"

EPILOG = textwrap.dedent(
    """\
    examples:
      # the offline demo: packaged models, embedded local Ray
      lanser-label label --config labeler/configs/demo.yaml --input labeler/samples --output lanser-out

      # a corpus on object storage, on a Ray cluster (RAY_ADDRESS is honoured)
      RAY_ADDRESS=http://head:8265 lanser-label label --config labeler/configs/gpu.yaml \\
          --input s3://corpus/calls/manifest.parquet --output s3://lake/lanser --taxonomy ekman

      # any setting from the config file, overridden on the command line
      lanser-label label --config cpu.yaml --input clips/ --output out/ --set asr.beam_size=1 --set scorer.batch_size=128

      # a new taxonomy over the same corpus: stored transcripts only, no audio, no ASR
      lanser-label relabel --output out/ --taxonomy my_taxonomy.yaml

      lanser-label inspect out/                 # summary of the latest run
      lanser-label evaluate --output out/ --gold gold.csv --map happy=joy   # weak labels against human labels
      lanser-label tune --output out/ --gold gold.csv --variants variants.yaml   # which prompt and scorer label best
      lanser-label cache out/ --drop-stale      # what the caches hold; drop unused entries
      lanser-label taxonomies                   # shipped taxonomies
      lanser-label schema                       # the labels table's columns

    Settings: labeler/configs/*.yaml documents each one; `lanser-label config` prints the defaults.
    Exit status: 0 done, 2 bad configuration or input, 1 any other failure (reason on one line).
    """
)


def _run_arguments(p: argparse.ArgumentParser, device_help: str) -> None:
    """Flags shared by the commands that run a pipeline (label, relabel)."""
    p.add_argument("--config", "-c", help="YAML config file (labeler/configs/*.yaml)")
    p.add_argument("--taxonomy", "-t", help="shipped taxonomy name (see `taxonomies`) or a taxonomy YAML path")
    p.add_argument("--run-id", help="run id (default: new and time-sortable; re-running the same command after a crash resumes; a committed id is a no-op)")
    p.add_argument("--scorer", choices=["nli", "embedding", "llm"], help="entailment backend")
    p.add_argument("--scorer-model", help="scorer model: hub id, local folder, or pkg:<package>")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help=device_help)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override any setting, e.g. scorer.batch_size=128 (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="hide Ray Data's progress bars")
    p.add_argument("--show", type=int, default=20, help="print up to this many rows in the summary (default 20)")
    p.add_argument("--json", action="store_true", help="print the run manifest as JSON instead of the summary")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Turn unlabeled speech into weak emotion labels (Whisper ASR + text entailment, LanSER) on Ray Data, "
        "written as Hive-partitioned Parquet tables.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    lab = sub.add_parser(
        "label",
        help="label a folder, glob or manifest of audio",
        description="Run the labeling pipeline: decode -> ASR -> entailment -> Parquet. Connects to RAY_ADDRESS when set, else starts a local Ray.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    lab.add_argument("--input", "-i", help="directory, glob, or manifest (.parquet/.csv/.jsonl with uri[, utt_id]); local or URI")
    lab.add_argument("--output", "-o", help="output root (local or URI); labels/, transcripts/ and runs/ go below it")
    lab.add_argument("--asr-model", help="faster-whisper model name, CTranslate2 folder, or pkg:<package>")
    lab.add_argument("--rehash", action="store_true", default=None,
                     help="read and hash every file again, even those whose URI, size and mtime/ETag match an earlier run's (cache.rehash)")
    _run_arguments(lab, device_help="device for both ASR and scorer")

    rel = sub.add_parser(
        "relabel",
        help="new labels for another taxonomy from stored transcripts: no audio read, no ASR",
        description="Build a labels partition for --taxonomy from the transcripts of an earlier run (default: the newest "
        "committed run under --output). Reads no audio and loads no ASR model; pairs already scored by the same "
        "scorer are taken from the score cache.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    rel.add_argument("--output", "-o", help="output root of earlier runs; the new partition goes there too")
    rel.add_argument("--from-run", help="run whose utterances and transcripts to relabel (default: the newest committed)")
    _run_arguments(rel, device_help="scorer device")

    cac = sub.add_parser("cache", help="what the transcript and score caches hold; drop stale entries")
    cac.add_argument("output", help="output root")
    cac.add_argument("--drop-asr-config", action="append", default=[], metavar="HASH", help="drop transcripts made with this ASR config hash")
    cac.add_argument("--drop-scorer", action="append", default=[], metavar="KEY", help="drop scores of this scorer key")
    cac.add_argument("--drop-stale", action="store_true", help="drop every ASR config and scorer the newest committed run did not use")
    cac.add_argument("--json", action="store_true", help="print as JSON")

    ins = sub.add_parser("inspect", help="summarize a committed run from its manifest")
    ins.add_argument("output", help="output root of earlier runs")
    ins.add_argument("--run", help="run id (default: the latest committed run)")
    ins.add_argument("--json", action="store_true", help="print the manifest as JSON")

    ev = sub.add_parser(
        "evaluate",
        help="measure a committed run's labels against a human-labeled gold file",
        description="Match a gold file (CSV/Parquet/JSONL: utt_id or uri, optional start_s/end_s for utterances of long "
        "recordings, label, optional text) to a committed run's labels and report coverage, accuracy, unweighted "
        "accuracy, macro-F1, per-label precision/recall, the confusion matrix, calibration (ECE) and the accuracy-coverage "
        "curve over confidence and margin; with a text column, the same scorer on the reference transcripts (the text-only "
        "ceiling). Writes reports/<run_id>.eval.json and .eval.png. Nothing is transcribed again.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _gold_arguments(ev)
    ev.add_argument("--target-accuracy", type=float, default=0.8, help="accuracy the confidence/margin threshold must reach (default 0.8)")
    ev.add_argument("--text-ceiling", action=argparse.BooleanOptionalAction, default=None,
                    help="score the gold rows' reference transcripts with the run's scorer (default: on when the gold file has a text column)")
    ev.add_argument("--device", choices=["auto", "cpu", "cuda"], help="device of the text-ceiling scorer (default: the run's scorer.device)")
    ev.add_argument("--json", metavar="PATH", help="write the evaluation JSON to PATH (the PNG beside it) instead of reports/; '-' prints it instead of the summary")
    ev.add_argument("--mistakes", type=int, default=5, help="list up to this many of the most confident wrong labels (default 5)")

    _tune_parser(sub)

    sub.add_parser("taxonomies", help="list shipped taxonomies and their labels")
    sc = sub.add_parser("schema", help="print the labels and transcripts table schemas")
    sc.add_argument("--table", choices=["labels", "transcripts"], default="labels")
    sub.add_parser("config", help="print every label setting with its default and description")
    return p


def _overrides(args) -> dict[str, Any]:
    from labeler.config import parse_override

    out: dict[str, Any] = {}
    for name, key in (("input", "input"), ("output", "output"), ("taxonomy", "taxonomy"), ("run_id", "run_id"),
                      ("asr_model", "asr.model"), ("scorer", "scorer.backend"), ("scorer_model", "scorer.model")):
        val = getattr(args, name, None)
        if val is not None:
            out[key] = val
    if getattr(args, "device", None):
        if args.command == "label":
            out["asr.device"] = args.device
        out["scorer.device"] = args.device
    if getattr(args, "no_progress", False):
        out["ray.progress"] = False
    if getattr(args, "rehash", None):
        out["cache.rehash"] = True
    for text in args.overrides:
        k, v = parse_override(text)
        out[k] = v
    return out


def cmd_label(args) -> int:
    from labeler.config import load_config
    from labeler.pipeline import run_labeling

    return _print_result(run_labeling(load_config(args.config, _overrides(args))), args)


def cmd_relabel(args) -> int:
    from labeler.config import load_config
    from labeler.pipeline import run_relabel

    return _print_result(run_relabel(load_config(args.config, _overrides(args)), from_run=args.from_run), args)


def _print_result(result, args) -> int:
    if args.json:
        print(json.dumps(result.manifest, indent=2, default=str))
    else:
        print_summary(result.manifest, result.output, show=args.show)
    return 0


def cmd_cache(args) -> int:
    from labeler.cache import cache_summary, drop_cache_entries
    from labeler.runs import latest_run

    drop_asr, drop_scorer = list(args.drop_asr_config), list(args.drop_scorer)
    before = cache_summary(args.output)
    if args.drop_stale:
        latest = latest_run(args.output)
        if latest is None:
            from labeler.errors import InputError

            raise InputError(f"no committed run under {args.output}: nothing decides what is stale")
        drop_asr += [t["asr_config_hash"] for t in before["transcripts"] if t["asr_config_hash"] != latest["models"]["asr_config_hash"]]
        drop_scorer += [s["scorer_key"] for s in before["scores"] if s["scorer_key"] != latest["models"].get("scorer_key")]
    dropped = drop_cache_entries(args.output, drop_asr, drop_scorer) if (drop_asr or drop_scorer) else {}
    summary = cache_summary(args.output)
    if args.json:
        print(json.dumps({"cache": summary, "dropped": dropped}, indent=2))
        return 0
    print("transcripts (per ASR config):")
    for t in summary["transcripts"] or [{}]:
        if t:
            print(f"  {t['asr_config_hash']}  {t['audio']:>8} audio  {t['runs']:>3} runs  {t['asr_model']}")
        else:
            print("  (empty)")
    print("scores (per scorer):")
    for s in summary["scores"] or [{}]:
        if s:
            print(f"  {s['scorer_key']}  {s['pairs']:>8} pairs  {s['hypotheses']:>3} hypotheses  {s['runs']:>3} runs  {s['scorer']}")
        else:
            print("  (empty)")
    for k, v in dropped.items():
        print(f"dropped {k}: {v}")
    return 0


def print_summary(manifest: dict[str, Any], output: str, show: int = 20) -> None:
    from labeler.io import redact

    c = manifest["counts"]
    tax = manifest["taxonomy"]
    print()
    print(f"run {manifest['run_id']}  ({tax['name']} v{tax['version']}, {len(tax['labels'])} labels)")
    if show > 0:
        rows = read_rows(manifest, limit=show, root=output)
        if rows:
            width = min(max(len(r["utt_id"]) for r in rows), 32)
            print(f"  {'utt_id':<{width}}  {'label':<14} {'conf':>5}  transcript")
            for r in rows:
                lab = r["label"] or f"({r['abstain_reason'] or 'error'})"
                conf = f"{r['confidence']:.2f}" if r["confidence"] is not None else "  -  "
                text = r["text"] if r["text"] is not None else (r["error"] or "")
                text = text if len(text) <= 70 else text[:67] + "..."
                print(f"  {r['utt_id'][:width]:<{width}}  {lab:<14} {conf:>5}  {text}")
            if c["output_rows"] > len(rows):
                print(f"  ... {c['output_rows'] - len(rows)} more rows")
    status = ", ".join(f"{k} {v}" for k, v in sorted(c["status"].items()))
    if manifest.get("kind") == "relabel":
        print(f"rows: {c['input_rows']} utterances in, {c['output_rows']} rows out ({status})")
    else:
        seg = c.get("segmented_sources", 0)
        print(f"files: {c['input_rows']} in -> {c['output_rows']} rows out ({status})"
              + (f"; {seg} long recording(s) cut into utterances" if seg else ""))
    drops = {k[len("dropped_"):]: v for k, v in (manifest.get("stage_counters", {}).get("asr") or {}).items() if k.startswith("dropped_")}
    if drops:
        print("segments dropped as junk: " + ", ".join(f"{k} {v}" for k, v in sorted(drops.items())))
    if c.get("labels"):
        print("labels: " + ", ".join(f"{k} {v}" for k, v in sorted(c["labels"].items(), key=lambda kv: -kv[1])))
    if manifest.get("audio_seconds") is not None and manifest.get("wall_seconds"):
        print(f"audio: {manifest['audio_seconds']:.1f} s in {manifest['wall_seconds']:.1f} s wall "
              f"({manifest.get('throughput_audio_s_per_s') or 0:.1f}x realtime, model loading included)")
    if "sources_skipped_by_metadata" in c:  # label runs: what the listing let the run skip (README: unchanged files)
        print(f"audio files: {c.get('sources_read', 0)} read, {c['sources_skipped_by_metadata']} unchanged since an earlier run "
              f"and not opened ({c.get('sources_new', 0)} new, {c.get('sources_changed', 0)} changed since their last read)")
    cache = manifest.get("cache") or {}
    if cache:
        dup = cache.get("transcripts_from_this_run", 0)
        print(f"transcripts: {cache.get('transcribed', 0)} files transcribed"
              + (f", {dup} copies of audio transcribed once in this run" if dup else "")
              + f", {cache.get('transcripts_from_cache', 0)} from the cache of earlier runs")
        print(f"label scores: {cache.get('n_pairs_scored', 0)} (transcript, label) pairs scored, "
              f"{cache.get('n_pairs_cached', 0)} from the cache of earlier runs, "
              f"{cache.get('n_pairs_memo', 0)} deduplicated within this run (the same transcript again)")
    for name, path in manifest["tables"].items():
        print(f"{name + ' table:':<19}{path}")
    print(f"run manifest:      {redact(output.rstrip('/'))}/runs/{manifest['run_id']}.json")
    from labeler.report import existing_report

    report = existing_report(output, manifest["run_id"])
    if report:
        print(f"run report:        {'  '.join(redact(p) for p in report.values())}")
    else:
        print("run report:        (none)")
    print(
        "query:  duckdb -c \"SELECT utt_id, label, confidence FROM read_parquet('"
        f"{redact(output.rstrip('/'))}/labels/**/*.parquet', hive_partitioning=true) WHERE run_id='{manifest['run_id']}'\""
    )


def read_rows(manifest: dict[str, Any], limit: int, root: Optional[str] = None) -> list[dict[str, Any]]:
    """First rows of a committed run's labels partition, in file and time order. The manifest's
    table paths are redacted; with ``root`` (as given, credentials included) the partition
    is found from it instead."""
    import pyarrow.dataset as pads

    from labeler import schema as S
    from labeler.io import filesystem
    from labeler.runs import read_run_rows

    columns = ["utt_id", "source_id", "start_s", "label", "confidence", "text", "abstain_reason", "error"]
    order = [("source_id", "ascending"), ("start_s", "ascending")]
    try:
        if root:
            return read_run_rows(root, manifest, columns).sort_by(order).slice(0, limit).to_pylist()
        fs, path = filesystem(manifest["tables"]["labels"])
        t = pads.dataset(path, filesystem=fs, format="parquet", schema=S.LABELS_FILE_SCHEMA).to_table(columns=columns)
        return t.sort_by(order).slice(0, limit).to_pylist()
    except (OSError, ValueError):
        return []


def cmd_inspect(args) -> int:
    from labeler.errors import InputError
    from labeler.runs import manifest_run_ids, read_manifest

    run = args.run
    if run is None:
        runs = manifest_run_ids(args.output)
        if not runs:
            raise InputError(f"no committed runs under {args.output}")
        run = runs[-1]
    manifest = read_manifest(args.output, run)
    if manifest is None:
        raise InputError(f"no run {run!r} under {args.output}")
    if args.json:
        print(json.dumps(manifest, indent=2))
    else:
        print_summary(manifest, args.output, show=0)
        print(f"status: {manifest.get('status')}, started {manifest.get('started_at')}, committed {manifest.get('committed_at')}")
        from labeler.report import build_report

        for stage, st in build_report(manifest)["stages"].items():
            rate = f"  {st['rows_per_busy_second']:8.1f} rows per busy second" if st["rows_per_busy_second"] else ""
            print(f"  {stage:<7} busy {st['busy_seconds']:8.1f} s{rate}")
    return 0


def cmd_evaluate(args) -> int:
    from labeler.evaluate import evaluate_run, parse_label_map, summary_lines, write_evaluation

    report = evaluate_run(args.output, args.gold, run_id=args.run, taxonomy=args.taxonomy,
                          label_map=parse_label_map(args.label_map, args.map_file), target_accuracy=args.target_accuracy,
                          text_ceiling=args.text_ceiling, device=args.device)
    for warning in report["warnings"]:
        print(f"{PROG}: warning: {warning}", file=sys.stderr)
    paths = write_evaluation(args.output, report, None if args.json in (None, "-") else args.json)
    if args.json == "-":
        print(json.dumps(report, indent=2, default=str))
    else:
        print("\n".join(summary_lines(report, paths, mistakes=args.mistakes)))
    return 0


# ----------------------------------------------------------------------------- tune


def _gold_arguments(p) -> None:
    """The run and gold-file arguments that evaluate and tune share."""
    p.add_argument("--output", "-o", required=True, help="output root of earlier runs")
    p.add_argument("--gold", "-g", required=True, help="gold file (.csv, .parquet, .jsonl): label, and utt_id or uri [+ start_s, end_s], optional text")
    p.add_argument("--run", help="run id (default: the newest committed label or relabel run)")
    p.add_argument("--taxonomy", "-t", help="pick the newest run of this taxonomy (a name, or a taxonomy YAML: its name and version)")
    p.add_argument("--map", dest="label_map", action="append", default=[], metavar="GOLD=LABEL[,...]",
                   help="gold label name -> taxonomy label, case-insensitive (repeatable), e.g. happy=joy,angry=anger")
    p.add_argument("--map-file", help="YAML or JSON mapping of gold label names to taxonomy labels")


def _tune_parser(sub) -> None:
    tu = sub.add_parser(
        "tune",
        help="rank prompt templates, template ensembles and scorers on the gold rows' stored transcripts",
        description="Label the stored transcripts of the gold rows of a committed run with several variants (a scorer and "
        "hypothesis templates: one, several = an ensemble, or per-label hypotheses), relabel-style: no audio read, no ASR, "
        "the score cache used and filled. Ranks them and the run's own labels by unweighted accuracy with a 95% bootstrap "
        "interval, compares each with the best by a paired bootstrap, and prints the settings of the best. Writes "
        "reports/<run_id>.tune.json.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _gold_arguments(tu)
    tu.add_argument("--variants", "-V", help="variants file (YAML): scorer settings and templates per variant (README: Measuring label quality)")
    tu.add_argument("--template", dest="templates", action="append", default=[], metavar="TEMPLATE",
                    help="a hypothesis template with {label}, scored with the run's scorer (repeatable; two or more also make an ensemble)")
    tu.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (default 1000)")
    tu.add_argument("--seed", type=int, default=0, help="seed of the resamples (default 0)")
    tu.add_argument("--device", choices=["auto", "cpu", "cuda"], help="device of every variant's scorer (default: each one's scorer.device)")
    tu.add_argument("--no-cache", action="store_true", help="neither read nor write the score cache")
    tu.add_argument("--json", metavar="PATH", help="write the report to PATH instead of reports/; '-' prints it instead of the table")


def cmd_tune(args) -> int:
    from labeler.evaluate import parse_label_map
    from labeler.tune import summary_lines, tune_run, write_tune

    report = tune_run(args.output, args.gold, variants_path=args.variants, templates=args.templates, run_id=args.run,
                      taxonomy=args.taxonomy, label_map=parse_label_map(args.label_map, args.map_file), bootstrap=args.bootstrap,
                      seed=args.seed, device=args.device, use_cache=not args.no_cache)
    path = write_tune(args.output, report, None if args.json in (None, "-") else args.json)
    if args.json == "-":
        print(json.dumps(report, indent=2, default=str))
    else:
        print("\n".join(summary_lines(report, path)))
    return 0


def cmd_taxonomies(args) -> int:
    from labeler.taxonomy import load_taxonomy, shipped_taxonomies

    for name in shipped_taxonomies():
        t = load_taxonomy(name)
        print(f"{t.name} v{t.version} ({len(t.labels)} labels): {', '.join(t.label_names)}")
        print(f"    hypothesis: {t.hypothesis_template!r}   file: {t.source}" if not t.is_ensemble else
              f"    hypothesis ensemble: {t.templates!r}   file: {t.source}")
    return 0


def cmd_schema(args) -> int:
    from labeler import schema as S

    sch = S.LABELS_SCHEMA if args.table == "labels" else S.TRANSCRIPTS_SCHEMA
    parts = S.LABELS_PARTITIONING if args.table == "labels" else S.TRANSCRIPTS_PARTITIONING
    for name, typ, doc in S.describe(sch):
        tag = " (partition)" if name in parts.names else ""
        print(f"{name:<18} {typ:<26} {doc}{tag}")
    return 0


def cmd_config(args) -> int:
    from labeler.config import LabelConfig

    def walk(model, prefix=""):
        for name, field in type(model).model_fields.items():
            val = getattr(model, name)
            if hasattr(val, "model_fields"):
                walk(val, prefix + name + ".")
            else:
                print(f"{prefix + name:<32} {json.dumps(val):<44} {field.description or ''}")

    walk(LabelConfig())
    return 0


COMMANDS = {"label": cmd_label, "relabel": cmd_relabel, "cache": cmd_cache, "inspect": cmd_inspect, "evaluate": cmd_evaluate,
            "tune": cmd_tune,
            "taxonomies": cmd_taxonomies, "schema": cmd_schema, "config": cmd_config}


def main(argv: Optional[Sequence[str]] = None) -> int:
    from labeler.errors import LanserError
    from labeler.io import redact_text

    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except LanserError as exc:
        print(f"{PROG}: error: {one_line(redact_text(str(exc)))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # the reason on one line; LANSER_DEBUG=1 shows the traceback
        if os.environ.get("LANSER_DEBUG"):
            raise
        print(f"{PROG}: error: {type(exc).__name__}: {one_line(redact_text(str(exc)))}", file=sys.stderr)
        return 1


def one_line(msg: str, limit: int = 2000) -> str:
    lines = [ln.strip().lstrip("- ").strip() for ln in msg.strip().splitlines() if ln.strip()]
    text = ""
    for ln in lines:
        text += ln if not text else (" " if text.endswith(":") else "; ") + ln
    return text if len(text) <= limit else text[: limit - 3] + "..."


if __name__ == "__main__":
    sys.exit(main())
