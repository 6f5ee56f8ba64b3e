"""Which prompt and which scorer: ``lanser-label tune``.

Several **variants** (a scorer, and hypothesis templates: one template, several = a
template ensemble, or per-label hypotheses) label the *stored* transcripts of the gold rows
of a committed run, relabel-style: no audio is read, no ASR model is loaded, and pairs
already in the score cache (``scores/``) are not scored again (newly scored pairs go there,
so a rerun is cheap). The variants are ranked by unweighted accuracy (UA, the mean recall
over the gold labels present) with a 95 % bootstrap confidence interval, and each is
compared with the best by a **paired** bootstrap over the same gold rows: the interval of
the difference says whether it is real. The run's own labels of the same rows are the
reference row.

A variants file (YAML)::

    scorer:                      # optional: settings every variant starts from (over the run's scorer)
      device: cpu
    variants:
      - name: feeling            # the run's scorer, one template
        template: "This person is feeling {label}."
      - name: ensemble           # several templates: each label's probability averaged over them
        templates: ["This person is feeling {label}.", "The speaker sounds {label}.", "This text expresses {label}."]
      - name: per-label          # per-label hypotheses (others from the template, default the run's)
        hypotheses: {neutral: "This person is calm and feels nothing in particular."}
      - name: nli-large          # another scorer (the label config's scorer fields)
        scorer: {backend: nli, model: MoritzLaurer/deberta-v3-large-zeroshot-v2.0}
        taxonomy: my_taxonomy.yaml   # or a taxonomy file's templates and hypotheses (same labels)

    >>> from labeler.tune import tune_run, write_tune                 # doctest: +SKIP
    >>> report = tune_run("out/", "gold.csv", variants_path="variants.yaml", label_map={"happy": "joy"})  # doctest: +SKIP
    >>> report["best"]["name"], report["ranking"][0]["unweighted_accuracy"]  # doctest: +SKIP
    ('ensemble', {'value': 0.857, 'ci95': [0.714, 1.0]})

Gold reading, matching and the metrics are :mod:`labeler.evaluate`'s. The bootstrap
functions are pure (arrays in, numbers out) and tested on hand-made arrays.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Mapping, Optional, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from labeler.errors import InputError, LanserError
from labeler.io import join, redact

TUNE_VERSION = 1
RUN_VARIANT = "run"  # the name of the reference row: the run's own labels


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class VariantSpec(_Strict):
    """One candidate: a scorer and the hypotheses it scores."""

    name: str = Field(min_length=1, description="the variant's name in the ranking")
    scorer: dict[str, Any] = Field(default_factory=dict, description="scorer settings (the label config's scorer fields) over the file's scorer and the run's")
    template: Optional[str] = Field(None, description="one hypothesis template with {label}")
    templates: Optional[list[str]] = Field(None, description="several templates: a template ensemble (probabilities averaged over them)")
    hypotheses: dict[str, str] = Field(default_factory=dict, description="per-label hypothesis, label -> text (stands for that label in every template)")
    taxonomy: Optional[str] = Field(None, description="a taxonomy file (or shipped name) whose templates and hypotheses to use; its labels must be the run's")

    @model_validator(mode="after")
    def _one_source(self) -> "VariantSpec":
        if self.template is not None and self.templates is not None:
            raise ValueError("give template or templates, not both")
        if self.taxonomy is not None and (self.template is not None or self.templates is not None or self.hypotheses):
            raise ValueError("taxonomy brings its own templates and hypotheses: not together with template, templates or hypotheses")
        return self


class VariantsFile(_Strict):
    """A variants file: optional shared scorer settings and the variants."""

    scorer: dict[str, Any] = Field(default_factory=dict, description="scorer settings every variant starts from")
    variants: list[VariantSpec] = Field(min_length=1, description="the candidates, in any order")


# ----------------------------------------------------------------------------- entry points


def tune_run(root: str, gold_path: str, variants_path: Optional[str] = None, templates: Sequence[str] = (),
             run_id: Optional[str] = None, taxonomy: Optional[str] = None, label_map: Optional[Mapping[str, str]] = None,
             bootstrap: int = 1000, seed: int = 0, device: Optional[str] = None, use_cache: bool = True,
             scorers: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
    """Rank variants (``variants_path``, and/or ``templates``: each one a variant with the
    run's scorer, and all of them as an ensemble when there are two or more) on the stored
    transcripts of the gold rows of a committed run under ``root``. ``device`` overrides
    every variant's ``scorer.device``; ``scorers`` (scorer key hash -> a loaded
    :class:`~labeler.models.base.Scorer`) are used instead of loading those. Returns the
    report (:func:`write_tune` writes it, :func:`summary_lines` prints it)."""
    from labeler.evaluate import _parent, find_run, map_gold_labels, match_gold, read_gold, resolve_label_map
    from labeler.runs import read_run_rows

    if bootstrap < 100:
        raise InputError(f"--bootstrap must be at least 100 resamples, got {bootstrap}")
    manifest = find_run(root, run_id, taxonomy)
    tax = manifest["taxonomy"]
    names: list[str] = list(tax["labels"])
    base_scorer = dict((manifest.get("config") or {}).get("scorer") or {})
    specs, shared = _variant_specs(variants_path, templates)
    variants = [_resolve_variant(s, shared, base_scorer, manifest, device) for s in specs]

    gold = read_gold(gold_path)
    gold_true, unknown = map_gold_labels(gold.column("label").to_pylist(), names, resolve_label_map(label_map or {}, names))
    rows = read_run_rows(root, manifest, ["utt_id", "uri", "source_id", "start_s", "end_s", "status", "scores", "text"])
    match, _ = match_gold(gold, rows, base=_parent(gold_path))
    r_scores, r_text = rows.column("scores").to_pylist(), rows.column("text").to_pylist()
    # The gold rows the run scored (a transcript, not abstained before scoring): every variant
    # labels exactly these, so the comparison is paired.
    use = [g for g in range(gold.num_rows) if gold_true[g] >= 0 and match[g] >= 0 and r_scores[match[g]] is not None]
    n_gold = gold.num_rows
    if not use:
        raise InputError(f"no gold row of {redact(gold_path)} matches a scored row of run {manifest['run_id']} "
                         f"({n_gold} gold rows: {sum(m >= 0 for m in match)} matched, {sum(t >= 0 for t in gold_true)} with a "
                         "taxonomy label): check the ids and --map (lanser-label evaluate lists where each row went)")
    y = np.array([gold_true[g] for g in use], dtype=np.int64)
    texts = [r_text[match[g]].strip() for g in use]  # as the entail stage strips a transcript

    preds = {RUN_VARIANT: np.asarray([r_scores[match[g]] for g in use], dtype=np.float32).argmax(axis=1)}
    extra: dict[str, dict[str, Any]] = {}
    scoring = _Scoring(root, use_cache, scorers or {})
    try:
        for v in variants:
            probs, members = scoring.probs(v, texts)
            preds[v["name"]] = probs.argmax(axis=1)
            if members:
                extra[v["name"]] = {"members": {t: p.argmax(axis=1) for t, p in members.items()}}
    finally:
        scoring.close()

    rng = np.random.default_rng(seed)
    counts = bootstrap_counts(len(y), bootstrap, rng)
    ua_boot = {k: bootstrap_ua(y, p == y, counts, len(names)) for k, p in preds.items()}
    results = {k: _point(y, p, names) for k, p in preds.items()}
    # ties: the run's own settings first (nothing to change), then the variant with fewer templates (cheaper)
    n_templates = {v["name"]: len(v["taxonomy"].templates) for v in variants}
    order = sorted(preds, key=lambda k: (-results[k]["unweighted_accuracy"], -results[k]["accuracy"], -(results[k]["macro_f1"] or 0.0),
                                         k != RUN_VARIANT, n_templates.get(k, 0)))
    best = order[0]
    ranking = []
    by_name = {v["name"]: v for v in variants}
    for rank, k in enumerate(order, 1):
        diff = ua_boot[k] - ua_boot[best]
        entry = {
            "rank": rank, "name": k, "reference": k == RUN_VARIANT,
            "unweighted_accuracy": {"value": results[k]["unweighted_accuracy"], "ci95": _ci(ua_boot[k])},
            "accuracy": results[k]["accuracy"], "macro_f1": results[k]["macro_f1"], "correct": results[k]["correct"],
            "rows": len(y), "coverage": len(y) / n_gold,
            "vs_best": None if k == best else {
                "ua_points": round(100 * (results[k]["unweighted_accuracy"] - results[best]["unweighted_accuracy"]), 2) + 0.0,
                "ci95_points": [round(100 * x, 2) + 0.0 for x in _ci(diff)],
                "real": bool(_ci(diff)[1] < 0),  # the interval of the paired difference excludes 0
                "share_not_worse": float(np.mean(diff >= 0)),
            },
            "per_label_recall": {n: results[k]["per_label"][n]["recall"] for n in names if results[k]["per_label"][n]["support"]},
        }
        if k == RUN_VARIANT:
            entry.update(scorer=manifest.get("models", {}).get("scorer"), templates=_run_templates(tax), template_hash=tax.get("template_hash"))
        else:
            v = by_name[k]
            entry.update(scorer=f"{v['scorer'].backend}:{v['scorer'].model}", scorer_key=v["scorer"].key_hash(),
                         templates=v["taxonomy"].templates, template_hash=v["taxonomy"].template_hash,
                         hypotheses=v["taxonomy"].hypothesis_sets, pairs=v["pairs"])
        ranking.append(entry)
    ensembles = {k: _ensemble_gain(y, preds[k], e["members"], counts, len(names)) for k, e in extra.items()}
    report = {
        "tune_version": TUNE_VERSION,
        "run_id": manifest["run_id"],
        "kind": manifest.get("kind"),
        "taxonomy": {"name": tax["name"], "version": tax["version"], "labels": names},
        "gold": {"path": redact(gold_path), "rows": n_gold, "rows_used": len(y),
                 "not_used": {"gold_label_unknown": sum(t < 0 for t in gold_true),
                              "unmatched": sum(gold_true[g] >= 0 and match[g] < 0 for g in range(n_gold)),
                              "not_scored_by_run": sum(gold_true[g] >= 0 and match[g] >= 0 and r_scores[match[g]] is None
                                                       for g in range(n_gold))},
                 "unknown_gold_labels": dict(unknown.most_common()),
                 "labels": {n: int((y == i).sum()) for i, n in enumerate(names) if (y == i).any()}},
        "bootstrap": {"resamples": int(bootstrap), "seed": int(seed), "paired": True, "statistic": "unweighted_accuracy"},
        "cache": scoring.stats,
        "ranking": ranking,
        "best": {"name": best, "snippet": _snippet(best, by_name, manifest)},
        "ensembles": ensembles,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(),
    }
    return report


def write_tune(root: str, report: dict[str, Any], json_path: Optional[str] = None) -> str:
    """Write the report to ``reports/<run_id>.tune.json`` under ``root`` (or ``json_path``)."""
    from labeler.io import write_json_atomic

    path = json_path or join(root, "reports", f"{report['run_id']}.tune.json")
    write_json_atomic(path, report)
    return path


# ----------------------------------------------------------------------------- variants


def _variant_specs(path: Optional[str], templates: Sequence[str]) -> tuple[list[VariantSpec], dict[str, Any]]:
    specs: list[VariantSpec] = []
    shared: dict[str, Any] = {}
    if path:
        import yaml

        from labeler.io import read_small_file

        try:
            data = yaml.safe_load(read_small_file(path, "variants file"))
        except yaml.YAMLError as exc:
            raise InputError(f"variants file {redact(path)}: not valid YAML: {' '.join(str(exc).split())}") from None
        if isinstance(data, list):
            data = {"variants": data}
        try:
            vf = VariantsFile.model_validate(data if data is not None else {})
        except ValidationError as exc:
            raise InputError(f"variants file {redact(path)}: " + _errors(exc)) from None
        specs, shared = list(vf.variants), dict(vf.scorer)
    for i, t in enumerate(templates, 1):
        specs.append(VariantSpec(name=f"template-{i}", template=t))
    if len(templates) > 1:
        specs.append(VariantSpec(name="ensemble", templates=list(templates)))
    if not specs:
        raise InputError("nothing to compare: give --variants FILE or --template TEMPLATE (repeatable)")
    seen: set[str] = set()
    for s in specs:
        if s.name in seen or s.name == RUN_VARIANT:
            raise InputError(f"variant name {s.name!r} is {'used twice' if s.name in seen else 'reserved for the run itself'}: give each variant its own name")
        seen.add(s.name)
    return specs, shared


def _errors(exc: ValidationError) -> str:
    out = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "<file>"
        msg = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
        allowed = ""
        if err["type"] == "extra_forbidden":
            model = VariantSpec if len(err["loc"]) > 1 and err["loc"][0] == "variants" else VariantsFile
            allowed = f" (allowed: {', '.join(model.model_fields)})"
        out.append(f"{loc}: {msg}{allowed}, got {err.get('input')!r}"[:300])
    return "; ".join(out)


def _run_templates(tax: Mapping[str, Any]) -> list[str]:
    return list(tax.get("hypothesis_templates") or [tax.get("hypothesis_template")])


def _resolve_variant(spec: VariantSpec, shared: Mapping[str, Any], base: Mapping[str, Any], manifest: Mapping[str, Any],
                     device: Optional[str]) -> dict[str, Any]:
    """A variant's ScorerConfig and Taxonomy (the run's labels, the variant's hypotheses)."""
    from labeler.config import ScorerConfig
    from labeler.errors import TaxonomyError
    from labeler.taxonomy import load_taxonomy, parse_taxonomy

    tax = manifest["taxonomy"]
    names = list(tax["labels"])
    data = {**base, **shared, **spec.scorer}
    if device:
        data["device"] = device
    try:
        scorer = ScorerConfig.model_validate(data)
    except ValidationError as exc:
        raise InputError(f"variant {spec.name!r}: scorer: " + "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '<scorer>'}: {'unknown field' if e['type'] == 'extra_forbidden' else e['msg']} "
            f"(got {e.get('input')!r})" for e in exc.errors())) from None
    try:
        if spec.taxonomy is not None:
            t = load_taxonomy(spec.taxonomy)
            if sorted(t.label_names) != sorted(names):
                raise InputError(f"variant {spec.name!r}: taxonomy {spec.taxonomy} has labels {t.label_names}, the run's are {names}")
            by = {lab.name: lab.hypothesis for lab in t.labels}
            doc = {"hypothesis_templates": t.templates, "labels": [
                {"name": n, **({"hypothesis": by[n]} if by[n] != t.templates[0].format(label=n.replace("_", " ")) else {})}
                for n in names]}
        else:
            unknown = sorted(set(spec.hypotheses) - set(names))
            if unknown:
                raise InputError(f"variant {spec.name!r}: hypotheses for labels not in the run's taxonomy: {unknown} (its labels: {names})")
            if spec.template is not None or spec.templates is not None:
                templates = [spec.template] if spec.template is not None else list(spec.templates or [])
                overrides = dict(spec.hypotheses)
            else:  # the run's templates, and its hypotheses where they differ from the template (per-label overrides)
                templates = _run_templates(tax)
                first = templates[0]
                overrides = {n: h for n, h in zip(names, tax["hypotheses"]) if h != first.format(label=n.replace("_", " "))}
                overrides.update(spec.hypotheses)
            doc = {"hypothesis_templates": templates,
                   "labels": [{"name": n, **({"hypothesis": overrides[n]} if n in overrides else {})} for n in names]}
        variant_tax = parse_taxonomy({"name": tax["name"], "version": str(tax["version"]), **doc}, source=f"variant {spec.name!r}")
    except TaxonomyError as exc:
        raise InputError(" ".join(str(exc).split())) from None
    return {"name": spec.name, "spec": spec, "scorer": scorer, "taxonomy": variant_tax, "pairs": {}}


