"""The simulated TCGA-BRCA-like cohort (benchmarks/data/simulated.py) and its difficulty check."""
from __future__ import annotations

import dataclasses

import h5py
import numpy as np
import pandas as pd
import pytest

from benchmarks.data.simulated import (BACKGROUND, PAPER_LABEL_COUNTS, TASKS, TUMOUR, LazySlides, SimCohort,
                                       SimConfig, simulate, simulate_external, write_h5)


@pytest.fixture(scope="module")
def tiny() -> SimCohort:
    return simulate("tiny", seed=0)


@pytest.fixture(scope="module")
def tiny_ext() -> SimCohort:
    return simulate_external("tiny", seed=0)


def patient_counts(cohort: SimCohort) -> dict[str, tuple[int, int, int]]:
    """(pos, neg, unlabelled) patients per task, read from the slide manifest."""
    per_case = cohort.manifest.drop_duplicates("case_id")
    return {t: (int((per_case[t] == 1).sum()), int((per_case[t] == 0).sum()), int(per_case[t].isna().sum()))
            for t in TASKS}


def test_paper_scale_counts_are_the_papers() -> None:
    cohort = simulate("paper", seed=0)  # lazy: only the patient tables are built here
    assert isinstance(cohort.features, LazySlides) and isinstance(cohort.coords, LazySlides)
    counts = patient_counts(cohort)
    n_cases = cohort.manifest["case_id"].nunique()
    assert n_cases == 1006
    for task, (pos, neg) in zip(TASKS, PAPER_LABEL_COUNTS):
        assert counts[task] == (pos, neg, n_cases - pos - neg), task
    assert 1050 <= len(cohort.manifest) <= 1150  # ~1,100 slides
    n = cohort.n_patches
    assert min(n.values()) >= 1000 and max(n.values()) <= 6000 and len(n) == len(cohort.manifest)
    assert cohort.omics.shape == (1006, 768) and cohort.config.feature_dim == 1536


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_scaled_counts_keep_the_papers_ratios(preset: str) -> None:
    cfg = SimConfig.preset(preset)
    cohort = simulate(dataclasses.replace(cfg, lazy=True), seed=1)  # tables only
    scale = cfg.n_cases / 1006
    counts = patient_counts(cohort)
    for task, (pos, neg) in zip(TASKS, PAPER_LABEL_COUNTS):
        want = (max(5, round(pos * scale)), max(5, round(neg * scale)))
        assert counts[task][:2] == want, (task, counts[task], want)
        assert counts[task][2] == cfg.n_cases - sum(want)


def test_external_site_counts_and_prevalence(tiny: SimCohort, tiny_ext: SimCohort) -> None:
    paper_ext = simulate_external("paper", seed=0)
    m = paper_ext.manifest
    assert len(m) == 1127 and m["case_id"].nunique() == 1127  # the in-house cohort: 1,127 slides
    assert int((m["odx"] == 1).sum()) == round(0.15 * 1127) and int((m["odx"] == 0).sum()) == 1127 - 169
    assert m["her2"].isna().all() and m["pr"].isna().all()  # the in-house cohort is labelled for ODX only
    # the same label rule on a lower-risk population: the ODX latent is shifted down
    assert paper_ext.latent["odx"].mean() < simulate("paper", seed=0).latent["odx"].mean() - 0.3
    assert set(tiny_ext.manifest["site"]) == {"external"} and set(tiny.manifest["site"]) == {"internal"}
    assert not set(tiny_ext.manifest["case_id"]) & set(tiny.manifest["case_id"])
    assert list(tiny_ext.omics.columns) == list(tiny.omics.columns)


def test_same_seed_same_data_and_lazy_equals_eager(tiny: SimCohort) -> None:
    again = simulate("tiny", seed=0)
    pd.testing.assert_frame_equal(tiny.manifest, again.manifest)
    pd.testing.assert_frame_equal(tiny.omics, again.omics)
    pd.testing.assert_frame_equal(tiny.latent, again.latent)
    ids = list(tiny.manifest["slide_id"])
    for sid in ids:
        np.testing.assert_array_equal(tiny.features[sid], again.features[sid])
        np.testing.assert_array_equal(tiny.coords[sid], again.coords[sid])
    lazy = simulate(SimConfig.preset("tiny", lazy=True, cache_slides=2), seed=0)
    for sid in reversed(ids):  # any access order gives the same slide
        np.testing.assert_array_equal(tiny.features[sid], lazy.features[sid])
        np.testing.assert_array_equal(tiny.coords[sid], lazy.coords[sid])
    assert len(lazy.source._cache) <= 2  # lazy cohorts keep only the last few slides
    assert list(lazy.features) == ids and len(lazy.features) == len(ids) and ids[0] in lazy.features


