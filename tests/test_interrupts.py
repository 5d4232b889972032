"""Interruptions and concurrent runs: Ctrl-C, a killed run, two runs on one folder, a killed tune,
an unreachable MLflow server."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.locks import HOST, file_lock, pid_alive

RUN = [sys.executable, "-m", "benchmarks", "run", "--scale", "tiny", "--methods", "abmil", "--tasks", "her2",
       "--no-tracking", "--no-progress"]
ROOT = Path(__file__).resolve().parents[1]


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(x) for x in out]


def _wait_for(cond, timeout: float, step: float = 0.1) -> bool:
    t = time.monotonic()
    while time.monotonic() - t < timeout:
        if cond():
            return True
        time.sleep(step)
    return cond()


def _jobs(out: Path) -> list[Path]:
    return sorted((out / "jobs").glob("*.json"))


def test_ctrl_c_stops_the_workers_keeps_finished_jobs_and_says_how_to_resume(tmp_path: Path) -> None:
    out = tmp_path / "run"
    cmd = RUN + ["--methods", "transmil,abmil", "--seeds", "0,1,2", "--workers", "2", "--out", str(out)]
    # SIGINT back to its default in the child: under `nohup ... &` (as CI may run) it is inherited ignored
    p = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert _wait_for(lambda: len(_jobs(out)) >= 1, 180), "no job finished"
    workers = _children(p.pid)
    t0 = time.monotonic()
    p.send_signal(signal.SIGINT)
    err = p.communicate(timeout=30)[1]
    stopped = time.monotonic() - t0
    assert p.returncode == 130, err
    assert stopped < 10, f"took {stopped:.1f} s to stop"
    assert "Traceback" not in err
    kept = len(_jobs(out))
    assert 1 <= kept < 30, "interrupted too late to test anything" if kept == 30 else kept
    assert "interrupted:" in err and "Resume with the same command" in err and "--seeds 0,1,2" in err
    assert _wait_for(lambda: not any(pid_alive(w) for w in workers), 10), "workers outlived the run"
    # resuming reuses a finished job (the lock files of the stopped jobs block nothing)

    job = json.loads(_jobs(out)[0].read_text())["job"]
    again = subprocess.run(RUN + ["--methods", job["method"], "--folds", str(job["fold"]), "--seeds", str(job["seed"]),
                                  "--workers", "1", "--out", str(out)], cwd=ROOT,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "1 jobs (1 finished and reused, 0 to run)" in again.stderr


def test_workers_exit_when_the_run_is_killed(tmp_path: Path) -> None:
    out = tmp_path / "run"
    p = subprocess.Popen(RUN + ["--seeds", "0,1", "--workers", "2", "--out", str(out)], cwd=ROOT,
                         stderr=subprocess.DEVNULL)
    try:
        assert _wait_for(lambda: len(_children(p.pid)) >= 2, 60)
        assert _wait_for(lambda: (out / "jobs").is_dir() and any((out / "jobs").iterdir()), 180)
        workers = _children(p.pid)
    finally:
        p.kill()  # SIGKILL: no handler runs in the parent
        p.wait()
    assert _wait_for(lambda: not any(pid_alive(w) for w in workers), 15), \
        [w for w in workers if pid_alive(w)]


def _hold(path: str, seconds: float) -> None:
    with file_lock(Path(path)):
        print("held", flush=True)
        time.sleep(seconds)


HOLDER = "import sys; from tests.test_interrupts import _hold; _hold(sys.argv[1], float(sys.argv[2]))"


def test_a_job_lock_waits_for_a_live_holder_and_is_free_once_it_is_killed(tmp_path: Path) -> None:
    lock = tmp_path / "jobs" / "abc.lock"
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock), "2"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    t0 = time.monotonic()
    with file_lock(lock, poll=0.05):
        waited = time.monotonic() - t0
    p.wait()
    assert waited > 1.0, f"did not wait for the holder ({waited:.2f} s)"
    assert not lock.exists()  # released and removed
    # a holder killed with SIGKILL (the OOM killer) leaves no lock behind: the kernel drops it
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock), "600"], cwd=ROOT, stdout=subprocess.PIPE,
                         text=True)
    assert p.stdout.readline().strip() == "held"
    p.kill()
    p.wait()
    t0 = time.monotonic()
    with file_lock(lock, poll=0.05):
        assert time.monotonic() - t0 < 1.0


def test_two_runs_on_one_folder_compute_each_job_once(tmp_path: Path) -> None:
    out = tmp_path / "run"
    cmd = RUN + ["--workers", "1", "--out", str(out)]
    procs = [subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
             for _ in range(2)]
    errs = [p.communicate(timeout=600)[1] for p in procs]
    computed = 0
    for p, err in zip(procs, errs):
        assert p.returncode == 0, err[-2000:]
        m = re.search(r"(\d+) jobs \((\d+) finished and reused, (\d+) to run\)", err)
        other = re.search(r"(\d+) job\(s\) were computed meanwhile by another run", err)
        computed += int(m[3]) - (int(other[1]) if other else 0)
    assert computed == 5, errs  # tiny: 5 folds of ABMIL on HER2, each trained by exactly one of the runs
    assert len(_jobs(out)) == 5 and not list((out / "jobs").glob("*.lock"))


def test_a_killed_tunes_running_trial_is_marked_failed_on_resume() -> None:
    optuna = pytest.importorskip("optuna")
    from benchmarks.tuning import fail_dead_trials

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    study = optuna.create_study(direction="maximize")
    dead, live = study.ask(), study.ask()
    dead.set_user_attr("worker", f"{HOST}:{gone.pid}")
    live.set_user_attr("worker", f"{HOST}:{os.getpid()}")
    elsewhere = study.ask()
    elsewhere.set_user_attr("worker", f"another-host:{gone.pid}")  # not ours to judge: the heartbeat's
    assert fail_dead_trials(study) == [dead.number]
    states = {t.number: t.state for t in study.get_trials(deepcopy=False)}
    R, F = optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.FAIL
    assert states == {dead.number: F, live.number: R, elsewhere.number: R}


def test_an_unreachable_mlflow_server_fails_fast_with_a_warning(tmp_path: Path, caplog, monkeypatch) -> None:
    from benchmarks import tracking
    from benchmarks.jobs import write_plan

    monkeypatch.setattr(tracking, "PROBE_TIMEOUT_S", 1.0)
    with socket.socket() as s:  # a port nobody listens on: connection refused
        s.bind(("127.0.0.1", 0))
        refused = s.getsockname()[1]
    silent = socket.socket()  # accepts connections, never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        for port in (refused, silent.getsockname()[1]):
            uri = f"http://127.0.0.1:{port}"
            t0 = time.monotonic()
            with pytest.raises(ConnectionError, match=f"MLflow server {uri} did not answer"):
                tracking.resolve_uri(uri)
            assert time.monotonic() - t0 < 5
        write_plan(tmp_path, [], suite="tcga_brca", recipe="shared", command="test")
        t0 = time.monotonic()
        assert tracking.log_run_safely(tmp_path, f"http://127.0.0.1:{refused}") is None
        assert time.monotonic() - t0 < 10
        assert "MLflow tracking failed" in caplog.text and "sync-mlflow" in caplog.text
    finally:
        silent.close()