class _Scoring:
    """Scores variants' hypotheses for the gold transcripts: score cache first, then pairs
    this tune already scored, then the scorer (loaded once per scorer key, on first need).
    Newly scored pairs are written to the score cache."""

    def __init__(self, root: str, use_cache: bool, given: Mapping[str, Any]) -> None:
        self.root, self.use_cache, self.given = root, use_cache, dict(given)
        self.loaded: dict[str, Any] = {}
        self.memo: dict[str, dict[int, float]] = {}
        self.run_id = "tune-" + dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        self.stats = {"pairs": 0, "from_cache": 0, "scored": 0, "from_this_tune": 0, "written_to": None}
        self.parts = 0

    def scorer(self, name: str, cfg) -> Any:
        key = cfg.key_hash()
        if key in self.given:
            return self.given[key]
        if key not in self.loaded:
            from labeler.models.factory import make_scorer

            try:
                self.loaded[key] = make_scorer(cfg)
            except LanserError as exc:
                raise type(exc)(f"variant {name!r}: {' '.join(str(exc).split())}") from None
            except Exception as exc:  # a model folder that is not one, a missing package
                raise InputError(f"variant {name!r}: scorer {cfg.backend}:{cfg.model} cannot be loaded: "
                                 f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:600]) from None
        return self.loaded[key]

    def probs(self, v: dict[str, Any], texts: list[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The variant's label probabilities per text; for an ensemble also each template's alone."""
        from labeler.cache import ScoreCache
        from labeler.models.base import ensemble_probs, flatten_sets

        cfg, tax = v["scorer"], v["taxonomy"]
        key = cfg.key_hash()
        flat, index = flatten_sets(tax.hypothesis_sets)
        cache = ScoreCache.load(self.root, key, flat) if self.use_cache else ScoreCache.empty(key)
        uniq = list(dict.fromkeys(texts))
        keys = np.array([cache.pair_key(t, h) for t in uniq for h in flat], dtype=np.uint64)
        # pairs this tune scored first (another variant's), then the score cache, then the scorer
        memo = self.memo.setdefault(key, {})
        in_memo = np.array([int(k) in memo for k in keys], dtype=bool)
        found, raw = cache.lookup(keys)
        found &= ~in_memo
        n_cache = int(found.sum())
        todo = []
        for j in np.flatnonzero(~found):
            if in_memo[j]:
                raw[j] = memo[int(keys[j])]
            else:
                todo.append(int(j))
        H = len(flat)
        if todo:
            pairs = [(j // H, j % H) for j in todo]
            scorer = self.scorer(v["name"], cfg)
            raw[todo] = scorer.score_pairs(uniq, flat, pairs)
            for j in todo:
                memo[int(keys[j])] = float(raw[j])
            if self.use_cache:
                self._write(key, f"{cfg.backend}:{cfg.model}", keys[todo], [uniq[p] for p, _ in pairs], [flat[h] for _, h in pairs], raw[todo])
        v["pairs"] = {"total": len(keys), "from_cache": n_cache, "from_this_tune": len(keys) - n_cache - len(todo), "scored": len(todo)}
        for k in ("from_cache", "scored", "from_this_tune"):
            self.stats[k] += v["pairs"][k]
        self.stats["pairs"] += len(keys)
        raw = raw.reshape(len(uniq), H)
        where = {t: i for i, t in enumerate(uniq)}
        rows = np.array([where[t] for t in texts], dtype=np.int64)
        probs = ensemble_probs(cfg.backend, raw, index, cfg.temperature)[0][rows]
        members = {}
        if len(index) > 1:
            for t, idx in zip(tax.templates, index):
                members[t] = ensemble_probs(cfg.backend, raw, idx[None, :], cfg.temperature)[0][rows]
        return probs, members

    def _write(self, key: str, name: str, keys: np.ndarray, texts: list[str], hyps: list[str], raw: np.ndarray) -> None:
        import pyarrow as pa

        from labeler import schema as S
        from labeler.cache import text_sha256
        from labeler.io import write_parquet_atomic

        now = dt.datetime.now(dt.timezone.utc)
        table = pa.table({
            "pair_key": pa.array(keys, pa.uint64()),
            "text_sha256": pa.array([text_sha256(t) for t in texts], pa.string()),
            "hypothesis": pa.array(hyps, pa.string()),
            "raw_score": pa.array(raw, pa.float32()),
            "scorer": pa.array([name] * len(keys), pa.string()),
            "created_at": pa.array([now] * len(keys), S.TIMESTAMP),
        }, schema=S.SCORES_FILE_SCHEMA)
        directory = S.scores_partition(self.root, key, self.run_id)
        write_parquet_atomic(directory, f"part-{self.parts:05d}.parquet", table)
        self.parts += 1
        self.stats["written_to"] = redact(join(self.root, "scores", "scorer_key=*", f"run_id={self.run_id}"))

    def close(self) -> None:
        for s in self.loaded.values():
            s.close()
        self.loaded.clear()


# ----------------------------------------------------------------------------- statistics (pure)


def bootstrap_counts(n: int, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """``[resamples, n]``: how often each of ``n`` rows is drawn in each resample (n draws
    with replacement); the same resamples are used for every variant (a paired bootstrap)."""
    idx = rng.integers(0, n, size=(resamples, n))
    out = np.zeros((resamples, n), dtype=np.int32)
    np.add.at(out, (np.repeat(np.arange(resamples), n), idx.ravel()), 1)
    return out


def bootstrap_ua(y: np.ndarray, correct: np.ndarray, counts: np.ndarray, k: int) -> np.ndarray:
    """Unweighted accuracy (mean recall over the labels present in the resample) of each
    resample in ``counts``."""
    onehot = np.eye(k, dtype=np.float64)[np.asarray(y, dtype=np.int64)]
    support = counts @ onehot
    hits = counts @ (onehot * np.asarray(correct, dtype=np.float64)[:, None])
    present = support > 0
    recall = np.divide(hits, support, out=np.zeros_like(hits), where=present)
    return recall.sum(axis=1) / present.sum(axis=1)


def _ci(samples: np.ndarray) -> list[float]:
    lo, hi = np.percentile(samples, [2.5, 97.5])
    return [float(lo), float(hi)]


def _point(y: np.ndarray, pred: np.ndarray, names: Sequence[str]) -> dict[str, Any]:
    from labeler.evaluate import classification_metrics, confusion_matrix

    return classification_metrics(confusion_matrix(y, pred, len(names)), names)


def _ensemble_gain(y: np.ndarray, pred: np.ndarray, members: Mapping[str, np.ndarray], counts: np.ndarray, k: int) -> dict[str, Any]:
    """An ensemble against its templates alone (same scores, same rows): each template's UA,
    and the ensemble's gain over the best and the mean of them, with the paired interval."""
    ens = bootstrap_ua(y, pred == y, counts, k)
    each = {t: bootstrap_ua(y, p == y, counts, k) for t, p in members.items()}
    point = {t: _ua(y, p, k) for t, p in members.items()}
    best_t = max(point, key=point.get)
    ua = _ua(y, pred, k)
    mean_members = float(np.mean(list(point.values())))
    d_best = ens - each[best_t]
    d_mean = ens - np.mean(list(each.values()), axis=0)
    return {
        "unweighted_accuracy": ua,
        "templates": [{"template": t, "unweighted_accuracy": point[t], "ci95": _ci(each[t])} for t in members],
        "best_template": best_t,
        "gain_vs_best_template_points": round(100 * (ua - point[best_t]), 2),
        "gain_vs_best_template_ci95_points": [round(100 * x, 2) + 0.0 for x in _ci(d_best)],
        "gain_vs_mean_template_points": round(100 * (ua - mean_members), 2),
        "gain_vs_mean_template_ci95_points": [round(100 * x, 2) + 0.0 for x in _ci(d_mean)],
        "spread_of_templates_points": round(100 * (max(point.values()) - min(point.values())), 2),
    }


def _ua(y: np.ndarray, pred: np.ndarray, k: int) -> float:
    return _point(y, pred, [str(i) for i in range(k)])["unweighted_accuracy"]


def _snippet(best: str, by_name: Mapping[str, dict[str, Any]], manifest: Mapping[str, Any]) -> str:
    """What to put in the taxonomy file and the label config to use the best variant."""
    if best == RUN_VARIANT:
        return f"# keep the run's settings (scorer {manifest.get('models', {}).get('scorer')}, taxonomy {manifest['taxonomy']['name']})"
    from labeler.config import ScorerConfig

    v = by_name[best]
    t, cfg = v["taxonomy"], v["scorer"]
    lines = ["# taxonomy file:"]
    if t.is_ensemble:
        lines.append("hypothesis_templates:")
        lines += [f"  - {_yaml_str(x)}" for x in t.templates]
    else:
        lines.append(f"hypothesis_template: {_yaml_str(t.templates[0])}")
    overrides = [(lab.name, lab.hypothesis) for lab in t.labels
                 if lab.hypothesis != t.templates[0].format(label=lab.name.replace("_", " "))]
    lines.append("labels:")
    for lab in t.labels:
        h = dict(overrides).get(lab.name)
        lines.append(f"  - name: {lab.name}" + (f"\n    hypothesis: {_yaml_str(h)}" if h else ""))
    default = ScorerConfig()
    run_cfg = (manifest.get("config") or {}).get("scorer") or {}
    changed = {k: val for k, val in cfg.model_dump(mode="json").items()
               if k in ("backend", "model", "engine", "dtype", "max_length", "max_model_len", "temperature")
               and (val != run_cfg.get(k, getattr(default, k)))}
    if changed:
        lines.append("# label config (scorer section):")
        lines.append("scorer:")
        lines += [f"  {k}: {_yaml_str(val) if isinstance(val, str) else val}" for k, val in changed.items()]
    return "\n".join(lines)


def _yaml_str(s: str) -> str:
    import json

    return json.dumps(s)


# ----------------------------------------------------------------------------- summary


def summary_lines(report: dict[str, Any], path: Optional[str] = None) -> list[str]:
    """The ranking for a person: one line per variant, the verdict, the ensembles' gain,
    the snippet to use, and where the JSON is."""
    g, b = report["gold"], report["bootstrap"]
    tax = report["taxonomy"]
    lines = [f"tune on run {report['run_id']} ({tax['name']} v{tax['version']}): {g['rows_used']} of {g['rows']} gold rows "
             f"(the run's scored transcripts; no audio read), {b['resamples']} paired bootstrap resamples (seed {b['seed']})"]
    c = report["cache"]
    lines.append(f"pairs: {c['pairs']} ({c['from_cache']} from the score cache, {c['from_this_tune']} shared between variants, "
                 f"{c['scored']} scored now)")
    w = max(8, *(len(r["name"]) + (6 if r["reference"] else 0) for r in report["ranking"]))
    lines.append(f"  {'#':>2}  {'variant':<{w}}  {'UA':>5}  {'95% CI':<13}  {'acc':>5}  {'mF1':>5}  {'cover':>5}  {'vs best (points, 95% CI)':<28}  scorer")
    for r in report["ranking"]:
        ua = r["unweighted_accuracy"]
        vs = r["vs_best"]
        vs_s = "best" if vs is None else (f"{vs['ua_points']:+.1f} [{vs['ci95_points'][0]:+.1f}, {vs['ci95_points'][1]:+.1f}] "
                                           + ("worse" if vs["real"] else "tie"))
        name = r["name"] + (" (run)" if r["reference"] else "")
        lines.append(f"  {r['rank']:>2}  {name:<{w}}  {ua['value']:.3f}  [{ua['ci95'][0]:.3f}, {ua['ci95'][1]:.3f}]  "
                     f"{r['accuracy']:.3f}  {r['macro_f1']:.3f}  {r['coverage']:>5.0%}  {vs_s:<28}  {r['scorer']}")
    ties = [r["name"] for r in report["ranking"][1:] if not r["vs_best"]["real"]]
    best = report["best"]["name"]
    if best == RUN_VARIANT:
        lines.append(f"use: the run's own settings: no variant does better on these {g['rows_used']} rows"
                     + (f" ({', '.join(ties)} do as well, within the paired 95% interval)" if ties else ""))
    elif ties:
        lines.append(f"use: {best} (highest UA); not significantly better than {', '.join(ties)} on these {g['rows_used']} rows "
                     "(the paired 95% interval of the difference includes 0): more gold rows would separate them")
    else:
        lines.append(f"use: {best}: better than every other variant on these rows (each paired 95% interval excludes 0)")
    for name, e in report["ensembles"].items():
        lines.append(f"ensemble {name}: UA {e['unweighted_accuracy']:.3f} vs its templates alone "
                     + ", ".join(f"{m['unweighted_accuracy']:.3f}" for m in e["templates"])
                     + f": {e['gain_vs_best_template_points']:+.1f} points vs the best one "
                     f"[{e['gain_vs_best_template_ci95_points'][0]:+.1f}, {e['gain_vs_best_template_ci95_points'][1]:+.1f}], "
                     f"{e['gain_vs_mean_template_points']:+.1f} vs their mean "
                     f"[{e['gain_vs_mean_template_ci95_points'][0]:+.1f}, {e['gain_vs_mean_template_ci95_points'][1]:+.1f}]")
    lines.append("settings for it:")
    lines += ["  " + ln for ln in report["best"]["snippet"].splitlines()]
    if path:
        lines.append(f"tune report: {redact(path)}")
    return lines
