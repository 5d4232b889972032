"""MLflow tracking of runs, and comparisons read back from MLflow (``sync-mlflow``, ``compare``).

Layout in MLflow: one experiment per suite (``tcga_brca``); one parent run per run folder
(``results/<suite>/<run>``: every ``run`` invocation on that folder logs into the same parent, so a
resumed run is one parent), with the tables, figures, ``stats.csv`` and ``summary.json`` as
artifacts; one child run per job, nested under it, with

* params: method, variant, grid, task, fold, seed, suite, recipe (and its resolved fields, train.*), data fingerprint, protocol and split
  hashes, job hash, git commit, threshold, n_train/n_val/n_test and every hyper-parameter (``hp.*``);
* metrics: ``{val,test,external}_{auc,acc,f1,bacc,auprc}``, ``best_epoch``, ``fit_s`` and, per
  epoch (step = epoch), the loss terms and validation score of the job's ``curve``
  (``epoch.train_total``, ``epoch.val_auc``, ...; ``epoch.<stage>.*`` for multi-stage methods);
* artifact: ``predictions.csv`` (part, slide_id, case_id, y, p per slide);
* tags: ``bench.job_hash`` and ``bench.result_digest`` (hash of the job file).

The JSON results are the source of truth: ``run`` logs them at its end and a tracking error only
prints a warning. ``sync-mlflow --run DIR`` logs a finished folder afterwards; it is idempotent (a
job whose file is unchanged is not logged again, a recomputed one replaces its old run).

    python -m benchmarks sync-mlflow --run results/tcga_brca/sim-small [--tracking-uri URI]
    python -m benchmarks compare --parents sim-small,sim-small-tuned         # runs by name, id or folder
    python -m benchmarks compare --methods abmil,momkd [--parent sim-small] [--metric auc --split test]
    mlflow ui --backend-store-uri sqlite:///results/mlflow.db --host 127.0.0.1 --port 5000

Tracking URI: ``--tracking-uri``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///results/mlflow.db``
(artifacts then go to ``results/mlartifacts/<experiment>``); an ``http://`` server works the same.
Nothing is sent anywhere else: MLflow's telemetry is switched off before it is imported.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

DEFAULT_URI = "sqlite:///results/mlflow.db"
PARTS = ("val", "test", "external")
METRICS = ("auc", "acc", "f1", "bacc", "auprc")
# keep MLflow local and quiet: no usage telemetry, no progress bars, no git executable warnings
_OFFLINE_ENV = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true",
                "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", "GIT_PYTHON_REFRESH": "quiet",
                # a server that stops answering mid-sync: fail within about a minute, not MLflow's 7 retries
                "MLFLOW_HTTP_REQUEST_TIMEOUT": "10", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2"}
_BATCH = 900  # MLflow log_batch accepts 1000 metrics / 100 params per call


def _mlflow():
    for k, v in _OFFLINE_ENV.items():
        os.environ.setdefault(k, v)
    for name in ("alembic", "mlflow.store.db.utils"):
        logging.getLogger(name).setLevel(logging.WARNING)
    import mlflow

    return mlflow


def resolve_uri(uri: str | None = None) -> str:
    """``uri``, else ``$MLFLOW_TRACKING_URI``, else the local SQLite store (its folder is created).
    A tracking server (http/https) must answer within ``PROBE_TIMEOUT_S``, else ConnectionError:
    MLflow's own client retries an unreachable server for minutes."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    path = _sqlite_path(uri)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    if uri.startswith(("http://", "https://")):
        check_reachable(uri)
    return uri


PROBE_TIMEOUT_S = 5.0
_REACHABLE: set[str] = set()


def check_reachable(uri: str, timeout: float | None = None) -> None:
    """Any HTTP answer from the server (even 401/404) counts; a refused connection, a DNS failure or
    no answer within the timeout raises ConnectionError naming the server."""
    import urllib.error
    import urllib.request

    if uri in _REACHABLE:
        return
    url = uri.rstrip("/") + "/health"
    try:
        urllib.request.urlopen(url, timeout=timeout or PROBE_TIMEOUT_S).close()
    except urllib.error.HTTPError:
        pass  # it answered
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise ConnectionError(f"MLflow server {uri} did not answer within {timeout or PROBE_TIMEOUT_S:g} s "
                              f"({reason})") from None
    _REACHABLE.add(uri)


