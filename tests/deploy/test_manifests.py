"""Everything under deploy/ validates (deploy.validate), and the validator catches what it claims to.

The first group runs every check over the real tree, one test per kind of check, each
listing all of its problems at once. The second group feeds the validator broken documents
(typos, wrong types, drifted taxonomies, literal credentials, ...) and asserts it reports
each of them: a validator that passes everything would fail here.
"""

from __future__ import annotations

import copy
import hashlib
import re
import shutil
from pathlib import Path

import pytest
import yaml

from deploy import validate

REPO = validate.REPO

CHECKS = ("yaml", "schema", "operator", "references", "files", "consistency", "conventions", "runtime-env", "dockerfile", "credentials")


@pytest.fixture(scope="module")
def report():
    return validate.validate_all(REPO)


@pytest.fixture(scope="module")
def project():
    return validate.Project(REPO)


@pytest.fixture(scope="module")
def schemas():
    return validate.Schemas()


def manifest(rel: str, index: int = 0) -> dict:
    return validate.load_documents((REPO / rel).read_text())[index]


def listing(problems) -> str:
    """One line per problem: what a failing assertion shows, and what the negative tests search."""
    return "\n".join(str(p) for p in problems)


# --------------------------------------------------------------------------- the real tree


def test_every_deploy_object_was_validated_against_a_schema(report):
    """All the kinds the deployment needs were found and validated (not silently skipped)."""
    expected = {"ray.io/v1 RayCluster", "ray.io/v1 RayJob", "ray.io/v1 RayCronJob", "batch/v1 CronJob", "v1 ConfigMap", "v1 ServiceAccount"}
    assert expected <= set(report.kinds), f"validated kinds: {sorted(set(report.kinds))}"
    assert report.files >= 9 and report.documents >= 9


@pytest.mark.parametrize("check", ["yaml", "schema"])
def test_documents_parse_and_match_the_real_schemas(report, check):
    assert not report.of(check), listing(report.of(check))


def test_kuberay_operator_rules_hold(report):
    assert not report.of("operator"), listing(report.of("operator"))


def test_commands_and_names_resolve(report):
    """lanser commands parse with the real CLI parsers; configs with their --set validate;
    clusterSelector, head service, ConfigMap and ServiceAccount names resolve."""
    assert not report.of("references"), listing(report.of("references"))


def test_referenced_project_files_exist(report):
    """Config, taxonomy and runtime-env files named by manifests, runtime envs and the README exist."""
    assert not report.of("files"), listing(report.of("files"))


@pytest.mark.parametrize("check", ["consistency", "conventions", "runtime-env", "dockerfile"])
def test_images_versions_runtime_envs_and_dockerfile(report, check):
    assert not report.of(check), listing(report.of(check))


def test_no_literal_credentials_under_deploy(report):
    assert not report.of("credentials"), listing(report.of("credentials"))


def test_every_problem_belongs_to_a_tested_check(report):
    assert {p.check for p in report.problems} <= set(CHECKS)


def kustomization_header() -> str:
    """The command on the kustomization's first line: kubectl kustomize ... deploy/k8s | kubectl apply ..."""
    return (REPO / validate.KUSTOMIZATION).read_text().splitlines()[0].lstrip("#").strip()


def test_kustomization_applies_account_taxonomies_and_cluster_in_order_with_the_shipped_files():
    """The documented command builds the ServiceAccount, then the taxonomy ConfigMap holding
    exactly labeler/taxonomies/*.yaml (byte for byte, under its plain name), then the RayCluster."""
    built = validate.kustomize_build(kustomization_header(), REPO)
    assert [(d["kind"], d["metadata"]["name"]) for d in built] == [("ServiceAccount", "lanser"), ("ConfigMap", validate.TAXONOMY_CONFIGMAP), ("RayCluster", "lanser")]
    shipped = {p.name: p.read_text() for p in sorted((REPO / "labeler" / "taxonomies").glob("*.yaml"))}
    assert shipped, "no shipped taxonomies found"
    assert built[1]["data"] == shipped
    assert built[1]["metadata"]["labels"] == {"app.kubernetes.io/name": "lanser", "app.kubernetes.io/component": "taxonomies"}
    assert not list((REPO / "deploy").rglob("taxonomies-configmap.yaml")), "the ConfigMap is generated, never committed"


