"""Hyper-parameter tuning with Optuna, on validation parts only (``python -m benchmarks tune``).

    python -m benchmarks tune --method momkd --task her2 --trials 50            # MoMKD: n per class, margin
    python -m benchmarks tune --method abmil --param dropout=0:0.5 --param attn_dim=128,256
    python -m benchmarks tune --method momkd --param lambda_mse=1e-3:1e-1:log   # add any registry field
    python -m benchmarks run --params results/tcga_brca/tune/<study>/best_params.json

Objective (nested, never a test fold): for every outer fold of the protocol's split, the model is
trained by the engine on that fold's training part and scored on that fold's validation part (the
15% of the training patients the protocol holds out for early stopping); the test part is removed
from the split before any bag is built. The objective is the mean validation AUC over the folds.
Folds whose validation part holds one class (AUC undefined) are left out, with a note. Each fold's
running mean is reported as an intermediate value, so the median pruner (Optuna ``MedianPruner``)
stops a trial after a fold when it is already below the median of earlier trials at that fold.
Caveat: the folds' validation parts together cover slides that are test slides of other folds, so
one parameter set chosen over all folds is not strictly nested for the later test-fold estimate;
tune with ``--folds`` on a disjoint development cohort (or one fold) when that matters.

Search space: by default the method's own (``MethodSpec.search_space``: the learning rate and
weight decay of its recipe, its dropout and its main width or regulariser, e.g. MoMKD's memory size
per class ``n_memory`` and alignment ``margin``); ``--param name=low:high[:log]`` adds or replaces a
numeric range (integers when both bounds and the default are integers) and ``--param name=a,b,c``
a choice list. Names are the method's registry hyper-parameters or ``lr`` / ``weight_decay``
(the recipe's). ``--methods all`` tunes every method one after the other (one study each) and
writes one ``best_params.json`` for all of them.

Sampler: TPE, seeded per trial from (``--sampler-seed``, trial number), so one worker reproduces its
study exactly and workers that join one study draw different candidates without coordinating.

Storage and workers: ``--storage`` takes any Optuna RDB URL (default ``sqlite:///results/optuna.db``,
or ``$OPTUNA_STORAGE``); processes or machines that run ``tune`` with the same ``--study NAME
--storage URL`` share one study (each adds its ``--trials``; ``--workers N`` starts N local
processes that split ``--trials``). A study remembers its method, task, data fingerprint, protocol,
folds and search space; joining it with different ones is an error. Use PostgreSQL/MySQL for many
machines (``postgresql://user:pass@host/db``); SQLite suits the processes of one machine.

Outputs (``--out``, default ``results/<suite>/tune/<study>/``): ``best_params.json`` (read by
``run --params``), ``trials.csv``, ``optimization_history.png`` and ``param_importances.png``
(matplotlib). ``--trials 0`` only rewrites the outputs from the storage.

Live view of any study in the storage (separate package, ``pip install optuna-dashboard``):

    optuna-dashboard sqlite:///results/optuna.db --host 127.0.0.1 --port 8080
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from benchmarks.locks import holder_dead, worker_id

DEFAULT_STORAGE = "sqlite:///results/optuna.db"

# ------------------------------------------------------------------------------------------
# Search space
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ParamSpace:
    """One tuned hyper-parameter: an int/float range (optionally log) or a choice list."""

    name: str
    kind: str  # "int" | "float" | "choice"
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: Any) -> Any:
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        if self.kind == "float":
            return trial.suggest_float(self.name, float(self.low), float(self.high), log=self.log)
        return trial.suggest_categorical(self.name, list(self.choices))

    def describe(self) -> str:
        if self.kind == "choice":
            return f"{self.name} in {list(self.choices)}"
        return f"{self.name} in [{self.low}, {self.high}] ({self.kind}{', log' if self.log else ''})"


def _literal(text: str) -> Any:
    t = text.strip()
    low = t.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(t)
        except ValueError:
            pass
    return t


def parse_param(text: str, defaults: dict[str, Any], method: str = "") -> ParamSpace:
    """Parse ``name=low:high[:log]`` or ``name=a,b,c`` against a method's hyper-parameters."""
    name, sep, spec = text.partition("=")
    name, spec = name.strip(), spec.strip()
    if not sep or not name or not spec:
        raise ValueError(f"--param {text!r}: expected name=low:high[:log] or name=a,b,c")
    if name not in defaults:
        raise ValueError(f"--param {text!r}: {method or 'the method'} has no hyper-parameter {name!r}; "
                         f"valid: {', '.join(sorted(defaults))}")
    default = defaults[name]
    if ":" in spec:
        parts = spec.split(":")
        log = len(parts) == 3 and parts[2].strip().lower() == "log"
        if len(parts) not in (2, 3) or (len(parts) == 3 and not log):
            raise ValueError(f"--param {text!r}: a range is low:high or low:high:log")
        lo, hi = _literal(parts[0]), _literal(parts[1])
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (lo, hi)):
            raise ValueError(f"--param {text!r}: range bounds must be numbers")
        if isinstance(default, bool) or isinstance(default, str):
            raise ValueError(f"--param {text!r}: {name} is {type(default).__name__}; give a choice list a,b")
        as_int = isinstance(lo, int) and isinstance(hi, int) and not isinstance(default, float)
        if isinstance(default, int) and not as_int:
            raise ValueError(f"--param {text!r}: {name} is an integer (default {default}); use integer bounds")
        if lo >= hi:
            raise ValueError(f"--param {text!r}: low must be < high")
        if log and lo <= 0:
            raise ValueError(f"--param {text!r}: a log range needs low > 0")
        return ParamSpace(name, "int" if as_int else "float", lo, hi, log)
    choices = tuple(_literal(c) for c in spec.split(",") if c.strip())
    if len(choices) < 1:
        raise ValueError(f"--param {text!r}: empty choice list")
    if isinstance(default, float):
        choices = tuple(float(c) if isinstance(c, int) and not isinstance(c, bool) else c for c in choices)
    return ParamSpace(name, "choice", choices=choices)


