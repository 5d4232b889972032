"""Every bad input is one clear line (exit code 2) that names the culprit (issue #18 item 7).

One parametrised case per situation a new user runs into. Each case builds its input, runs the real
command line in-process and checks the exit code, that no traceback is printed, and that the
message names the flag, file, slide or case at fault. Inputs are rejected before any training.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

import h5py
import numpy as np
import pandas as pd
import pytest

from benchmarks.__main__ import main
from tests.test_file_cohort import _write_dataset

RUN = ["run", "--scale", "tiny", "--methods", "abmil", "--tasks", "her2", "--no-progress", "--no-tracking",
       "--workers", "1", "--max-epochs", "1"]


def _data_run(d: Path, out: Path, methods: str = "abmil") -> list[str]:
    return ["run", "--data", str(d), "--methods", methods, "--tasks", "her2", "--folds", "0", "--max-epochs", "1",
            "--out", str(out), "--no-progress", "--workers", "1", "--no-tracking"]


def _params(tmp: Path, doc) -> str:
    p = tmp / "params.json"
    p.write_text(doc if isinstance(doc, str) else json.dumps({"params": doc}))
    return str(p)


def _manifest_edit(edit: Callable[[pd.DataFrame, Path], pd.DataFrame]):
    def build(tmp: Path) -> list[str]:
        d = tmp / "d"
        _write_dataset(d)
        m = edit(pd.read_csv(d / "manifest.csv", dtype=str, keep_default_na=False), d)
        m.to_csv(d / "manifest.csv", index=False)
        return _data_run(d, tmp / "run")
    return build


def _conflict(m: pd.DataFrame, d: Path) -> pd.DataFrame:
    r = m.iloc[[0]].copy()
    r["slide_id"] = "TCGA-AA-0000-01Z-00-DX2"
    r["her2"] = "Negative"                                  # slide DX1 of this case is Positive
    shutil.copy(d / "features" / "TCGA-AA-0000-01Z-00-DX1.h5", d / "features" / "TCGA-AA-0000-01Z-00-DX2.h5")
    return pd.concat([m, r])


def _set(col: str, value: str, row: int = 0):
    def edit(m: pd.DataFrame, d: Path) -> pd.DataFrame:
        m.loc[row, col] = value
        return m
    return edit


def _feature_file(write: Callable[[Path], None], methods: str = "abmil"):
    def build(tmp: Path) -> list[str]:
        d = tmp / "d"
        _write_dataset(d)
        write(d / "features" / "TCGA-AA-0003-01Z-00-DX1.h5")
        return _data_run(d, tmp / "run", methods)
    return build


def _corrupt_chunk(f: Path) -> None:
    with h5py.File(f, "w") as h:
        h.create_dataset("features", data=np.random.default_rng(0).random((400, 6), dtype=np.float32),
                         chunks=(50, 6), compression="gzip")
        h["coords"] = np.zeros((400, 2), np.int64)
    b = bytearray(f.read_bytes())
    mid = len(b) // 2
    b[mid:mid + 200] = bytes(x ^ 0xFF for x in b[mid:mid + 200])
    f.write_bytes(bytes(b))


def _h5(feats: np.ndarray, coords: bool = True):
    def write(f: Path) -> None:
        with h5py.File(f, "w") as h:
            h["features"] = feats
            if coords:
                h["coords"] = np.zeros((len(feats), 2), np.int64)
    return write


def _omics(edit: Callable[[pd.DataFrame], pd.DataFrame]):
    def build(tmp: Path) -> list[str]:
        d = tmp / "d"
        _write_dataset(d)
        m = pd.read_csv(d / "manifest.csv")
        om = pd.DataFrame(np.random.default_rng(0).random((len(m), 5)), index=m["case_id"],
                          columns=[f"g{i}" for i in range(5)])
        om.index.name = "case_id"
        edit(om).to_csv(d / "omics.csv")
        return _data_run(d, tmp / "run", "mkd")
    return build


def _huge(om: pd.DataFrame) -> pd.DataFrame:
    om.iloc[2, 1] = 1e300
    return om


def _external_copy(tmp: Path) -> list[str]:
    d = tmp / "d"
    _write_dataset(d)
    (d / "external").mkdir()
    shutil.copytree(d / "features", d / "external" / "features")
    ext = pd.read_csv(d / "manifest.csv")
    ext["odx"] = [i % 2 for i in range(len(ext))]
    ext.to_csv(d / "external" / "manifest.csv", index=False)
    return _data_run(d, tmp / "run")


def _run_folder(with_plan: bool, plan_text: str | None = None):
    def build(tmp: Path) -> list[str]:
        run = tmp / "run"
        (run / "jobs").mkdir(parents=True)
        if plan_text is not None:
            (run / "plan.json").write_text(plan_text)
        return ["tables", "--run", str(run), "--figures", "none"]
    return build


# id -> (build(tmp) -> argv, substrings the error line must contain)
CASES: dict[str, tuple[Callable[[Path], list[str]], list[str]]] = {
    "seeds_negative": (lambda t: RUN + ["--seeds", "-1", "--out", str(t / "o")], ["--seeds", "-1"]),
    "seeds_not_int": (lambda t: RUN + ["--seeds", "a", "--out", str(t / "o")], ["--seeds", "'a'"]),
    "folds_not_int": (lambda t: RUN + ["--folds", "0,x", "--out", str(t / "o")], ["--folds", "'x'"]),
    "folds_out_of_range": (lambda t: RUN + ["--folds", "7", "--out", str(t / "o")], ["--folds", "7", "0..4"]),
    "max_epochs_zero": (lambda t: RUN + ["--max-epochs", "0", "--out", str(t / "o")], ["--max-epochs", "0"]),
    "max_epochs_negative": (lambda t: RUN + ["--max-epochs", "-3", "--out", str(t / "o")], ["--max-epochs", "-3"]),
    "workers_zero": (lambda t: RUN + ["--workers", "0", "--out", str(t / "o")], ["--workers", "0"]),
    "batch_size_zero": (lambda t: RUN + ["--batch-size", "0", "--out", str(t / "o")], ["--batch-size", "0"]),
    "unknown_method": (lambda t: RUN + ["--methods", "abmill", "--out", str(t / "o")], ["abmill", "Did you mean 'abmil'"]),
    "unknown_task": (lambda t: RUN + ["--tasks", "her3", "--out", str(t / "o")], ["her3"]),
    "unknown_grid": (lambda t: RUN + ["--grids", "cvx", "--out", str(t / "o")], ["cvx"]),
    "unknown_suite": (lambda t: RUN + ["--suite", "nope", "--out", str(t / "o")], ["'nope'", "tcga_brca"]),
    "params_missing_file": (lambda t: RUN + ["--params", str(t / "none.json"), "--out", str(t / "o")],
                            ["--params", "none.json", "no such file"]),
    "params_bad_json": (lambda t: RUN + ["--params", _params(t, "{bad"), "--out", str(t / "o")],
                        ["--params", "params.json", "not valid JSON"]),
    "params_unknown_method": (lambda t: RUN + ["--params", _params(t, {"abmill": {"dropout": 0.1}}), "--out", str(t / "o")],
                              ["--params", "params.json", "abmill"]),
    "params_unknown_hparam": (lambda t: RUN + ["--params", _params(t, {"abmil": {"dropoutt": 0.1}}), "--out", str(t / "o")],
                              ["--params", "dropoutt"]),
    "params_string_value": (lambda t: RUN + ["--params", _params(t, {"abmil": {"dropout": "high"}}), "--out", str(t / "o")],
                            ["abmil.dropout", "'high'", "expected a number"]),
    "params_dropout_range": (lambda t: RUN + ["--params", _params(t, {"abmil": {"dropout": 1.7}}), "--out", str(t / "o")],
                             ["abmil.dropout", "1.7", "[0, 1)"]),
    "params_fractional_width": (lambda t: RUN + ["--params", _params(t, {"abmil": {"embed_dim": 12.5}}), "--out", str(t / "o")],
                                ["abmil.embed_dim", "12.5", "integer"]),
    "params_negative_lr": (lambda t: RUN + ["--params", _params(t, {"abmil": {"lr": -1e-4}}), "--out", str(t / "o")],
                           ["abmil.lr", "> 0"]),
    "data_without_manifest": (lambda t: ["run", "--data", str(t), "--out", str(t / "o")], ["manifest.csv", "not found"]),
    "manifest_header_only": (_manifest_edit(lambda m, d: m.iloc[:0]), ["manifest.csv", "no rows"]),
    "manifest_without_slide_id": (_manifest_edit(lambda m, d: m.rename(columns={"slide_id": "image"})),
                                  ["manifest.csv", "no 'slide_id' column"]),
    "manifest_without_case_id_not_tcga": (
        _manifest_edit(lambda m, d: m.drop(columns=["case_id"]).assign(slide_id=lambda x: "S" + x["slide_id"])),
        ["no 'case_id' column", "STCGA-AA-0000"]),
    "conflicting_labels": (_manifest_edit(_conflict), ["TCGA-AA-0000", "different 'her2' labels", "DX2=0"]),
    "slide_id_escapes_folder": (_manifest_edit(_set("slide_id", "../outside")), ["'../outside'", "not a file name"]),
    "slide_id_absolute": (_manifest_edit(_set("slide_id", "/etc/passwd")), ["'/etc/passwd'", "not a file name"]),
    "slide_id_too_long": (_manifest_edit(_set("slide_id", "X" * 300)), ["300 bytes", "line 2"]),
    "duplicate_slide": (_manifest_edit(lambda m, d: pd.concat([m, m.iloc[[0]]])),
                        ["TCGA-AA-0000-01Z-00-DX1", "appears 2 times"]),
    "unknown_label": (_manifest_edit(_set("her2", "Maybe", 1)), ["TCGA-AA-0001-01Z-00-DX1", "'Maybe'", "line 3"]),
    "missing_feature_file": (_manifest_edit(_set("slide_id", "TCGA-ZZ-9999-01Z-00-DX1")),
                             ["TCGA-ZZ-9999-01Z-00-DX1", "no feature file"]),
    "h5_corrupt_chunk": (_feature_file(_corrupt_chunk), ["TCGA-AA-0003-01Z-00-DX1", ".h5", "damaged chunk",
                                                         "--skip-bad-slides"]),
    "h5_not_hdf5": (_feature_file(lambda f: f.write_bytes(b"not an h5 file")), ["TCGA-AA-0003-01Z-00-DX1", "HDF5"]),
    "h5_wrong_key": (_feature_file(lambda f: h5py.File(f, "w").create_dataset("emb", data=np.zeros((3, 6))).file.close()),
                     ["TCGA-AA-0003-01Z-00-DX1", "no feature dataset"]),
    "h5_empty_bag": (_feature_file(_h5(np.zeros((0, 6), np.float32))), ["TCGA-AA-0003-01Z-00-DX1", "need >=1 patch"]),
    "h5_dim_mismatch": (_feature_file(_h5(np.zeros((5, 9), np.float32))), ["TCGA-AA-0003-01Z-00-DX1", "dim 9"]),
    "h5_nan": (_feature_file(_h5(np.full((5, 6), np.nan, np.float32))), ["TCGA-AA-0003-01Z-00-DX1", "NaN"]),
    "h5_slide_embedding": (_feature_file(_h5(np.zeros(6, np.float32), coords=False)), ["TCGA-AA-0003-01Z-00-DX1"]),
    "omics_missing_cases": (_omics(lambda om: om.iloc[3:]), ["TCGA-AA-0000", "no row in the omics table", "mkd"]),
    "omics_beyond_float32": (_omics(_huge), ["omics.csv", "TCGA-AA-0002/g1", "float32"]),
    "omics_nan": (_omics(lambda om: om.assign(g0=np.where(np.arange(len(om)) == 4, np.nan, om["g0"]))),
                  ["omics.csv", "TCGA-AA-0004", "NaN"]),
    "omics_duplicate_case": (_omics(lambda om: pd.concat([om, om.iloc[[1]]])), ["omics.csv", "TCGA-AA-0001"]),
    "external_copy_of_internal": (_external_copy, ["external", "case(s) in both", "TCGA-AA-0000"]),
    "tables_missing_folder": (lambda t: ["tables", "--run", str(t / "nope")], ["nope"]),
    "tables_folder_without_plan": (_run_folder(False), ["plan.json", "Rerun the same `run` command"]),
    "tables_corrupt_plan": (_run_folder(True, "{not json"), ["plan.json", "unreadable plan"]),
    "reproduce_repeats_zero": (lambda t: ["reproduce", "--repeats", "0", "--out", str(t / "o")], ["--repeats", "0"]),
    "reproduce_non_mil_suite": (lambda t: ["reproduce", "--suite", "tcga_brca", "--out", str(t / "o")],
                                ["tcga_brca", "[reproduce]"]),
    "reproduce_unknown_method": (lambda t: ["reproduce", "--methods", "abmill", "--out", str(t / "o")], ["abmill"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_clear_error(case, tmp_path, capsys):
    build, needles = CASES[case]
    argv = build(tmp_path)
    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, f"{case}: exit code {rc}; stderr:\n{err}"
    assert "Traceback" not in err, f"{case}: traceback printed:\n{err}"
    for n in needles:
        assert n in err, f"{case}: message does not name {n!r}:\n{err}"
    assert not any((tmp_path / p / "jobs").exists() and any((tmp_path / p / "jobs").glob("*.json"))
                   for p in ("o", "run") if case not in ("tables_folder_without_plan", "tables_corrupt_plan")), \
        f"{case}: jobs were trained before the input was rejected"


def test_there_are_at_least_forty_situations():
    assert len(CASES) >= 40


def test_full_output_disk_is_one_clear_error(tmp_path, monkeypatch, capsys):
    import errno
    import os

    from benchmarks import jobs

    def full(fd, *a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "o" / "splits" / "her2_seed0.csv"))

    monkeypatch.setattr(jobs.os, "fdopen", full)
    rc = main(RUN + ["--folds", "0", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert "cannot write" in err and "her2_seed0.csv" in err and "No space left" in err
    assert not list((tmp_path / "o").rglob("*.tmp"))               # nothing half-written left behind
