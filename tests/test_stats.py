"""benchmarks/stats.py against independent computations and textbook values."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from sklearn.metrics import roc_auc_score

from benchmarks import stats as st


def _pair(n: int = 120, seed: int = 0, ties: bool = True):
    """Two correlated scores on the same binary labels; rounded so that ties occur."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.35).astype(int)
    common = rng.normal(size=n)
    p1 = 0.9 * y + common + 0.6 * rng.normal(size=n)
    p2 = 0.5 * y + common + 0.6 * rng.normal(size=n)
    if ties:
        p1, p2 = np.round(p1, 1), np.round(p2, 1)
    return y, p1, p2


def _brute_delong(y, scores):
    """DeLong et al. (1988) by definition, O(m n): psi(x, y) = 1 if x > y, 1/2 if equal, 0 else."""
    pos, neg = [s[y == 1] for s in scores], [s[y == 0] for s in scores]
    m, n = len(pos[0]), len(neg[0])
    v10, v01, aucs = [], [], []
    for x, z in zip(pos, neg):
        psi = (x[:, None] > z[None, :]).astype(float) + 0.5 * (x[:, None] == z[None, :])
        aucs.append(psi.mean())
        v10.append(psi.mean(axis=1))          # one per positive
        v01.append(psi.mean(axis=0))          # one per negative
    k = len(scores)
    s10 = np.array([[np.sum((v10[a] - aucs[a]) * (v10[b] - aucs[b])) / (m - 1) for b in range(k)] for a in range(k)])
    s01 = np.array([[np.sum((v01[a] - aucs[a]) * (v01[b] - aucs[b])) / (n - 1) for b in range(k)] for a in range(k)])
    return np.array(aucs), s10 / m + s01 / n


# ------------------------------------------------------------------------------------------
# DeLong
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_delong_matches_bruteforce_and_sklearn(seed):
    y, p1, p2 = _pair(seed=seed)
    auc1, auc2, z, p = st.delong_test(y, p1, p2)
    aucs, cov = _brute_delong(y, [p1, p2])
    assert (auc1, auc2) == (pytest.approx(aucs[0], abs=1e-12), pytest.approx(aucs[1], abs=1e-12))
    assert auc1 == pytest.approx(roc_auc_score(y, p1), abs=1e-12)
    z_ref = (aucs[0] - aucs[1]) / math.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    assert z == pytest.approx(z_ref, rel=1e-10)
    assert p == pytest.approx(math.erfc(abs(z_ref) / math.sqrt(2)), rel=1e-10)   # 2 * (1 - Phi(|z|))
    auc, lo, hi = st.delong_ci(y, p1, alpha=0.05)
    half = 1.959963984540054 * math.sqrt(cov[0, 0])
    assert (lo, hi) == (pytest.approx(max(0, aucs[0] - half)), pytest.approx(min(1, aucs[0] + half)))


def test_delong_variance_agrees_with_bootstrap():
    y, p1, p2 = _pair(n=300, seed=5, ties=False)
    aucs, cov = _brute_delong(y, [p1, p2])
    rng = np.random.default_rng(0)
    idx = rng.integers(0, y.size, (2000, y.size))                # 2000 resamples, both classes present

    def mann_whitney_auc(score):                                  # (U / (m n)) row by row, vectorised
        yy, r = y[idx], sps.rankdata(score[idx], axis=1)
        m = yy.sum(axis=1)
        return ((r * yy).sum(axis=1) - m * (m + 1) / 2) / (m * (y.size - m))

    a1 = mann_whitney_auc(p1)
    diffs = a1 - mann_whitney_auc(p2)
    se_delong = math.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    assert np.std(diffs, ddof=1) == pytest.approx(se_delong, rel=0.12)
    assert np.std(a1, ddof=1) == pytest.approx(math.sqrt(cov[0, 0]), rel=0.12)
    # the two CIs of the AUC agree too (normal DeLong vs percentile bootstrap)
    _, lo_d, hi_d = st.delong_ci(y, p1)
    auc, lo_b, hi_b = st.bootstrap_auc_ci(y, p1, n=1000, seed=1)
    assert auc == pytest.approx(aucs[0])
    assert (hi_b - lo_b) == pytest.approx(hi_d - lo_d, rel=0.15)
    assert lo_b < auc < hi_b