def search_space(method: str, extra: Sequence[str] = (), use_defaults: bool = True,
                 recipe: Any = None) -> tuple[ParamSpace, ...]:
    """The method's default space (its spec's ``search_space``), then ``extra`` (same name replaces).
    Names are the method's hyper-parameters or the recipe's ``lr`` / ``weight_decay``."""
    from benchmarks import registry
    from benchmarks.recipes import TRAIN_PARAMS
    from momkd.recipe import Recipe

    spec = registry.get(method)
    recipe = recipe or Recipe()
    defaults = {**spec.defaults(), **{k: getattr(recipe, k) for k in TRAIN_PARAMS}}
    texts = list(spec.search_space) if use_defaults else []
    space: dict[str, ParamSpace] = {}
    for t in [*texts, *extra]:
        p = parse_param(t, defaults, method)
        space[p.name] = p
    if not space:
        raise ValueError(f"no default search space for {method!r}; add ranges with --param name=low:high "
                         f"(its hyper-parameters: {', '.join(sorted(defaults))})")
    return tuple(space.values())


# ------------------------------------------------------------------------------------------
# What a worker needs (picklable) and the objective
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TuneConfig:
    suite: str
    source: Any  # CohortSource
    method: str
    variant: str
    task: str
    folds: tuple[int, ...]
    seed: int  # split seed and training seed (as ``run --seeds``)
    protocol: dict[str, Any]
    space: tuple[ParamSpace, ...]
    study: str
    storage: str
    sampler_seed: int = 0
    startup_trials: int = 5  # TPE random start-up trials
    prune_startup: int = 3  # trials completed before the median pruner may prune
    prune: bool = True
    base_params: dict[str, Any] = dataclasses.field(default_factory=dict)  # the scale preset's widths
    recipe: str = "shared"  # "shared" | "official" (benchmarks/recipes.py)
    train: dict[str, Any] = dataclasses.field(default_factory=dict)  # the resolved recipe (empty: shared)

    def identity(self, data_fingerprint: str, protocol_hash: str) -> dict[str, str]:
        """Study attributes that must agree between workers joining one study."""
        return {"suite": self.suite, "method": self.method, "variant": self.variant, "task": self.task,
                "folds": json.dumps(list(self.folds)), "seed": str(self.seed), "data": data_fingerprint,
                "protocol": protocol_hash, "base": json.dumps(self.base_params, sort_keys=True),
                "recipe": json.dumps(self.train, sort_keys=True, default=str) if self.train else self.recipe,
                "space": json.dumps([dataclasses.asdict(p) for p in self.space], sort_keys=True)}


