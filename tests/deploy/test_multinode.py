"""A labeling job on a real two-node Ray cluster, submitted through the Ray Jobs API.

Two Ray nodes run on this machine (a head with the dashboard, which serves the Jobs API,
and a worker node), each with one logical CPU. The ASR actor needs a whole CPU and the
scorer half of one, so the pipeline cannot fit on one node: the job only finishes if Ray
spreads it over both. The test checks that from Ray's own state API (the node of every
actor the job started), then checks the table the job wrote.

Both nodes get a private --temp-dir and fixed free ports, so they never meet another Ray
on this machine. `ray stop` cannot be scoped to one cluster (it stops every Ray of the
user), so teardown ends exactly the processes this test started: each node's `ray start
--block` runs in its own session, and every process that inherited the cluster's marker
environment variable (raylets, GCS, dashboard, workers, the job's driver) is killed by pid.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import pytest

REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).with_name("ray"))
MARKER = "LANSER_TEST_CLUSTER"

pytest.importorskip("aiohttp", reason="the Ray Jobs API needs ray[default] (pip install -e '.[test]')")


def free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def marked_pids(marker: str) -> list[int]:
    """Processes whose environment carries ``MARKER=marker``: the ones this cluster started."""
    needle = f"{MARKER}={marker}".encode()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    pids.append(int(entry))
        except OSError:
            continue
    return pids


def kill_cluster(procs: list[subprocess.Popen], marker: str) -> list[int]:
    """End this cluster's processes only (by process group and pid); returns any survivors."""

    def signal_all(sig) -> list[int]:
        for p in procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, sig)  # a `ray start --block` and what it started in its session
        left = marked_pids(marker)
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        return left

    for sig, grace in ((signal.SIGTERM, 5), (signal.SIGKILL, 10)):
        signal_all(sig)
        deadline = time.time() + grace
        while time.time() < deadline and (marked_pids(marker) or any(p.poll() is None for p in procs)):
            time.sleep(0.25)
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=1)
    return marked_pids(marker)


def node_args(temp_dir: str, ports: list[int]) -> list[str]:
    node_manager, object_manager, agent_http, agent_grpc, runtime_env, metrics = ports
    return [
        "--num-cpus=1", "--num-gpus=0", f"--temp-dir={temp_dir}", "--block", "--disable-usage-stats",
        "--object-store-memory=300000000", "--node-ip-address=127.0.0.1",
        f"--node-manager-port={node_manager}", f"--object-manager-port={object_manager}",
        f"--dashboard-agent-listen-port={agent_http}", f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--runtime-env-agent-port={runtime_env}", f"--metrics-export-port={metrics}",
    ]


def wait_for(what: str, check, timeout: float, procs=()):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        for p in procs:
            assert p.poll() is None, f"a Ray node exited while waiting for {what} (exit {p.returncode})"
        try:
            got = check()
            if got:
                return got
        except Exception as exc:  # not up yet
            last = exc
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last error: {last!r})")