def test_different_seed_different_data(tiny: SimCohort) -> None:
    other = simulate("tiny", seed=1)
    assert not np.allclose(tiny.omics.to_numpy(), other.omics.to_numpy())
    assert not tiny.latent.to_numpy().round(6).tolist() == other.latent.to_numpy().round(6).tolist()
    sid = tiny.manifest["slide_id"].iat[0]
    a, b = tiny.features[sid], other.features.get(sid)
    assert b is None or a.shape != b.shape or not np.allclose(a, b)


def test_patients_share_labels_across_slides(tiny: SimCohort) -> None:
    m = tiny.manifest
    assert (m.groupby("case_id").size() > 1).any(), "tiny must hold multi-slide patients"
    for task in TASKS:
        per_case = m.groupby("case_id")[task].agg(lambda s: s.astype("object").map(str).nunique())
        assert (per_case == 1).all(), f"{task}: a patient's slides disagree"
    assert m["slide_id"].is_unique
    assert set(m["case_id"]) == set(tiny.omics.index) == set(tiny.latent.index)


def test_shapes_and_dtypes(tiny: SimCohort) -> None:
    cfg = tiny.config
    m = tiny.manifest
    assert list(m.columns) == ["slide_id", "case_id", "site", "her2", "pr", "odx"]
    for task in TASKS:
        assert str(m[task].dtype) == "Int8" and set(m[task].dropna().unique()) <= {0, 1}
    assert tiny.omics.dtypes.eq(np.float32).all() and tiny.omics.shape == (cfg.n_cases, cfg.n_genes)
    assert tiny.omics.index.name == "case_id" and list(tiny.latent.columns) == list(TASKS)
    assert 35 <= len(m) <= 50  # ~40 slides
    for sid in m["slide_id"]:
        x, xy = tiny.features[sid], tiny.coords[sid]
        assert x.dtype == np.float32 and xy.dtype == np.float32
        assert x.shape[1] == cfg.feature_dim and xy.shape == (x.shape[0], 2)
        assert cfg.n_patches_min <= x.shape[0] <= cfg.n_patches_max and np.isfinite(x).all()
        assert len(np.unique(xy, axis=0)) == len(xy) and np.array_equal(xy, np.round(xy))  # one patch per cell
        order = np.lexsort((xy[:, 0], xy[:, 1]))
        assert np.array_equal(order, np.arange(len(xy)))  # row-major, like TRIDENT/CLAM coords


def _same_type_neighbour_share(xy: np.ndarray, tissue: np.ndarray) -> float:
    """Share of 4-neighbour patch pairs with the same tissue type."""
    pos = {tuple(p): i for i, p in enumerate(xy.astype(int))}
    same = total = 0
    for (x, y), i in pos.items():
        for nb in ((x + 1, y), (x, y + 1)):
            j = pos.get(nb)
            if j is not None:
                total += 1
                same += tissue[i] == tissue[j]
    return same / max(total, 1)


def test_tissue_regions_are_contiguous_and_signal_is_where_documented() -> None:
    tiny = simulate(SimConfig.preset("tiny", n_patches_min=200, n_patches_max=300), seed=0)  # room for regions
    rng = np.random.default_rng(0)
    share, shuffled = [], []
    proj_inf, proj_bg, lat = [], [], []
    world = tiny.source.world
    for sid, case in zip(tiny.manifest["slide_id"], tiny.manifest["case_id"]):
        ann = tiny.annotations(sid)
        xy, tissue, inf = tiny.coords[sid], ann["tissue"], ann["informative"]
        share.append(_same_type_neighbour_share(xy, tissue))
        shuffled.append(_same_type_neighbour_share(xy, rng.permutation(tissue)))
        assert (tissue[inf.any(1)] == TUMOUR).all(), f"{sid}: informative patches outside the tumour"
        assert (tissue == TUMOUR).any() and inf.any(0).all()
        x = tiny.features[sid].astype(np.float64)
        other_tumour = (tissue == TUMOUR) & ~inf[:, 0]
        if other_tumour.any() and (tissue == BACKGROUND).any():
            v = world.signal_dirs[0]
            proj_inf.append(x[inf[:, 0]].mean(0) @ v - x[other_tumour].mean(0) @ v)
            proj_bg.append(x[tissue == BACKGROUND].mean(0) @ v)
            lat.append(tiny.latent.loc[case, TASKS[0]])
    assert np.mean(share) > np.mean(shuffled) + 0.2  # regions, not salt-and-pepper
    assert len(lat) > 15
    assert np.corrcoef(proj_inf, lat)[0, 1] > 0.7  # informative tumour patches carry the latent
    assert abs(np.corrcoef(proj_bg, lat)[0, 1]) < 0.5  # background does not