def _sqlite_path(uri: str) -> Path | None:
    if uri.startswith("sqlite:///"):
        p = uri[len("sqlite:///"):]
        if p and not p.startswith(":memory:"):
            return Path(p)
    return None


def client(uri: str | None = None):
    mlflow = _mlflow()
    return mlflow.tracking.MlflowClient(tracking_uri=resolve_uri(uri))


def experiment_id(cl: Any, name: str, uri: str) -> str:
    """Get or create the experiment; with a SQLite store its artifacts sit next to the database."""
    from mlflow.exceptions import MlflowException

    exp = cl.get_experiment_by_name(name)
    if exp is None:
        path = _sqlite_path(uri)
        loc = (path.resolve().parent / "mlartifacts" / name).as_uri() if path is not None else None
        try:
            return cl.create_experiment(name, artifact_location=loc)
        except MlflowException:  # created by another process meanwhile
            exp = cl.get_experiment_by_name(name)
    if exp.lifecycle_stage == "deleted":
        cl.restore_experiment(exp.experiment_id)
    return exp.experiment_id


# ------------------------------------------------------------------------------------------
# What one job logs (pure)
# ------------------------------------------------------------------------------------------
@dataclass
class Payload:
    run_name: str
    params: dict[str, str]
    metrics: list[tuple[str, float, int]]  # (key, value, step)
    tags: dict[str, str]
    predictions: pd.DataFrame


def _fmt(v: Any) -> str:
    return json.dumps(v) if isinstance(v, (list, dict, tuple)) else str(v)


def job_payload(result: dict[str, Any]) -> Payload:
    """Params, metrics (with per-epoch steps), tags and the per-slide predictions of one job file."""
    job = result["job"]
    env = result.get("env") or {}
    params = {k: _fmt(job.get(k)) for k in ("method", "variant", "grid", "task", "fold", "seed", "suite")}
    params.update(data_fingerprint=_fmt(job.get("data_fingerprint")), protocol_hash=_fmt(job.get("protocol_hash")),
                  split_hash=_fmt(job.get("split_hash")), job_hash=_fmt(job.get("hash")),
                  git_commit=_fmt(env.get("git_commit", "")), threshold=_fmt(result.get("threshold")),
                  **{k: _fmt(result.get(k)) for k in ("n_train", "n_val", "n_test")})
    params.update({f"hp.{k}": _fmt(v) for k, v in (job.get("hparams") or {}).items()})
    params["recipe"] = _fmt(job.get("recipe", "shared"))
    params.update({f"train.{k}": _fmt(v) for k, v in (job.get("train") or {}).items() if k != "hparams"})
    if job.get("params_source"):
        params["params_source"] = _fmt(job["params_source"])
    metrics: list[tuple[str, float, int]] = []
    for part in PARTS:
        for m, v in ((result.get("metrics") or {}).get(part) or {}).items():
            if v is not None:
                metrics.append((f"{part}_{m}", float(v), 0))
    if result.get("best_epoch") is not None:
        metrics.append(("best_epoch", float(result["best_epoch"]), 0))
    for k in ("fit_s", "eval_s"):
        if (result.get("timings") or {}).get(k) is not None:
            metrics.append((k, float(result["timings"][k]), 0))
    curve = result.get("curve") or []
    stages = list(dict.fromkeys(r.get("stage", "main") for r in curve))
    for r in curve:
        prefix = "epoch." if len(stages) <= 1 else f"epoch.{r.get('stage', 'main')}."
        for k, v in r.items():
            if k in ("stage", "epoch") or not isinstance(v, (int, float)) or isinstance(v, bool):
                continue
            metrics.append((prefix + k, float(v), int(r.get("epoch", 0))))
    tags = {"bench.kind": "job", "bench.job_hash": str(job.get("hash")), "mlflow.source.git.commit":
            str(env.get("git_commit", "")), **{f"env.{k}": str(v) for k, v in env.items() if k != "git_commit"}}
    rows = [{"part": part, **p} for part in PARTS for p in (result.get("predictions") or {}).get(part) or []]
    preds = pd.DataFrame(rows, columns=["part", "slide_id", "case_id", "y", "p"])
    name = f"{job.get('method')}/{job.get('variant')} {job.get('task')} fold {job.get('fold')} seed {job.get('seed')}"
    return Payload(name, params, metrics, tags, preds)


