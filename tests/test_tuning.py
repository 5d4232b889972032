"""Optuna tuning: search-space parsing, seeded sampler, leak-free objective, shared studies, outputs."""
import dataclasses
import json
import subprocess
import sys

import optuna
import pandas as pd
import pytest

from benchmarks import tuning
from benchmarks.__main__ import main
from benchmarks.data.cohort import Cohort, CohortSource, load_cohort
from benchmarks.protocol import ProtocolConfig, Split, make_splits
from tests.conftest import REPO

TINY = CohortSource(kind="simulated", scale="tiny")
PROTOCOL = ProtocolConfig(max_epochs=1, min_epochs=1)
optuna.logging.set_verbosity(optuna.logging.WARNING)


def _cfg(storage: str, study: str, folds=(0, 1), **kw) -> tuning.TuneConfig:
    return tuning.TuneConfig(suite="tcga_brca", source=TINY, method="abmil", variant="default", task="pr",
                             folds=tuple(folds), seed=0, protocol=PROTOCOL.to_dict(),
                             space=tuning.search_space("abmil"), study=study, storage=storage, **kw)


# -- search space ---------------------------------------------------------------------------
def test_parse_param_ranges_choices_and_errors():
    defaults = {"dropout": 0.25, "attn_dim": 256, "n_memory": None, "gate": True}
    p = tuning.parse_param("n_memory=4:64:log", defaults)
    assert (p.kind, p.low, p.high, p.log) == ("int", 4, 64, True)
    p = tuning.parse_param("dropout=0:0.5", defaults)  # a float default keeps integer bounds float
    assert (p.kind, p.low, p.high, p.log) == ("float", 0, 0.5, False)
    p = tuning.parse_param("attn_dim=128,256", defaults)
    assert p.kind == "choice" and p.choices == (128, 256)
    assert tuning.parse_param("gate=true,false", defaults).choices == (True, False)
    with pytest.raises(ValueError, match="valid: attn_dim, dropout, gate, n_memory"):
        tuning.parse_param("dropuot=0:1", defaults)
    with pytest.raises(ValueError, match="integer"):
        tuning.parse_param("attn_dim=64.5:300", defaults)
    with pytest.raises(ValueError, match="low must be < high"):
        tuning.parse_param("dropout=0.5:0.1", defaults)
    with pytest.raises(ValueError, match="log range needs low > 0"):
        tuning.parse_param("dropout=0:0.5:log", defaults)
    with pytest.raises(ValueError, match="expected name="):
        tuning.parse_param("dropout", defaults)


def test_default_space_depends_on_method_and_extra_params_replace_it():
    assert [p.name for p in tuning.search_space("abmil")] == ["lr", "weight_decay", "dropout", "attn_dim"]
    space = tuning.search_space("abmil", ["dropout=0.1:0.2", "embed_dim=256,512"])
    assert {p.name: (p.low, p.high) for p in space if p.kind == "float" and p.name == "dropout"} == {"dropout": (0.1, 0.2)}
    assert [p.name for p in tuning.search_space("abmil", ["embed_dim=256,512"], use_defaults=False)] == ["embed_dim"]
    with pytest.raises(ValueError, match="no default search space"):
        tuning.search_space("abmil", use_defaults=False)
    # MoMKD's own parameters are its memory size per class and its margin: real fields of its config
    momkd = {p.name: p.kind for p in tuning.search_space("momkd")}
    assert momkd["n_memory"] == "int" and momkd["margin"] == "float"


@pytest.mark.parametrize("method", list(__import__("benchmarks.registry", fromlist=["METHODS"]).METHODS))
def test_every_method_has_a_space_with_lr_weight_decay_dropout_and_its_own_parameter(method):
    from benchmarks import registry
    from benchmarks.recipes import resolve

    spec = registry.get(method)
    space = {p.name: p for p in tuning.search_space(method)}
    assert {"lr", "weight_decay"} <= set(space)
    assert any("drop" in n for n in space), f"{method}: no dropout in its space"
    assert len(space) >= 4, f"{method}: no parameter of its own"
    defaults = {**spec.hparams(), "lr": resolve(spec, "official", PROTOCOL).lr,
                "weight_decay": resolve(spec, "official", PROTOCOL).weight_decay}
    for p in space.values():  # the official value is inside the searched range (or among the choices)
        d = defaults[p.name]
        if d is None:
            continue
        assert (p.low <= d <= p.high) if p.kind != "choice" else d in p.choices, (method, p.name, d)