def test_kustomize_failures_carry_kubectls_message(tmp_path):
    shutil.copytree(REPO / "deploy/k8s", tmp_path / "deploy/k8s")
    (tmp_path / "labeler/taxonomies").mkdir(parents=True)  # the kustomization's files are missing
    with pytest.raises(RuntimeError, match="ekman.yaml"):
        validate.kustomize_build(kustomization_header(), tmp_path)


def test_ray_pods_mount_the_taxonomies_where_commands_read_them():
    cluster = manifest("deploy/k8s/raycluster.yaml")
    pods = [spec for _, spec in validate.ray_pod_specs(cluster)]
    assert len(pods) == 3  # head, gpu, cpu
    for pod in pods:
        mounts = {m["name"]: m for c in pod["containers"] for m in c.get("volumeMounts", [])}
        volume = next(v for v in pod["volumes"] if v.get("configMap", {}).get("name") == validate.TAXONOMY_CONFIGMAP)
        assert mounts[volume["name"]]["mountPath"] == validate.TAXONOMY_MOUNT
        assert "subPath" not in mounts[volume["name"]]


def test_nightly_relabel_cronjob_forbids_overlap_and_raycronjob_names_its_feature_gate():
    cron = manifest("deploy/k8s/cronjob-relabel.yaml")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    header = (REPO / "deploy/k8s/raycronjob-relabel.yaml").read_text().split("apiVersion:")[0]
    assert "feature gate" in header.lower() and "RayCronJob" in header and "off by default" in header.lower()
    readme = (REPO / "deploy/README.md").read_text()
    assert "feature gate `RayCronJob`" in readme and "off by default" in readme


# --------------------------------------------------------------------------- schema checks catch errors


def test_crd_typos_at_every_depth_are_all_reported(schemas):
    job = manifest("deploy/k8s/rayjob-label.yaml")
    assert validate.schema_problems(job, "label", schemas) == []  # the control: the real document is clean
    bad = copy.deepcopy(job)
    bad["spec"]["entrypointTypo"] = "python -m labeler label"
    bad["spec"]["submitterPodTemplate"]["spec"]["containers"][0]["imagee"] = "x"
    bad["metadata"]["lables"] = {"a": "b"}
    bad["spec"]["activeDeadlineSeconds"] = "two days"
    text = listing(validate.schema_problems(bad, "label", schemas))
    assert "spec.entrypointTypo: field not declared" in text
    assert "spec.submitterPodTemplate.spec.containers[0].imagee: field not declared" in text
    assert "metadata: Additional properties are not allowed ('lables' was unexpected)" in text
    assert "spec.activeDeadlineSeconds: 'two days' is not of type 'integer'" in text


def test_raycluster_nested_typo_and_unknown_kind_or_version(schemas):
    cluster = copy.deepcopy(manifest("deploy/k8s/raycluster.yaml"))
    cluster["spec"]["workerGroupSpecs"][0]["maxReplica"] = 4
    assert "spec.workerGroupSpecs[0].maxReplica: field not declared" in listing(validate.schema_problems(cluster, "c", schemas))
    assert "unknown KubeRay kind ray.io/v1 RayJobb" in listing(validate.schema_problems({**cluster, "kind": "RayJobb"}, "c", schemas))
    old = {**manifest("deploy/k8s/rayjob-label.yaml"), "apiVersion": "ray.io/v1alpha1"}
    assert "ray.io/v1alpha1 is deprecated: use ray.io/v1" in listing(validate.schema_problems(old, "j", schemas))


def test_core_kind_errors_are_all_reported(schemas):
    cron = manifest("deploy/k8s/cronjob-relabel.yaml")
    assert validate.schema_problems(cron, "cron", schemas) == []
    bad = copy.deepcopy(cron)
    bad["spec"]["concurrencyPolicyy"] = "Forbid"
    bad["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] = ["1"]
    text = listing(validate.schema_problems(bad, "cron", schemas))
    assert "'concurrencyPolicyy' was unexpected" in text
    assert "spec.jobTemplate.spec.template.spec.containers[0].resources.limits.cpu" in text
    assert "no schema for v1 ConfigMapp" in listing(validate.schema_problems({"apiVersion": "v1", "kind": "ConfigMapp"}, "x", schemas))


def test_undeclared_fields_respects_maps_and_preserved_fields():
    schema = {
        "type": "object",
        "properties": {
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True, "properties": {"a": {}}},
            "items": {"type": "array", "items": {"type": "object", "properties": {"name": {}}}},
        },
    }
    doc = {"labels": {"any": "x"}, "free": {"b": 1}, "items": [{"name": "a"}, {"nmae": "b"}], "extra": 1}
    assert sorted(validate.undeclared_fields(doc, schema)) == [("extra",), ("items", 1, "nmae")]