def _log_batch(cl: Any, run_id: str, params: dict[str, str], metrics: Sequence[tuple[str, float, int]],
               timestamp: int) -> None:
    from mlflow.entities import Metric, Param

    ps = [Param(k, v[:6000]) for k, v in params.items()]  # MLflow's param value limit
    ms = [Metric(k, v, timestamp, s) for k, v, s in metrics]
    for i in range(0, max(len(ps), 1), 100):
        if ps[i:i + 100]:
            cl.log_batch(run_id, params=ps[i:i + 100])
    for i in range(0, len(ms), _BATCH):
        cl.log_batch(run_id, metrics=ms[i:i + _BATCH])


def _log_params_safely(cl: Any, run: Any, params: dict[str, str]) -> None:
    """Params are immutable in MLflow: log new keys; a changed value goes to tag ``changed.<key>``."""
    have = run.data.params
    new = {k: v for k, v in params.items() if k not in have}
    _log_batch(cl, run.info.run_id, new, [], 0)
    for k, v in params.items():
        if k in have and have[k] != v:
            cl.set_tag(run.info.run_id, f"changed.{k}", v)


# ------------------------------------------------------------------------------------------
# Logging a run folder
# ------------------------------------------------------------------------------------------
@dataclass
class SyncReport:
    uri: str
    experiment_id: str
    parent_id: str
    logged: int = 0  # new job runs
    replaced: int = 0  # job runs whose result file changed (old run deleted)
    unchanged: int = 0
    removed: int = 0  # job runs of jobs the run no longer plans (an earlier command's settings)
    skipped: list[str] = field(default_factory=list)  # files not logged, with the reason


def run_key(run_dir: Path) -> str:
    return hashlib.sha256(str(Path(run_dir).resolve()).encode()).hexdigest()[:16]


def _search_all(cl: Any, exp_ids: list[str], filter_string: str, order_by: list[str] | None = None) -> list[Any]:
    out, token = [], None
    while True:
        page = cl.search_runs(exp_ids, filter_string=filter_string, max_results=1000, order_by=order_by,
                              page_token=token)
        out.extend(page)
        token = page.token
        if not token:
            return out


def _parent_run(cl: Any, exp_id: str, run_dir: Path) -> Any:
    key = run_key(run_dir)
    found = _search_all(cl, [exp_id], f"tags.`bench.run_key` = '{key}'", ["attributes.start_time DESC"])
    if found:
        return found[0]
    run = cl.create_run(exp_id, run_name=Path(run_dir).resolve().name,
                        tags={"bench.kind": "parent", "bench.run_key": key,
                              "bench.run_dir": str(Path(run_dir).resolve())})
    return cl.get_run(run.info.run_id)


