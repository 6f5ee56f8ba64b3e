"""Emotion taxonomies: versioned YAML files, validated with clear errors.

A taxonomy file::

    name: ekman
    version: "1.0"
    description: Ekman's six basic emotions plus neutral.
    hypothesis_template: "This person is feeling {label}."
    labels:
      - name: anger
        description: ...            # optional, documentation only
      - name: neutral
        hypothesis: "This person is calm and feels nothing in particular."  # optional override

A **template ensemble** gives several templates instead (``hypothesis_templates:``, a list;
not together with ``hypothesis_template``): every label is scored against each template's
hypothesis and its probability is the mean over the templates of each template's
probability (:func:`labeler.models.base.ensemble_probs`), a known way to make zero-shot entailment less
sensitive to one wording. A label's ``hypothesis`` override then stands for that label in
every template. ``template_hash`` covers every hypothesis of every template; a
one-template taxonomy keeps the hash it always had.

``load_taxonomy("ekman")`` loads a shipped taxonomy by name; a path loads a file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from labeler.errors import TaxonomyError

SHIPPED_DIR = Path(__file__).parent / "taxonomies"
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
_ALLOWED_TOP = {"name", "version", "description", "hypothesis_template", "hypothesis_templates", "labels"}
DEFAULT_TEMPLATE = "This person is feeling {label}."
_ALLOWED_LABEL = {"name", "description", "hypothesis"}


@dataclass(frozen=True)
class Label:
    name: str
    hypothesis: str  # under the first template
    description: str | None = None
    hypotheses: tuple[str, ...] = ()  # one per template (ensembles); empty = (hypothesis,)


@dataclass(frozen=True)
class Taxonomy:
    name: str
    version: str
    hypothesis_template: str
    labels: tuple[Label, ...]
    description: str | None = None
    source: str | None = None
    hypothesis_templates: tuple[str, ...] = ()  # an ensemble's templates (empty: hypothesis_template alone)

    @property
    def label_names(self) -> list[str]:
        return [lab.name for lab in self.labels]

    @property
    def templates(self) -> list[str]:
        """Every template: the ensemble's, or the one ``hypothesis_template``."""
        return list(self.hypothesis_templates) or [self.hypothesis_template]

    @property
    def hypotheses(self) -> list[str]:
        """The labels' hypotheses under the first template (the only one without an ensemble)."""
        return [lab.hypothesis for lab in self.labels]

    @property
    def hypothesis_sets(self) -> list[list[str]]:
        """One list of the labels' hypotheses (taxonomy order) per template."""
        return [list(h) for h in zip(*[lab.hypotheses or (lab.hypothesis,) for lab in self.labels])]

    @property
    def is_ensemble(self) -> bool:
        return len(self.hypothesis_sets) > 1

    @property
    def template_hash(self) -> str:
        """Changes whenever any hypothesis text changes (template, per-label override, or any
        template of an ensemble); a one-template taxonomy hashes as it always did."""
        sets = self.hypothesis_sets
        return hashlib.sha256(json.dumps(sets[0] if len(sets) == 1 else sets).encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        out = {
            "name": self.name,
            "version": self.version,
            "hypothesis_template": self.hypothesis_template,
            "labels": self.label_names,
            "hypotheses": self.hypotheses,
            "template_hash": self.template_hash,
        }
        if self.is_ensemble:
            out["hypothesis_templates"] = self.templates
            out["hypothesis_sets"] = self.hypothesis_sets
        return out


def hypothesis_sets_of(tax: dict) -> list[list[str]]:
    """A manifest's taxonomy dict (:meth:`Taxonomy.to_dict`) -> its hypothesis sets."""
    return [list(h) for h in tax.get("hypothesis_sets") or [tax["hypotheses"]]]


def shipped_taxonomies() -> list[str]:
    return sorted(p.stem for p in SHIPPED_DIR.glob("*.yaml"))


def load_taxonomy(name_or_path: str | os.PathLike) -> Taxonomy:
    """Load a shipped taxonomy by name (``ekman``) or a YAML file by path."""
    s = str(name_or_path)
    if s.endswith((".yaml", ".yml")) or os.sep in s or "://" in s:
        path = s
    else:
        path = str(SHIPPED_DIR / f"{s}.yaml")
        if not os.path.exists(path):
            raise TaxonomyError(
                f"unknown taxonomy {s!r}: shipped ones are {shipped_taxonomies()}; "
                "or pass the path of a YAML file"
            )
    try:
        if "://" in path and not path.startswith("file://"):
            from labeler.io import open_input_stream

            with open_input_stream(path) as f:
                text = f.read().decode("utf-8")
        else:
            text = Path(path.removeprefix("file://")).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TaxonomyError(f"taxonomy file not found: {path}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise TaxonomyError(f"{path}: not valid YAML: {exc}") from None
    return parse_taxonomy(data, source=path)


def parse_taxonomy(data: object, source: str = "<taxonomy>") -> Taxonomy:
    """Validate a parsed YAML document; every problem is reported at once."""
    problems: list[str] = []
    if not isinstance(data, dict):
        raise TaxonomyError(f"{source}: a taxonomy must be a mapping with keys {sorted(_ALLOWED_TOP)}, got {type(data).__name__}")
    for key in sorted(set(data) - _ALLOWED_TOP):
        problems.append(f"unknown field {key!r} (allowed: {sorted(_ALLOWED_TOP)})")
    name = data.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        problems.append(f"name: must be a lowercase identifier (letters, digits, _ . -), got {name!r}")
    version = data.get("version")
    if isinstance(version, (int, float)) and not isinstance(version, bool):
        version = str(version)
    if not isinstance(version, str) or not version.strip() or "/" in version or "=" in version:
        problems.append(f"version: must be a non-empty string without '/' or '=', got {data.get('version')!r}")
    templates: list[str] | None = []
    if "hypothesis_templates" in data:
        raw_t = data["hypothesis_templates"]
        if "hypothesis_template" in data:
            problems.append("hypothesis_template and hypothesis_templates: give one of them (hypothesis_templates is a list, "
                            "for a template ensemble)")
        if not isinstance(raw_t, list) or not raw_t:
            problems.append(f"hypothesis_templates: must be a non-empty list of strings containing '{{label}}', got {raw_t!r}")
            templates = None
        else:
            for i, t in enumerate(raw_t):
                err = template_problem(t)
                if err:
                    problems.append(f"hypothesis_templates[{i}]: {err}")
                    templates = None
            if templates is not None:
                if len(set(raw_t)) != len(raw_t):
                    problems.append(f"hypothesis_templates: duplicate template in {raw_t!r}")
                templates = list(raw_t)
    else:
        t = data.get("hypothesis_template", DEFAULT_TEMPLATE)
        err = template_problem(t)
        if err:
            problems.append(f"hypothesis_template: {err}")
            templates = None
        else:
            templates = [t]
    template = templates[0] if templates else None
    raw_labels = data.get("labels")
    labels: list[Label] = []
    if not isinstance(raw_labels, list) or not raw_labels:
        problems.append(f"labels: must be a non-empty list, got {raw_labels!r}")
        raw_labels = []
    elif len(raw_labels) < 2:
        problems.append("labels: a taxonomy needs at least 2 labels to choose between")
    seen: set[str] = set()
    for i, item in enumerate(raw_labels):
        if isinstance(item, str):
            item = {"name": item}
        if not isinstance(item, dict):
            problems.append(f"labels[{i}]: must be a string or a mapping, got {item!r}")
            continue
        for key in sorted(set(item) - _ALLOWED_LABEL):
            problems.append(f"labels[{i}]: unknown field {key!r} (allowed: {sorted(_ALLOWED_LABEL)})")
        lname = item.get("name")
        if not isinstance(lname, str) or not lname.strip():
            problems.append(f"labels[{i}].name: must be a non-empty string, got {lname!r}")
            continue
        if lname in seen:
            problems.append(f"labels[{i}].name: duplicate label {lname!r}")
        seen.add(lname)
        hyp = item.get("hypothesis")
        if hyp is not None and (not isinstance(hyp, str) or not hyp.strip()):
            problems.append(f"labels[{i}].hypothesis: must be a non-empty string, got {hyp!r}")
            continue
        desc = item.get("description")
        if desc is not None and not isinstance(desc, str):
            problems.append(f"labels[{i}].description: must be a string, got {desc!r}")
        if hyp is not None:
            hyps = tuple([hyp] * len(templates or [None]))
        else:
            hyps = tuple(t.format(label=lname.replace("_", " ")) for t in templates or [])
        labels.append(Label(lname, hyps[0] if hyps else "", desc, hyps if len(hyps) > 1 else ()))
    if problems:
        raise TaxonomyError(f"{source}: invalid taxonomy:\n  - " + "\n  - ".join(problems))
    return Taxonomy(
        name=name,
        version=version.strip(),
        hypothesis_template=template,
        labels=tuple(labels),
        description=data.get("description"),
        source=source,
        hypothesis_templates=tuple(templates) if templates and len(templates) > 1 else (),
    )


def template_problem(template: object) -> str | None:
    """Why a hypothesis template is not usable, or None."""
    if not isinstance(template, str) or "{label}" not in template:
        return f"must be a string containing '{{label}}', got {template!r}"
    try:
        template.format(label="x")
    except (KeyError, IndexError, ValueError) as exc:
        return f"only '{{label}}' may be substituted ({exc!r})"
    return None