def trainval_split(split: Any) -> Any:
    """The split without its test part: the objective cannot reach a test slide."""
    split.check()
    table = split.table.loc[split.table["part"] != "test"].reset_index(drop=True)
    return dataclasses.replace(split, table=table)


def usable_folds(splits: Sequence[Any], folds: Sequence[int]) -> tuple[list[int], dict[int, str]]:
    """Folds whose validation part has both classes (the AUC is defined), and why others are not."""
    ok, why = [], {}
    for f in folds:
        y = splits[f].table.loc[splits[f].table["part"] == "val", "label"]
        if y.nunique() < 2:
            why[f] = f"fold {f}: the validation part has {len(y)} slides of one class; its AUC is undefined"
        else:
            ok.append(f)
    return ok, why


def fold_validation_auc(cohort: Any, split: Any, cfg: TuneConfig, hparams: dict[str, Any],
                        protocol: Any, recipe: Any = None) -> dict[str, Any]:
    """Train on the fold's training part, score on its validation part (engine ``fit`` + ``predict``)."""
    import numpy as np

    from benchmarks import registry
    from benchmarks.engine import fit, predict, seed_everything, select_device
    from benchmarks.metrics import binary_metrics
    from benchmarks.data.omics import omics_dim
    from benchmarks.runner import build_bags

    spec = registry.get(cfg.method)
    train, val, test, _ = build_bags(cohort, trainval_split(split), cfg.task, "omics_train" in spec.needs,
                                     protocol)
    assert not test, "the tuning split must not hold test slides"
    seed = cfg.seed * 1000 + split.fold  # as benchmarks.runner.execute_job
    seed_everything(seed, protocol.deterministic)
    model = spec.build_model(int(train[0].features.shape[1]), omics_dim(cohort.omics_dim, protocol.omics_genes),
                             2, hparams)
    device = select_device(protocol)
    model.to(device)
    if device.type != "cpu":
        train, val = [b.to(device) for b in train], [b.to(device) for b in val]
    fitted = fit(model, train, val, protocol, seed, device, recipe=recipe)
    p = predict(model, val, device, protocol)
    y = np.array([int(b.label) for b in val])
    if len(np.unique(y)) < 2:
        raise ValueError(f"task {cfg.task} fold {split.fold}: the validation part holds one class; its AUC is "
                         "undefined (drop the fold: tuning.drop_undefined_folds)")
    return {"auc": float(binary_metrics(y, p)["auc"]), "best_epoch": fitted["best_epoch"],
            "epochs": len(fitted["curve"])}


def make_objective(cfg: TuneConfig) -> Callable[[Any], float]:
    """Mean validation AUC over ``cfg.folds``; reports the running mean after every fold."""
    import optuna

    from benchmarks import registry
    from benchmarks.data.cohort import load_cohort
    from benchmarks.protocol import ProtocolConfig, make_splits

    protocol = ProtocolConfig.from_dict(cfg.protocol)
    cohort = load_cohort(cfg.source)
    splits = make_splits(cohort.manifest, cfg.task, protocol.n_folds, protocol.val_frac, seed=cfg.seed)
    spec = registry.get(cfg.method)
    worker = worker_id()

    from benchmarks.recipes import shared_recipe, split_train_params
    from momkd.recipe import Recipe

    base_recipe = Recipe.from_dict(cfg.train) if cfg.train else shared_recipe(protocol)

    def objective(trial: "optuna.Trial") -> float:
        trial.set_user_attr("worker", worker)  # first: a killed worker's trial is then recognisably dead
        suggested, train = split_train_params({p.name: p.suggest(trial) for p in cfg.space})
        hparams = spec.hparams(cfg.variant, {**cfg.base_params, **suggested}, base=base_recipe.hparams)
        recipe = base_recipe.replace(**train)
        aucs: list[float] = []
        for step, f in enumerate(cfg.folds):
            t0 = time.perf_counter()
            r = fold_validation_auc(cohort, splits[f], cfg, hparams, protocol, recipe)
            aucs.append(r["auc"])
            trial.set_user_attr(f"fold{f}", {"val_auc": r["auc"], "epochs": r["epochs"],
                                             "best_epoch": r["best_epoch"],
                                             "seconds": round(time.perf_counter() - t0, 3)})
            mean = sum(aucs) / len(aucs)
            trial.report(mean, step)
            if cfg.prune and step + 1 < len(cfg.folds) and trial.should_prune():
                raise optuna.TrialPruned(f"mean validation AUC {mean:.3f} after {step + 1} fold(s) "
                                         "is below the median of earlier trials")
        return sum(aucs) / len(aucs)

    return objective