def log_run(run_dir: str | Path, tracking_uri: str | None = None, experiment: str | None = None) -> SyncReport:
    """Log a run folder (its planned jobs, ``summary.json``, tables) to MLflow, idempotently; job runs of
    jobs the run no longer plans are deleted, so MLflow never compares another command's jobs."""
    from mlflow.entities import RunStatus

    from benchmarks.jobs import load_planned
    from benchmarks.report import canonical_variant

    run_dir = Path(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").is_file() else {}
    results: list[tuple[Path, bytes, dict]] = []
    rep_skipped: list[str] = []
    for pj in load_planned(run_dir):  # the run's own jobs only, never other files in jobs/
        if pj.data is None:
            rep_skipped.append(f"{pj.path.name} ({pj.label}): {pj.problem} ({pj.detail.splitlines()[0] if pj.detail else ''})")
            continue
        results.append((pj.path, pj.raw, pj.data))
    suite = summary.get("suite") or (results[0][2]["job"].get("suite") if results else None) or "benchmarks"
    uri = resolve_uri(tracking_uri)
    cl = client(uri)
    exp_id = experiment_id(cl, experiment or suite, uri)
    parent = _parent_run(cl, exp_id, run_dir)
    pid = parent.info.run_id
    rep = SyncReport(uri=uri, experiment_id=exp_id, parent_id=pid, skipped=rep_skipped)
    children = {r.data.tags.get("bench.job_hash"): r
                for r in _search_all(cl, [exp_id], f"tags.mlflow.parentRunId = '{pid}'")}
    arms: dict[str, list[float]] = {}
    for f, raw, d in results:
        job = d["job"]
        digest = hashlib.sha256(raw).hexdigest()[:16]
        auc = ((d.get("metrics") or {}).get("test") or {}).get("auc")
        if auc is not None:
            arm = f"{job['method']}/{canonical_variant(job['method'], job.get('variant'))}/{job['task']}"
            arms.setdefault(arm, []).append(float(auc))
        old = children.get(job["hash"])
        if old is not None:
            if old.data.tags.get("bench.result_digest") == digest and old.info.status == "FINISHED":
                rep.unchanged += 1
                continue
            cl.delete_run(old.info.run_id)
            rep.replaced += 1
        else:
            rep.logged += 1
        _log_job(cl, exp_id, pid, d, digest, f.stat().st_mtime)
    planned = {d["job"]["hash"] for _, _, d in results}
    for h, old in children.items():  # children of jobs this run no longer plans: never compared
        if h not in planned:
            cl.delete_run(old.info.run_id)
            rep.removed += 1
    # the parent: identity as params, the latest summary as tags/metrics, tables as artifacts
    cohort = summary.get("cohort") or {}
    first_env = (results[0][2].get("env") or {}) if results else {}
    params = {"suite": suite, "data_fingerprint": _fmt(summary.get("data_fingerprint")),
              **{f"cohort.{k}": _fmt(v) for k, v in cohort.items()}}
    _log_params_safely(cl, parent, params)
    tags = {f"bench.{k}": _fmt(summary[k]) for k in ("methods", "tasks", "grids", "folds", "seeds",
                                                     "skipped_methods", "protocol_hash", "recipe") if k in summary}
    tags.update({f"protocol.{k}": _fmt(v) for k, v in (summary.get("protocol") or {}).items()})
    tags["mlflow.source.git.commit"] = str(first_env.get("git_commit", ""))
    for k, v in tags.items():
        cl.set_tag(pid, k, v[:5000])
    now = _now_ms()
    metrics = [(k, float(summary[k]), 0) for k in ("n_jobs", "n_ran", "n_failed", "wall_s")
               if isinstance(summary.get(k), (int, float))]
    metrics += [(f"mean_test_auc/{arm}", float(np.mean(v)), 0) for arm, v in sorted(arms.items())]
    _log_batch(cl, pid, {}, metrics, now)
    for sub in ("tables", "figures"):
        if (run_dir / sub).is_dir():
            cl.log_artifacts(pid, str(run_dir / sub), artifact_path=sub)
    for name in ("summary.json", "stats.csv"):
        if (run_dir / name).is_file():
            cl.log_artifact(pid, str(run_dir / name))
    cl.set_terminated(pid, RunStatus.to_string(RunStatus.FINISHED), end_time=now)
    return rep


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)


def _log_job(cl: Any, exp_id: str, parent_id: str, result: dict[str, Any], digest: str, mtime: float) -> str:
    pay = job_payload(result)
    end = int(mtime * 1000)
    t = result.get("timings") or {}
    start = end - int(1000 * (float(t.get("fit_s") or 0) + float(t.get("eval_s") or 0)))
    run = cl.create_run(exp_id, start_time=start, run_name=pay.run_name,
                        tags={**pay.tags, "mlflow.parentRunId": parent_id, "bench.result_digest": digest})
    rid = run.info.run_id
    _log_batch(cl, rid, pay.params, pay.metrics, end)
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "predictions.csv"
        pay.predictions.to_csv(p, index=False)
        cl.log_artifact(rid, str(p))
    cl.set_terminated(rid, "FINISHED", end_time=end)
    return rid


def log_run_safely(run_dir: str | Path, tracking_uri: str | None = None) -> SyncReport | None:
    """``log_run`` that never raises: on any error it logs a warning and returns None."""
    try:
        rep = log_run(run_dir, tracking_uri)
    except Exception as e:  # tracking must never lose or fail a run: the JSON files hold the results
        log.warning("MLflow tracking failed (%s: %s); the results are safe in %s. Log them later with: "
                    "python -m benchmarks sync-mlflow --run %s", type(e).__name__, e, run_dir, run_dir)
        return None
    print(f"MLflow: parent run {rep.parent_id} in {rep.uri} ({rep.logged} job runs logged, {rep.replaced} "
          f"replaced, {rep.unchanged} unchanged, {rep.removed} removed)", file=sys.stderr)
    return rep