def test_a_tree_with_several_broken_files_reports_every_problem(tmp_path):
    """End to end over a copy of the tree: nested dirs, multi-document files, all problems at once."""
    for rel in ("deploy", "labeler/taxonomies", "labeler/configs"):
        shutil.copytree(REPO / rel, tmp_path / rel, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    nested = tmp_path / "deploy/k8s/extra/more.yaml"
    nested.parent.mkdir()
    nested.write_text(
        "# kubectl apply -n lanser -f deploy/k8s/extra/more.yaml\n"
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: fine}\n"
        "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: typo}\ndatta: {a: b}\n"
        "---\napiVersion: ray.io/v1\nkind: RayJob\nmetadata: {name: broken}\nspec: {entrypoint: python -m labeler lable, clusterSelector: {ray.io/cluster: nope}}\n"
    )
    (tmp_path / "deploy/k8s/no-header.yaml").write_text("apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: x}\n")
    taxonomy = tmp_path / "labeler/taxonomies/ekman.yaml"
    taxonomy.write_text(taxonomy.read_text().replace("anger", "rage"))  # an edit flows into the ConfigMap: no problem
    (tmp_path / "labeler/taxonomies/mine.yaml").write_text("name: mine\n")  # a new file not in the kustomization
    report = validate.validate_all(tmp_path)
    text = listing(report.problems)
    assert "deploy/k8s/extra/more.yaml[1] ConfigMap/typo: <document>: Additional properties are not allowed ('datta' was unexpected)" in text
    # (labeler.cli's parser rejects the subcommand)
    assert "deploy/k8s/extra/more.yaml[2] RayJob/broken spec.entrypoint: `python -m labeler lable`: " in text
    assert "clusterSelector: no RayCluster 'nope'" in text
    assert "[yaml] deploy/k8s/no-header.yaml: must start with a comment" in text
    assert "[references] deploy/k8s/kustomization.yaml[1] ConfigMap/lanser-taxonomies: lacks mine.yaml from labeler/taxonomies/" in text
    assert "differs" not in text  # kustomize read the edited ekman.yaml
    assert not any("more.yaml[0]" in p.where for p in report.problems)  # the valid document passes


def test_the_carried_kuberay_crds_are_the_documented_files_and_the_kinds_we_use(schemas, report):
    """deploy/schemas/kuberay/ holds exactly the files its README lists, byte for byte (size and
    sha256 of the KubeRay v1.7.0 release), and CRDs for exactly the ray.io kinds the manifests use."""
    table = re.findall(r"^\| `([^`]+)` \| (\d+) \| `([0-9a-f]{64})` \|", (schemas.kuberay_dir / "README.md").read_text(), re.M)
    assert {name for name, _, _ in table} == {p.name for p in schemas.kuberay_dir.iterdir()} - {"README.md"}
    assert "LICENSE" in {name for name, _, _ in table}
    for name, size, sha256 in table:
        data = (schemas.kuberay_dir / name).read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (int(size), sha256), name
    used = {k.split()[1] for k in report.kinds if k.startswith(validate.RAY_GROUP + "/")}
    assert used == {kind for _, kind in schemas.crds} == {"RayCluster", "RayJob", "RayCronJob"}


# --------------------------------------------------------------------------- command and file references


