"""Readers and input validation of the data layer (issue 2, item 4).

Files are written into ``tmp_path`` in the real layouts (TRIDENT h5 with attrs, (1, N, D) h5,
STAMP ``feats`` h5, CLAM ``.pt``) and read back. Every bad-input case must raise a ``DataError``
whose message names the slide, the file and the problem.
"""
from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from benchmarks.data.errors import DataError, DataProblem
from benchmarks.data.readers import (find_feature_file, locate_feature_files, read_bag_file, read_manifest,
                                     read_omics_table)
from benchmarks.data.validate import (bad_slide_ids, check_bag_arrays, check_dims_agree, raise_if_problems,
                                      validate_cohort)

TASKS = {"HER2": {"positive": 1, "negative": 0}, "PR": {"Positive": 1, "Negative": 0, "Equivocal": None}}
SID = "TCGA-A1-A0SB-01Z-00-DX1"


def rand(n: int, d: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def write_trident_h5(path: Path, feats: np.ndarray, coords: np.ndarray | None = None,
                     key: str = "features") -> Path:
    """TRIDENT features_<enc>/<slide>.h5: features (attrs encoder, name) + level-0 int64 coords."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        ds = f.create_dataset(key, data=feats)
        ds.attrs.update({"encoder": "conch_v15", "name": path.stem})
        if coords is not None:
            c = f.create_dataset("coords", data=coords)
            c.attrs.update({"patch_size": 512, "patch_size_level0": 1024, "target_magnification": 20,
                            "level0_magnification": 40, "overlap": 0, "name": path.stem})
    return path


def grid(n: int) -> np.ndarray:
    return (np.stack(np.divmod(np.arange(n), 5), axis=1) * 1024).astype(np.int64)


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text.strip() + "\n")
    return path


# ---------------------------------------------------------------------------------------------
# readers on well-formed files
# ---------------------------------------------------------------------------------------------
def test_trident_h5_roundtrip(tmp_path):
    feats, coords = rand(7, 16), grid(7)
    p = write_trident_h5(tmp_path / "features_conch_v15" / f"{SID}.h5", feats, coords)
    f, c = read_bag_file(p, SID)
    assert f.dtype == np.float32 and f.shape == (7, 16) and np.array_equal(f, feats)
    assert c.dtype == np.float32 and c.shape == (7, 2) and np.array_equal(c, coords.astype(np.float32))


def test_h5_batch_axis_layout(tmp_path):
    feats = rand(5, 8)
    p = write_trident_h5(tmp_path / "s1.h5", feats[None], grid(5)[None])  # (1, N, D), (1, N, 2)
    f, c = read_bag_file(p)
    assert f.shape == (5, 8) and np.array_equal(f, feats) and c.shape == (5, 2)


@pytest.mark.parametrize("key", ["feats", "patch_embeddings"])
def test_stamp_h5_keys_and_float16(tmp_path, key):
    feats = rand(4, 6).astype(np.float16)
    p = write_trident_h5(tmp_path / "s2.h5", feats, grid(4).astype(np.float64) * 0.5, key=key)  # um coords
    f, c = read_bag_file(p)
    assert f.dtype == np.float32 and np.array_equal(f, feats.astype(np.float32))
    assert np.allclose(c, grid(4) * 0.5)


def test_clam_pt_tensor_array_and_dict(tmp_path):
    feats = rand(6, 10)
    torch.save(torch.from_numpy(feats), tmp_path / "a.pt")  # CLAM pt_files/<slide>.pt
    torch.save(feats, tmp_path / "b.pt")  # TRIDENT saveas='pt' writes the numpy array
    torch.save({"features": torch.from_numpy(feats).bfloat16(), "coords": torch.from_numpy(grid(6))},
               tmp_path / "c.pt")
    f, c = read_bag_file(tmp_path / "a.pt")
    assert c is None and np.array_equal(f, feats) and f.dtype == np.float32
    f, c = read_bag_file(tmp_path / "b.pt")
    assert c is None and np.array_equal(f, feats)
    f, c = read_bag_file(tmp_path / "c.pt")
    assert np.allclose(f, feats, atol=0.05) and c.shape == (6, 2)


def test_find_feature_file_flat_and_clam_layout(tmp_path):
    torch.save(torch.from_numpy(rand(3, 4)), (tmp_path / "pt_files").mkdir() or tmp_path / "pt_files" / "s3.pt")
    write_trident_h5(tmp_path / "s4.h5", rand(3, 4))
    assert find_feature_file(tmp_path, "s3") == tmp_path / "pt_files" / "s3.pt"
    assert find_feature_file(tmp_path, "s4.svs") == tmp_path / "s4.h5"  # WSI suffix stripped as CLAM does
    assert find_feature_file(tmp_path, "s4", exts=(".pt", ".h5")) == tmp_path / "s4.h5"
    paths, problems = locate_feature_files(tmp_path, ["s3", "s4", "s5"])
    assert set(paths) == {"s3", "s4"} and [p.slide_id for p in problems] == ["s5"]


# ---------------------------------------------------------------------------------------------
# every bad-input case: DataError whose message names the slide, the file and the problem
# ---------------------------------------------------------------------------------------------
def case_missing_file(tmp):
    (tmp / "feats").mkdir()
    write_trident_h5(tmp / "feats" / f"{SID}.0a1b2c.h5", rand(3, 4))  # full TCGA name with uuid
    with pytest.raises(DataError) as e:
        find_feature_file(tmp / "feats", SID)
    assert "0a1b2c" in str(e.value)  # the near match is suggested, not silently used
    return e.value, SID, "feats", ["no feature file", ".h5", ".pt"]


def case_wrong_key(tmp):
    p = tmp / f"{SID}.h5"
    with h5py.File(p, "w") as f:
        f["embeddings"] = rand(3, 4)
        f["coords"] = grid(3)
    with pytest.raises(DataError) as e:
        read_bag_file(p, SID)
    f2, _ = read_bag_file(p, SID, feature_key="embeddings")  # the fix the message offers works
    assert f2.shape == (3, 4)
    return e.value, SID, p.name, ["'features'", "'embeddings' (3, 4)", "feature_key"]


def case_nan_inf(tmp):
    x = rand(6, 4)
    x[3, 1], x[3, 2], x[5, 0] = np.nan, np.nan, np.inf
    p = write_trident_h5(tmp / "nan_slide.h5", x, grid(6))
    with pytest.raises(DataError) as e:
        read_bag_file(p, "nan_slide")
    return e.value, "nan_slide", p.name, ["3 non-finite", "NaN 2, Inf 1", "2 of 6 patches", "row(s) 3, 5"]


def case_empty_bag(tmp):
    p = write_trident_h5(tmp / "A1.h5", np.zeros((0, 1024), np.float32), np.zeros((0, 2), np.int64))
    with pytest.raises(DataError) as e:
        read_bag_file(p, SID)
    return e.value, SID, "A1.h5", ["(0, 1024)", "need >=1 patch", "drop it from the manifest"]


def case_dim_mismatch(tmp):
    p = write_trident_h5(tmp / "odd.h5", rand(4, 8), grid(4))
    with pytest.raises(DataError) as e:
        read_bag_file(p, "odd", expected_dim=16)
    return e.value, "odd", "odd.h5", ["dim 8", "uses 16", "encoder"]


def case_bad_coords(tmp):
    p = write_trident_h5(tmp / "bc.h5", rand(4, 8), grid(3))
    with pytest.raises(DataError) as e:
        read_bag_file(p, "bc")
    return e.value, "bc", "bc.h5", ["(3, 2)", "need (4, 2)"]


def case_duplicate_slide(tmp):
    m = write_csv(tmp / "manifest.csv", f"slide_id,case_id,HER2,PR\n{SID},TCGA-A1-A0SB,positive,Positive\n"
                                        f"s2,c2,negative,Negative\n{SID},TCGA-A1-A0SB,positive,Positive")
    with pytest.raises(DataError) as e:
        read_manifest(m, TASKS)
    return e.value, SID, "manifest.csv", ["appears 2 times", "line 2, line 4"]


def case_unknown_label(tmp):
    m = write_csv(tmp / "manifest.csv", f"slide_id,case_id,HER2,PR\n{SID},TCGA-A1-A0SB,Equivocal,Positive\n"
                                        "s2,c2,negative,Negative")
    with pytest.raises(DataError) as e:
        read_manifest(m, TASKS)
    return e.value, SID, "manifest.csv", ["column 'HER2'", "'Equivocal'", "known values: ['negative', 'positive']"]


def case_missing_omics(tmp):
    m = write_csv(tmp / "manifest.csv", f"slide_id,case_id,HER2,PR\n{SID},TCGA-A1-A0SB,positive,\n"
                                        "s2,c2,negative,Negative\ns3,c3,,")
    om = write_csv(tmp / "omics.csv", "case_id,ERBB2,ESR1\nc2,1.0,2.0")
    problems = validate_cohort(read_manifest(m, TASKS), None, read_omics_table(om), True, TASKS)
    assert [p.slide_id for p in problems] == [SID]  # s3 is unlabelled for every task: needs no omics
    with pytest.raises(DataError) as e:
        raise_if_problems(problems)
    return e.value, SID, "omics.csv", ["case TCGA-A1-A0SB has no row", "needs omics at training"]


def case_omics_nan(tmp):
    om = write_csv(tmp / "omics.tsv", "case_id\tERBB2\tESR1\nc1\t1.0\t\nc2\t0.5\t2.0")
    with pytest.raises(DataError) as e:
        read_omics_table(om)
    return e.value, "c1", "omics.tsv", ["NaN/Inf", "'ESR1'"]


def case_omics_duplicate(tmp):
    om = write_csv(tmp / "omics.csv", "case_id,ERBB2\nc1,1.0\nc1,2.0\nc2,0.1")
    with pytest.raises(DataError) as e:
        read_omics_table(om)
    return e.value, "c1", "omics.csv", ["more than once"]


def case_unsafe_pt(tmp):
    p = tmp / "u.pt"
    torch.save({"features": torch.zeros(2, 3), "when": pd.Timestamp("2024-01-01")}, p)
    with pytest.raises(DataError) as e:
        read_bag_file(p, "u")
    return e.value, "u", "u.pt", ["weights_only", "torch.save(features_NxD"]


BAD_CASES = {f.__name__[5:]: f for f in (case_missing_file, case_wrong_key, case_nan_inf, case_empty_bag,
                                           case_dim_mismatch, case_bad_coords, case_duplicate_slide,
                                           case_unknown_label, case_missing_omics, case_omics_nan,
                                           case_omics_duplicate, case_unsafe_pt)}
KIND_OF = {"omics_nan": "nan_inf", "omics_duplicate": "duplicate_case", "unsafe_pt": "unreadable"}


@pytest.mark.parametrize("name", list(BAD_CASES))
def test_bad_input_raises_clear_error(tmp_path, name):
    err, slide, filename, details = BAD_CASES[name](tmp_path)
    msg = str(err)
    assert err.kinds == {KIND_OF.get(name, name)}, msg
    assert slide in msg and filename in msg, msg
    for d in details:
        assert d in msg, f"{d!r} not in:\n{msg}"
    assert isinstance(err, ValueError)


# ---------------------------------------------------------------------------------------------
# manifest semantics
# ---------------------------------------------------------------------------------------------
def test_unlabelled_cells_stay_na_never_negative(tmp_path):
    m = write_csv(tmp_path / "m.tsv", "slide_id\tcase_id\tHER2\tPR\tsite\n"
                                      "s1\tc1\tPOSITIVE\t[Not Available]\t\n"
                                      "s2\tc1\t\tnegative\tMSK\n"
                                      "s3\tc2\tNA\tEquivocal\t\n"
                                      "s4\tc3\t negative \t\t\n")
    df = read_manifest(m, TASKS)
    assert list(df.columns) == ["slide_id", "case_id", "site", "HER2", "PR"]
    assert str(df["HER2"].dtype) == "Int64" and str(df["PR"].dtype) == "Int64"
    assert df["HER2"].isna().tolist() == [False, True, True, False]
    assert df["HER2"].dropna().tolist() == [1, 0]
    assert df["PR"].isna().tolist() == [True, False, True, True]  # Equivocal maps to None -> unlabelled
    assert (df["PR"] == 0).sum() == 1  # the one explicit negative, nothing else became 0
    assert df["site"].tolist() == ["internal", "MSK", "internal", "internal"]
    assert validate_cohort(df, None, None, False, TASKS) == []


def test_numeric_labels_from_spreadsheets(tmp_path):
    m = write_csv(tmp_path / "m.csv", "slide_id,case_id,ODX\na,c1,1.0\nb,c2,0\nc,c3,\nd,c4,2")
    with pytest.raises(DataError, match="'2'"):
        read_manifest(m, {"ODX": {0: 0, 1: 1}})
    df = read_manifest(write_csv(tmp_path / "m2.csv", "slide_id,case_id,ODX\na,c1,1.0\nb,c2,0\nc,c3,"),
                       {"ODX": {0: 0, 1: 1}})
    assert df["ODX"].tolist() == [1, 0, pd.NA]


def test_case_id_from_tcga_barcode_is_announced(tmp_path):
    m = write_csv(tmp_path / "m.csv", "slide_id,HER2,PR\nTCGA-A1-A0SB-01Z-00-DX1,positive,Positive\n"
                                      "TCGA-A1-A0SB-01Z-00-DX2,positive,Positive\nTCGA-BH-A0BZ-01Z-00-DX1,,")
    with pytest.warns(UserWarning, match="TCGA"):
        df = read_manifest(m, TASKS)
    assert df["case_id"].tolist() == ["TCGA-A1-A0SB", "TCGA-A1-A0SB", "TCGA-BH-A0BZ"]
    assert any("first 12" in n for n in df.attrs["notes"])


def test_missing_case_column_for_non_tcga_ids_is_an_error(tmp_path):
    m = write_csv(tmp_path / "m.csv", "slide_id,HER2,PR\nslideA,positive,Positive")
    with pytest.raises(DataError, match="no 'case_id' column") as e:
        read_manifest(m, TASKS)
    assert e.value.kinds == {"missing_column"} and "m.csv" in str(e.value)


def test_manifest_collects_every_problem(tmp_path):
    m = write_csv(tmp_path / "m.csv", "slide_id,case_id,HER2\ns1,c1,maybe\ns1,c1,positive\ns2,c2,2")
    with pytest.raises(DataError) as e:
        read_manifest(m, TASKS)
    kinds = sorted(p.kind for p in e.value.problems)
    assert kinds == ["duplicate_slide", "missing_column", "unknown_label", "unknown_label"]
    assert len(str(e.value).splitlines()) == 1 + 4  # header + one line per problem


def test_validate_cohort_rejects_negative_placeholders_and_missing_files(tmp_path):
    df = pd.DataFrame({"slide_id": ["a", "b"], "case_id": ["c1", "c2"],
                       "HER2": pd.array([-1, 1], dtype="Int64"), "PR": pd.array([0, pd.NA], dtype="Int64")})
    problems = validate_cohort(df, {"a": tmp_path / "nope.h5"}, None, False, TASKS)
    got = sorted((p.slide_id, p.kind) for p in problems)
    assert got == [("a", "missing_file"), ("a", "unknown_label"), ("b", "missing_file")]


# ---------------------------------------------------------------------------------------------
# omics
# ---------------------------------------------------------------------------------------------
def test_omics_layouts_agree(tmp_path):
    ref = pd.DataFrame({"ERBB2": [1.5, -0.25], "ESR1": [0.0, 3.0]}, index=pd.Index(["c1", "c2"], name="case_id"))
    ref.to_csv(tmp_path / "o.csv")
    ref.to_csv(tmp_path / "o.tsv", sep="\t")
    ref.to_parquet(tmp_path / "o.parquet")
    ref.T.rename_axis("gene").to_csv(tmp_path / "t.csv")
    tables = [read_omics_table(tmp_path / n) for n in ("o.csv", "o.tsv", "o.parquet")]
    tables.append(read_omics_table(tmp_path / "t.csv", genes_in_rows=True))
    for t in tables:
        assert t.index.name == "case_id" and list(t.index) == ["c1", "c2"] and list(t.columns) == ["ERBB2", "ESR1"]
        assert (t.dtypes == np.float32).all()
        assert np.array_equal(t.to_numpy(), ref.to_numpy(np.float32))


def test_omics_required_but_absent_is_cohort_level(tmp_path):
    df = pd.DataFrame({"slide_id": ["a"], "case_id": ["c1"], "HER2": pd.array([1], dtype="Int64")})
    problems = validate_cohort(df, None, None, True, {"HER2": TASKS["HER2"]})
    assert [(p.slide_id, p.kind) for p in problems] == [(None, "missing_omics")]
    with pytest.raises(DataError, match="cannot fix"):
        raise_if_problems(problems, skip_bad=True)  # dropping slides cannot fix a missing table
    assert validate_cohort(df, None, None, False, {"HER2": TASKS["HER2"]}) == []


# ---------------------------------------------------------------------------------------------
# checks and the stop / skip decision
# ---------------------------------------------------------------------------------------------
def test_check_dims_agree_names_only_the_odd_slide():
    dims = {"a": 16, "b": 16, "c": 8, "d": 16}
    problems = check_dims_agree(dims, {"c": "feats/c.h5"})
    assert [(p.slide_id, p.kind) for p in problems] == [("c", "dim_mismatch")]
    assert "feats/c.h5" in problems[0].message and "3 of 4 slides" in problems[0].message
    assert {p.slide_id for p in check_dims_agree({"a": 16, "b": 8})} == {"a", "b"}  # a tie names both
    assert check_dims_agree(dims, expected_dim=8)[0].slide_id == "a"


def test_check_bag_arrays_accepts_good_and_tensors():
    assert check_bag_arrays("s", "s.h5", rand(3, 4), grid(3), expected_dim=4) == []
    assert check_bag_arrays("s", None, torch.randn(3, 4, dtype=torch.float64), None) == []
    (p,) = check_bag_arrays("s", "s.h5", np.zeros(5, np.float32), None)
    assert p.kind == "bad_shape" and "slide-level embedding" in p.message


def test_raise_if_problems_stop_or_skip():
    ps = [DataProblem("s1", "a.h5", "empty_bag", "slide s1 (a.h5): empty"),
          DataProblem("s2", "b.h5", "nan_inf", "slide s2 (b.h5): nan"),
          DataProblem("s1", "a.h5", "bad_coords", "slide s1 (a.h5): coords")]
    assert raise_if_problems([]) == [] and raise_if_problems([], skip_bad=True) == []
    with pytest.raises(DataError) as e:
        raise_if_problems(ps)
    lines = str(e.value).splitlines()
    assert lines[1:] == [p.message for p in ps] and "--skip-bad-slides" in lines[0]
    assert e.value.problems == ps
    assert raise_if_problems(ps, skip_bad=True) == ps
    assert bad_slide_ids(ps) == ["s1", "s2"]


def test_data_error_pickles_and_rejects_unknown_kind():
    err = DataError([DataProblem("s1", "a.h5", "empty_bag", "slide s1 (a.h5): empty")])
    back = pickle.loads(pickle.dumps(err))
    assert isinstance(back, DataError) and back.problems == err.problems and str(back) == str(err)
    with pytest.raises(ValueError, match="unknown DataProblem kind"):
        DataProblem("s1", None, "oops", "x")


def test_check_false_skips_validation(tmp_path):
    p = write_trident_h5(tmp_path / "e.h5", np.zeros((0, 4), np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        f, c = read_bag_file(p, check=False)
    assert f.shape == (0, 4) and c is None