# ------------------------------------------------------------------------------------------
# Reading back and comparing
# ------------------------------------------------------------------------------------------
def parent_runs(uri: str | None = None, experiment: str | None = None) -> list[Any]:
    """Every parent run (newest first), through ``mlflow.search_runs``."""
    mlflow = _mlflow()
    mlflow.set_tracking_uri(resolve_uri(uri))
    kw: dict[str, Any] = {"experiment_names": [experiment]} if experiment else {"search_all_experiments": True}
    return mlflow.search_runs(filter_string="tags.`bench.kind` = 'parent'", output_format="list",
                              order_by=["attributes.start_time DESC"], **kw)


def find_parents(tokens: Sequence[str], runs: Sequence[Any]) -> list[Any]:
    """Resolve each token (run id, run name, or run folder) to one parent run."""
    out = []
    for tok in tokens:
        folder = str(Path(tok).resolve())
        hits = [r for r in runs if r.info.run_id == tok]
        hits = hits or [r for r in runs if r.data.tags.get("bench.run_dir") == folder]
        hits = hits or [r for r in runs if r.info.run_name == tok]
        if not hits:
            known = ", ".join(sorted({r.info.run_name for r in runs})) or "none"
            raise ValueError(f"no parent run matches {tok!r} (a run id, run name or run folder); "
                             f"parent runs: {known}")
        if len(hits) > 1:
            ids = ", ".join(f"{r.info.run_id} ({r.data.tags.get('bench.run_dir')})" for r in hits)
            raise ValueError(f"{tok!r} names {len(hits)} parent runs: {ids}; pass a run id")
        if any(r.info.run_id == hits[0].info.run_id for r in out):
            raise ValueError(f"{tok!r} names a parent run already in the comparison")
        out.append(hits[0])
    return out