def test_external_site_has_shifted_features(tiny: SimCohort, tiny_ext: SimCohort) -> None:
    def slide_means(c: SimCohort) -> np.ndarray:
        return np.stack([c.features[s].mean(0) for s in c.manifest["slide_id"]])

    a, b = slide_means(tiny), slide_means(tiny_ext)
    between = np.linalg.norm(a.mean(0) - b.mean(0))
    within = np.linalg.norm(a[::2].mean(0) - a[1::2].mean(0))  # two halves of one site
    assert between > 2.0 and between > 3 * within, (between, within)
    # the world is shared: the same seed gives the same signal directions at both sites
    np.testing.assert_array_equal(tiny.source.world.signal_dirs, tiny_ext.source.world.signal_dirs)


def test_config_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="unknown simulated-cohort preset 'huge'.*paper"):
        SimConfig.preset("huge")
    with pytest.raises(ValueError, match="unknown SimConfig field.*n_slides"):
        SimConfig.preset("tiny", n_slides=3)
    with pytest.raises(ValueError, match="feature_dim 8 <"):
        SimConfig.preset("tiny", feature_dim=8)
    with pytest.raises(ValueError, match="task her2 needs"):
        SimConfig.preset("tiny", n_cases=8, min_class_count=5)
    with pytest.raises(ValueError, match="not a valid correlation matrix"):
        SimConfig.preset("tiny", latent_corr=(0.9, 0.9, -0.9))
    with pytest.raises(KeyError, match="not in the simulated internal cohort"):
        simulate(SimConfig.preset("tiny", lazy=True)).features["nope"]


def test_write_h5_round_trip(tiny: SimCohort, tmp_path) -> None:
    out = write_h5(tiny, tmp_path / "sim")
    sid = tiny.manifest["slide_id"].iat[3]
    with h5py.File(out / "features" / f"{sid}.h5", "r") as f:
        np.testing.assert_array_equal(f["features"][:], tiny.features[sid])
        np.testing.assert_array_equal(f["coords"][:], tiny.coords[sid])
    man = pd.read_csv(out / "manifest.csv", dtype={"her2": "Int8", "pr": "Int8", "odx": "Int8"})
    pd.testing.assert_frame_equal(man, tiny.manifest)
    assert len(list((out / "features").glob("*.h5"))) == len(tiny.manifest)


def test_simcheck_reports_each_task(tiny: SimCohort, tiny_ext: SimCohort, capsys) -> None:
    from benchmarks.simcheck import MODELS, check, main

    table = check(tiny, tiny_ext, folds=3, seed=0, c_grid=(0.1,))  # one C: no inner CV, fast
    assert list(table["task"]) == ["her2", "pr", "odx", "odx"]
    assert table["site"].iat[3].startswith("external")
    aucs = table[list(MODELS)].map(lambda s: float(str(s).split()[0]))
    assert ((aucs >= 0) & (aucs <= 1)).all().all()
    assert aucs["oracle"].mean() > 0.75  # the latent decides the label up to assay noise
    assert main(["--scale", "tiny", "--folds", "2", "--no-external"]) == 0
    printed = capsys.readouterr().out
    assert "mean-pool LR" in printed and "omics LR" in printed and "| her2" in printed


def test_difficulty_bands_of_the_default_scale() -> None:
    """The bands the simulator is designed to (simcheck's docstring): patient omics nearly decide
    the label, a mean-pooled slide is a clearly weaker but useful signal, and pooling the right
    patches recovers most of the gap: the room MIL and distillation are meant to fill."""
    from benchmarks.simcheck import MODELS, check

    table = check(simulate("small", seed=0), simulate_external("small", seed=0), folds=3, seed=0, c_grid=(0.1,))
    auc = table[list(MODELS)].map(lambda s: float(str(s).split()[0]))
    internal = auc[table["site"] == "internal"]
    assert len(internal) == len(TASKS)
    assert (internal["oracle"] >= 0.9).all(), internal
    assert (internal["omics LR"] >= 0.85).all(), internal
    assert internal["mean-pool LR"].between(0.6, 0.9).all(), internal
    assert (internal["omics LR"] > internal["mean-pool LR"]).all(), internal
    assert (internal["informative-pool LR"] >= internal["mean-pool LR"] + 0.05).all(), internal
    assert auc["mean-pool LR"].iat[-1] >= 0.6  # the external site stays learnable after its stain shift
