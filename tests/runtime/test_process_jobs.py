"""Jobs in fresh processes (asign_assets.runtime.process_jobs) and the ensemble members trained in them."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from asign_assets.runtime.process_jobs import JobError, run_in_processes

HERE = Path(__file__).resolve().parents[1]


@pytest.fixture
def tests_on_path(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))


def test_results_in_input_order_with_fewer_workers_than_jobs(tests_on_path):
    payloads = [f"job {i}".encode() for i in range(5)]
    assert run_in_processes("_echo_job:upper", payloads, workers=2) == [p.upper() for p in payloads]


def test_a_failing_job_raises_with_its_stderr(tests_on_path):
    with pytest.raises(JobError, match="bad payload two"):
        run_in_processes("_echo_job:fail", [b"two"], workers=1)


def test_a_wrong_function_name_fails_before_any_process():
    with pytest.raises((ValueError, ModuleNotFoundError)):
        run_in_processes("no_colon_here", [b""], workers=1)
    with pytest.raises(AttributeError):
        run_in_processes("asign_assets.runtime.process_jobs:no_such_function", [b""], workers=1)


def test_parallel_members_from_a_script_without_a_main_guard(tmp_path):
    """multiprocessing's spawn would re-run this script in every worker; the job processes
    import only the package, so the script runs once and gets the sequential result."""
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        from dataclasses import replace
        import torch
        sys.path.insert(0, {str(HERE)!r})
        from _stacks import make_stack
        from asign_assets.model.inputs import ModelInputs
        from asign_assets.model.params import params_for
        from asign_assets.model.train import train_model
        g, emb, remb, gemb, y = make_stack(n_sections=3, side=8, noise=0.3)
        meas = torch.nonzero(g.section == 1).flatten()
        inp = ModelInputs(g, emb, remb, gemb, y[meas], meas)
        p = params_for("cpu", hidden=16, heads=2, blocks=1, epochs=6, patience=6, ensemble=2, calibrate=True)
        seq = train_model(inp, replace(p, workers=1))
        par = train_model(inp, replace(p, workers=2))
        same = all(torch.equal(seq.model_state[k], par.model_state[k]) for k in seq.model_state)
        same &= all(torch.equal(seq.extra_members[0]["model_state"][k], par.extra_members[0]["model_state"][k]) for k in seq.model_state)
        print("RAN", same)
    """))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("RAN") == 1 and "RAN True" in out.stdout
