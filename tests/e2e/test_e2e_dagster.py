"""End to end: `dagster dev` + the inbox sensor turn a dropped manifest into a successful run.

Starts the real webserver and daemon (own process group, temporary DAGSTER_HOME/ASIGN_HOME),
drops a tiny demo manifest into the inbox and follows the run through the GraphQL API.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from _procs import free_port, leftovers, stop  # noqa: E402  (tests/ helper)

from asign_assets.cli import CODE_LOCATION, WORKSPACE_YAML

ROOT = Path(__file__).resolve().parents[2]
SAMPLE_ID = "e2e_tiny"
STARTUP_TIMEOUT_S = 240
RUN_TIMEOUT_S = 480

RUNS_QUERY = """
query Runs($tags: [ExecutionTag!]) {
  runsOrError(filter: {pipelineName: "full_sample", tags: $tags}) {
    __typename
    ... on Runs { results { runId status tags { key value } } }
    ... on PythonError { message }
  }
}"""

PARTITIONS_QUERY = """
query Partitions {
  assetNodeOrError(assetKey: {path: ["sections"]}) {
    __typename
    ... on AssetNode { partitionKeys }
  }
}"""

LOGS_QUERY = """
query Logs($runId: ID!) {
  logsForRun(runId: $runId) {
    __typename
    ... on EventConnection {
      events {
        __typename
        ... on MessageEvent { message level stepKey }
        ... on ExecutionStepFailureEvent { error { message stack cause { message } } }
        ... on RunFailureEvent { error { message } }
      }
    }
  }
}"""


UI_QUERY = """
query UI {
  workspaceOrError { __typename ... on Workspace { locationEntries { name } } }
  assetNodes {
    assetKey { path }
    assetChecksOrError { __typename ... on AssetChecks { checks { name } } }
  }
}"""


def _graphql(port: int, query: str, variables: dict | None = None, timeout: float = 20) -> dict:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        out = json.loads(resp.read())
    if out.get("errors"):
        raise AssertionError(f"GraphQL errors: {out['errors']}")
    return out["data"]


def _failure_report(port: int, run_id: str) -> str:
    try:
        data = _graphql(port, LOGS_QUERY, {"runId": run_id})
    except Exception as exc:  # noqa: BLE001 - diagnostics only
        return f"(could not read run logs: {exc})"
    lines = []
    for ev in data["logsForRun"].get("events", []):
        if ev.get("__typename") in ("ExecutionStepFailureEvent", "RunFailureEvent") or ev.get("level") == "ERROR":
            err = ev.get("error") or {}
            lines.append(f"[{ev.get('stepKey')}] {ev.get('message')}\n{err.get('message', '')}{''.join(err.get('stack') or [])}")
    return "\n".join(lines) or "(no error events)"


@pytest.mark.e2e
def test_inbox_manifest_runs_in_dagster_dev(tmp_path):
    from asign_assets.importers.demo import DemoConfig, make_demo_stack
    from asign_assets.ingest.manifest import load_manifest, write_manifest

    dagster_home = tmp_path / "dagster_home"
    asign_home = tmp_path / "asign_home"
    dagster_home.mkdir()
    (asign_home / "inbox").mkdir(parents=True)
    # One run at a time and no telemetry: gentle on a 2-core CI machine.
    (dagster_home / "dagster.yaml").write_text(
        "telemetry:\n  enabled: false\nconcurrency:\n  runs:\n    max_concurrent_runs: 1\n  pools:\n    default_limit: 1\n"
    )
    port = free_port()
    env = {
        **os.environ,
        "DAGSTER_HOME": str(dagster_home),
        "ASIGN_HOME": str(asign_home),
        "ASIGN_DEVICE": "cpu",
        "ASIGN_SENSOR_INTERVAL_S": "5",
        "ASIGN_OBSERVE_CRON": "off",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("ASIGN_INBOX", None)
    env.pop("ASIGN_MANIFESTS", None)
    log_path = tmp_path / "dagster_dev.log"
    markers = [str(dagster_home), f"-p {port}"]
    workspace = dagster_home / "workspace.yaml"
    workspace.write_text(WORKSPACE_YAML)  # what `asign ui` loads: the code location named `asign`
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dagster", "dev", "-w", str(workspace), "-h", "127.0.0.1", "-p", str(port)],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    failure = None
    try:
        # The stack is made while dagster starts; the manifest goes in with absolute paths.
        stack = make_demo_stack(tmp_path / "data", DemoConfig(n_sections=3, spots_per_section=60, image_px=320, n_genes=60), sample_id=SAMPLE_ID)
        staged = write_manifest(load_manifest(stack.manifest_path), tmp_path / f"{SAMPLE_ID}.yaml", relative=False)
        os.replace(staged, asign_home / "inbox" / f"{SAMPLE_ID}.yaml")  # atomic drop

        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            assert proc.poll() is None, f"dagster dev exited early:\n{log_path.read_text()[-4000:]}"
            with contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                _graphql(port, "{ version }", timeout=5)
                break
            assert time.monotonic() < deadline, f"dagster dev not up after {STARTUP_TIMEOUT_S} s:\n{log_path.read_text()[-4000:]}"
            time.sleep(2)

        deadline = time.monotonic() + RUN_TIMEOUT_S
        status, run_id, partitions = None, None, []
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"dagster dev died:\n{log_path.read_text()[-4000:]}"
            try:
                node = _graphql(port, PARTITIONS_QUERY)["assetNodeOrError"]
                partitions = node.get("partitionKeys", [])
                runs = _graphql(port, RUNS_QUERY, {"tags": [{"key": "dagster/partition", "value": SAMPLE_ID}]})["runsOrError"]
            except (urllib.error.URLError, TimeoutError, OSError):
                time.sleep(3)  # the webserver is busy (2 cores): ask again
                continue
            results = runs.get("results", [])
            if results:
                run_id, status = results[0]["runId"], results[0]["status"]
                if status in ("SUCCESS", "FAILURE", "CANCELED"):
                    break
            time.sleep(3)
        if status != "SUCCESS":
            failure = f"run {run_id} of {SAMPLE_ID!r}: {status} (partitions {partitions})\n"
            if run_id:
                failure += _failure_report(port, run_id)
            failure += f"\n--- dagster dev log (tail) ---\n{log_path.read_text()[-6000:]}"
        else:
            assert SAMPLE_ID in partitions
            tags = {t["key"]: t["value"] for t in results[0]["tags"]}
            assert tags.get("dagster/sensor_name") == "new_samples"
            assert tags.get("dagster/run_key", "").startswith(f"{SAMPLE_ID}:")
            assert (asign_home / "manifests" / f"{SAMPLE_ID}.yaml").exists()
            assert (asign_home / "samples" / SAMPLE_ID / "sections").is_dir()
            ui = _graphql(port, UI_QUERY)
            assert [e["name"] for e in ui["workspaceOrError"]["locationEntries"]] == [CODE_LOCATION]
            checks = {c["name"] for n in ui["assetNodes"] for c in (n["assetChecksOrError"].get("checks") or [])}
            assert len(checks) >= 5 and {"registration_dice", "imputed_volume_consistent", "graph_few_isolated"} <= checks, checks
    finally:
        left = stop(proc, markers)
    assert failure is None, failure
    assert not left, f"processes left running after shutdown: {left}"
    assert not leftovers(markers, proc.pid)