@pytest.mark.parametrize(
    "command, cwd_is_repo, check, expected",
    [
        ("python -m labeler lable --config labeler/configs/demo.yaml", True, "references", "lable"),
        ("lanser-train pretrian --config /home/ray/lanser/trainer/configs/pretrain.yaml", False, "references", "pretrian"),
        ("python -m labeler label --config /home/ray/lanser/labeler/configs/nope.yaml", False, "files", "labeler/configs/nope.yaml does not exist"),
        ("python -m labeler label --config labeler/configs/demo.yaml", False, "references", "a relative path where the command does not run from the repository"),
        ("python -m labeler label --taxonomy /etc/lanser/taxonomies/nope.yaml", False, "references", "has no key 'nope.yaml'"),
        ("python -m labeler label --taxonomy ekmann", True, "files", "no shipped taxonomy labeler/taxonomies/ekmann.yaml"),
        ("python -m labeler label --config /opt/gpu.yaml", False, "references", "an absolute path must be inside the image"),
        ("ray job submit --runtime-envv x.yaml -- python -m labeler label", True, "references", "No such option '--runtime-envv'"),
        ("ray job submit --runtime-env deploy/jobs/nope.yaml -- python -m labeler label", True, "files", "--runtime-env deploy/jobs/nope.yaml: no such file"),
        ("sh -c 'cd /tmp && python3 -m trainer evaluat --config /home/ray/lanser/trainer/configs/evaluate.yaml'", False, "references", "evaluat"),
        ("kubectl apply -n lanser -f deploy/k8s/rayclustr.yaml", True, "files", "deploy/k8s/rayclustr.yaml does not exist"),
    ],
)
def test_command_checker_reports_bad_commands(project, command, cwd_is_repo, check, expected):
    report = validate.Report()
    validate.CommandChecker(project, report, {"ekman.yaml"}).check_shell(command, validate.Site("t", cwd_is_repo))
    assert expected in listing(report.of(check)), listing(report.problems)


def test_command_checker_accepts_good_commands_and_sees_through_ray_job_submit(project):
    report = validate.Report()
    checker = validate.CommandChecker(project, report, {"ekman.yaml"})
    checker.check_shell(
        "ray job submit --runtime-env deploy/jobs/runtime-env.yaml -- python -m labeler label "
        "--config labeler/configs/demo.yaml --input clips/ --output out/ --taxonomy ekman --set asr.beam_size=1",
        validate.Site("t", cwd_is_repo=True),
    )
    assert report.problems == []
    assert checker.found == [("labeler", ["label", "--config", "labeler/configs/demo.yaml", "--input", "clips/", "--output", "out/", "--taxonomy", "ekman", "--set", "asr.beam_size=1"])]


@pytest.mark.parametrize(
    "package, subcommand, config, override, typo",
    [
        ("labeler", "label", "labeler/configs/demo.yaml", "asr.beam_sise=1", "beam_sise"),
        ("trainer", "pretrain", "trainer/configs/pretrain.yaml", "scaling.num_workerz=2", "num_workerz"),
    ],
)
def test_a_config_with_a_mistyped_set_override_is_reported(project, package, subcommand, config, override, typo):
    """The package's own config loader (labeler.config / trainer.config) rejects the override."""
    assert project.config_error(package, subcommand, config, []) is None  # the control: the config alone is valid
    report = validate.Report()
    command = f"python -m {package} {subcommand} --config {validate.IMAGE_APP_DIR}/{config} --set {override}"
    validate.CommandChecker(project, report, set()).check_shell(command, validate.Site("t", cwd_is_repo=False))
    assert typo in listing(report.of("references")), listing(report.problems)


def test_readme_commands_join_continuations_and_skip_other_blocks():
    text = (
        "x\n```bash\n# comment\nray job submit -- \\\n  python -m labeler label \\\n    --input a\nexport A=1\n```\n"
        "```yaml\nkey: python -m labeler nope\n```\n"
        "- a list item:\n\n  ```bash\n  kubectl apply -f x.yaml\n  ```\n"
    )
    assert list(validate.readme_commands(text)) == [
        (4, "ray job submit -- python -m labeler label --input a"),
        (7, "export A=1"),
        (15, "kubectl apply -f x.yaml"),
    ]


def test_object_references_must_resolve():
    job = manifest("deploy/k8s/rayjob-label.yaml")
    cron = manifest("deploy/k8s/cronjob-relabel.yaml")
    text = listing(validate.object_reference_problems(job, "j", defined=set()) + validate.object_reference_problems(cron, "c", defined=set()))
    assert "no RayCluster 'lanser'" in text
    assert "no ServiceAccount 'lanser'" in text
    assert "names the head service of RayCluster 'lanser'" in text
    defined = {("RayCluster", "lanser"), ("ServiceAccount", "lanser"), ("ConfigMap", "lanser-taxonomies")}
    assert validate.object_reference_problems(job, "j", defined) + validate.object_reference_problems(cron, "c", defined) == []