def test_delong_edge_cases():
    y, p1, p2 = _pair(seed=3)
    a1, a2, z, p = st.delong_test(y, p1, p1.copy())
    assert (z, p) == (0.0, 1.0) and a1 == a2
    _, _, z12, p12 = st.delong_test(y, p1, p2)
    _, _, z21, p21 = st.delong_test(y, p2, p1)
    assert z21 == pytest.approx(-z12) and p21 == pytest.approx(p12)
    with pytest.raises(ValueError, match="both classes"):
        st.delong_test(np.ones(5), np.arange(5.0), np.arange(5.0))
    with pytest.raises(ValueError, match="entries"):
        st.delong_test(y, p1[:-1], p2)
    assert st.auc_score(y, p2) == pytest.approx(roc_auc_score(y, p2))


def test_bootstrap_resamples_patients():
    """Each patient holds two identical slides: the patient bootstrap must equal the slide
    bootstrap of the de-duplicated data, while a slide bootstrap that ignores the patients is
    too narrow."""
    y, p1, _ = _pair(n=80, seed=4, ties=False)
    y2, p2 = np.repeat(y, 2), np.repeat(p1, 2)
    groups = np.repeat([f"P{i:03d}" for i in range(y.size)], 2)
    grouped = st.bootstrap_auc_ci(y2, p2, groups=groups, n=400, seed=3)
    dedup = st.bootstrap_auc_ci(y, p1, n=400, seed=3)
    assert grouped == pytest.approx(dedup)
    naive = st.bootstrap_auc_ci(y2, p2, n=400, seed=3)
    assert (naive[2] - naive[1]) < 0.85 * (grouped[2] - grouped[1])
    assert st.bootstrap_auc_ci(y, p1, n=50, seed=9) == st.bootstrap_auc_ci(y, p1, n=50, seed=9)


# ------------------------------------------------------------------------------------------
# Corrected resampled t-test, Wilcoxon
# ------------------------------------------------------------------------------------------
def test_corrected_ttest_by_hand():
    d = np.array([0.021, 0.034, -0.005, 0.018, 0.027, 0.012, 0.030, 0.009, 0.015, 0.024])
    n_train, n_test = 540, 135
    j = d.size
    mean = sum(d) / j
    var = sum((x - mean) ** 2 for x in d) / (j - 1)
    t_hand = mean / math.sqrt((1 / j + n_test / n_train) * var)
    t, p = st.corrected_ttest(d, n_train, n_test)
    assert t == pytest.approx(t_hand, rel=1e-12)
    assert p == pytest.approx(2 * sps.t.sf(abs(t_hand), j - 1), rel=1e-12)
    # the correction only widens: the uncorrected paired t-test (n_test/n_train -> 0) is scipy's
    t0, p0 = st.corrected_ttest(d, 1e12, 1)
    ref = sps.ttest_1samp(d, 0.0)
    assert (t0, p0) == (pytest.approx(ref.statistic), pytest.approx(ref.pvalue))
    assert p > p0
    # per-difference sizes are averaged
    assert st.corrected_ttest(d, np.full(j, n_train), np.full(j, n_test)) == pytest.approx((t, p))


def test_corrected_ttest_textbook_quantile():
    """t_{0.975, df=4} = 2.776 (Student t table): a t of 2.776 over 5 folds gives p = 0.05."""
    d = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    n_train, n_test = 400, 100
    scale = math.sqrt((1 / 5 + n_test / n_train) * d.var(ddof=1))
    shift = 2.7764451051977987 * scale - d.mean()      # make mean / scale exactly t_{0.975,4}
    t, p = st.corrected_ttest(d + shift, n_train, n_test)
    assert t == pytest.approx(2.776, abs=5e-4) and p == pytest.approx(0.05, abs=1e-6)
    assert st.corrected_ttest(np.zeros(5), 10, 2) == (0.0, 1.0)
    with pytest.raises(ValueError, match=">= 2"):
        st.corrected_ttest([0.1], 10, 2)


