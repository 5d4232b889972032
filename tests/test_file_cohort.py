"""The same protocol on real-format feature files (TRIDENT h5, CLAM pt) and a raw-label manifest."""
import json

import h5py
import numpy as np
import pandas as pd
import torch

from benchmarks.__main__ import main


def _write_dataset(root, n_cases=30, bad_slide=None, pt=False):
    rng = np.random.default_rng(0)
    (root / "features").mkdir(parents=True)
    rows = []
    for i in range(n_cases):
        sid, cid = f"TCGA-AA-{i:04d}-01Z-00-DX1", f"TCGA-AA-{i:04d}"
        y = i % 3 == 0
        f = rng.normal(size=(int(rng.integers(8, 20)), 6)).astype(np.float32)
        f[:2, 0] += 2.0 * y
        if sid == bad_slide:
            f[1, 2] = np.nan
        xy = np.stack(np.meshgrid(np.arange(5), np.arange(4)), -1).reshape(-1, 2)[: len(f)] * 256
        if pt and i % 2:
            torch.save(torch.from_numpy(f), root / "features" / f"{sid}.pt")
        else:
            with h5py.File(root / "features" / f"{sid}.h5", "w") as h:
                h["features"] = f
                h["coords"] = xy.astype(np.int64)
        rows.append({"slide_id": sid, "case_id": cid, "her2": "Positive" if y else ("Negative" if i % 7 else ""),
                     "pr": "", "odx": ""})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)


def test_run_on_h5_features_with_raw_labels(tmp_path):
    _write_dataset(tmp_path / "d")
    out = tmp_path / "run"
    rc = main(["run", "--data", str(tmp_path / "d"), "--methods", "abmil", "--tasks", "her2", "--folds", "0",
               "--max-epochs", "2", "--out", str(out), "--no-progress", "--workers", "1", "--no-tracking"])
    assert rc == 0
    s = json.loads((out / "summary.json").read_text())
    # "" is unlabelled, never negative: 30 cases, every 7th without label unless positive
    assert s["class_counts"]["her2"]["positive"] == 10
    assert s["class_counts"]["her2"]["negative"] == 20 - len([i for i in range(30) if i % 3 and i % 7 == 0])


def test_bad_slide_stops_the_run_or_is_skipped_and_recorded(tmp_path, capsys):
    bad = "TCGA-AA-0004-01Z-00-DX1"
    _write_dataset(tmp_path / "d", bad_slide=bad)
    args = ["run", "--data", str(tmp_path / "d"), "--methods", "abmil", "--tasks", "her2", "--folds", "0",
            "--max-epochs", "1", "--no-progress", "--workers", "1", "--no-tracking"]
    assert main(args + ["--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert bad in err and "NaN" in err and f"{bad}.h5" in err
    assert main(args + ["--out", str(tmp_path / "b"), "--skip-bad-slides"]) == 0
    s = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert [p["slide_id"] for p in s["skipped_slides"]] == [bad]


def test_pt_features_without_coords_skip_graph_methods(tmp_path, capsys):
    _write_dataset(tmp_path / "d", pt=True)
    rc = main(["run", "--data", str(tmp_path / "d"), "--methods", "abmil,momkd", "--tasks", "her2", "--folds", "0",
               "--max-epochs", "1", "--out", str(tmp_path / "r"), "--no-progress", "--workers", "1", "--no-tracking"])
    assert rc == 0
    s = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert s["n_jobs"] == 1  # abmil only: MoMKD needs coordinates (and omics) the .pt files lack
    assert "coordinates" in s["skipped_methods"]["momkd"]
    assert "skipping momkd" in capsys.readouterr().err


def test_a_disjoint_external_cohort_runs(tmp_path):
    """The overlap check (#18 item 6; the refused copy is in tests/test_bad_inputs.py) lets an
    external cohort of other patients through."""
    import shutil

    args = ["run", "--data", "", "--methods", "abmil", "--tasks", "her2", "--folds", "0", "--max-epochs", "1",
            "--out", str(tmp_path / "run"), "--no-progress", "--workers", "1", "--no-tracking"]
    d2 = tmp_path / "d2"
    _write_dataset(d2)
    _write_dataset(tmp_path / "e", n_cases=12)
    (d2 / "external").mkdir()
    shutil.copytree(tmp_path / "e" / "features", d2 / "external" / "features")
    ext = pd.read_csv(tmp_path / "e" / "manifest.csv")
    for col in ("slide_id", "case_id"):
        ext[col] = ext[col].str.replace("TCGA-AA", "EXT-BB")
    for f in (d2 / "external" / "features").iterdir():
        f.rename(f.with_name(f.name.replace("TCGA-AA", "EXT-BB")))
    ext["odx"] = [i % 2 for i in range(len(ext))]
    ext.to_csv(d2 / "external" / "manifest.csv", index=False)
    args[2] = str(d2)
    assert main(args) == 0
