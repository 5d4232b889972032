"""Attention heatmaps and the localisation table (benchmarks/heatmaps.py)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmarks import heatmaps
from benchmarks.__main__ import main


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hm") / "run"
    assert main(["run", "--scale", "tiny", "--methods", "meanpool,abmil,transmil", "--tasks", "her2", "--folds", "0",
                 "--grids", "cv", "--workers", "1", "--no-tracking", "--no-progress", "--out", str(out)]) == 0
    return out


def test_localisation_scores_attention_against_the_generators_informative_patches(run, capsys):
    from sklearn.metrics import roc_auc_score

    from benchmarks.data.simulated import simulate

    assert main(["localise", "--run", str(run)]) == 0
    df = pd.read_csv(run / "localisation.csv", dtype={"slide_id": str})
    assert set(df["method"]) == {"meanpool", "abmil", "transmil"}  # TransMIL: its cls token's attention
    assert (df.loc[df.method == "meanpool", "attention_auc"] == 0.5).all()  # uniform weights, by construction
    md = (run / "localisation.md").read_text()
    assert "No per-patch weights" not in md and "| Mean pooling | 50.0 ± 0.0" in md
    # one row recomputed by hand from the saved model and the ground truth
    row = df[df.method == "abmil"].iloc[0]
    (e, model, scaler), = [x for x in heatmaps.fold_models(run, ["abmil"])]
    cohort = heatmaps._cohort(json.loads((run / "summary.json").read_text()))
    a = heatmaps.attention_of(model, cohort.bag(row.slide_id).for_task("her2", with_omics=False), scaler)
    mask = simulate("tiny", seed=0).annotations(row.slide_id)["informative"][:, 0]
    assert row.attention_auc == pytest.approx(roc_auc_score(mask, a))


def test_an_attention_that_finds_the_signal_scores_100(run, monkeypatch):
    from benchmarks.data.simulated import simulate

    truth = simulate("tiny", seed=0)
    monkeypatch.setattr(heatmaps, "attention_of",
                        lambda model, bag, scaler: truth.annotations(bag.slide_id)["informative"][:, 0].astype(float))
    df, _ = heatmaps.localise(run, ["abmil"])
    assert len(df) and np.allclose(df["attention_auc"], 1.0)


def test_heatmap_draws_the_truth_and_each_method(run, tmp_path):
    slide = pd.read_csv(run / "splits" / "her2_seed0.csv").query("part == 'test'")["slide_id"].iloc[0]
    assert main(["heatmap", "--run", str(run), "--slide", slide, "--out", str(tmp_path)]) == 0
    png = tmp_path / f"{slide}_her2.png"
    assert png.stat().st_size > 5000 and (tmp_path / f"{slide}_her2.pdf").is_file()
    assert main(["heatmap", "--run", str(run), "--slide", "no-such-slide", "--out", str(tmp_path)]) == 2


def test_localisation_needs_the_simulated_ground_truth(run, tmp_path, capsys):
    other = tmp_path / "real"
    other.mkdir()
    summary = json.loads((run / "summary.json").read_text())
    summary["cohort"] = {**summary["cohort"], "kind": "files"}
    (other / "summary.json").write_text(json.dumps(summary))
    assert main(["localise", "--run", str(other)]) == 2
    assert "needs the simulated cohort's ground truth" in capsys.readouterr().err


def test_transmil_weights_are_the_cls_rows_of_its_last_layer_with_padding_copies_folded_back():
    import torch

    from baselines.transmil import TransMIL, square_pad
    from tests.conftest import make_bag

    torch.manual_seed(0)
    model = TransMIL(12, 2, embed_dim=32, heads=4, num_landmarks=8).eval()
    bag = make_bag(n=23, d=12)  # 23 patches: a 5 x 5 grid, the first 2 patches copied once more
    a = model.attention_weights(bag)
    assert a.shape == (23,) and torch.isfinite(a).all() and 0 < float(a.sum()) <= 1.05
    with torch.no_grad():
        h, side = square_pad(model._fc1(bag.features[None]))
        h = model.pos_layer(model.layer1(torch.cat((model.cls_token, h), dim=1)), side)
        row = model.layer2.attn.row_attention(model.layer2.norm(h)).mean(1)[0, 1:]
    torch.testing.assert_close(a[2:], row[2:23])
    torch.testing.assert_close(a[:2], row[:2] + row[23:])
