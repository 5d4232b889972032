"""Saved fold models (benchmarks/models.py) and ``predict`` (benchmarks/predict.py)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import pandas as pd
import pytest
import torch

from benchmarks import registry
from benchmarks.__main__ import main
from benchmarks.data.simulated import simulate, write_h5

RUN = ["run", "--scale", "tiny", "--tasks", "her2", "--folds", "0", "--grids", "cv", "--workers", "1",
       "--no-tracking", "--no-progress"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """Every method trained on fold 0 of the tiny cohort with standardised features (the scaler
    must travel with the model), and the same cohort written as h5 files."""
    root = tmp_path_factory.mktemp("pred")
    assert main(RUN + ["--feature-norm", "train_zscore", "--out", str(root / "run")]) == 0
    return root / "run", write_h5(simulate("tiny", seed=0), root / "data")


def test_every_method_predicts_new_slides_exactly_as_its_run_scored_them(trained, tmp_path):
    run, data = trained
    summary = json.loads((run / "summary.json").read_text())
    assert summary["models"]["saved"] == len(registry.METHODS) and summary["models"]["bytes"] > 0
    assert main(["predict", "--run", str(run), "--data", str(data), "--out", str(tmp_path), "--no-progress"]) == 0
    pred = pd.read_csv(tmp_path / "predictions.csv", dtype={"slide_id": str})
    assert set(pred["method"]) == set(registry.METHODS)
    for f in (run / "jobs").glob("*.json"):
        d = json.loads(f.read_text())
        got = pred[pred["method"] == d["job"]["method"]].set_index("slide_id")["p"]
        for row in d["predictions"]["test"]:
            assert got[row["slide_id"]] == pytest.approx(row["p"], abs=1e-6), d["job"]["method"]
    ens = pd.read_csv(tmp_path / "ensemble.csv")
    assert (ens["n_models"] == 1).all() and len(ens) == len(pred)


def test_attention_maps_are_written_with_patch_coordinates(trained, tmp_path):
    run, data = trained
    assert main(["predict", "--run", str(run), "--data", str(data), "--out", str(tmp_path), "--methods", "abmil",
                 "--attention", "--no-progress"]) == 0
    maps = sorted((tmp_path / "attention" / "abmil_default").glob("*.csv"))
    assert maps
    a = pd.read_csv(maps[0])
    assert list(a.columns) == ["patch", "attention", "x", "y"] and a["attention"].sum() == pytest.approx(1, abs=1e-5)


def test_unlabelled_new_slides_are_predicted_and_mismatches_refused(trained, tmp_path, capsys):
    run, data = trained
    new = tmp_path / "new"
    shutil.copytree(data, new)
    man = pd.read_csv(new / "manifest.csv")
    man[["slide_id", "case_id"]].to_csv(new / "manifest.csv", index=False)  # no labels at all
    assert main(["predict", "--run", str(run), "--data", str(new), "--out", str(tmp_path / "o"),
                 "--methods", "abmil", "--no-progress"]) == 0
    pred = pd.read_csv(tmp_path / "o" / "predictions.csv")
    assert pred["label"].isna().all() and pred["p"].between(0, 1).all()
    assert main(["predict", "--run", str(run), "--data", str(new), "--task", "pr", "--no-progress"]) == 2
    assert "has no model for task 'pr'; it trained ['her2']" in capsys.readouterr().err
    other = tmp_path / "other"  # another folder: cohorts are cached per process by their paths
    shutil.copytree(new, other)
    for f in (other / "features").glob("*.h5"):  # another encoder: other feature width
        with h5py.File(f, "r+") as h:
            x = h["features"][:, :8]
            del h["features"]
            h["features"] = x
    assert main(["predict", "--run", str(run), "--data", str(other), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "features are 8-d" in err and "trained on 16-d" in err


def test_saved_models_load_weights_only_and_runs_can_opt_out(trained, tmp_path, capsys):
    from benchmarks.models import load_model

    run, _ = trained
    path = next((run / "models").glob("*.pt"))
    payload = torch.load(path, weights_only=True)
    payload["extra"] = Path("/not/a/tensor")  # an arbitrary object: unpickling it would run code
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="not a readable saved model"):
        load_model(tmp_path / "bad.pt")
    out = tmp_path / "none"
    assert main(RUN + ["--methods", "abmil", "--no-save-models", "--out", str(out)]) == 0
    assert not (out / "models").exists()
    assert main(["predict", "--run", str(out), "--data", str(tmp_path), "--no-progress"]) == 2
    assert "kept no model" in capsys.readouterr().err