def job_frame(parent: Any, metric: str = "auc", split: str = "test") -> pd.DataFrame:
    """The parent's job runs as rows (method, variant, task, fold, seed, value, n_train, n_test),
    read with ``mlflow.search_runs``."""
    from benchmarks.report import canonical_variant

    mlflow = _mlflow()
    df = mlflow.search_runs(experiment_ids=[parent.info.experiment_id], output_format="pandas",
                            filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    col = f"metrics.{split}_{metric}"
    cols = ["method", "variant", "task", "fold", "seed", "value", "n_train", "n_test"]
    if df.empty or col not in df:
        return pd.DataFrame(columns=cols)
    out = pd.DataFrame({"method": df["params.method"], "task": df["params.task"],
                        "variant": [canonical_variant(m, v) for m, v in zip(df["params.method"], df["params.variant"])],
                        "fold": df["params.fold"].astype(int), "seed": df["params.seed"].astype(int),
                        "value": df[col].astype(float),
                        **{k: pd.to_numeric(df[f"params.{k}"], errors="coerce") if f"params.{k}" in df else np.nan
                           for k in ("n_train", "n_test")}})
    return out.dropna(subset=["value"])[cols].reset_index(drop=True)


def compare_frame(long: pd.DataFrame, by: str, rows: Sequence[str], groups: Sequence[str] | None = None,
                  test: bool = True) -> pd.DataFrame:
    """One line per ``rows`` key: mean/std per ``by`` group; for each group after the first, the
    mean paired difference to the first (pairs: same fold and seed), the Nadeau & Bengio corrected
    resampled t-test (``stats.corrected_ttest``) and Holm's adjustment over every test in the table.
    ``test=False`` (the external cohort: every fold model scores one shared test set, so fold values
    are not independent) reports the differences without p-values."""
    from benchmarks import stats as st

    groups = list(groups or dict.fromkeys(long[by]))
    if len(groups) < 2:
        raise ValueError(f"compare needs at least two {by} groups, got {groups}")
    ref, others = groups[0], groups[1:]
    recs = []
    for key, sub in long.groupby(list(rows), sort=True):
        key = key if isinstance(key, tuple) else (key,)
        rec: dict[str, Any] = dict(zip(rows, key))
        a = sub[sub[by] == ref]
        for g in groups:
            v = sub.loc[sub[by] == g, "value"]
            rec[f"{g}|mean"] = v.mean() if len(v) else np.nan
            rec[f"{g}|std"] = v.std(ddof=1) if len(v) > 1 else np.nan
            rec[f"{g}|n"] = len(v)
        for g in others:
            pair = a.merge(sub[sub[by] == g], on=["fold", "seed"], suffixes=("_a", "_b"))
            d = (pair["value_b"] - pair["value_a"]).to_numpy(dtype=float)
            rec[f"{g}|diff"] = d.mean() if d.size else np.nan
            rec[f"{g}|pairs"] = int(d.size)
            p = t = np.nan
            n_tr = pair["n_train_a"].fillna(pair["n_train_b"]).to_numpy(dtype=float) if d.size else np.array([])
            n_te = pair["n_test_a"].fillna(pair["n_test_b"]).to_numpy(dtype=float) if d.size else np.array([])
            if test and d.size >= 2 and np.all(np.isfinite(n_tr)) and np.all(np.isfinite(n_te)):
                t, p = st.corrected_ttest(d, n_tr, n_te)
            rec[f"{g}|t"], rec[f"{g}|p"] = t, p
        recs.append(rec)
    df = pd.DataFrame(recs)
    if df.empty:
        return df
    pcols = [f"{g}|p" for g in others]
    adj = st.holm(df[pcols].to_numpy(dtype=float).ravel()).reshape(len(df), len(pcols))
    for j, g in enumerate(others):
        df[f"{g}|p_holm"] = adj[:, j]
    return df


def render(df: pd.DataFrame, rows: Sequence[str], groups: Sequence[str], alpha: float = 0.05) -> str:
    """A side-by-side text table (values in %): mean ± std per group, then Δ and Holm p per group."""
    from tabulate import tabulate

    def pct(x: float) -> str:
        return "–" if not np.isfinite(x) else f"{100 * x:.1f}"

    out = []
    for _, r in df.iterrows():
        line = [r[k] for k in rows]
        for g in groups:
            m, s = r[f"{g}|mean"], r[f"{g}|std"]
            line.append("–" if not np.isfinite(m) else f"{pct(m)} ± {pct(s)}" if np.isfinite(s) else pct(m))
        for g in groups[1:]:
            d, p = r[f"{g}|diff"], r[f"{g}|p_holm"]
            line.append("–" if not np.isfinite(d) else f"{100 * d:+.1f}")
            line.append("–" if not np.isfinite(p) else f"{p:.3g}{' *' if p < alpha else ''}")
        out.append(line)
    headers = [*rows, *groups, *[h for g in groups[1:] for h in (f"Δ {g}", f"p {g}")]]
    return tabulate(out, headers=headers, tablefmt="github", disable_numparse=True)


def compare(parents: Sequence[str] = (), methods: Sequence[str] = (), parent: str | None = None,
            metric: str = "auc", split: str = "test", tasks: Sequence[str] = (), uri: str | None = None,
            experiment: str | None = None) -> tuple[pd.DataFrame, str]:
    """Compare two or more parent runs (per method/variant/task) or two or more methods of one
    parent run (per task). Returns the frame and its rendered table."""
    runs = parent_runs(uri, experiment)
    if not runs:
        raise ValueError(f"no parent runs in {resolve_uri(uri)}; log one with `run` or `sync-mlflow --run DIR`")

    def arm_filter(df: pd.DataFrame) -> pd.DataFrame:
        if tasks:
            df = df[df["task"].isin(list(tasks))]
        if methods and len(parents) >= 2:
            df = df[[_matches(m, v, methods) for m, v in zip(df["method"], df["variant"])]]
        return df

    if len(parents) >= 2:
        chosen = find_parents(parents, runs)
        labels = _labels(chosen)
        long = pd.concat([job_frame(r, metric, split).assign(group=lab) for r, lab in zip(chosen, labels)],
                         ignore_index=True)
        long = arm_filter(long)
        rows, groups = ["method", "variant", "task"], labels
    elif len(methods) >= 2:
        (chosen,) = find_parents([parent], runs) if parent else (runs[0],)
        long = arm_filter(job_frame(chosen, metric, split))
        parts = []
        for m in methods:
            sel = long[[_matches(a, b, [m]) for a, b in zip(long["method"], long["variant"])]]
            if sel.empty:
                raise ValueError(f"parent run {chosen.info.run_name} has no {split} {metric} for {m!r}; "
                                 f"it holds {sorted(set(long['method'] + '/' + long['variant']))}")
            parts.append(sel.assign(group=m))
        long = pd.concat(parts, ignore_index=True)
        rows, groups = ["task"], list(methods)
    else:
        raise ValueError("compare needs --parents A,B[,...] (two or more) or --methods M1,M2[,...]")
    if long.empty:
        raise ValueError(f"no job runs with a {split} {metric} to compare")
    external = split == "external"
    df = compare_frame(long, "group", rows, groups, test=not external)
    text = render(df, rows, groups)
    if external:
        text += ("\nExternal cohort: every fold model scores the same patients, so the fold values are not "
                 "independent and no fold-wise test is valid; no p-values. `tables` tests the external AUC "
                 "with DeLong on fold-averaged patient scores (Table 2).\n")
    return df, text


def _matches(method: str, variant: str, wanted: Iterable[str]) -> bool:
    from benchmarks.report import canonical_variant

    for w in wanted:
        m, _, v = w.partition("/")
        if m == method and (variant == (canonical_variant(m, v) if v else canonical_variant(m, None))):
            return True
    return False


def _labels(runs: Sequence[Any]) -> list[str]:
    names = [r.info.run_name for r in runs]
    return [n if names.count(n) == 1 else f"{n} ({r.info.run_id[:8]})" for n, r in zip(names, runs)]


# ------------------------------------------------------------------------------------------
# CLI: two commands share this module (``sync-mlflow`` and ``compare``)
# ------------------------------------------------------------------------------------------
def add_arguments(p) -> None:
    p.add_argument("--tracking-uri", default=None,
                   help=f"MLflow tracking URI (default: $MLFLOW_TRACKING_URI or {DEFAULT_URI})")
    p.add_argument("--experiment", default=None, help="MLflow experiment (default: the suite name / all)")
    if p.prog.split()[-1] == "compare":
        p.add_argument("--parents", default=None, help="two or more parent runs: ids, names or run folders")
        p.add_argument("--methods", default=None, help="methods (method or method/variant) to compare")
        p.add_argument("--parent", default=None, help="with --methods: the parent run (default: the newest)")
        p.add_argument("--metric", default="auc", choices=METRICS)
        p.add_argument("--split", default="test", choices=PARTS)
        p.add_argument("--tasks", default=None, help="comma-separated tasks (default: all)")
        p.add_argument("--csv", default=None, help="also write the comparison as CSV")
    else:
        p.add_argument("--run", required=True, help="run folder (holds jobs/ and summary.json)")


def main(args) -> int:
    """sync-mlflow: log a finished run folder; compare: side-by-side table with significance."""
    if args.command == "compare":
        split = lambda s: [x.strip() for x in (s or "").split(",") if x.strip()]  # noqa: E731
        df, text = compare(parents=split(args.parents), methods=split(args.methods), parent=args.parent,
                           metric=args.metric, split=args.split, tasks=split(args.tasks), uri=args.tracking_uri,
                           experiment=args.experiment)
        print(f"{args.split} {args.metric.upper()} (%), mean ± std over folds x seeds; Δ = group - first group; "
              "p: corrected resampled t-test (Nadeau & Bengio 2003) over paired folds x seeds, "
              "Holm-adjusted over the table; * p < 0.05")
        print(text)
        if args.csv:
            df.to_csv(args.csv, index=False)
        return 0
    rep = log_run(args.run, args.tracking_uri, args.experiment)
    print(f"parent run {rep.parent_id} (experiment {rep.experiment_id}, {rep.uri}): {rep.logged} job runs logged, "
          f"{rep.replaced} replaced, {rep.unchanged} unchanged, {rep.removed} removed")
    for s in rep.skipped:
        print(f"not logged: {s}", file=sys.stderr)
    print(f"browse: mlflow ui --backend-store-uri {rep.uri} --host 127.0.0.1 --port 5000")
    return 0