# ------------------------------------------------------------------------------------------
# Sampler, storage, study
# ------------------------------------------------------------------------------------------
def _trial_seed(seed: int, number: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{number}".encode()).digest()[:4], "little")


def make_sampler(seed: int = 0, n_startup_trials: int = 5):
    """TPE whose randomness is seeded from (``seed``, trial number) only.

    Each trial gets its own ``TPESampler(seed=h(seed, number))`` (Bergstra et al. 2011; Optuna's
    multivariate TPE with the constant liar for parallel workers). TPE is otherwise stateless (it
    reads the history from the storage), so a single worker reproduces its study exactly and two
    workers of one study, having different trial numbers, never replay one random sequence.
    """
    import optuna

    class TrialSeededTPE(optuna.samplers.BaseSampler):
        def __init__(self) -> None:
            self._per_trial: dict[int, optuna.samplers.TPESampler] = {}

        def _for(self, trial) -> "optuna.samplers.TPESampler":
            s = self._per_trial.get(trial.number)
            if s is None:
                s = optuna.samplers.TPESampler(seed=_trial_seed(seed, trial.number),
                                               n_startup_trials=n_startup_trials, constant_liar=True)
                self._per_trial[trial.number] = s
            return s

        def infer_relative_search_space(self, study, trial):
            return self._for(trial).infer_relative_search_space(study, trial)

        def sample_relative(self, study, trial, search_space):
            return self._for(trial).sample_relative(study, trial, search_space)

        def sample_independent(self, study, trial, param_name, param_distribution):
            return self._for(trial).sample_independent(study, trial, param_name, param_distribution)

        def before_trial(self, study, trial) -> None:
            self._for(trial).before_trial(study, trial)

        def after_trial(self, study, trial, state, values) -> None:
            self._for(trial).after_trial(study, trial, state, values)
            self._per_trial.pop(trial.number, None)

    return TrialSeededTPE()


def open_storage(url: str):
    """An Optuna RDB storage; SQLite files get their folder and a long lock timeout, and a
    heartbeat marks the trials of a killed worker as failed."""
    import optuna

    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///"):]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs = {"connect_args": {"timeout": 120}}
    last: Exception | None = None
    for attempt in range(5):  # processes that create one new database at the same time may collide once
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeat
                return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=60,
                                                  grace_period=180)
        except Exception as e:  # sqlalchemy OperationalError / IntegrityError on a racing schema creation
            last = e
            time.sleep(0.5 + attempt)
    raise RuntimeError(f"cannot open the Optuna storage {url}: {last}") from last


def open_study(cfg: TuneConfig, data_fingerprint: str, protocol_hash: str):
    """Create or join ``cfg.study``; refuse to join a study of another method/task/data/space."""
    import optuna

    storage = open_storage(cfg.storage)
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=cfg.prune_startup, n_warmup_steps=0)
              if cfg.prune else optuna.pruners.NopPruner())
    study = None
    for attempt in range(5):
        try:
            study = optuna.create_study(study_name=cfg.study, storage=storage, direction="maximize",
                                        sampler=make_sampler(cfg.sampler_seed, cfg.startup_trials),
                                        pruner=pruner, load_if_exists=True)
            break
        except Exception:  # two workers creating the study at once: the loser loads it
            if attempt == 4:
                raise
            time.sleep(0.5 + attempt)
    want = cfg.identity(data_fingerprint, protocol_hash)
    have = study.user_attrs
    if have:
        diff = {k: (have.get(k), v) for k, v in want.items() if have.get(k) != v}
        if diff:
            lines = "; ".join(f"{k}: study has {a}, this command {b}" for k, (a, b) in diff.items())
            raise ValueError(f"study {cfg.study!r} in {cfg.storage} was created with other settings ({lines}). "
                             "Use another --study name or the study's settings.")
    else:
        for k, v in want.items():
            study.set_user_attr(k, v)
    return study


