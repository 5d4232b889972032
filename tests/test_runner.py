"""End-to-end: the main command on the tiny simulated cohort, resume, kill/resume, skips."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.__main__ import main
from tests.conftest import REPO

ARGS = ["run", "--suite", "tcga_brca", "--scale", "tiny", "--methods", "abmil", "--tasks", "her2",
        "--no-progress", "--workers", "1", "--no-tracking"]


def _summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def test_run_writes_results_and_rerun_reuses_every_job(tmp_path):
    out = tmp_path / "run"
    assert main(ARGS + ["--folds", "0,1", "--out", str(out)]) == 0
    jobs = sorted((out / "jobs").glob("*.json"))
    assert len(jobs) == 2
    r = json.loads(jobs[0].read_text())
    assert r["status"] == "ok" and 0 <= r["metrics"]["test"]["auc"] <= 1
    assert {p["slide_id"] for p in r["predictions"]["test"]}  # per-slide predictions kept
    assert (out / "splits" / "her2_seed0.csv").exists() and (out / "tables" / "table1.md").exists()
    mtimes = [p.stat().st_mtime_ns for p in jobs]
    assert main(ARGS + ["--folds", "0,1", "--out", str(out)]) == 0
    assert _summary(out)["n_ran"] == 0
    assert [p.stat().st_mtime_ns for p in jobs] == mtimes
    assert main(ARGS + ["--folds", "0", "--out", str(out), "--force"]) == 0
    assert _summary(out)["n_ran"] == 1


def test_killed_run_resumes_without_redoing_finished_jobs(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "benchmarks"] + ARGS + ["--out", str(out), "--max-epochs", "4"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((out / "jobs").glob("*.json"))) < 1:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = {p.name: p.stat().st_mtime_ns for p in (out / "jobs").glob("*.json")}
    assert 1 <= len(done) < 5, "the run should have been killed mid-way"
    assert main(ARGS + ["--out", str(out), "--max-epochs", "4"]) == 0
    s = _summary(out)
    assert s["n_jobs"] == 5 and s["n_ran"] == 5 - len(done)
    for name, mt in done.items():
        assert (out / "jobs" / name).stat().st_mtime_ns == mt


def test_unknown_method_is_a_user_error_with_suggestion(capsys):
    assert main(["run", "--methods", "abmill", "--scale", "tiny"]) == 2
    assert "did you mean 'abmil'" in capsys.readouterr().err.lower()


def test_scale_presets_set_widths_and_params_files_override_them(tmp_path):
    """``[params_by_scale]``: small/tiny jobs carry the preset's widths, `paper` and real data the
    official ones; a ``--params`` file overrides on top of the preset."""
    from benchmarks.suites import load_suite

    suite = load_suite("tcga_brca")
    small, tiny = suite.params_for_scale("small"), suite.params_for_scale("tiny")
    assert small["transmil"] == {"embed_dim": 128, "num_landmarks": 64} and tiny == small
    assert suite.params_for_scale("paper") == {} and suite.params_for_scale(None) == {}
    best = tmp_path / "best.json"
    best.write_text(json.dumps({"params": {"abmil": {"attn_dim": 16}}}))
    out = tmp_path / "run"
    assert main(["run", "--scale", "tiny", "--methods", "abmil", "--tasks", "her2", "--folds", "0", "--max-epochs", "1",
                 "--params", str(best), "--out", str(out), "--no-progress", "--workers", "1", "--no-tracking"]) == 0
    (job,) = [json.loads(p.read_text()) for p in (out / "jobs").glob("*.json")]
    assert job["job"]["hparams"]["embed_dim"] == 128 and job["job"]["hparams"]["attn_dim"] == 16
    s = json.loads((out / "summary.json").read_text())
    assert s["method_params"]["abmil"] == {"embed_dim": 128, "attn_dim": 16}


def test_config_prints_exactly_the_protocol_run_uses(tmp_path, capsys):
    """#18 item 5: `config` used to print the suite's base protocol (0.15 / 20 epochs / lr 2e-4)
    while a `small` run used its scale preset."""
    out = tmp_path / "run"
    assert main(ARGS + ["--folds", "0", "--max-epochs", "1", "--threshold", "val_f1", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["config", "--suite", "tcga_brca", "--scale", "tiny", "--max-epochs", "1",
                 "--threshold", "val_f1"]) == 0
    printed = json.loads(capsys.readouterr().out)
    s = _summary(out)
    assert printed["protocol"] == s["protocol"] and printed["protocol_hash"] == s["protocol_hash"]
    assert printed["method_params"]["abmil"] == s["method_params"]["abmil"]
    assert main(["config", "--suite", "tcga_brca"]) == 0             # no flags: the default command's
    default = json.loads(capsys.readouterr().out)
    assert default["scale"] == "small" and default["protocol"]["max_epochs"] == 8


def test_no_choice_made_while_training_sees_the_test_part(tmp_path, monkeypatch):
    """A spy on every prediction: early stopping (fit) and the threshold (evaluate) read exactly the
    fold's validation slides; the test slides are only scored, after training. A runner or engine
    that passed the test part as validation fails here."""
    import inspect

    import numpy as np

    from benchmarks import engine, metrics
    from benchmarks.protocol import load_splits

    calls: list[tuple[str, frozenset]] = []
    thresholds: list[int] = []
    real_predict, real_choose = engine.predict, metrics.choose_threshold

    def spy_predict(model, bags, *a, **k):
        calls.append((inspect.stack()[1].function, frozenset(b.slide_id for b in bags)))
        return real_predict(model, bags, *a, **k)

    def spy_choose(y, p, *a, **k):
        thresholds.append(len(np.asarray(y)))
        return real_choose(y, p, *a, **k)

    monkeypatch.setattr(engine, "predict", spy_predict)
    monkeypatch.setattr(engine, "choose_threshold", spy_choose)
    out = tmp_path / "run"
    assert main(ARGS + ["--folds", "1", "--out", str(out), "--threshold", "val_youden", "--max-epochs", "3"]) == 0
    split = load_splits(out / "splits" / "her2_seed0.csv")[1]
    val, test = frozenset(split.val), frozenset(split.test)
    assert val and test and not val & test
    fit_calls = [ids for fn, ids in calls if fn == "fit"]
    eval_calls = [ids for fn, ids in calls if fn == "evaluate"]
    assert len(fit_calls) >= 1 and all(ids == val for ids in fit_calls)  # early stopping: validation only
    assert eval_calls[0] == val and thresholds == [len(split.val)]        # the threshold: validation only
    assert eval_calls[1:] == [test]                                        # then the test part is scored
    assert {fn for fn, _ in calls} <= {"fit", "evaluate"}