def test_folds_with_a_one_class_validation_part_are_left_out():
    def split(fold, val_labels):
        rows = [("t%d" % i, "c%d" % i, i % 2, "train") for i in range(6)]
        rows += [("v%d" % i, "cv%d" % i, y, "val") for i, y in enumerate(val_labels)]
        rows += [("x0", "cx0", 1, "test"), ("x1", "cx1", 0, "test")]
        return Split("pr", fold, 0, pd.DataFrame(rows, columns=["slide_id", "case_id", "label", "part"]))

    ok, why = tuning.usable_folds([split(0, [0, 1]), split(1, [0, 0, 0]), split(2, [1, 0])], [0, 1, 2])
    assert ok == [0, 2] and list(why) == [1] and "one class" in why[1]


def test_trainval_split_has_no_test_part():
    s = make_splits(load_cohort(TINY).manifest, "pr", 5, 0.15, seed=0)[0]
    tv = tuning.trainval_split(s)
    assert set(tv.table["part"]) == {"train", "val"}
    assert set(tv.train) == set(s.train) and set(tv.val) == set(s.val)


# -- sampler --------------------------------------------------------------------------------
def _toy(trial):
    return -(trial.suggest_float("x", -3, 3) - 1) ** 2 - (trial.suggest_int("k", 1, 20) - 7) ** 2 / 50


def _params(study):
    return [tuple(sorted(t.params.items())) for t in study.trials]


def test_sampler_is_seeded_per_trial_and_workers_do_not_replay_each_other():
    runs = []
    for seed in (3, 3, 4):
        st = optuna.create_study(direction="maximize", sampler=tuning.make_sampler(seed, n_startup_trials=3))
        st.optimize(_toy, n_trials=8)
        runs.append(_params(st))
    assert runs[0] == runs[1]  # same seed, same study
    assert runs[0] != runs[2]
    # two "workers" with the same seed on one storage, interleaved: every trial draws new values
    storage = optuna.storages.InMemoryStorage()
    a, b = (optuna.create_study(study_name="shared", storage=storage, direction="maximize", load_if_exists=True,
                                sampler=tuning.make_sampler(3, n_startup_trials=3)) for _ in range(2))
    for _ in range(4):
        a.optimize(_toy, n_trials=1)
        b.optimize(_toy, n_trials=1)
    ps = _params(a)
    assert len(ps) == 8 and len(set(ps)) == 8


# -- the objective and the outputs -----------------------------------------------------------
@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """Three trials on folds 0 and 1 of the tiny cohort, recording every slide a fold touches."""
    tmp = tmp_path_factory.mktemp("tune")
    cfg = _cfg(f"sqlite:///{tmp}/optuna.db", "leakcheck", prune=False)
    touched: list[tuple[int, str]] = []
    current = {"fold": None}
    import benchmarks.runner as runner

    real_build, real_bag = runner.build_bags, Cohort.bag

    def build(cohort, split, task, needs_omics, protocol, external=None):
        current["fold"] = split.fold
        return real_build(cohort, split, task, needs_omics, protocol, external)

    def bag(self, slide_id):
        touched.append((current["fold"], slide_id))
        return real_bag(self, slide_id)

    load_cohort(TINY)  # loading the cohort is not part of a fold
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runner, "build_bags", build)
        mp.setattr(Cohort, "bag", bag)
        study = tuning.optimize(cfg, n_trials=3)
    written = tuning.write_outputs(study, cfg, tmp / "out")
    return cfg, study, touched, written, tmp


def test_objective_never_touches_a_test_slide(tuned):
    cfg, study, touched, _, _ = tuned
    splits = make_splits(load_cohort(TINY).manifest, "pr", 5, 0.15, seed=0)
    for f in cfg.folds:
        seen = {s for fold, s in touched if fold == f}
        assert seen, f"fold {f} built no bag"
        assert not seen & set(splits[f].test), f"fold {f} read test slides"
        assert seen == set(splits[f].train) | set(splits[f].val)
    assert {fold for fold, _ in touched} == set(cfg.folds)


def test_objective_is_the_mean_validation_auc_reported_per_fold(tuned):
    cfg, study, *_ = tuned
    assert len(study.trials) == 3
    for t in study.trials:
        assert t.state == optuna.trial.TrialState.COMPLETE
        aucs = [t.user_attrs[f"fold{f}"]["val_auc"] for f in cfg.folds]
        assert t.value == pytest.approx(sum(aucs) / len(aucs))
        assert t.intermediate_values == pytest.approx({0: aucs[0], 1: sum(aucs) / 2})
        assert set(t.params) == {"lr", "weight_decay", "dropout", "attn_dim"}


