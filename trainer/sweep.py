"""Label-efficiency sweep: weak-label-pretrained vs from-scratch fine-tunes at shares of the
labeled training split, scored on the same held-out speakers; ``sweep.json`` and
``sweep.png``. A rerun skips the fine-tunes that already completed.
"""

from __future__ import annotations

import itertools
import os
import time
from typing import TYPE_CHECKING, Any

from trainer.reports import EPOCH_BASE, completed_report, write_json

if TYPE_CHECKING:
    from trainer.config import SweepConfig

ARMS = ("pretrained", "scratch")


def _arm_name(prefix: str, fraction: float, arm: str, seed: int | None = None) -> str:
    seeded = "" if seed is None else f"_s{seed}"
    return f"{prefix}_{fraction * 100:g}pct{seeded}_{arm}".replace(".", "p")


def summarize(rows: list[dict]) -> list[dict]:
    """Per fraction and arm, test UA over the seeds (n, mean, sd, min, max), and per fraction
    the pretrained - scratch difference paired by seed (same clips, same test set)."""
    import statistics

    def spread(values: list[float]) -> dict[str, Any]:
        return {
            "n": len(values),
            "mean": round(statistics.fmean(values), 4) if values else None,
            "sd": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0 if values else None,
            "min": min(values, default=None),
            "max": max(values, default=None),
        }

    out = []
    for fraction in sorted({r["fraction"] for r in rows}):
        at = [r for r in rows if r["fraction"] == fraction and r["test_ua"] is not None]
        by_arm = {arm: {r.get("seed"): r for r in at if r["arm"] == arm} for arm in ARMS}
        paired = sorted(set(by_arm["pretrained"]) & set(by_arm["scratch"]), key=lambda s: (s is None, s))
        diffs = [by_arm["pretrained"][s]["test_ua"] - by_arm["scratch"][s]["test_ua"] for s in paired]
        out.append({
            "fraction": fraction,
            "train_rows": sorted({r["train_rows"] for r in at}),
            **{f"{arm}_ua": spread([r["test_ua"] for r in by_arm[arm].values()]) for arm in ARMS},
            "difference_ua": {**spread(diffs), "pretrained_better": sum(d > 0 for d in diffs)},
        })
    return out


def sweep(cfg: SweepConfig) -> dict[str, Any]:
    """For every fraction of the labeled training split (class-stratified and nested: the 5%
    rows are among the 10% rows), fine-tune once from the pretrained encoder and once from
    random weights with identical model, features and schedule; with ``seeds``, all of it once
    per seed. Each fine-tune keeps its own report under ``<output_dir>/<arm>/``; ``summary``
    gives each fraction's mean, sd, min and max over the seeds."""
    from trainer.checkpoint import open_checkpoint, read_meta, resolve_checkpoint
    from trainer.config import FeatureConfig, FinetuneConfig, ModelConfig, PretrainedEncoderConfig
    from trainer.ingest import prepare_data
    from trainer.jobs import finetune

    started = time.time()
    init = resolve_checkpoint(cfg.init_checkpoint)
    with open_checkpoint(init) as directory:
        meta = read_meta(directory)
    # The scratch arm gets the pretrained model's exact architecture and features.
    base = {k: v for k, v in cfg.model_dump().items() if k in FinetuneConfig.model_fields}
    section = PretrainedEncoderConfig if meta["model"].get("encoder") == "pretrained" else ModelConfig
    base["model"] = {k: v for k, v in meta["model"].items() if k in section.model_fields}
    # A pretrained encoder reads the waveform: only the crop length is a feature setting then.
    wanted = {"max_seconds"} if section is PretrainedEncoderConfig else FeatureConfig.model_fields
    base["features"] = {k: v for k, v in meta["features"].items() if k in wanted}
    prepared = prepare_data(cfg.data)
    out_dir = os.path.abspath(cfg.output_dir)
    rows = []
    # Seed-major: a run cut short still holds whole sweeps for the seeds it finished.
    for seed, fraction, arm in itertools.product(cfg.seeds or [None], cfg.fractions, ARMS):
        name = _arm_name(cfg.name, fraction, arm, seed)
        arm_dir = os.path.join(out_dir, name)
        seeded = {} if seed is None else {"data": {**base["data"], "seed": seed}, "train": {**base["train"], "seed": seed}}
        arm_cfg = FinetuneConfig.model_validate({
            **base,
            **seeded,
            "name": name,
            "output_dir": arm_dir,
            "init_checkpoint": init if arm == "pretrained" else None,
            "freeze_encoder": cfg.freeze_encoder if arm == "pretrained" else False,
            "train_fraction": fraction,
        })
        report = completed_report(arm_dir) or finetune(arm_cfg, prepared=prepared)
        test = (report.get("test") or {}).get("metrics") or {}
        rows.append({
            "fraction": fraction,
            "arm": arm,
            "seed": seed,
            "train_rows": report["data"]["splits"]["train"],
            "test_rows": (report.get("test") or {}).get("scored", 0),
            "test_ua": test.get("ua"),
            "test_wa": test.get("wa"),
            "test_macro_f1": test.get("macro_f1"),
            "best_val": report["best_checkpoint"],  # its epoch numbered from 1 (completed_report renumbers old reports)
            "report": os.path.join(arm_dir, "report.json"),
        })
        at_seed = "" if seed is None else f" seed {seed}"
        print(f"[sweep] {fraction:.0%}{at_seed} {arm}: {rows[-1]['train_rows']} training rows, test UA {rows[-1]['test_ua']}", flush=True)
    result = {
        "command": "sweep",
        "status": "completed",
        "wall_time_s": round(time.time() - started, 2),
        "epoch_base": EPOCH_BASE,  # results[i].best_val.epoch counts from 1
        "init_checkpoint": init,
        "pretrained_on": {"taxonomy": meta["taxonomy"], "job": meta.get("job")},
        "data": prepared.summary,
        "fractions": cfg.fractions,
        "seeds": cfg.seeds,
        "results": rows,
        "summary": summarize(rows),
        "plot": os.path.join(out_dir, "sweep.png"),
        "config": cfg.model_dump(mode="json"),
    }
    present = sum(1 for n in prepared.summary["per_label"].values() if n)
    plot_sweep(rows, result["plot"], title=f"Label efficiency on {prepared.kind} ({prepared.taxonomy.name})", chance=1 / max(1, present))
    write_json(os.path.join(out_dir, "sweep.json"), result)
    return result


