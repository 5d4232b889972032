"""No test-fold (or validation) information reaches the omics preprocessing."""
import numpy as np
import pandas as pd
import torch

from benchmarks.data.cohort import Cohort, CohortSource
from benchmarks.protocol import ProtocolConfig, make_splits
from benchmarks.runner import build_bags


def _cohort(omics: pd.DataFrame) -> Cohort:
    rng = np.random.default_rng(0)
    cases = [f"c{i}" for i in range(40)]
    man = pd.DataFrame({"slide_id": [f"{c}_s" for c in cases], "case_id": cases, "site": "internal",
                        "her2": pd.array([i % 3 == 0 for i in range(40)], dtype="Int64")})
    feats = {s: rng.normal(size=(5, 4)).astype(np.float32) for s in man.slide_id}
    return Cohort("t", man, feats, None, omics, "fp", CohortSource())


def test_train_omics_depend_only_on_training_cases():
    rng = np.random.default_rng(1)
    omics = pd.DataFrame(rng.normal(size=(40, 6)), index=[f"c{i}" for i in range(40)],
                         columns=[f"g{j}" for j in range(6)])
    split = make_splits(_cohort(omics).manifest, "her2", n_folds=5, seed=0)[0]
    train, val, test, _ = build_bags(_cohort(omics), split, "her2", True, ProtocolConfig())
    assert all(b.omics is not None for b in train) and all(b.omics is None for b in val + test)
    # z-scored on training cases: mean 0 / std 1 over the training cases exactly
    z = torch.stack([b.omics for b in train]).double()
    assert torch.allclose(z.mean(0), torch.zeros(6, dtype=torch.float64), atol=1e-5)
    # change every non-training case's omics wildly: the training bags' omics do not move
    held_out = [c for c in omics.index if c not in {b.case_id for b in train}]
    poisoned = omics.copy()
    poisoned.loc[held_out] = 1e6
    train2, *_ = build_bags(_cohort(poisoned), split, "her2", True, ProtocolConfig())
    for a, b in zip(train, train2):
        assert torch.equal(a.omics, b.omics)
    # while changing a training case does move them (the check can fail)
    poisoned.loc[train[0].case_id] = 1e6
    train3, *_ = build_bags(_cohort(poisoned), split, "her2", True, ProtocolConfig())
    assert not torch.equal(train[1].omics, train3[1].omics)


def test_fold_gene_selection_uses_training_labels_only():
    """``omics_genes``: the top genes by ANOVA F on the training cases. A gene that separates the
    classes is kept; relabelling or poisoning the held-out cases never changes the choice."""
    rng = np.random.default_rng(2)
    cases = [f"c{i}" for i in range(40)]
    y = np.array([i % 3 == 0 for i in range(40)], dtype=float)
    omics = pd.DataFrame(rng.normal(size=(40, 30)), index=cases, columns=[f"g{j}" for j in range(30)])
    omics["g7"] += 3.0 * y  # the informative gene
    cohort = _cohort(omics)
    split = make_splits(cohort.manifest, "her2", n_folds=5, seed=0)[0]
    train, *_ = build_bags(cohort, split, "her2", True, ProtocolConfig(omics_genes=5))
    assert train[0].omics.shape == (5,)
    from benchmarks.data.omics import fold_omics

    z, _ = fold_omics(omics, [b.case_id for b in train], labels=[b.label for b in train], n_genes=5)
    assert "g7" in z.columns and list(z.columns) == sorted(z.columns, key=lambda g: int(g[1:]))
    held_out = [c for c in cases if c not in {b.case_id for b in train}]
    poisoned = omics.copy()
    poisoned.loc[held_out, "g3"] = 1e6 * np.arange(len(held_out))
    z2, _ = fold_omics(poisoned, [b.case_id for b in train], labels=[b.label for b in train], n_genes=5)
    assert list(z2.columns) == list(z.columns)
    # the selection does depend on the training labels (the check can fail)
    flipped = [1 - b.label for b in train]
    rng2 = np.random.default_rng(3)
    shuffled = list(rng2.permutation(flipped))
    z3, _ = fold_omics(omics, [b.case_id for b in train], labels=shuffled, n_genes=5)
    assert list(z3.columns) != list(z.columns)


def test_feature_standardisation_fitted_on_training_patches_only():
    """``feature_norm="train_zscore"``: the patch features of every part are standardised with the
    training part's per-feature mean/std; poisoning validation/test slides changes nothing of it."""
    rng = np.random.default_rng(4)
    omics = pd.DataFrame(rng.normal(size=(40, 3)), index=[f"c{i}" for i in range(40)])
    cohort = _cohort(omics)
    for s in cohort.features:  # one constant column, others on very different scales
        cohort.features[s][:, 0] = 7.0
        cohort.features[s][:, 1] *= 1000.0
    split = make_splits(cohort.manifest, "her2", n_folds=5, seed=0)[0]
    zs = ProtocolConfig(feature_norm="train_zscore")
    raw_train, raw_val, raw_test, _ = build_bags(cohort, split, "her2", False, ProtocolConfig())
    train, val, test, ext = build_bags(cohort, split, "her2", False, zs, [raw_test[0]])
    x = torch.cat([b.features for b in train]).double()
    assert torch.allclose(x.mean(0), torch.zeros(4, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(x[:, 1:].std(0, unbiased=False), torch.ones(3, dtype=torch.float64), atol=1e-4)
    assert torch.equal(x[:, 0], torch.zeros_like(x[:, 0]))  # constant feature -> 0, not NaN
    # held-out bags use the training statistics (not their own)
    raw = torch.cat([b.features for b in raw_train]).double()
    mu, sd = raw.mean(0), raw.std(0, unbiased=False)
    sd[sd < 1e-6] = 1.0
    want = ((raw_test[0].features.double() - mu) / sd).float()
    assert torch.allclose(test[0].features, want, atol=1e-4) and torch.allclose(ext[0].features, want, atol=1e-4)
    assert len(val) == len(raw_val)
    # poisoning every validation and test slide leaves the training features unchanged
    for b in raw_val + raw_test:
        cohort.features[b.slide_id][:] = 1e6
    train2, *_ = build_bags(cohort, split, "her2", False, zs)
    assert all(torch.equal(a.features, b.features) for a, b in zip(train, train2))
    # while poisoning a training slide does move them (the check can fail)
    cohort.features[raw_train[0].slide_id][:] = 1e6
    train3, *_ = build_bags(cohort, split, "her2", False, zs)
    assert not torch.equal(train[1].features, train3[1].features)