def fail_dead_trials(study: Any) -> list[int]:
    """Mark FAIL the RUNNING trials whose worker (user attribute ``worker``, ``host:pid``) ran on
    this host and is gone: a tune that was killed. Optuna's heartbeat does the same for other
    hosts, after its grace period."""
    import optuna

    dead = [t.number for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
            if holder_dead(str(t.user_attrs.get("worker", "")))]
    for n in dead:
        study.tell(n, state=optuna.trial.TrialState.FAIL)
    if dead:
        print(f"study {study.study_name}: trial(s) {dead} were left running by a killed tune; marked failed",
              file=sys.stderr)
    return dead


def _open(cfg: TuneConfig) -> Any:
    """Open (or create) the study with the identity of this cohort and protocol; trials of a killed
    earlier tune on this host are marked failed."""
    from benchmarks.data.cohort import load_cohort
    from benchmarks.protocol import ProtocolConfig

    cohort = load_cohort(cfg.source)
    study = open_study(cfg, cohort.fingerprint, ProtocolConfig.from_dict(cfg.protocol).hash())
    fail_dead_trials(study)
    return study


def optimize(cfg: TuneConfig, n_trials: int, timeout: float | None = None) -> Any:
    """One worker: add ``n_trials`` trials to the shared study (errors inside a trial such as a
    non-finite loss fail that trial only). Returns the study."""
    import torch

    study = _open(cfg)
    if n_trials > 0:
        study.optimize(make_objective(cfg), n_trials=n_trials, timeout=timeout,
                       catch=(FloatingPointError, torch.OutOfMemoryError), gc_after_trial=True)
    return study


def _worker(cfg: TuneConfig, n_trials: int, timeout: float | None) -> int:
    study = optimize(cfg, n_trials, timeout)
    return len(study.trials)


def run_workers(cfg: TuneConfig, n_trials: int, workers: int, timeout: float | None = None,
                start_method: str = "spawn") -> None:
    """``workers`` local processes on one study, splitting ``n_trials`` between them (each with
    cores // workers torch threads; Ctrl-C stops them, and they exit if this process dies)."""
    from benchmarks.executors import process_pool, stop_pool

    _open(cfg)  # create the storage and the study once, before the workers join it
    shares = [n_trials // workers + (1 if i < n_trials % workers else 0) for i in range(workers)]
    ex = process_pool(workers, start_method)
    try:
        futs = [ex.submit(_worker, cfg, s, timeout) for s in shares if s > 0]
        for f in futs:
            f.result()
    except BaseException:
        stop_pool(ex)
        fail_dead_trials(_open(cfg))  # the stopped workers' trials
        raise
    ex.shutdown(wait=True)


# ------------------------------------------------------------------------------------------
# Outputs
# ------------------------------------------------------------------------------------------
def best_params_record(study: Any, cfg: TuneConfig) -> dict[str, Any]:
    import optuna

    states = [t.state for t in study.trials]
    best = study.best_trial
    return {"params": {cfg.method: dict(best.params)},
            "best_value": best.value, "best_trial": best.number,
            "objective": f"mean validation AUC over folds {list(cfg.folds)} (test folds never used)",
            "study": cfg.study, "storage": cfg.storage, "suite": cfg.suite, "task": cfg.task,
            "variant": cfg.variant, "seed": cfg.seed, "data_fingerprint": study.user_attrs.get("data"),
            "protocol_hash": study.user_attrs.get("protocol"),
            "space": [p.describe() for p in cfg.space],
            "n_trials": {"complete": states.count(optuna.trial.TrialState.COMPLETE),
                         "pruned": states.count(optuna.trial.TrialState.PRUNED),
                         "failed": states.count(optuna.trial.TrialState.FAIL)}}


def write_outputs(study: Any, cfg: TuneConfig, out_dir: Path) -> dict[str, Path]:
    """best_params.json, trials.csv and the two matplotlib plots (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna

    from benchmarks.jobs import atomic_write_json

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    study.trials_dataframe().to_csv(out_dir / "trials.csv", index=False)
    written["trials"] = out_dir / "trials.csv"
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        print(f"study {cfg.study}: no completed trial yet; no best parameters", file=sys.stderr)
        return written
    atomic_write_json(out_dir / "best_params.json", best_params_record(study, cfg))
    written["best_params"] = out_dir / "best_params.json"
    plots = {"optimization_history": optuna.visualization.matplotlib.plot_optimization_history,
             "param_importances": optuna.visualization.matplotlib.plot_param_importances}
    for name, plot in plots.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # optuna's matplotlib plots are flagged experimental
            try:
                ax = plot(study)
            except (ValueError, RuntimeError) as e:  # e.g. importances need >= 2 completed trials
                print(f"{name}.png not drawn: {e}", file=sys.stderr)
                continue
        fig = ax.figure
        fig.tight_layout()
        fig.savefig(out_dir / f"{name}.png", dpi=120)
        plt.close(fig)
        written[name] = out_dir / f"{name}.png"
    return written


def read_params(path: str | Path) -> dict[str, dict[str, Any]]:
    """Per-method hyper-parameter overrides from a ``best_params.json`` (``{"params": {method:
    {...}}}``) or a plain ``{method: {...}}`` file; unknown methods or hyper-parameters raise.
    ``lr`` and ``weight_decay`` are recipe settings (``run`` applies them to the method's recipe)."""
    from benchmarks import registry

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"--params {p}: no such file (write one with `python -m benchmarks tune`)")
    try:
        data = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"--params {p}: not valid JSON ({e})") from None
    params = data.get("params", data) if isinstance(data, dict) else None
    if not isinstance(params, dict) or not all(isinstance(v, dict) for v in params.values()):
        raise ValueError(f"--params {p}: expected {{\"params\": {{method: {{name: value}}}}}}")
    from benchmarks.recipes import split_train_params

    for method, hp in params.items():
        model_hp, _ = split_train_params(hp)
        try:
            registry.get(method).hparams("default", model_hp)  # raises on unknown methods / hyper-parameters
        except KeyError as e:
            raise ValueError(f"--params {p}: {e.args[0] if e.args else e}") from None
        base = registry.get(method).hparams("default")
        for name, v in hp.items():
            problem = param_problem(name, v, base.get(name))
            if problem:
                raise ValueError(f"--params {p}: {method}.{name} = {v!r}: {problem}")
    return {m: dict(hp) for m, hp in params.items()}


