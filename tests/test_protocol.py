import numpy as np
import pandas as pd
import pytest

from benchmarks.protocol import LeakError, ProtocolConfig, check_no_leak, load_splits, make_splits, save_splits


def _manifest(n_cases=60, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for c in range(n_cases):
        y = int(rng.random() < 0.3)
        for s in range(1 + int(rng.random() < 0.3)):  # some patients have two slides
            rows.append({"slide_id": f"c{c}_s{s}", "case_id": f"c{c}", "her2": y if c % 10 else pd.NA})
    m = pd.DataFrame(rows)
    m["her2"] = m["her2"].astype("Int64")
    return m


def test_splits_are_patient_grouped_stratified_and_cover_each_slide_once():
    m = _manifest()
    splits = make_splits(m, "her2", n_folds=5, val_frac=0.15, seed=0)
    labelled = m[m.her2.notna()]
    tests = pd.concat([s.table[s.table.part == "test"] for s in splits])
    assert sorted(tests.slide_id) == sorted(labelled.slide_id)
    for s in splits:
        assert s.table.groupby("case_id").part.nunique().max() == 1
        assert set(s.table.part) == {"train", "val", "test"}
        # stratified: every part holds both classes at roughly the overall rate
        rate = labelled.her2.mean()
        assert abs(s.table[s.table.part == "test"].label.mean() - rate) < 0.2
    # unlabelled slides are never placed anywhere (never mapped to negative)
    assert not set(m[m.her2.isna()].slide_id) & set(tests.slide_id)


def test_leak_check_catches_a_planted_leak():
    m = _manifest()
    s = make_splits(m, "her2", seed=0)[0]
    s.check()
    t = s.table.copy()
    case = t.loc[t.part == "test", "case_id"].iloc[0]
    # plant: add a slide of a test patient into the training part
    t = pd.concat([t, pd.DataFrame([{"slide_id": "leak", "case_id": case, "label": 0, "part": "train"}])])
    with pytest.raises(LeakError, match="more than one"):
        check_no_leak(t)


def test_same_seed_same_splits_and_saved_hash(tmp_path):
    m = _manifest()
    a = make_splits(m, "her2", seed=3)
    b = make_splits(m, "her2", seed=3)
    c = make_splits(m, "her2", seed=4)
    assert all(x.table.equals(y.table) for x, y in zip(a, b))
    assert any(not x.table.equals(y.table) for x, y in zip(a, c))
    p = tmp_path / "her2_seed3.csv"
    h = save_splits(a, p)
    assert save_splits(b, p) == h  # same content is accepted
    with pytest.raises(ValueError, match="other splits"):
        save_splits(c, p)
    # a hash file left empty by a crash or a full disk is not a false leak: the CSV is hashed instead
    p.with_suffix(".sha256").write_text("")
    assert save_splits(b, p) == h and p.with_suffix(".sha256").read_text().strip() == h
    with pytest.raises(ValueError, match="other splits"):
        save_splits(c, p)
    assert not list(tmp_path.glob("*.tmp"))                       # atomic writes leave no temp files
    back = load_splits(p)
    assert [s.test for s in back] == [s.test for s in a]


def test_protocol_rejects_unknown_and_bad_settings():
    with pytest.raises(KeyError, match="valid"):
        ProtocolConfig.from_dict({"n_fold": 5})
    with pytest.raises(ValueError):
        ProtocolConfig(n_folds=1)
    assert ProtocolConfig().hash() == ProtocolConfig().hash() != ProtocolConfig(lr=1e-3).hash()