def test_wilcoxon_exact_and_tied_cases():
    # all five differences positive: exact two-sided p = 2 / 2^5 = 0.0625
    stat, p = st.wilcoxon_test([0.80, 0.82, 0.85, 0.79, 0.90], [0.70, 0.75, 0.71, 0.78, 0.60])
    assert p == pytest.approx(0.0625) and stat == 0.0
    # tied |differences|: normal approximation, close to the exact permutation p-value
    a = np.array([0.8, 0.7, 0.9, 0.6, 0.85, 0.75, 0.95, 0.65])
    b = a - np.array([0.1, 0.1, 0.2, -0.1, 0.2, 0.1, 0.3, 0.1])
    _, p = st.wilcoxon_test(a, b)
    d = np.round(a - b, 10)
    ranks = sps.rankdata(np.abs(d))
    w_obs = min(ranks[d > 0].sum(), ranks[d < 0].sum())
    signs = np.array(np.meshgrid(*[[1, -1]] * d.size)).reshape(d.size, -1).T   # all 2^8 sign flips
    w_all = np.minimum((signs > 0) @ ranks, (signs < 0) @ ranks)
    p_exact = np.mean(w_all <= w_obs + 1e-12)
    assert p == pytest.approx(p_exact, abs=0.03)
    assert st.wilcoxon_test([1, 2], [1, 2])[1] == 1.0


# ------------------------------------------------------------------------------------------
# Holm
# ------------------------------------------------------------------------------------------
def test_holm_worked_example():
    """Holm (1979); the worked example of the Holm-Bonferroni method (Wikipedia): p = (0.01, 0.04,
    0.03, 0.005), alpha = 0.05: reject H1 and H4 only."""
    adj = st.holm([0.01, 0.04, 0.03, 0.005])
    assert adj == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert list(adj <= 0.05) == [True, False, False, True]


def test_holm_equals_step_down_procedure():
    rng = np.random.default_rng(0)
    for _ in range(50):
        p = rng.random(int(rng.integers(1, 9))) ** 3
        adj = st.holm(p)
        for alpha in (0.01, 0.05, 0.1, 0.3):
            # step-down: walk the sorted p-values, reject while p_(i) <= alpha / (m - i)
            rejected = np.zeros(p.size, bool)
            for i, k in enumerate(np.argsort(p, kind="stable")):
                if p[k] > alpha / (p.size - i):
                    break
                rejected[k] = True
            assert np.array_equal(adj <= alpha, rejected)
    # NaN stays NaN and is not counted; not Holm-Sidak
    assert np.allclose(st.holm([0.02, np.nan, 0.04]), [0.04, np.nan, 0.04], equal_nan=True)
    sidak = 1 - (1 - 0.02) ** 2
    assert st.holm([0.02, 0.5])[0] != pytest.approx(sidak)


# ------------------------------------------------------------------------------------------
# Friedman + Nemenyi
# ------------------------------------------------------------------------------------------
def test_friedman_matches_scipy_with_ties():
    rng = np.random.default_rng(1)
    scores = np.round(rng.normal(size=(7, 5)) + np.arange(5) * 0.4, 1)   # 7 tasks x 5 methods
    scores[0, 1] = scores[0, 2]                                           # a tie
    res = st.friedman_nemenyi(pd.DataFrame(scores, columns=list("abcde")))
    ref = sps.friedmanchisquare(*scores.T)
    assert res.statistic == pytest.approx(ref.statistic, rel=1e-12)
    assert res.p_value == pytest.approx(ref.pvalue, rel=1e-10)
    # mean ranks, 1 = best (highest score), recomputed per row
    ranks = np.mean([sps.rankdata(-row) for row in scores], axis=0)
    assert res.ranks.to_numpy() == pytest.approx(ranks)
    low = st.friedman_nemenyi(-scores, higher_is_better=False)
    assert low.ranks.to_numpy() == pytest.approx(ranks)


def test_nemenyi_critical_difference_textbook():
    """Demsar (2006) Table 5a (q_0.05 for k = 2..10) and his example: k = 4, N = 14 gives CD = 1.25."""
    table5a = [1.960, 2.343, 2.569, 2.728, 2.850, 2.949, 3.031, 3.102, 3.164]
    for k, q in zip(range(2, 11), table5a):
        assert st.nemenyi_q(k) == pytest.approx(q, abs=2e-3)
    rng = np.random.default_rng(2)
    res = st.friedman_nemenyi(rng.normal(size=(14, 4)))
    assert round(res.cd, 2) == 1.25
    with pytest.raises(ValueError, match="2 complete blocks"):
        st.friedman_nemenyi(np.ones((1, 3)))