def test_best_params_file_feeds_run_params(tuned, tmp_path, capsys):
    cfg, study, _, written, _ = tuned
    for name in ("optimization_history", "param_importances"):
        assert written[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(pd.read_csv(written["trials"])) == 3
    rec = json.loads(written["best_params"].read_text())
    assert rec["best_value"] == pytest.approx(study.best_value)
    best = tuning.read_params(written["best_params"])
    assert best == {"abmil": study.best_params}
    out = tmp_path / "run"
    assert main(["run", "--scale", "tiny", "--methods", "abmil", "--tasks", "pr", "--folds", "0", "--max-epochs", "1",
                 "--workers", "1", "--no-progress", "--no-tracking", "--out", str(out),
                 "--params", str(written["best_params"])]) == 0
    (job,) = [json.loads(p.read_text()) for p in (out / "jobs").glob("*.json")]
    for k, v in study.best_params.items():  # lr / weight decay go to the recipe, the rest to the model
        assert (job["job"]["train"] if k in ("lr", "weight_decay") else job["job"]["hparams"])[k] == v
    assert job["job"]["params_source"] == str(written["best_params"])
    assert "ABMIL (tuned)" in (out / "tables" / "table1.md").read_text()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"params": {"abmil": {"dropuot": 0.1}}}))
    assert main(["run", "--scale", "tiny", "--methods", "abmil", "--no-tracking", "--params", str(bad)]) == 2
    assert "unknown hyper-parameter 'dropuot'" in capsys.readouterr().err


def test_joining_a_study_with_other_settings_is_an_error(tuned):
    cfg, *_ = tuned
    other = dataclasses.replace(cfg, space=tuning.search_space("abmil", ["dropout=0.1:0.2"]))
    with pytest.raises(ValueError, match="created with other settings .*space"):
        tuning.open_study(other, load_cohort(TINY).fingerprint, PROTOCOL.hash())


def test_two_worker_processes_complete_one_study_without_duplicates(tmp_path):
    cfg = _cfg(f"sqlite:///{tmp_path}/shared.db", "shared", folds=(0,), startup_trials=2)
    load_cohort(TINY)  # forked workers inherit the loaded cohort
    tuning.run_workers(cfg, n_trials=4, workers=2, start_method="fork")
    study = optuna.load_study(study_name="shared", storage=cfg.storage)
    trials = study.trials
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert all(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for t in trials)
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 4
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # both processes ran trials


@pytest.mark.slow
def test_two_tune_commands_join_one_study(tmp_path):
    """Two independent `tune` processes (as on two machines) on one storage."""
    storage = f"sqlite:///{tmp_path}/optuna.db"
    cmd = [sys.executable, "-m", "benchmarks", "tune", "--scale", "tiny", "--method", "abmil", "--task", "pr",
           "--folds", "0", "--max-epochs", "1", "--trials", "2", "--study", "cli", "--storage", storage,
           "--out", str(tmp_path / "out")]
    procs = [subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), logs
    trials = optuna.load_study(study_name="cli", storage=storage).trials
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 4
    assert len({t.user_attrs["worker"] for t in trials}) == 2
    assert (tmp_path / "out" / "best_params.json").exists()


def test_cli_rejects_an_unknown_hyper_parameter(capsys):
    assert main(["tune", "--method", "abmil", "--param", "nope=0:1", "--scale", "tiny"]) == 2
    assert "no hyper-parameter 'nope'" in capsys.readouterr().err


def test_tune_methods_all_tunes_each_method_and_writes_one_params_file(tmp_path, capsys):
    """`tune --methods all`: one study per method, and one best_params.json that `run --params` reads."""
    storage = f"sqlite:///{tmp_path}/optuna.db"
    rc = main(["tune", "--scale", "tiny", "--methods", "abmil,dsmil,wikg", "--task", "pr", "--folds", "0",
               "--max-epochs", "1", "--trials", "1", "--storage", storage, "--study", "t",
               "--out", str(tmp_path / "out")])
    assert rc == 0
    merged = tmp_path / "out" / "all-pr" / "best_params.json"
    rec = json.loads(merged.read_text())
    assert set(rec["params"]) == {"abmil", "dsmil", "wikg"}
    assert {"lr", "weight_decay"} <= set(rec["params"]["dsmil"])
    assert set(tuning.read_params(merged)) == {"abmil", "dsmil", "wikg"}
    names = {s.study_name for s in optuna.get_all_study_summaries(storage)}
    assert len(names) == 3 and all(n.startswith("t-") for n in names)
    assert all((tmp_path / "out" / n / "trials.csv").exists() for n in names)  # each method its own folder