def param_problem(name: str, value: Any, default: Any) -> str | None:
    """Why a hyper-parameter value cannot be used (type from the method's default, range from the
    name: rates and decays >= 0, learning rates > 0, dropouts in [0, 1), widths >= 1), else None."""
    num = (int, float)
    if isinstance(default, bool) or isinstance(value, bool):
        if not isinstance(value, bool) or (default is not None and not isinstance(default, bool)):
            return f"expected {type(default).__name__ if default is not None else 'a number'}"
        return None
    if name in ("lr", "weight_decay") or isinstance(default, num) or (default is None and isinstance(value, num)):
        if not isinstance(value, num):
            return "expected a number"
        if isinstance(default, int) and not isinstance(value, int):
            if float(value).is_integer():
                return None
            return "expected an integer"
        if not math.isfinite(value):
            return "expected a finite number"
        if name == "lr" and value <= 0:
            return "a learning rate must be > 0"
        if ("dropout" in name or name.endswith("_p")) and not 0 <= value < 1:
            return "a dropout rate must be in [0, 1)"
        if (name == "weight_decay" or "decay" in name) and value < 0:
            return "must be >= 0"
        if isinstance(default, int) and default >= 1 and value < 1:
            return "must be >= 1"
        return None
    if isinstance(default, str) and not isinstance(value, str):
        return "expected a string"
    return None


