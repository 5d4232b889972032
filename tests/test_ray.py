"""The Ray executor: resource declaration, results in the run's store, resuming across executors.

The fast tests replace ``ray`` by a small in-process stand-in that records what the executor asks
of Ray's API; the slow test runs a real local Ray instance (skipped when Ray is not installed:
it is the optional extra ``distributed``).
"""
import json
import sys
import tempfile
from pathlib import Path

import pytest

from benchmarks.__main__ import main

ARGS = ["run", "--scale", "tiny", "--methods", "abmil", "--tasks", "pr", "--max-epochs", "1",
        "--no-progress", "--no-tracking", "--workers", "1"]


def _summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


class _Ref:
    def __init__(self, value):
        self.value = value


class FakeRay:
    """In-process stand-in for the parts of Ray's API the executor uses (tasks run at submit)."""

    def __init__(self):
        self.inits, self.options, self.submitted, self.shutdowns = [], [], 0, 0
        self._up = False

    def is_initialized(self):
        return self._up

    def init(self, **kw):
        self.inits.append(kw)
        self._up = True

    def shutdown(self):
        self.shutdowns += 1
        self._up = False

    def put(self, x):
        return _Ref(x)

    def remote(self, **opts):
        self.options.append(opts)
        fake = self

        def wrap(fn):
            class Remote:
                @staticmethod
                def remote(*args):
                    fake.submitted += 1
                    return _Ref(fn(*[a.value if isinstance(a, _Ref) else a for a in args]))
            return Remote
        return wrap

    def wait(self, refs, num_returns=1):
        return refs[:num_returns], refs[num_returns:]

    def get(self, ref):
        return ref.value


def test_missing_ray_is_a_clear_user_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    assert main(ARGS + ["--folds", "0", "--executor", "ray", "--out", str(tmp_path / "run")]) == 2
    assert 'pip install -e ".[distributed]"' in capsys.readouterr().err


def test_ray_executor_declares_resources_and_writes_the_run_store(tmp_path, monkeypatch):
    fake = FakeRay()
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "node"))  # the "worker node" scratch space
    (tmp_path / "node").mkdir()
    out = tmp_path / "run"
    assert main(ARGS + ["--folds", "0", "--out", str(out)]) == 0  # fold 0 with the local executor
    assert main(ARGS + ["--folds", "0,1", "--executor", "ray", "--ray-address", "auto", "--gpus-per-job", "0.25",
                        "--out", str(out)]) == 0
    assert _summary(out)["n_ran"] == 1 and fake.submitted == 1  # the finished local job is reused
    assert fake.options == [{"num_cpus": 1.0, "num_gpus": 0.25, "max_retries": 1}]
    assert fake.inits and fake.inits[0]["address"] == "auto" and "num_cpus" not in fake.inits[0]
    assert fake.shutdowns == 1
    files = sorted((out / "jobs").glob("*.json"))
    assert len(files) == 2
    for f in files:
        d = json.loads(f.read_text())
        assert d["status"] == "ok" and d["job"]["hash"] == f.stem and d["predictions"]["test"]
    assert not list((tmp_path / "node").rglob("jobs/*.json"))  # results were moved to the run's store
    assert main(ARGS + ["--folds", "0,1", "--out", str(out)]) == 0  # and the local executor resumes them
    assert _summary(out)["n_ran"] == 0


@pytest.mark.slow
def test_local_ray_instance_runs_a_tiny_suite_and_resumes(tmp_path):
    pytest.importorskip("ray", reason="Ray is the optional extra 'distributed': pip install -e '.[distributed]'")
    out, ref = tmp_path / "ray", tmp_path / "local"
    assert main(ARGS + ["--folds", "0,1", "--executor", "ray", "--out", str(out)]) == 0
    assert _summary(out)["n_ran"] == 2 and len(list((out / "jobs").glob("*.json"))) == 2
    assert main(ARGS + ["--folds", "0,1", "--executor", "ray", "--out", str(out)]) == 0
    assert _summary(out)["n_ran"] == 0
    assert main(ARGS + ["--folds", "1", "--out", str(ref)]) == 0  # the same job in this process
    (local,) = [json.loads(p.read_text()) for p in (ref / "jobs").glob("*.json")]
    remote = json.loads((out / "jobs" / f"{local['job']['hash']}.json").read_text())
    assert [p["slide_id"] for p in remote["predictions"]["test"]] == [p["slide_id"] for p in local["predictions"]["test"]]
    assert [p["p"] for p in remote["predictions"]["test"]] == pytest.approx(
        [p["p"] for p in local["predictions"]["test"]], abs=1e-5)