def test_taxonomy_configmap_drift_is_reported(project):
    (cm,) = [d for d in validate.kustomize_build(kustomization_header(), REPO) if d["kind"] == "ConfigMap"]
    where = f"{validate.KUSTOMIZATION}[1] ConfigMap/{validate.TAXONOMY_CONFIGMAP}"
    assert validate.taxonomy_configmap_problems([(where, cm)], project) == []
    drifted = copy.deepcopy(cm)
    drifted["data"]["ekman.yaml"] += "  - name: boredom\n"
    del drifted["data"]["iemocap4.yaml"]
    drifted["data"]["mine.yaml"] = "name: mine\n"
    text = listing(validate.taxonomy_configmap_problems([(where, drifted)], project))
    assert "ekman.yaml differs" in text and "lacks iemocap4.yaml" in text and "has mine.yaml, which is not a file in labeler/taxonomies/" in text
    by_hand = listing(validate.taxonomy_configmap_problems([("deploy/k8s/taxonomies.yaml[0]", cm)], project))
    assert "must be generated by deploy/k8s/kustomization.yaml" in by_hand
    assert "expected exactly one ConfigMap lanser-taxonomies" in listing(validate.taxonomy_configmap_problems([(where, cm)] * 2, project))


# --------------------------------------------------------------------------- operator rules, images, runtime envs


def test_operator_rules_are_enforced():
    job = copy.deepcopy(manifest("deploy/k8s/rayjob-label.yaml"))
    job["spec"]["rayClusterSpec"] = copy.deepcopy(manifest("deploy/k8s/raycluster.yaml")["spec"])
    job["spec"]["ttlSecondsAfterFinished"] = 60
    job["spec"]["backoffLimit"] = 2
    job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0].update(minReplicas=5, maxReplicas=2)
    text = listing(validate.operator_problems(job, "j"))
    for expected in ("set exactly one of rayClusterSpec", "needs shutdownAfterJobFinishes", "must be 0 with clusterSelector", "minReplicas 5 > maxReplicas 2"):
        assert expected in text
    cron = copy.deepcopy(manifest("deploy/k8s/raycronjob-relabel.yaml"))
    cron["spec"]["schedule"] = "TZ=UTC 0 2 * * *"
    assert "needs five cron fields and no TZ=" in listing(validate.operator_problems(cron, "c"))


def test_image_tags_and_ray_versions_must_agree(project):
    cluster = copy.deepcopy(manifest("deploy/k8s/raycluster.yaml"))
    cluster["spec"]["workerGroupSpecs"][1]["template"]["spec"]["containers"][0]["image"] = "registry.example.com/lanser:9.9.9"
    text = listing(validate.image_version_problems([("c", cluster)], [], "2.61.0", project, "registry.example.com/lanser:0.1.0"))
    assert "one image everywhere, found 2" in text
    assert "the tag must be the project version" in text
    assert "rayVersion is '2.60.0', the image has Ray 2.61.0" in text


def test_runtime_env_problems(project):
    def check(env):
        return listing(validate.runtime_env_problems(env, "env", project))

    assert check(yaml.safe_load((REPO / "deploy/jobs/runtime-env.yaml").read_text())) == ""
    assert "unknown runtime_env field 'working_dri'" in check({"working_dri": "."})
    assert "Ray rejects it" in check({"image_uri": "registry.example.com/lanser:0.1.0", "pip": ["numpy"]})
    assert "secrets must not be in a runtime_env" in check({"env_vars": {"HF_TOKEN": "x"}})
    assert check({"env_vars": {"TOKENIZERS_PARALLELISM": "false"}}) == ""
    env = yaml.safe_load((REPO / "deploy/jobs/runtime-env.yaml").read_text())
    env["pip"] = [r for r in env["pip"] if not r.startswith("torch")] + ["requests"]
    text = check(env)
    assert "pip lacks 'torch>=2.2'" in text and "pip has 'requests'" in text


# --------------------------------------------------------------------------- Dockerfile


def test_real_dockerfile_base_matches_pyproject(project):
    problems, ray_version = validate.dockerfile_problems((REPO / validate.DOCKERFILE).read_text(), "Dockerfile", project)
    assert problems == []
    assert ray_version == manifest("deploy/k8s/raycluster.yaml")["spec"]["rayVersion"]


