"""How kernels share a busy machine: the CPU sample, the wait policy, and what execute passes on."""
from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import pytest

from skillgraft import cli, machine


def test_busy_cores_reads_the_share_of_cpu_time_others_used():
    samples = iter([(100, 1000), (150, 1100)])  # 50 of 100 jiffies busy over the sample
    assert machine.busy_cores(0.0, sample=lambda: next(samples), cores=2) == pytest.approx(1.0)
    assert machine.busy_cores(0.0, sample=lambda: None, cores=2) is None


def test_the_real_counters_are_read_where_they_exist():
    if not Path("/proc/stat").exists():
        pytest.skip("no /proc/stat here")
    busy, total = machine._cpu_jiffies()
    assert 0 <= busy <= total
    measured = machine.busy_cores(0.05)
    assert measured is None or 0.0 <= measured <= os.cpu_count() + 1e-9


def test_a_busy_machine_gets_passive_waiting_unless_the_caller_chose():
    assert machine.kernel_environment(1.0, environ={}) == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert machine.kernel_environment(machine.BUSY_CORES, environ={}) == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert machine.kernel_environment(0.1, environ={}) == {}
    assert machine.kernel_environment(None, environ={}) == {}
    assert machine.kernel_environment(2.0, environ={"OMP_WAIT_POLICY": "ACTIVE"}) == {}


@pytest.mark.parametrize("busy,want", [(1.2, "PASSIVE"), (0.0, None)])
def test_execute_hands_the_policy_to_the_kernel_only(tmp_path, monkeypatch, busy, want):
    seen = {}

    def execute_notebook(src, out, **kwargs):  # papermill's kernel inherits os.environ at this moment
        seen["policy"] = os.environ.get("OMP_WAIT_POLICY")
        Path(out).write_text("{}")
    monkeypatch.setitem(sys.modules, "papermill", types.SimpleNamespace(execute_notebook=execute_notebook))
    monkeypatch.setattr(machine, "busy_cores", lambda: busy)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    nb = tmp_path / "01_x.ipynb"
    nb.write_text("{}")
    out = cli.execute(nb, tmp_path / "out.ipynb", {})
    assert seen["policy"] == want and out.exists()
    assert "OMP_WAIT_POLICY" not in os.environ  # this process is left as it was


def test_the_module_prints_the_assignments_for_env():
    """`env $(python -m skillgraft.machine) CMD` (the Makefile's nbval): nothing when the caller chose."""
    import subprocess

    out = subprocess.run([sys.executable, "-m", "skillgraft.machine"], capture_output=True, text=True, check=True,
                         env={**os.environ, "OMP_WAIT_POLICY": "ACTIVE"})
    assert out.stdout.strip() == ""
    out = subprocess.run([sys.executable, "-m", "skillgraft.machine"], capture_output=True, text=True, check=True,
                         env={k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"})
    assert out.stdout.strip() in ("", "OMP_WAIT_POLICY=PASSIVE")