# ------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------
def add_arguments(p) -> None:
    p.add_argument("--suite", default="tcga_brca", help="suite name or .toml path")
    p.add_argument("--scale", choices=("tiny", "small", "paper"), default=None,
                   help="simulated cohort size (default: the suite's)")
    p.add_argument("--data", default=None, help="folder with real features, manifest and omics")
    p.add_argument("--method", default="momkd", help="registry name (default: momkd)")
    p.add_argument("--methods", default=None,
                   help="comma-separated registry names, or 'all': tune each in turn (one study each) and write "
                        "one best_params.json for all of them (overrides --method)")
    p.add_argument("--recipe", choices=("shared", "official"), default="shared",
                   help="the training recipe tuned around (run --recipe)")
    p.add_argument("--variant", default="default", help="registered variant of the method")
    p.add_argument("--task", default=None, help="task to tune on (default: the suite's first task)")
    p.add_argument("--param", action="append", default=[], metavar="NAME=LOW:HIGH[:log]|A,B,C",
                   help="add or replace a searched hyper-parameter (repeatable)")
    p.add_argument("--only-params", action="store_true", help="search only the --param entries")
    p.add_argument("--trials", type=int, default=20, help="trials this command adds to the study")
    p.add_argument("--timeout", type=float, default=None, help="stop starting trials after this many seconds")
    p.add_argument("--folds", default=None, help="comma-separated outer folds (default: all)")
    p.add_argument("--seed", type=int, default=0, help="split and training seed (as `run --seeds`)")
    p.add_argument("--sampler-seed", type=int, default=0, help="TPE seed")
    p.add_argument("--startup-trials", type=int, default=5, help="random trials before TPE")
    p.add_argument("--prune-startup", type=int, default=3, help="trials before the median pruner acts")
    p.add_argument("--no-prune", action="store_true", help="never prune")
    p.add_argument("--study", default=None, help="study name (default: <suite>-<method>-<variant>-<task>-<data>)")
    p.add_argument("--storage", default=None,
                   help=f"Optuna RDB URL (default: $OPTUNA_STORAGE or {DEFAULT_STORAGE})")
    p.add_argument("--workers", type=int, default=1, help="local worker processes on the study")
    p.add_argument("--max-epochs", type=int, default=None, help="override the protocol's max epochs")
    p.add_argument("--out", default=None, help="output folder (default: results/<suite>/tune/<study>)")
    p.add_argument("--skip-bad-slides", action="store_true")
    p.add_argument("--feature-dtype", choices=("float32", "float16"), default=None,
                   help="storage dtype of features (default: float32 in memory, float16 in the feature store)")
    p.add_argument("--memory-budget", default=None,
                   help="memory the features may take across processes, e.g. 12GB (default: half of the available)")


def config_from_args(args, method: str | None = None) -> tuple[TuneConfig, Path]:
    from benchmarks import registry
    from benchmarks.recipes import resolve as resolve_recipe
    from benchmarks.runner import _csv_list, _sources, plan_sources
    from benchmarks.suites import load_suite

    method = method or args.method
    suite = load_suite(args.suite)
    src, _, run_name = _sources(suite, args)
    src, _, _ = plan_sources(src, None, args)
    protocol = suite.protocol_for_scale(src.scale if src.kind == "simulated" else None,
                                        {"max_epochs": args.max_epochs})
    spec = registry.get(method)
    recipe_name = getattr(args, "recipe", "shared") or "shared"
    recipe = resolve_recipe(spec, recipe_name, protocol, suite.name, suite.recipe_family,
                            args.max_epochs if recipe_name != "shared" else None)
    if args.variant != "default" and args.variant not in spec.variants:
        raise ValueError(f"method {args.method} has no variant {args.variant!r}; "
                         f"known: {', '.join(spec.variant_names())}")
    task = args.task or next(iter(suite.tasks))
    if task not in suite.tasks:
        raise ValueError(f"unknown task {task!r}; suite {suite.name} has {list(suite.tasks)}")
    folds = _csv_list(args.folds, int) or list(range(protocol.n_folds))
    if any(f < 0 or f >= protocol.n_folds for f in folds):
        raise ValueError(f"--folds must be in 0..{protocol.n_folds - 1}")
    space = search_space(method, args.param, use_defaults=not args.only_params, recipe=recipe)
    suffix = "" if recipe_name == "shared" else f"-{recipe_name}"
    study = (args.study if args.study and not getattr(args, "methods", None)
             else f"{args.study or suite.name}-{method}-{args.variant}-{task}-{run_name}{suffix}")
    storage = args.storage or os.environ.get("OPTUNA_STORAGE") or DEFAULT_STORAGE
    cfg = TuneConfig(suite=suite.name, source=src, method=method, variant=args.variant, task=task,
                     folds=tuple(folds), seed=args.seed, protocol=protocol.to_dict(), space=space,
                     study=study, storage=storage, sampler_seed=args.sampler_seed,
                     base_params=suite.params_for_scale(src.scale if src.kind == "simulated" else None
                                                        ).get(method, {}),
                     startup_trials=args.startup_trials, prune_startup=args.prune_startup,
                     prune=not args.no_prune, recipe=recipe_name,
                     train=recipe.to_dict() if recipe_name != "shared" else {})
    root = Path(args.out) if args.out else Path("results") / suite.name / "tune"
    out = root / study if (getattr(args, "methods", None) or not args.out) else root
    return cfg, out