@pytest.fixture()
def two_node_cluster():
    # Short path: Ray's unix sockets live below it and must stay under 108 characters.
    base = tempfile.mkdtemp(prefix="lmn", dir="/tmp")
    marker = os.path.basename(base)
    # Token auth off, as for every test (the Makefile exports the same): the cluster listens
    # on 127.0.0.1 only and lives for one test.
    env = {**os.environ, MARKER: marker, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    for k in ("RAY_ADDRESS", "RAY_TMPDIR"):
        env.pop(k, None)
    gcs, dashboard, client, *rest = free_ports(15)
    procs: list[subprocess.Popen] = []
    logs = []
    try:
        head_log = open(os.path.join(base, "head.log"), "wb")
        logs.append(head_log)
        procs.append(subprocess.Popen(
            [RAY, "start", "--head", f"--port={gcs}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
             f"--dashboard-port={dashboard}", f"--ray-client-server-port={client}",
             *node_args(os.path.join(base, "head"), rest[:6])],
            env=env, cwd=base, stdout=head_log, stderr=subprocess.STDOUT, start_new_session=True))
        url = f"http://127.0.0.1:{dashboard}"
        from ray.job_submission import JobSubmissionClient

        client_api = wait_for("the head's Jobs API", lambda: JobSubmissionClient(url), 120, procs)
        worker_log = open(os.path.join(base, "worker.log"), "wb")
        logs.append(worker_log)
        procs.append(subprocess.Popen(
            [RAY, "start", f"--address=127.0.0.1:{gcs}", *node_args(os.path.join(base, "worker"), rest[6:12])],
            env=env, cwd=base, stdout=worker_log, stderr=subprocess.STDOUT, start_new_session=True))
        from ray.util.state import list_nodes

        wait_for("two alive nodes", lambda: len([n for n in list_nodes(address=url) if n.state == "ALIVE"]) == 2, 120, procs)
        yield {"url": url, "client": client_api, "base": base, "env": env}
    finally:
        survivors = kill_cluster(procs, marker)
        for f in logs:
            f.close()
        shutil.rmtree(base, ignore_errors=True)
        assert not survivors, f"Ray processes left behind: {survivors}"


def test_label_job_spreads_over_two_nodes(two_node_cluster, tmp_path):
    from ray.job_submission import JobStatus
    from ray.util.state import list_actors, list_nodes

    url, client = two_node_cluster["url"], two_node_cluster["client"]
    nodes = [n for n in list_nodes(address=url, detail=True) if n.state == "ALIVE"]
    assert len(nodes) == 2 and all(n.resources_total.get("CPU") == 1 for n in nodes)

    out = tmp_path / "out"
    entrypoint = (f"{sys.executable} -m labeler label --config {REPO / 'labeler' / 'configs' / 'demo.yaml'} "
                  f"--input {REPO / 'labeler' / 'samples'} --output {out} --no-progress")
    job = client.submit_job(
        entrypoint=entrypoint,
        runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}},
        metadata={"test": "lanser multinode"},
    )
    deadline = time.time() + 300
    while client.get_job_status(job) not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        assert time.time() < deadline, f"job still {client.get_job_status(job)} after 300 s:\n{client.get_job_logs(job)[-3000:]}"
        time.sleep(2)
    logs = client.get_job_logs(job)
    assert client.get_job_status(job) == JobStatus.SUCCEEDED, logs[-4000:]
    assert "files: 7 in -> 7 rows out" in logs and "labels table:" in logs and "reports/" in logs

    # The table the job wrote, read back with DuckDB.
    rows = duckdb.sql(
        f"SELECT utt_id, label, status FROM read_parquet('{out}/labels/**/*.parquet', hive_partitioning=true) ORDER BY utt_id"
    ).fetchall()
    assert len(rows) == 7 and {r[2] for r in rows} == {"labeled"}
    assert dict((r[0], r[1]) for r in rows)["happy"] == "joy"
    (manifest,) = [p for p in (out / "runs").glob("*.json")]
    assert json.loads(manifest.read_text())["status"] == "committed"
    reports = out / "reports"
    assert (reports / f"{manifest.stem}.json").is_file() and (reports / f"{manifest.stem}.png").is_file()

    # Where the pipeline ran: the ASR actor (1 CPU) fills one node, so the scorer (0.5 CPU)
    # had to go to the other one. Ray keeps finished actors in its state API.
    actors = list_actors(address=url, detail=True, limit=1000, raise_on_missing_output=False)
    placed = {}
    for a in actors:
        name = a.class_name or ""
        for stage in ("ASRStage", "EntailStage"):
            if stage in name or stage in (a.repr_name or ""):
                placed.setdefault(stage, set()).add(a.node_id)
    assert set(placed) == {"ASRStage", "EntailStage"}, [(a.class_name, a.repr_name) for a in actors]
    assert placed["ASRStage"].isdisjoint(placed["EntailStage"]), placed
    assert placed["ASRStage"] | placed["EntailStage"] == {n.node_id for n in nodes}