def test_dockerfile_lint_reports_every_problem(project):
    bad = "# docker build\nFROM python:3.11\nARG HF_TOKEN\nENV AWS_SECRET_ACCESS_KEY=abc\nCOPY .env /app/.env\nUSER root\n"
    problems, _ = validate.dockerfile_problems(bad, "Dockerfile", project)
    text = listing(problems)
    for expected in ("is not an official rayproject/ray", "ARG HF_TOKEN", "ENV AWS_SECRET_ACCESS_KEY", "copies what looks like a credential file", "must not run as root", f"WORKDIR must be {validate.IMAGE_APP_DIR}", f"no `COPY . {validate.IMAGE_APP_DIR}`"):
        assert expected in text
    old, _ = validate.dockerfile_problems("FROM rayproject/ray:2.40.0-py39-gpu\nUSER 1000\nWORKDIR /home/ray/lanser\nCOPY . /home/ray/lanser\n", "D", project)
    text = listing(old)
    assert "Python 3.9 of rayproject/ray:2.40.0-py39-gpu is outside requires-python" in text
    assert "Ray 2.40.0" in text and "does not satisfy" in text


def test_dockerignore_keeps_credentials_out_and_the_build_inputs_in():
    real = (REPO / validate.DOCKERIGNORE).read_text()
    assert validate.dockerignore_problems(real, "ignore") == []
    text = listing(validate.dockerignore_problems("labeler\n*.toml\n", "ignore"))
    assert "excludes labeler/__init__.py" in text and "excludes pyproject.toml" in text
    assert "does not exclude .env" in text and "does not exclude .aws/credentials" in text
    # Docker's rules, not gitignore's: a pattern without **/ only matches at the context root,
    # and a later ! pattern re-includes.
    text = listing(validate.dockerignore_problems(real.replace("**/.env\n", ".env\n"), "ignore"))
    assert "does not exclude labeler/.env" in text and "does not exclude .env:" not in text
    assert "does not exclude labeler/.env" in listing(validate.dockerignore_problems(real + "!labeler/.env\n", "ignore"))


# --------------------------------------------------------------------------- credentials


def test_literal_credentials_are_found():
    fake_key_id = "AKIA" + "ABCDEFGHIJKLMNOP"
    hf = "hf_" + "a" * 34
    text = "\n".join(
        [
            f"value: {fake_key_id}",
            "uri: s3://admin:hunter22@minio.local/bucket",
            "aws_secret_access_key = wJalrXUtnFEMIK7MDENGbPxRfiCY",
            f"token: {hf}",
            "-----BEGIN RSA PRIVATE KEY-----",
        ]
    )
    problems = validate.credential_problems_in_text(text, "f")
    assert [p.where for p in problems] == ["f:1", "f:2", "f:3", "f:4", "f:5"], listing(problems)
    fine = "\n".join(
        [
            'kubectl create secret generic x --from-literal=AWS_SECRET_ACCESS_KEY="$AWS_SECRET_ACCESS_KEY"',
            "RAY_ADDRESS: http://lanser-head-svc:8265",
            "secretKeyRef: {name: lanser-hf, key: token}",
        ]
    )
    assert validate.credential_problems_in_text(fine, "f") == []


def test_secret_named_env_values_and_secret_objects_are_found():
    pod = {"containers": [{"name": "c", "env": [
        {"name": "AWS_SECRET_ACCESS_KEY", "value": "abc"},
        {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "token"}}},
        {"name": "GOOGLE_APPLICATION_CREDENTIALS", "value": "/var/secrets/gcp/key.json"},
        {"name": "TOKENIZERS_PARALLELISM", "value": "false"},
    ]}]}
    problems = validate.credential_problems_in_object({"spec": {"template": {"spec": pod}}}, "w")
    assert len(problems) == 1 and "AWS_SECRET_ACCESS_KEY has a literal value" in problems[0].message
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "stringData": {"k": "v"}}
    assert "a Secret with data is committed" in listing(validate.credential_problems_in_object(secret, "s"))


def test_main_prints_every_problem_and_exits_nonzero_only_on_problems(capsys, report):
    code = validate.main([])
    out = capsys.readouterr().out
    assert code == (1 if report.problems else 0)
    for problem in report.problems:
        assert str(problem) in out