def plot_sweep(rows: list[dict], path: str, title: str, chance: float | None = None) -> None:
    """Test UA (solid) and macro-F1 (dashed) against the share of labels, one colour per arm;
    over several seeds the mean, with the UA's standard deviation as error bars and each
    seed's UA as a faint dot. Each UA point is labeled with its number of training utterances."""
    import statistics

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullLocator

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    style = {"pretrained": dict(color="tab:blue", marker="o", lw=3.0, ms=8), "scratch": dict(color="tab:orange", marker="^", lw=1.5, ms=6)}
    fractions = sorted({r["fraction"] for r in rows})
    summary = {s["fraction"]: s for s in summarize(rows)}  # the figures sweep.json reports
    for arm in ARMS:
        done = [r for r in rows if r["arm"] == arm and r["test_ua"] is not None]
        at = {f: [r for r in done if r["fraction"] == f] for f in fractions}
        at = {f: rs for f, rs in at.items() if rs}
        if not at:
            continue
        st = style[arm]
        x = [100 * f for f in at]
        ua = [[r["test_ua"] for r in rs] for rs in at.values()]
        mean_ua = [summary[f][f"{arm}_ua"]["mean"] for f in at]
        sd_ua = [summary[f][f"{arm}_ua"]["sd"] for f in at]
        f1 = [statistics.fmean(r["test_macro_f1"] for r in rs) for rs in at.values()]
        seeds = max(len(v) for v in ua)
        label = f"{arm}: UA" + (f" (mean \u00b1 sd, {seeds} seeds)" if seeds > 1 else "")
        ax.errorbar(x, mean_ua, yerr=sd_ua, fmt="-", marker=st["marker"], color=st["color"], lw=st["lw"], ms=st["ms"], alpha=0.8,
                    capsize=4 if seeds > 1 else 0, label=label)
        if seeds > 1:
            for xi, v in zip(x, ua):
                ax.plot([xi] * len(v), v, ".", color=st["color"], alpha=0.35, ms=4)
        ax.plot(x, f1, "--", marker=st["marker"], color=st["color"], lw=1, ms=4, alpha=0.6, label=f"{arm}: macro-F1")
        for rs, xi, yi in zip(at.values(), x, mean_ua):
            dy = 7 if arm == "pretrained" else -12
            ax.annotate(str(rs[0]["train_rows"]), (xi, yi), textcoords="offset points", xytext=(0, dy), ha="center", fontsize=7, color=st["color"])
    if chance is not None:
        ax.axhline(chance, color="gray", ls=":", lw=1, label=f"chance UA ({chance:.2f})")
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator([100 * f for f in fractions]))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([f"{100 * f:g}%" for f in fractions])
    if len(fractions) == 1:
        ax.set_xlim(50 * fractions[0], 200 * fractions[0])
    ax.set_xlabel("share of the labeled training split (point labels: training utterances)")
    ax.set_ylabel("test score (held-out speakers)")
    ax.set_ylim(0, 1.1)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
