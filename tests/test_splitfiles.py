"""Split files in and out (benchmarks/splitfiles.py, run --splits)."""
from __future__ import annotations

import pandas as pd
import pytest

from benchmarks.data.simulated import simulate
from benchmarks.protocol import make_splits, save_splits
from benchmarks.splitfiles import detect_format, export_run, read_split_file, write_clam


@pytest.fixture(scope="module")
def manifest() -> pd.DataFrame:
    return simulate("tiny", seed=0).manifest


@pytest.fixture(scope="module")
def folds(manifest):
    return make_splits(manifest, "her2", n_folds=3, val_frac=0.25, seed=4)


def _parts(splits) -> dict[tuple[int, str], str]:
    return {(s.fold, sid): p for s in splits for sid, p in zip(s.table["slide_id"], s.table["part"])}


def test_our_export_reads_back_to_the_same_folds(manifest, folds, tmp_path):
    save_splits(folds, tmp_path / "run" / "splits" / "her2_seed4.csv")
    table = export_run(tmp_path / "run")
    assert list(table.columns) == ["task", "seed", "fold", "case_id", "slide_id", "label", "part"]
    table.to_csv(tmp_path / "exported.csv", index=False)
    assert detect_format(tmp_path / "exported.csv") == "ours"
    imp = read_split_file(tmp_path / "exported.csv", manifest, "her2", seed=4)
    assert _parts(imp.splits) == _parts(folds) and imp.source["notes"] == []
    with pytest.raises(ValueError, match="no split for seed 0 of task her2|no split for task 'pr'"):
        read_split_file(tmp_path / "exported.csv", manifest, "pr")


def test_clam_split_folders_round_trip(manifest, folds, tmp_path):
    table = pd.concat([s.table.assign(task="her2", seed=4, fold=s.fold) for s in folds])
    paths = write_clam(table, tmp_path / "clam")
    head = paths[0].read_text().splitlines()[0]
    assert head == ",train,val,test"  # CLAM's own layout: unnamed index column, then the three parts
    assert detect_format(tmp_path / "clam") == "clam"
    imp = read_split_file(tmp_path / "clam", manifest, "her2", seed=4)
    assert _parts(imp.splits) == _parts(folds) and imp.source["folds"] == 3


def _pathobench(manifest: pd.DataFrame, folds) -> pd.DataFrame:
    labelled = manifest[manifest["her2"].notna()][["case_id", "slide_id", "her2"]].rename(columns={"her2": "HER2"})
    for s in folds:  # Patho-Bench has no validation part: val slides are training slides there
        part = dict(zip(s.table["slide_id"], s.table["part"].replace({"val": "train"})))
        labelled[f"fold_{s.fold}"] = labelled["slide_id"].map(part)
    return labelled


def test_pathobench_tsv_gets_a_patient_level_validation_part_drawn_from_training(manifest, folds, tmp_path):
    _pathobench(manifest, folds).to_csv(tmp_path / "k=all.tsv", sep="\t", index=False)
    assert detect_format(tmp_path / "k=all.tsv") == "pathobench"
    imp = read_split_file(tmp_path / "k=all.tsv", manifest, "her2", seed=0, val_frac=0.25)
    for mine, theirs in zip(imp.splits, folds):
        assert mine.test == theirs.test  # the file's test parts, unchanged
        assert set(mine.train) | set(mine.val) == set(theirs.train) | set(theirs.val)
        assert mine.val and not set(mine.table.loc[mine.table.part == "val", "case_id"]) & \
            set(mine.table.loc[mine.table.part == "train", "case_id"])
    assert any("no validation part" in n for n in imp.source["notes"])


def _leaky(manifest, folds, path):
    """A Patho-Bench file whose fold 0 puts one patient's two slides in train and test; its case id."""
    pb = _pathobench(manifest, folds)
    multi = pb.groupby("case_id")["slide_id"].transform("size") > 1
    case = pb.loc[multi, "case_id"].iloc[0]
    first, second = pb.index[pb["case_id"] == case][:2]
    pb.loc[first, "fold_0"], pb.loc[second, "fold_0"] = "train", "test"
    pb.to_csv(path, sep="\t", index=False)
    return case


def test_a_patient_in_two_parts_is_refused_unless_slide_level_is_asked_for(manifest, folds, tmp_path):
    case = _leaky(manifest, folds, tmp_path / "k=all.tsv")
    with pytest.raises(ValueError, match=f"fold 0: {case} \\(test\\+train\\).*--allow-slide-level"):
        read_split_file(tmp_path / "k=all.tsv", manifest, "her2")
    imp = read_split_file(tmp_path / "k=all.tsv", manifest, "her2", allow_slide_level=True)
    assert imp.source["slide_level"] and imp.splits[0].slide_level
    imp.splits[0].check()  # slides are still checked, patients no longer


def test_slides_the_manifest_lacks_or_gives_another_patient_are_named(manifest, folds, tmp_path):
    pb = _pathobench(manifest, folds)
    pb.loc[pb.index[0], "slide_id"] = "NOT-A-SLIDE"
    pb.to_csv(tmp_path / "a.tsv", sep="\t", index=False)
    with pytest.raises(ValueError, match="1 slide\\(s\\) of the split file are not in the manifest \\(NOT-A-SLIDE\\)"):
        read_split_file(tmp_path / "a.tsv", manifest, "her2")
    pb = _pathobench(manifest, folds)
    sid = pb["slide_id"].iloc[1]
    pb.loc[pb.index[1], "case_id"] = "SOMEONE-ELSE"
    pb.to_csv(tmp_path / "b.tsv", sep="\t", index=False)
    with pytest.raises(ValueError, match=f"belong to another patient.*{sid} \\(SOMEONE-ELSE in the file"):
        read_split_file(tmp_path / "b.tsv", manifest, "her2")
    (tmp_path / "c.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="unknown format"):
        read_split_file(tmp_path / "c.csv", manifest, "her2")


def test_run_with_an_imported_slide_level_split_says_so_in_every_table(manifest, folds, tmp_path, capsys):
    from benchmarks.__main__ import main

    case = _leaky(manifest, folds, tmp_path / "k=all.tsv")
    base = ["run", "--scale", "tiny", "--methods", "abmil", "--no-progress", "--workers", "1", "--no-tracking",
            "--splits", str(tmp_path / "k=all.tsv")]
    assert main(base + ["--out", str(tmp_path / "x")]) == 2  # two tasks for a one-task file
    assert "describes one task" in capsys.readouterr().err
    assert main(base + ["--tasks", "her2", "--out", str(tmp_path / "y")]) == 2  # the leak, refused
    assert f"fold 0: {case}" in capsys.readouterr().err
    out = tmp_path / "run"
    assert main(base + ["--tasks", "her2", "--folds", "0", "--allow-slide-level", "--out", str(out)]) == 0
    md = (out / "tables" / "table1.md").read_text()
    assert "1 folds from the pathobench split file" in md and "SLIDE-LEVEL" in md
    assert (out / "summary.json").read_text().count('"slide_level": true') == 1
    # the run's splits exported (ours and CLAM) read back to the same folds
    assert main(["splits", "export", "--run", str(out), "--out", str(tmp_path / "mine.csv")]) == 0
    assert main(["splits", "export", "--run", str(out), "--out", str(tmp_path / "clam"), "--format", "clam"]) == 0
    ran = read_split_file(tmp_path / "mine.csv", manifest, "her2", allow_slide_level=True).splits
    again = read_split_file(tmp_path / "clam", manifest, "her2", allow_slide_level=True).splits
    assert _parts(ran) == _parts(again) and len(ran) == 3
