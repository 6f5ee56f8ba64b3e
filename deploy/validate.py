#!/usr/bin/env python3
"""Validate everything under ``deploy/`` offline, against real schemas and against the project.

    python deploy/validate.py                     # every check; lists all problems; exit 1 if any
    python deploy/validate.py --write-taxonomies  # regenerate deploy/k8s/taxonomies-configmap.yaml

What is checked (each problem carries one of these check names):

- ``yaml``: every ``*.yaml``/``*.yml`` under deploy/ parses (multi-document files too); each
  document is a Kubernetes object or, under ``deploy/jobs/``, a Ray ``runtime_env``; each file
  starts with a comment giving the command that applies it (naming the file itself).
- ``schema``: core kinds against the strict JSON schemas that ship in the ``kubernetes-validate``
  package (Kubernetes 1.36, the version KubeRay v1.7.0 is built against); ``ray.io`` kinds
  against the KubeRay v1.7.0 CRDs (``LANSER_KUBERAY_SCHEMAS``, default
  ``../shared/schemas/kuberay`` beside the repository). CRD schemas accept any unknown field,
  so fields the schema does not declare are flagged here (``spec.entrypointTypo``), and a CRD
  object's ``metadata`` is checked against the strict ObjectMeta schema.
- ``operator``: rules the KubeRay operator enforces that a schema cannot express (a RayJob has
  a rayClusterSpec or a clusterSelector; TTL needs shutdownAfterJobFinishes; ...).
- ``references``: commands (``python -m labeler <sub>``, ``lanser-label``, ``python -m trainer``,
  ``lanser-train``, also behind ``ray job submit``, ``sh -c`` and in the README) parse with the
  project's real CLI parsers (a fallback list of subcommands while those are not importable);
  a named config file plus its ``--set`` overrides passes the package's own config loader
  (``labeler.config`` / ``trainer.config``); clusterSelector, head service, ConfigMap and
  ServiceAccount names point at objects defined here; the taxonomy ConfigMap equals
  ``labeler/taxonomies/``.
- ``files``: repository files that commands name (``labeler/configs/gpu.yaml``,
  ``/home/ray/lanser/trainer/configs/...`` inside the image, taxonomies, runtime envs) exist.
- ``consistency``: one image tag (= the project version) everywhere; the Dockerfile's Ray and
  Python match every ``rayVersion`` and ``requires-python``; the runtime env's ``pip`` list
  equals pyproject's dependencies.
- ``conventions``: the CronJob forbids concurrent runs; Ray pods mount the taxonomy ConfigMap
  at the path commands use, without subPath (so edits reach running pods); no ``:latest``.
- ``runtime-env``: runtime envs use only known fields and pass Ray's own validation.
- ``dockerfile``: official ``rayproject/ray`` GPU base, non-root user, source at the path the
  manifests use, an ignore file that keeps credentials out and what the build needs in.
- ``credentials``: no literal credential anywhere (AWS keys, ``user:password@`` in URIs,
  tokens, secret-named env values, Secret objects with data).
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
import sys
import tomllib
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

import yaml

REPO = Path(__file__).resolve().parent.parent
DEPLOY_DIR = "deploy"
# Kubernetes version of the core schemas: KubeRay v1.7.0 is built against k8s.io/api v0.36.
K8S_VERSION = "1.36.0"
KUBERAY_SCHEMAS_ENV = "LANSER_KUBERAY_SCHEMAS"
KUBERAY_SCHEMAS_DEFAULT = "../shared/schemas/kuberay"
# Where the image keeps the source (deploy/docker/Dockerfile WORKDIR): /home/ray/lanser/<path>
# in a manifest is <path> in this repository.
IMAGE_APP_DIR = "/home/ray/lanser"
# Where Ray pods mount the taxonomy ConfigMap.
TAXONOMY_MOUNT = "/etc/lanser/taxonomies"
TAXONOMY_CONFIGMAP = "lanser-taxonomies"
TAXONOMY_CONFIGMAP_FILE = "deploy/k8s/taxonomies-configmap.yaml"
SHIPPED_TAXONOMY_DIR = "labeler/taxonomies"
DOCKERFILE = "deploy/docker/Dockerfile"
DOCKERIGNORE = "deploy/docker/Dockerfile.dockerignore"
RUNTIME_ENV_DIR = "deploy/jobs"
README = "deploy/README.md"
# Subcommands assumed while labeler.cli / trainer.cli cannot be imported yet.
FALLBACK_SUBCOMMANDS = {
    "labeler": ("label", "relabel", "inspect"),
    "trainer": ("pretrain", "finetune", "evaluate"),
}
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
    notes: list[str] = dataclasses.field(default_factory=list)  # what was checked how (fallbacks)
    kinds: list[str] = dataclasses.field(default_factory=list)  # "apiVersion kind" of each object validated
    documents: int = 0
    files: int = 0

    def add(self, check: str, where: str, message: str) -> None:
        self.problems.append(Problem(check, where, message))

    def of(self, *checks: str) -> list[Problem]:
        return [p for p in self.problems if p.check in checks]


# --------------------------------------------------------------------------- YAML loading


def _yaml_loader():
    return getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_documents(text: str) -> list[Any]:
    """All non-empty documents of a (multi-document) YAML text."""
    return [d for d in yaml.load_all(text, Loader=_yaml_loader()) if d is not None]


def describe(rel: str, index: int, doc: Any) -> str:
    if isinstance(doc, dict) and "kind" in doc:
        meta = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
        name = meta.get("name") or (meta.get("generateName", "") + "*") if meta else "?"
        return f"{rel}[{index}] {doc.get('kind')}/{name}"
    return f"{rel}[{index}]"


def fmt_path(parts: Iterable[Any]) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "<document>"


# --------------------------------------------------------------------------- schemas


class Schemas:
    """The core Kubernetes schemas (kubernetes-validate, strict) and the KubeRay CRD schemas."""

    def __init__(self, kuberay_dir: Path, k8s_version: str = K8S_VERSION):
        self.kuberay_dir = Path(kuberay_dir)
        self.k8s_version = k8s_version

    @functools.cached_property
    def core_dir(self) -> Path:
        from importlib.resources import files

        path = Path(str(files("kubernetes_validate"))) / "kubernetes-json-schema" / f"v{self.k8s_version}-local-strict"
        if not path.is_dir():
            raise FileNotFoundError(f"kubernetes-validate has no strict schemas for Kubernetes {self.k8s_version} ({path})")
        return path

    @functools.cached_property
    def registry(self):
        """A referencing registry holding _definitions.json under its $id, so kind files resolve offline."""
        from referencing import Registry, Resource

        defs = json.loads((self.core_dir / "_definitions.json").read_text())
        return Resource.from_contents(defs) @ Registry()

    @functools.lru_cache(maxsize=None)
    def core_validator(self, api_version: str, kind: str):
        """Validator for a core kind, or None when kubernetes-validate has no schema for it."""
        import jsonschema

        # batch/v1 -> batch-v1, v1 -> v1, rbac.authorization.k8s.io/v1 -> rbac-v1 (kubernetes-validate's naming)
        group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
        path = self.core_dir / f"{kind.lower()}-{group_version}.json"
        if not path.is_file():
            return None
        schema = json.loads(path.read_text())
        return jsonschema.Draft202012Validator(schema, registry=self.registry)

    @functools.cached_property
    def object_meta_validator(self):
        import jsonschema

        return jsonschema.Draft202012Validator({"$ref": f"{DEFS_ID}#/$defs/{OBJECT_META}"}, registry=self.registry)

    @functools.cached_property
    def crds(self) -> dict[tuple[str, str], tuple[dict, bool]]:
        """(apiVersion, kind) -> (openAPIV3Schema, deprecated) for every CRD version in the directory."""
        if not self.kuberay_dir.is_dir():
            raise FileNotFoundError(
                f"KubeRay CRD schemas not found at {self.kuberay_dir}: set {KUBERAY_SCHEMAS_ENV} to the directory "
                "holding ray.io_rayclusters.yaml, ray.io_rayjobs.yaml, ... (KubeRay v1.7.0 ray-operator/config/crd/bases)"
            )
        out: dict[tuple[str, str], tuple[dict, bool]] = {}
        for path in sorted(self.kuberay_dir.glob("*.yaml")):
            crd = yaml.load(path.read_text(), Loader=_yaml_loader())
            if not isinstance(crd, dict) or crd.get("kind") != "CustomResourceDefinition":
                continue
            spec = crd["spec"]
            for version in spec["versions"]:
                key = (f"{spec['group']}/{version['name']}", spec["names"]["kind"])
                out[key] = (version["schema"]["openAPIV3Schema"], bool(version.get("deprecated")))
        if not out:
            raise FileNotFoundError(f"no CustomResourceDefinition in {self.kuberay_dir}")
        return out

    @functools.lru_cache(maxsize=None)
    def crd_validator(self, api_version: str, kind: str):
        import jsonschema

        schema, _ = self.crds[(api_version, kind)]
        # OpenAPI v3 structural schemas use only keywords that draft 2020-12 reads the same
        # way (type, properties, items, required, enum, anyOf, pattern, minimum, ...); the
        # x-kubernetes-* and nullable keywords are ignored by the validator.
        return jsonschema.Draft202012Validator(schema)


def undeclared_fields(value: Any, schema: dict, path: tuple = ()) -> Iterator[tuple]:
    """Paths of fields in ``value`` that an OpenAPI structural schema does not declare.

    Where an object schema lists ``properties`` and has neither ``additionalProperties`` nor
    ``x-kubernetes-preserve-unknown-fields``, the API server would silently prune any other
    field: that is a typo to report. (``additionalProperties: false`` is left to the JSON
    schema validator, which reports it already.)
    """
    if not isinstance(schema, dict):
        return
    if isinstance(value, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
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
        key = (api_version, kind)
        if key not in schemas.crds:
            known = sorted({f"{v} {k}" for v, k in schemas.crds})
            return [Problem("schema", where, f"unknown KubeRay kind {api_version} {kind} (KubeRay v1.7.0 serves: {', '.join(known)})")]
        schema, deprecated = schemas.crds[key]
        if deprecated or api_version != RAY_SERVED_VERSION:
            problems.append(Problem("schema", where, f"{api_version} is deprecated: use {RAY_SERVED_VERSION}"))
        errors = list(schemas.crd_validator(api_version, kind).iter_errors(doc))
        if isinstance(doc.get("metadata"), dict):
            errors += [_prefixed(e, "metadata") for e in schemas.object_meta_validator.iter_errors(doc["metadata"])]
        # (top-level metadata is only `type: object` in a CRD: the strict ObjectMeta above covers it)
        for path in undeclared_fields(doc, schema):
            problems.append(Problem("schema", where, f"{fmt_path(path)}: field not declared by the {kind} schema (a typo? the API server would drop it)"))
    else:
        validator = schemas.core_validator(api_version, kind)
        if validator is None:
            return [Problem("schema", where, f"no schema for {api_version} {kind} in Kubernetes {schemas.k8s_version}")]
        errors = list(validator.iter_errors(doc))
    for err in sorted(errors, key=lambda e: [str(p) for p in e.absolute_path]):
        problems.append(Problem("schema", where, f"{fmt_path(err.absolute_path)}: {err.message}"))
    return problems


def _prefixed(error, prefix: str):
    error.path.appendleft(prefix)
    return error


# --------------------------------------------------------------------------- the project


class Project:
    """What the manifests refer to: files, shipped taxonomies, CLI parsers, pyproject."""

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
        """Console script -> package: lanser-label -> labeler."""
        return {name: target.split(":")[0].split(".")[0] for name, target in self.pyproject["project"].get("scripts", {}).items()}

    @functools.cached_property
    def shipped_taxonomies(self) -> dict[str, str]:
        return {p.name: p.read_text(encoding="utf-8") for p in sorted((self.root / SHIPPED_TAXONOMY_DIR).glob("*.yaml"))}

    def exists(self, rel: str) -> bool:
        return (self.root / rel).is_file()

    @functools.cached_property
    def parsers(self) -> dict[str, Any]:
        """package -> argparse parser from ``<package>.cli.build_parser()``, or a CliUnavailable."""
        out: dict[str, Any] = {}
        with _on_sys_path(self.root):
            for package in FALLBACK_SUBCOMMANDS:
                try:
                    out[package] = importlib.import_module(f"{package}.cli").build_parser()
                except ModuleNotFoundError as exc:
                    if exc.name in (package, f"{package}.cli"):
                        out[package] = CliUnavailable(f"{package}.cli does not exist yet", broken=False)
                    else:
                        out[package] = CliUnavailable(f"importing {package}.cli failed: {exc!r}", broken=True)
                except Exception as exc:  # a broken CLI module is a finding, not a crash of the validator
                    out[package] = CliUnavailable(f"{package}.cli.build_parser() failed: {exc!r}", broken=True)
        return out

    def check_config(self, package: str, subcommand: str, config_rel: str, overrides: list[str]) -> Optional[str]:
        """Validate a config file plus ``--set`` overrides with the package's own loader.

        Returns the loader's error message, or None when valid. Raises LookupError when the
        package's config module offers no loader this knows how to call (yet).
        """
        path = str(self.root / config_rel)
        with _on_sys_path(self.root):
            try:
                module = importlib.import_module(f"{package}.config")
                if package == "labeler":  # load_config(path, {key: value})
                    load = lambda: module.load_config(path, dict(module.parse_override(o) for o in overrides))  # noqa: E731
                else:  # trainer: load_config(command, path, [(key, value)])
                    load = lambda: module.load_config(subcommand, path, [module.parse_set(o) for o in overrides])  # noqa: E731
                error = module.ConfigError
            except (ImportError, AttributeError) as exc:
                raise LookupError(f"{package}.config: {exc}") from None
            try:
                load()
            except error as exc:
                return str(exc)
            except TypeError as exc:  # the loader's signature changed
                raise LookupError(f"{package}.config.load_config: {exc}") from None
        return None


@dataclasses.dataclass(frozen=True)
class CliUnavailable:
    reason: str
    broken: bool  # the module exists but fails: a problem, not just a fallback


@contextlib.contextmanager
def _on_sys_path(root: Path):
    added = str(root) not in sys.path
    if added:
        sys.path.insert(0, str(root))
    try:
        yield
    finally:
        if added:
            sys.path.remove(str(root))


# --------------------------------------------------------------------------- commands


@dataclasses.dataclass(frozen=True)
class Site:
    """Where a command runs: its label for messages and whether its cwd is the repository root
    (``ray job submit`` with a working_dir runtime env, or a local checkout)."""

    where: str
    cwd_is_repo: bool


SHELL_OPERATORS = {"&&", "||", ";", "|"}


def split_commands(argv: list[str]) -> Iterator[list[str]]:
    current: list[str] = []
    for token in argv:
        if token in SHELL_OPERATORS:
            if current:
                yield current
            current = []
        else:
            current.append(token)
    if current:
        yield current


class CommandChecker:
    """Finds lanser commands in argv lists and checks them against the project."""

    def __init__(self, project: Project, report: Report, taxonomy_keys: Optional[set[str]]):
        self.project = project
        self.report = report
        self.taxonomy_keys = taxonomy_keys  # keys of the taxonomy ConfigMap, None if there is none
        self.found: list[tuple[str, list[str]]] = []  # (package, argv) of every lanser command seen

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
        if site.cwd_is_repo:  # files under deploy/ that a command from the checkout names (kubectl apply -f ...)
            for token in argv:
                ref = token.split("=", 1)[-1]
                if ref.startswith(DEPLOY_DIR + "/") and not (self.project.root / ref).exists():
                    self.report.add("files", site.where, f"{ref} does not exist in the repository")
        exe = os.path.basename(argv[0])
        if exe in ("sh", "bash") and "-c" in argv[1:-1]:
            self.check_shell(argv[argv.index("-c") + 1], site)
        elif exe == "ray" and argv[1:3] == ["job", "submit"]:
            self._check_ray_job_submit(argv[3:], site)
        elif re.fullmatch(r"python(3(\.\d+)?)?", exe) and len(argv) > 2 and argv[1] == "-m" and argv[2] in FALLBACK_SUBCOMMANDS:
            self._check_lanser(argv[2], argv[3:], site, " ".join(argv[:3]))
        elif exe in self.project.scripts and self.project.scripts[exe] in FALLBACK_SUBCOMMANDS:
            self._check_lanser(self.project.scripts[exe], argv[1:], site, exe)

    def _check_ray_job_submit(self, args: list[str], site: Site) -> None:
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
                env = yaml.load((self.project.root / rel).read_text(), Loader=_yaml_loader())
                cwd_is_repo = cwd_is_repo or (isinstance(env, dict) and "working_dir" in env)
        self.check_argv(list(params["entrypoint"]), Site(site.where, cwd_is_repo))

    def _check_lanser(self, package: str, args: list[str], site: Site, prog: str) -> None:
        shown = f"`{prog} {' '.join(args)}`"
        self.found.append((package, args))
        parser = self.project.parsers[package]
        if isinstance(parser, CliUnavailable):
            if not args or args[0] not in FALLBACK_SUBCOMMANDS[package]:
                self.report.add("references", site.where, f"{shown}: unknown subcommand (expected one of {', '.join(FALLBACK_SUBCOMMANDS[package])})")
        else:
            err = io.StringIO()
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                try:
                    parser.parse_args(args)
                except SystemExit as exc:
                    if exc.code:
                        self.report.add("references", site.where, f"{shown}: {err.getvalue().strip().splitlines()[-1] if err.getvalue().strip() else 'rejected by the parser'}")
        config = _flag_value(args, "--config")
        config_rel = self._file_reference("--config", config, site) if config else None
        taxonomy = _flag_value(args, "--taxonomy")
        if taxonomy:
            if "/" not in taxonomy and not taxonomy.endswith((".yaml", ".yml")):
                rel = f"{SHIPPED_TAXONOMY_DIR}/{taxonomy}.yaml"  # a shipped taxonomy by name
                if not self.project.exists(rel):
                    self.report.add("files", site.where, f"--taxonomy {taxonomy}: no shipped taxonomy {rel}")
            else:
                self._file_reference("--taxonomy", taxonomy, site)
        if config_rel and self.project.exists(config_rel) and args:
            overrides = [args[i + 1] for i, a in enumerate(args[:-1]) if a == "--set"]
            try:
                error = self.project.check_config(package, args[0], config_rel, overrides)
            except LookupError as exc:
                self.report.notes.append(f"{exc}: {config_rel} and its --set overrides were not validated")
            else:
                if error:
                    self.report.add("references", site.where, f"{shown}: {config_rel} with these --set overrides is invalid: {error}")

    def _file_reference(self, flag: str, value: str, site: Site) -> Optional[str]:
        """Check that a path a command names exists; return its repo-relative path if it is one."""
        if "://" in value or "$" in value:
            return None  # object-store URI, or expanded at run time
        if value.startswith(TAXONOMY_MOUNT + "/"):
            key = value[len(TAXONOMY_MOUNT) + 1:]
            if self.taxonomy_keys is None:
                self.report.add("references", site.where, f"{flag} {value}: no ConfigMap {TAXONOMY_CONFIGMAP} is defined under deploy/")
            elif key not in self.taxonomy_keys:
                self.report.add("references", site.where, f"{flag} {value}: ConfigMap {TAXONOMY_CONFIGMAP} has no key {key!r} (it has {', '.join(sorted(self.taxonomy_keys))})")
            return None
        if value.startswith(IMAGE_APP_DIR + "/"):
            rel = value[len(IMAGE_APP_DIR) + 1:]
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
            return arg[len(flag) + 1:]
    return None


def manifest_commands(doc: Any, path: tuple = ()) -> Iterator[tuple[tuple, Any]]:
    """(path, command) for every RayJob entrypoint (a shell string) and container command+args (a list)."""
    if isinstance(doc, dict):
        for key, value in doc.items():
            if key == "entrypoint" and isinstance(value, str):
                yield path + (key,), value
            elif key in ("containers", "initContainers") and isinstance(value, list):
                for i, container in enumerate(value):
                    if isinstance(container, dict):
                        argv = list(container.get("command") or []) + list(container.get("args") or [])
                        if argv:
                            yield path + (key, i), [str(a) for a in argv]
                yield from manifest_commands(value, path + (key,))
            else:
                yield from manifest_commands(value, path + (key,))
    elif isinstance(doc, list):
        for i, item in enumerate(doc):
            yield from manifest_commands(item, path + (i,))


def readme_commands(text: str) -> Iterator[tuple[int, str]]:
    """(line number, command) for each command in the shell code blocks of a Markdown text."""
    in_block, shell = False, False
    pending, start = "", 0
    for number, line in enumerate(text.splitlines(), 1):
        fence = re.match(r"^\s*```\s*([\w-]*)", line)
        if fence:
            in_block = not in_block
            shell = in_block and fence.group(1) in ("", "bash", "sh", "shell", "console", "zsh")
            pending = ""
            continue
        if not (in_block and shell):
            continue
        stripped = line.strip()
        if not pending:
            start = number
            stripped = re.sub(r"^\$\s+", "", stripped)
            if not stripped or stripped.startswith("#"):
                continue
        if stripped.endswith("\\"):
            pending += stripped[:-1].rstrip() + " "
            continue
        yield start, pending + stripped
        pending = ""


# --------------------------------------------------------------------------- checks on objects


def walk_pod_specs(doc: Any, path: tuple = ()) -> Iterator[tuple[tuple, dict]]:
    """Every pod spec (``template.spec`` / ``submitterPodTemplate.spec``) in an object."""
    if isinstance(doc, dict):
        if "containers" in doc and isinstance(doc["containers"], list):
            yield path, doc
        for key, value in doc.items():
            yield from walk_pod_specs(value, path + (key,))
    elif isinstance(doc, list):
        for i, item in enumerate(doc):
            yield from walk_pod_specs(item, path + (i,))


def ray_cluster_specs(doc: dict) -> Iterator[tuple[tuple, dict]]:
    spec = doc.get("spec") if isinstance(doc.get("spec"), dict) else {}
    kind = doc.get("kind")
    if kind == "RayCluster":
        yield ("spec",), spec
    elif kind == "RayJob" and isinstance(spec.get("rayClusterSpec"), dict):
        yield ("spec", "rayClusterSpec"), spec["rayClusterSpec"]
    elif kind == "RayService" and isinstance(spec.get("rayClusterConfig"), dict):
        yield ("spec", "rayClusterConfig"), spec["rayClusterConfig"]
    elif kind == "RayCronJob" and isinstance(spec.get("jobTemplate"), dict) and isinstance(spec["jobTemplate"].get("rayClusterSpec"), dict):
        yield ("spec", "jobTemplate", "rayClusterSpec"), spec["jobTemplate"]["rayClusterSpec"]


def ray_pod_specs(doc: dict) -> Iterator[tuple[tuple, dict]]:
    """The pod spec of every Ray head and worker group in an object."""
    for path, cluster in ray_cluster_specs(doc):
        groups = [(("headGroupSpec",), cluster.get("headGroupSpec") or {})]
        groups += [(("workerGroupSpecs", i), g) for i, g in enumerate(cluster.get("workerGroupSpecs") or [])]
        for gpath, group in groups:
            yield path + gpath + ("template", "spec"), (group.get("template") or {}).get("spec") or {}


def ray_job_specs(doc: dict) -> Iterator[tuple[tuple, dict]]:
    spec = doc.get("spec") if isinstance(doc.get("spec"), dict) else {}
    if doc.get("kind") == "RayJob":
        yield ("spec",), spec
    elif doc.get("kind") == "RayCronJob" and isinstance(spec.get("jobTemplate"), dict):
        yield ("spec", "jobTemplate"), spec["jobTemplate"]


def operator_problems(doc: dict, where: str) -> list[Problem]:
    """Rules the KubeRay v1.7.0 operator enforces (utils/validation.go) that the CRD schema cannot."""
    out: list[Problem] = []

    def add(path: tuple, message: str) -> None:
        out.append(Problem("operator", where, f"{fmt_path(path)}: {message}"))

    meta = doc.get("metadata") or {}
    if doc.get("kind") == "RayJob":
        # generateName gets 5 random characters appended by the API server
        name = meta.get("name") or (meta["generateName"] + "abcde" if meta.get("generateName") else "")
        if not re.fullmatch(r"[a-z]([-a-z0-9]{0,45}[a-z0-9])?", name or ""):
            add(("metadata", "name"), f"a RayJob name must be a DNS-1035 label of at most 47 characters, got {name!r}")
    for path, job in ray_job_specs(doc):
        selector = job.get("clusterSelector") or {}
        has_cluster = isinstance(job.get("rayClusterSpec"), dict)
        if bool(selector) == has_cluster:
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
        spec = doc.get("spec") or {}
        schedule = str(spec.get("schedule", ""))
        if "TZ" in schedule or len(schedule.split()) != 5:
            add(("spec", "schedule"), f"needs five cron fields and no TZ= (use timeZone), got {schedule!r}")
    return out


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
    env_vars = env.get("env_vars") if isinstance(env.get("env_vars"), dict) else {}
    for name in env_vars:
        if SECRET_NAME.search(str(name)):
            out.append(Problem("credentials", where, f"env_vars.{name}: secrets must not be in a runtime_env (it is stored with the job and shown in the dashboard)"))
    checked = dict(env)
    wd = checked.get("working_dir")
    if isinstance(wd, str) and "://" not in wd:
        checked["working_dir"] = str((project.root / wd).resolve())  # relative to where `ray job submit` runs: the repo root
    try:
        RuntimeEnv(**checked)
    except (ValueError, TypeError) as exc:
        out.append(Problem("runtime-env", where, f"Ray rejects it: {exc}"))
    if "working_dir" in env and isinstance(env.get("pip"), list):
        out += _pip_matches_pyproject(env["pip"], where, project)
    return out


def _pip_matches_pyproject(pip: list, where: str, project: Project) -> list[Problem]:
    from packaging.requirements import Requirement

    project_table = project.pyproject["project"]
    wanted = [Requirement(r) for r in project_table["dependencies"] + project_table.get("optional-dependencies", {}).get("cloud", [])]
    wanted = {str(r) for r in wanted if r.name != "ray"}  # the cluster provides Ray
    have = {str(Requirement(r)) for r in pip}
    out = []
    for missing in sorted(wanted - have):
        out.append(Problem("consistency", where, f"pip lacks {missing!r} from pyproject.toml ([project] dependencies + [cloud])"))
    for extra in sorted(have - wanted):
        out.append(Problem("consistency", where, f"pip has {extra!r}, which pyproject.toml does not list this way"))
    return out


# --------------------------------------------------------------------------- Dockerfile


def dockerfile_instructions(text: str) -> list[tuple[int, str, str]]:
    """(line, INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, pending, start = [], "", 0
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = pending + stripped
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((start, word.upper(), rest.strip()))
    return out


BASE_IMAGE = re.compile(r"^rayproject/ray:(?P<ray>\d+\.\d+\.\d+)-py(?P<major>\d)(?P<minor>\d+)-(?P<variant>gpu|cu\d+)$")


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
        image = args.split()[0]
        match = BASE_IMAGE.match(image)
        if not match:
            out.append(Problem("dockerfile", f"{where}:{number}", f"base image {image!r} is not an official rayproject/ray:<ray>-py<XY>-gpu (or -cuNNN) tag"))
        else:
            ray_version = match["ray"]
            python = f"{match['major']}.{match['minor']}"
            requires = project.pyproject["project"].get("requires-python", "")
            if requires and python not in SpecifierSet(requires):
                out.append(Problem("dockerfile", f"{where}:{number}", f"Python {python} of {image} is outside requires-python {requires!r}"))
            for dep in project.pyproject["project"]["dependencies"]:
                req = Requirement(dep)
                if req.name == "ray" and ray_version not in req.specifier:
                    out.append(Problem("dockerfile", f"{where}:{number}", f"Ray {ray_version} of {image} does not satisfy pyproject's {dep!r}"))
    users = [(n, args) for n, word, args in instructions if word == "USER"]
    if not users:
        out.append(Problem("dockerfile", where, "no USER: say which non-root user runs the image (the Ray images use uid 1000)"))
    elif users[-1][1].split(":")[0] in ("root", "0"):
        out.append(Problem("dockerfile", f"{where}:{users[-1][0]}", "the image must not run as root"))
    workdirs = [args for _, word, args in instructions if word == "WORKDIR"]
    if not workdirs or workdirs[-1] != IMAGE_APP_DIR:
        out.append(Problem("dockerfile", where, f"WORKDIR must be {IMAGE_APP_DIR}: manifests name files there"))
    copies_source = any(word in ("COPY", "ADD") and re.search(rf"(^|\s)\.\s+{re.escape(IMAGE_APP_DIR)}/?$", args) for _, word, args in instructions)
    if not copies_source:
        out.append(Problem("dockerfile", where, f"no `COPY . {IMAGE_APP_DIR}`: the configs the manifests name would be missing"))
    for number, word, args in instructions:
        if word in ("ENV", "ARG"):
            for name in re.findall(r"(?:^|\s)([A-Za-z_][A-Za-z0-9_]*)(?==|\s|$)", args):
                if SECRET_NAME.search(name):
                    out.append(Problem("credentials", f"{where}:{number}", f"{word} {name}: secrets must not be baked into the image"))
        if word in ("COPY", "ADD") and re.search(r"(\.env\b|\.pem\b|credentials|\.aws|id_rsa|\.netrc)", args):
            out.append(Problem("credentials", f"{where}:{number}", f"{word} {args}: copies what looks like a credential file"))
    return out, ray_version


def _dockerignore_regex(pattern: str) -> re.Pattern:
    regex = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            regex += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            regex += ".*"
            i += 2
        elif pattern[i] == "*":
            regex += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            regex += "[^/]"
            i += 1
        else:
            regex += re.escape(pattern[i])
            i += 1
    return re.compile(rf"^{regex}(?:/.*)?$")  # a matched directory excludes everything below it


def dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Whether .dockerignore patterns (in order, ``!`` re-includes) exclude a context path."""
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern[1:] if negate else pattern
        if _dockerignore_regex(pattern.strip("/")).match(path):
            excluded = not negate
    return excluded


def dockerignore_problems(text: str, where: str, project: Project) -> list[Problem]:
    patterns = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    out = []
    setuptools = project.pyproject.get("tool", {}).get("setuptools", {})
    packages = [p.rstrip("*") for p in setuptools.get("packages", {}).get("find", {}).get("include", [])]
    needed = ["pyproject.toml"] + [project.pyproject["project"].get("readme", "")] + [f"{p}/__init__.py" for p in packages if p]
    for path in filter(None, needed):
        if dockerignore_excludes(patterns, path):
            out.append(Problem("dockerfile", where, f"excludes {path}, which the image build needs"))
    for path in (".git/config", ".venv/bin/python", ".env", "labeler/.env", "key.pem", ".aws/credentials", "credentials.json"):
        if not dockerignore_excludes(patterns, path):
            out.append(Problem("dockerfile", where, f"does not exclude {path}: keep VCS data, virtualenvs and credentials out of the build context"))
    return out


# --------------------------------------------------------------------------- the taxonomy ConfigMap


def render_taxonomy_configmap(project: Project) -> str:
    """The taxonomies ConfigMap manifest: one key per shipped taxonomy file, text verbatim."""
    lines = [
        f"# kubectl apply -n lanser -f {TAXONOMY_CONFIGMAP_FILE}",
        "#",
        f"# The shipped taxonomies ({SHIPPED_TAXONOMY_DIR}/*.yaml), mounted read-only at {TAXONOMY_MOUNT}",
        "# on every Ray pod, so jobs name them as --taxonomy /etc/lanser/taxonomies/<file>. Applying an",
        "# edited ConfigMap reaches running pods within about a minute: no image rebuild, no restart.",
        f"# GENERATED from {SHIPPED_TAXONOMY_DIR}/ by `python deploy/validate.py --write-taxonomies`;",
        "# deploy/validate.py fails when the two differ. Edit the taxonomy files, not this file.",
        "apiVersion: v1",
        "kind: ConfigMap",
        "metadata:",
        f"  name: {TAXONOMY_CONFIGMAP}",
        "  labels:",
        "    app.kubernetes.io/name: lanser",
        "    app.kubernetes.io/component: taxonomies",
        "data:",
    ]
    for name, text in project.shipped_taxonomies.items():
        body = text.rstrip("\n")
        chomp = "-" if not text.endswith("\n") else ("+" if text.endswith("\n\n") else "")
        lines.append(f"  {name}: |2{chomp}")  # explicit indentation: safe whatever the first line holds
        lines += [f"    {line}" if line else "" for line in body.split("\n")]
        if chomp == "+":
            lines += [""] * (len(text) - len(text.rstrip("\n")) - 1)
    rendered = "\n".join(lines) + "\n"
    data = load_documents(rendered)[0]["data"]
    if data != project.shipped_taxonomies:  # never write a file that would not round-trip
        raise RuntimeError("rendered ConfigMap does not reproduce the taxonomy files exactly")
    return rendered


# --------------------------------------------------------------------------- all of deploy/


HEADER = re.compile(r"^#\s*(kubectl\s+(apply|create)\b.*\s-f\s+(?P<k8s>\S+)|ray job submit\b.*--runtime-env\s+(?P<env>\S+))")


@dataclasses.dataclass
class DeployTree:
    manifests: list[tuple[str, dict]]  # (where, Kubernetes object)
    runtime_envs: list[tuple[str, Any]]  # (where, runtime_env)
    headers: list[tuple[str, str]]  # (where, the command in a file's first-line comment)


def load_deploy_tree(root: Path, report: Report) -> DeployTree:
    """Read every file under deploy/: scan all for credentials, load every YAML document."""
    tree = DeployTree([], [], [])
    for path in sorted(p for p in (root / DEPLOY_DIR).rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        rel = path.relative_to(root).as_posix()
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
        if not header or (header["k8s"] or header["env"]) != rel:
            report.add("yaml", rel, f"must start with a comment giving the command that applies it, naming {rel} (e.g. `# kubectl apply -n lanser -f {rel}`), got {first!r}")
        else:
            tree.headers.append((f"{rel}:1", first.lstrip("#").strip()))
        try:
            docs = load_documents(text)
        except yaml.YAMLError as exc:
            report.add("yaml", rel, f"not valid YAML: {exc}")
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
    return tree


def validate_all(root: Path = REPO, kuberay_dir: Optional[Path] = None) -> Report:
    """Run every check over every file under ``<root>/deploy``; never stops at the first problem."""
    root = Path(root)
    project = Project(root)
    report = Report()
    if kuberay_dir is None:
        kuberay_dir = Path(os.environ.get(KUBERAY_SCHEMAS_ENV) or (root / KUBERAY_SCHEMAS_DEFAULT))
    schemas = Schemas(kuberay_dir)
    try:
        schemas.crds
    except FileNotFoundError as exc:
        report.add("schema", str(kuberay_dir), str(exc))
    tree = load_deploy_tree(root, report)
    manifests = tree.manifests

    # Schemas, operator rules, literal credentials.
    crds_ok = not report.of("schema")
    for where, doc in manifests:
        if crds_ok or not str(doc.get("apiVersion", "")).startswith(RAY_GROUP):
            report.problems += schema_problems(doc, where, schemas)
            report.kinds.append(f"{doc.get('apiVersion')} {doc.get('kind')}")
        report.problems += operator_problems(doc, where)
        report.problems += credential_problems_in_object(doc, where)

    # Objects the manifests refer to by name; the taxonomy ConfigMap.
    defined = {(doc.get("kind"), (doc.get("metadata") or {}).get("name")) for _, doc in manifests}
    taxonomy_maps = [(w, d) for w, d in manifests if d.get("kind") == "ConfigMap" and (d.get("metadata") or {}).get("name") == TAXONOMY_CONFIGMAP]
    taxonomy_keys = set((taxonomy_maps[0][1].get("data") or {})) if taxonomy_maps else None
    report.problems += taxonomy_configmap_problems(taxonomy_maps, project)
    for where, doc in manifests:
        report.problems += object_reference_problems(doc, where, defined)

    # Commands: in manifests, in runtime env headers, in the README.
    checker = CommandChecker(project, report, taxonomy_keys)
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
    readme = root / README
    if readme.is_file():
        for number, command in readme_commands(readme.read_text(encoding="utf-8")):
            checker.check_shell(command, Site(f"{README}:{number}", cwd_is_repo=True))
    else:
        report.add("files", README, "missing")
    for package, parser in project.parsers.items():
        if isinstance(parser, CliUnavailable):
            report.notes.append(f"{parser.reason}: {package} subcommands checked against the fallback list {', '.join(FALLBACK_SUBCOMMANDS[package])}")
            if parser.broken:
                report.add("references", f"{package}/cli.py", parser.reason)
    if not checker.found:
        report.add("references", DEPLOY_DIR, "no lanser command found in any manifest: the extraction is broken")

    # Runtime envs (files and RayJob runtimeEnvYAML), Dockerfile, images and versions.
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
    ray_version = None
    dockerfile = root / DOCKERFILE
    if dockerfile.is_file():
        text = dockerfile.read_text(encoding="utf-8")
        problems, ray_version = dockerfile_problems(text, DOCKERFILE, project)
        report.problems += problems
        if not re.match(rf"^#\s*docker build .*-f {re.escape(DOCKERFILE)}\b", text):
            report.add("yaml", DOCKERFILE, f"must start with a comment giving the build command (`# docker build -f {DOCKERFILE} -t <image> .`)")
    else:
        report.add("files", DOCKERFILE, "missing")
    ignore = root / DOCKERIGNORE
    if ignore.is_file():
        report.problems += dockerignore_problems(ignore.read_text(encoding="utf-8"), DOCKERIGNORE, project)
    else:
        report.add("files", DOCKERIGNORE, "missing: the build context would include .git, virtualenvs and any credential files")
    report.problems += image_version_problems(manifests, tree.runtime_envs, ray_version, project, dockerfile)
    report.problems += convention_problems(manifests)
    report.problems = list(dict.fromkeys(report.problems))  # one line per problem, first-seen order
    report.notes = list(dict.fromkeys(report.notes))
    return report


def taxonomy_configmap_problems(maps: list[tuple[str, dict]], project: Project) -> list[Problem]:
    """The taxonomy ConfigMap exists once, in its file, and equals labeler/taxonomies/ file by file."""
    if len(maps) != 1:
        return [Problem("references", TAXONOMY_CONFIGMAP_FILE, f"expected exactly one ConfigMap {TAXONOMY_CONFIGMAP} under deploy/, found {len(maps)}")]
    report = Report()
    where, doc = maps[0]
    if not where.startswith(TAXONOMY_CONFIGMAP_FILE + "["):
        report.add("references", where, f"the ConfigMap {TAXONOMY_CONFIGMAP} belongs in {TAXONOMY_CONFIGMAP_FILE}")
    data = doc.get("data") or {}
    shipped = project.shipped_taxonomies
    fix = "; run `python deploy/validate.py --write-taxonomies`"
    for name in sorted(set(shipped) - set(data)):
        report.add("references", where, f"lacks {name} from {SHIPPED_TAXONOMY_DIR}/{fix}")
    for name in sorted(set(data) - set(shipped)):
        report.add("references", where, f"has {name}, which is not in {SHIPPED_TAXONOMY_DIR}/ (add the file there){fix}")
    for name in sorted(set(data) & set(shipped)):
        if data[name] != shipped[name]:
            report.add("references", where, f"{name} differs from {SHIPPED_TAXONOMY_DIR}/{name}{fix}")
    return report.problems


def object_reference_problems(doc: dict, where: str, defined: set) -> list[Problem]:
    """Names that must resolve to objects under deploy/: (kind, name) pairs in ``defined``."""
    report = Report()
    for path, job in ray_job_specs(doc):
        cluster = (job.get("clusterSelector") or {}).get("ray.io/cluster")
        if cluster and ("RayCluster", cluster) not in defined:
            report.add("references", where, f"{fmt_path(path)}.clusterSelector: no RayCluster {cluster!r} is defined under deploy/")
    for path, pod in walk_pod_specs(doc):
        account = pod.get("serviceAccountName")
        if account and ("ServiceAccount", account) not in defined:
            report.add("references", where, f"{fmt_path(path)}.serviceAccountName: no ServiceAccount {account!r} is defined under deploy/")
        for i, volume in enumerate(pod.get("volumes") or []):
            name = (volume.get("configMap") or {}).get("name")
            if name and ("ConfigMap", name) not in defined:
                report.add("references", where, f"{fmt_path(path + ('volumes', i))}: no ConfigMap {name!r} is defined under deploy/")
        for container in pod.get("containers") or []:
            for var in container.get("env") or []:
                url = str(var.get("value", ""))
                match = re.match(r"^https?://([a-z0-9-]+)-head-svc(?:\.[\w.-]+)?:(\d+)", url)
                if var.get("name") in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS") and match and ("RayCluster", match[1]) not in defined:
                    report.add("references", where, f"{fmt_path(path)}: {var['name']}={url} names the head service of RayCluster {match[1]!r}, which is not defined under deploy/")
    return report.problems


def image_version_problems(manifests, runtime_envs, ray_version: Optional[str], project: Project, dockerfile: Path) -> list[Problem]:
    """One image (tagged with the project version) everywhere; every rayVersion = the image's Ray."""
    report = Report()
    images: dict[str, list[str]] = {}
    for where, doc in manifests:
        for path, pod in walk_pod_specs(doc):
            for i, container in enumerate(pod.get("containers") or []):
                images.setdefault(str(container.get("image")), []).append(f"{where} {fmt_path(path + ('containers', i, 'image'))}")
        for path, cluster in ray_cluster_specs(doc):
            if ray_version and str(cluster.get("rayVersion")) != ray_version:
                report.add("consistency", where, f"{fmt_path(path)}.rayVersion is {cluster.get('rayVersion')!r}, the image has Ray {ray_version} ({DOCKERFILE})")
    for where, env in runtime_envs:
        if isinstance(env, dict) and env.get("image_uri"):
            images.setdefault(str(env["image_uri"]), []).append(f"{where} image_uri")
    if dockerfile.is_file():
        tag = re.search(r"\s-t\s+(\S+)", dockerfile.read_text(encoding="utf-8").splitlines()[0])
        if tag:
            images.setdefault(tag[1], []).append(f"{DOCKERFILE}:1 build tag")
    if len(images) > 1:
        listing = "; ".join(f"{image} ({len(uses)}x, e.g. {uses[0]})" for image, uses in sorted(images.items()))
        report.add("consistency", DEPLOY_DIR, f"one image everywhere, found {len(images)}: {listing}")
    for image, uses in sorted(images.items()):
        tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else "latest"
        if tag != project.version:
            report.add("consistency", uses[0], f"image {image}: the tag must be the project version {project.version} (pyproject.toml)")
    return report.problems


def convention_problems(manifests: list[tuple[str, dict]]) -> list[Problem]:
    report = Report()
    for where, doc in manifests:
        if doc.get("kind") == "CronJob" and (doc.get("spec") or {}).get("concurrencyPolicy") != "Forbid":
            report.add("conventions", where, "spec.concurrencyPolicy must be Forbid: two relabels must never run at once")
        for path, pod in ray_pod_specs(doc):
            volumes = {v.get("name"): v for v in pod.get("volumes") or []}
            mounted = False
            for container in pod.get("containers") or []:
                for mount in container.get("volumeMounts") or []:
                    volume = volumes.get(mount.get("name")) or {}
                    if (volume.get("configMap") or {}).get("name") == TAXONOMY_CONFIGMAP:
                        if mount.get("mountPath") != TAXONOMY_MOUNT or mount.get("subPath"):
                            report.add("conventions", where, f"{fmt_path(path)}: mount {TAXONOMY_CONFIGMAP} at {TAXONOMY_MOUNT} without subPath (subPath mounts never see ConfigMap edits)")
                        mounted = True
            if not mounted:
                report.add("conventions", where, f"{fmt_path(path)}: a Ray pod must mount ConfigMap {TAXONOMY_CONFIGMAP} at {TAXONOMY_MOUNT} (any Ray node may run the driver)")
        for path, pod in walk_pod_specs(doc):
            for i, container in enumerate(pod.get("containers") or []):
                image = str(container.get("image", ""))
                if image.endswith(":latest") or ":" not in image.rsplit("/", 1)[-1]:
                    report.add("conventions", where, f"{fmt_path(path + ('containers', i, 'image'))}: pin a tag, not {image!r}")
    return report.problems


# --------------------------------------------------------------------------- command line


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kuberay-schemas", type=Path, default=None, help=f"KubeRay CRD directory (default ${KUBERAY_SCHEMAS_ENV} or <repo>/{KUBERAY_SCHEMAS_DEFAULT})")
    parser.add_argument("--write-taxonomies", action="store_true", help=f"regenerate {TAXONOMY_CONFIGMAP_FILE} from {SHIPPED_TAXONOMY_DIR}/, then validate")
    args = parser.parse_args(argv)
    if args.write_taxonomies:
        (REPO / TAXONOMY_CONFIGMAP_FILE).write_text(render_taxonomy_configmap(Project(REPO)), encoding="utf-8")
        print(f"wrote {TAXONOMY_CONFIGMAP_FILE}")
    report = validate_all(REPO, args.kuberay_schemas)
    for note in report.notes:
        print(f"note: {note}")
    for problem in report.problems:
        print(problem)
    if report.problems:
        print(f"{len(report.problems)} problem(s) in {report.documents} documents of {report.files} YAML files under {DEPLOY_DIR}/ (and the Dockerfile, README)")
        return 1
    print(f"OK: {report.documents} documents in {report.files} YAML files under {DEPLOY_DIR}/, the Dockerfile and the README")
    return 0


if __name__ == "__main__":
    sys.exit(main())
