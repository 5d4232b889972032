"""MLflow tracking against a real local SQLite store written by the suite in tmp_path."""
import json
import logging
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pandas as pd
import pytest

from benchmarks import stats, tracking
from benchmarks.__main__ import main
from tests.conftest import REPO

RUN = ["run", "--scale", "tiny", "--methods", "abmil,dsmil", "--tasks", "pr", "--folds", "0,1",
       "--max-epochs", "1", "--workers", "1", "--no-progress"]
DELTAS = {0: 0.05, 1: 0.15}  # test-AUC shifts of abmil in the copied run, per fold


def _jobs(run_dir):
    return {p: json.loads(p.read_text()) for p in sorted((run_dir / "jobs").glob("*.json"))}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Run A through `run` (it logs itself); run B = a copy of A with abmil's test AUC shifted by
    known amounts, logged with `sync-mlflow`."""
    tmp = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{tmp}/mlflow.db"
    a, b = tmp / "baseline", tmp / "shifted"
    assert main(RUN + ["--out", str(a), "--tracking-uri", uri]) == 0
    shutil.copytree(a, b)
    for p, d in _jobs(b).items():
        if d["job"]["method"] == "abmil":
            d["metrics"]["test"]["auc"] += DELTAS[d["job"]["fold"]]
            p.write_text(json.dumps(d))
    assert main(["sync-mlflow", "--run", str(b), "--tracking-uri", uri]) == 0
    return uri, a, b


def _client(uri):
    return tracking.client(uri)


def _children(cl, parent):
    return cl.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")


def test_run_logs_one_parent_with_nested_job_runs(store):
    uri, a, _ = store
    cl = _client(uri)
    (parent,) = [r for r in tracking.parent_runs(uri) if r.info.run_name == "baseline"]
    assert parent.data.tags["bench.run_dir"] == str(a.resolve())
    assert parent.data.metrics["n_jobs"] == 4
    arts = {f.path for f in cl.list_artifacts(parent.info.run_id, "tables")}
    assert "tables/table1.md" in arts
    kids = _children(cl, parent)
    jobs = {d["job"]["hash"]: d for d in _jobs(a).values()}
    assert {r.data.tags["bench.job_hash"] for r in kids} == set(jobs)
    for r in kids:
        d = jobs[r.data.tags["bench.job_hash"]]
        p = r.data.params
        assert (p["method"], p["task"], int(p["fold"]), int(p["seed"])) == \
               (d["job"]["method"], "pr", d["job"]["fold"], d["job"]["seed"])
        assert p["data_fingerprint"] == d["job"]["data_fingerprint"] and p["git_commit"] == d["env"]["git_commit"]
        assert all(p[f"hp.{k}"] == str(v) for k, v in d["job"]["hparams"].items())
        assert p["recipe"] == d["job"]["recipe"] == "shared"  # the recipe and its resolved fields
        assert p["train.optimizer"] == "adamw" and float(p["train.lr"]) == d["job"]["train"]["lr"]
        for part in ("val", "test"):
            for m in ("auc", "acc", "f1"):
                assert r.data.metrics[f"{part}_{m}"] == pytest.approx(d["metrics"][part][m])
        hist = cl.get_metric_history(r.info.run_id, "epoch.train_total")
        assert [h.step for h in hist] == [c["epoch"] for c in d["curve"]]
        assert [h.value for h in hist] == pytest.approx([c["train_total"] for c in d["curve"]])
        local = cl.download_artifacts(r.info.run_id, "predictions.csv", str(a.parent / r.info.run_id))
        preds = pd.read_csv(local)
        assert len(preds) == sum(len(v) for v in d["predictions"].values())
        test = preds[preds.part == "test"].set_index("slide_id")["p"]
        assert test.to_dict() == pytest.approx({x["slide_id"]: x["p"] for x in d["predictions"]["test"]})


def test_sync_is_idempotent_and_replaces_a_changed_job(store):
    uri, a, _ = store
    rep = tracking.log_run(a, uri)
    assert (rep.logged, rep.replaced, rep.unchanged) == (0, 0, 4)
    cl = _client(uri)
    (parent,) = [r for r in tracking.parent_runs(uri) if r.info.run_name == "baseline"]
    p, d = next(iter(_jobs(a).items()))
    old = p.read_text()
    try:
        d["metrics"]["val"]["auc"] = 0.123
        p.write_text(json.dumps(d))
        rep = tracking.log_run(a, uri)
        assert (rep.logged, rep.replaced, rep.unchanged) == (0, 1, 3)
        kids = _children(cl, parent)
        assert len(kids) == 4  # the old run is deleted, not duplicated
        (new,) = [r for r in kids if r.data.tags["bench.job_hash"] == d["job"]["hash"]]
        assert new.data.metrics["val_auc"] == pytest.approx(0.123)
    finally:
        p.write_text(old)
        tracking.log_run(a, uri)
    assert len(tracking.parent_runs(uri)) == 2


def test_compare_parents_gives_paired_differences_and_corrected_t(store):
    uri, a, _ = store
    df, text = tracking.compare(parents=["baseline", "shifted"], uri=uri)
    df = df.set_index("method")
    ab = df.loc["abmil"]
    assert ab["shifted|diff"] == pytest.approx(np.mean(list(DELTAS.values())))
    ab_jobs = sorted((d["job"]["fold"], d["n_train"], d["n_test"]) for d in _jobs(a).values()
                     if d["job"]["method"] == "abmil")
    t, p = stats.corrected_ttest([DELTAS[f] for f, _, _ in ab_jobs], [n for _, n, _ in ab_jobs],
                                 [n for _, _, n in ab_jobs])
    assert ab["shifted|t"] == pytest.approx(t) and ab["shifted|p"] == pytest.approx(p)
    assert df.loc["dsmil", "shifted|diff"] == pytest.approx(0.0) and df.loc["dsmil", "shifted|p"] == 1.0
    assert list(df["shifted|p_holm"]) == pytest.approx(list(stats.holm(df["shifted|p"].to_numpy())))
    assert "baseline" in text and "Δ shifted" in text and f"{100 * ab['shifted|diff']:+.1f}" in text


def test_compare_methods_of_one_parent_via_cli(store, capsys):
    uri, a, _ = store
    assert main(["compare", "--methods", "abmil,dsmil", "--parent", str(a), "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    assert "| task" in out and "Δ dsmil" in out and "pr" in out
    df, _ = tracking.compare(methods=["abmil", "dsmil"], parent="baseline", uri=uri)
    jobs = pd.DataFrame([{"m": d["job"]["method"], "f": d["job"]["fold"], "auc": d["metrics"]["test"]["auc"]}
                         for d in _jobs(a).values()]).pivot(index="f", columns="m", values="auc")
    assert df.loc[0, "dsmil|diff"] == pytest.approx((jobs["dsmil"] - jobs["abmil"]).mean())
    assert main(["compare", "--parents", "baseline", "--tracking-uri", uri]) == 2  # one parent is not a comparison
    assert main(["compare", "--parents", "baseline,nope", "--tracking-uri", uri]) == 2
    assert "no parent run matches 'nope'" in capsys.readouterr().err


def test_a_tracking_failure_never_raises(store, caplog):
    _, a, _ = store
    with caplog.at_level(logging.WARNING, logger="benchmarks.tracking"):
        assert tracking.log_run_safely(a, "bogus-scheme://nowhere") is None
    assert "sync-mlflow --run" in caplog.text


def test_job_payload_steps_and_stages():
    result = {"job": {"method": "tdc", "variant": "default", "grid": "cv", "task": "her2", "fold": 2, "seed": 1,
                      "suite": "s", "hparams": {"t": 4.0}, "hash": "h"},
              "metrics": {"val": {"auc": 0.7}, "test": {"auc": 0.6, "acc": 0.5}, "external": None},
              "curve": [{"stage": "teachers", "epoch": 0, "train_total": 1.0},
                        {"stage": "teachers", "epoch": 1, "train_total": 0.5},
                        {"stage": "student", "epoch": 0, "train_total": 2.0, "val_auc": 0.6}],
              "predictions": {"test": [{"slide_id": "a", "case_id": "c", "y": 1, "p": 0.9}]}, "env": {}}
    pay = tracking.job_payload(result)
    assert ("epoch.teachers.train_total", 0.5, 1) in pay.metrics
    assert ("epoch.student.val_auc", 0.6, 0) in pay.metrics
    assert ("test_acc", 0.5, 0) in pay.metrics and not any(k.startswith("external") for k, _, _ in pay.metrics)
    assert pay.params["hp.t"] == "4.0" and pay.params["fold"] == "2"
    assert pay.predictions.to_dict("records") == [{"part": "test", "slide_id": "a", "case_id": "c", "y": 1, "p": 0.9}]


@pytest.mark.slow
def test_mlflow_ui_lists_the_runs(store):
    uri, _, _ = store
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1",
                             "--port", str(port)], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**__import__("os").environ, "MLFLOW_DISABLE_TELEMETRY": "true"})
    try:
        body = json.dumps({"experiment_ids": ["1"], "max_results": 100}).encode()
        deadline, runs = time.time() + 120, None
        while time.time() < deadline:
            try:
                req = urllib.request.Request(f"http://127.0.0.1:{port}/api/2.0/mlflow/runs/search", data=body,
                                             headers={"Content-Type": "application/json"})
                runs = json.loads(urllib.request.urlopen(req, timeout=5).read())["runs"]
                break
            except OSError:
                time.sleep(1)
        assert runs is not None, "mlflow ui did not answer"
        names = {r["info"]["run_name"] for r in runs}
        assert {"baseline", "shifted"} <= names and len(runs) == 10
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_compare_gives_no_fold_wise_p_values_on_the_external_cohort():
    """Fold values on one shared external set are not independent (#18 item 4): differences only."""
    long = pd.DataFrame({"group": ["a"] * 5 + ["b"] * 5, "method": "abmil", "variant": "default", "task": "odx",
                         "fold": list(range(5)) * 2, "seed": 0,
                         "value": [0.70, 0.71, 0.69, 0.72, 0.70, 0.75, 0.76, 0.74, 0.77, 0.75],
                         "n_train": 100.0, "n_test": 60.0})
    internal = tracking.compare_frame(long, "group", ["task"], ["a", "b"])
    external = tracking.compare_frame(long, "group", ["task"], ["a", "b"], test=False)
    assert internal["b|p"].iloc[0] < 0.05                                   # would be "significant"
    assert np.isnan(external["b|p"].iloc[0]) and external["b|diff"].iloc[0] == pytest.approx(0.05)