def drop_undefined_folds(cfg: TuneConfig) -> TuneConfig:
    """Leave out (with a note) folds whose validation part has one class."""
    from benchmarks.data.cohort import load_cohort
    from benchmarks.protocol import make_splits

    protocol = cfg.protocol
    cohort = load_cohort(cfg.source)
    splits = make_splits(cohort.manifest, cfg.task, protocol["n_folds"], protocol["val_frac"], seed=cfg.seed)
    ok, why = usable_folds(splits, cfg.folds)
    for msg in why.values():
        print(f"note: {msg}; left out of the tuning objective", file=sys.stderr)
    if not ok:
        raise ValueError(f"task {cfg.task}: no fold has both classes in its validation part; "
                         "tune on a larger cohort or another task")
    return dataclasses.replace(cfg, folds=tuple(ok))


def main(args) -> int:
    """Tune a method's hyper-parameters on validation parts (Optuna TPE + median pruning)."""
    methods = getattr(args, "methods", None)
    if not methods:
        return tune_one(args)[0]
    from benchmarks import registry
    from benchmarks.jobs import atomic_write_json
    from benchmarks.runner import _csv_list

    names = list(registry.METHODS) if methods.strip() == "all" else _csv_list(methods)
    for m in names:
        registry.get(m)
    merged: dict[str, Any] = {"params": {}, "studies": {}}
    out_all = None
    for m in names:
        rc, rec, out = tune_one(args, m)
        if rec is None:
            print(f"{m}: no completed trial; left out of the merged parameters", file=sys.stderr)
            continue
        merged["params"][m] = rec["params"][m]
        merged["studies"][m] = {k: rec[k] for k in ("study", "best_value", "best_trial", "n_trials", "space")}
        out_all = out_all or out.parent / f"all-{rec['task']}{'' if args.recipe == 'shared' else '-' + args.recipe}"
        print(f"{m}: outputs in {out}", file=sys.stderr)
    if out_all is not None:
        atomic_write_json(out_all / "best_params.json", merged)
        print(f"every method's best parameters: {out_all / 'best_params.json'}\n"
              f"use them: python -m benchmarks run --params {out_all / 'best_params.json'}"
              f"{'' if args.recipe == 'shared' else ' --recipe ' + args.recipe}")
    return 0


def tune_one(args, method: str | None = None) -> tuple[int, dict[str, Any] | None, Path]:
    """One method's study; returns (exit code, best-parameters record or None, output folder)."""
    cfg, out = config_from_args(args, method)
    cfg = drop_undefined_folds(cfg)
    print(f"study {cfg.study} ({cfg.storage}): {cfg.method}/{cfg.variant} on {cfg.task}, folds {list(cfg.folds)}, "
          f"space: {'; '.join(p.describe() for p in cfg.space)}", file=sys.stderr)
    t0 = time.perf_counter()
    if args.workers > 1 and args.trials > 0:
        run_workers(cfg, args.trials, args.workers, args.timeout)
        study = _open(cfg)
    else:
        study = optimize(cfg, args.trials, args.timeout)
    wall = time.perf_counter() - t0
    written = write_outputs(study, cfg, out)
    rec = None
    if "best_params" in written:
        rec = json.loads(written["best_params"].read_text())
        print(f"{cfg.method}: best mean validation AUC {rec['best_value']:.4f} (trial {rec['best_trial']}): "
              f"{json.dumps(rec['params'][cfg.method])}")
        print(f"trials {rec['n_trials']}; wall time {wall:.1f} s; outputs in {out}")
        print(f"use them: python -m benchmarks run --params {written['best_params']}"
              f"{'' if cfg.recipe == 'shared' else ' --recipe ' + cfg.recipe}")
    print(f"live view: optuna-dashboard {cfg.storage}", file=sys.stderr)
    return 0, rec, out
