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
_ALLOWED_TOP = {"name", "version", "description", "hypothesis_template", "labels"}
_ALLOWED_LABEL = {"name", "description", "hypothesis"}


@dataclass(frozen=True)
class Label:
    name: str
    hypothesis: str
    description: str | None = None


@dataclass(frozen=True)
class Taxonomy:
    name: str
    version: str
    hypothesis_template: str
    labels: tuple[Label, ...]
    description: str | None = None
    source: str | None = None

    @property
    def label_names(self) -> list[str]:
        return [lab.name for lab in self.labels]

    @property
    def hypotheses(self) -> list[str]:
        return [lab.hypothesis for lab in self.labels]

    @property
    def template_hash(self) -> str:
        """Changes whenever any hypothesis text changes (template or per-label override)."""
        return hashlib.sha256(json.dumps(self.hypotheses).encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "version": self.version,
            "hypothesis_template": self.hypothesis_template,
            "labels": self.label_names,
            "hypotheses": self.hypotheses,
            "template_hash": self.template_hash,
        }


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
    template = data.get("hypothesis_template", "This person is feeling {label}.")
    if not isinstance(template, str) or "{label}" not in template:
        problems.append(f"hypothesis_template: must be a string containing '{{label}}', got {template!r}")
        template = None
    else:
        try:
            template.format(label="x")
        except (KeyError, IndexError, ValueError) as exc:
            problems.append(f"hypothesis_template: only '{{label}}' may be substituted ({exc!r})")
            template = None
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
        if hyp is None and template is not None:
            hyp = template.format(label=lname.replace("_", " "))
        labels.append(Label(lname, hyp or "", desc))
    if problems:
        raise TaxonomyError(f"{source}: invalid taxonomy:\n  - " + "\n  - ".join(problems))
    return Taxonomy(
        name=name,
        version=version.strip(),
        hypothesis_template=template,
        labels=tuple(labels),
        description=data.get("description"),
        source=source,
    )
