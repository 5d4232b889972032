"""Statistics for comparing methods: AUC tests and intervals, resampled t-tests, rank tests.

Every function is pure (arrays in, numbers out) and cites the reference it follows.

* ``delong_test`` / ``delong_ci``: DeLong, DeLong & Clarke-Pearson (1988), Biometrics 44:837,
  computed with the O(n log n) midrank algorithm of Sun & Xu (2014), IEEE SPL 21(11):1389.
* ``corrected_ttest``: the corrected resampled t-test of Nadeau & Bengio (2003), Machine
  Learning 52:239 (Eq. for the "corrected resampled t"), in the repeated k-fold form of
  Bouckaert & Frank (2004), PAKDD (variance factor 1/J + n_test/n_train over J = folds x seeds).
* ``wilcoxon_test``: Wilcoxon signed-rank test (scipy.stats.wilcoxon).
* ``bootstrap_auc_ci``: percentile bootstrap of the AUC (Efron & Tibshirani 1993, ch. 13),
  resampling patients (cluster bootstrap) when ``groups`` are given.
* ``holm``: Holm (1979) step-down adjusted p-values, Scand. J. Statist. 6:65 (not Holm-Sidak).
* ``friedman_nemenyi``: Friedman test and the Nemenyi critical difference, Demsar (2006),
  JMLR 7:1, Sec. 3.2.2 (Eq. for chi2_F and CD = q_alpha sqrt(k(k+1)/(6N))).

    python -m benchmarks stats --run DIR     # prints <run>/stats.csv (written by the reporter)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
from scipy import stats as _st

__all__ = ["delong_test", "delong_ci", "auc_score", "corrected_ttest", "wilcoxon_test",
           "bootstrap_auc_ci", "holm", "friedman_nemenyi", "FriedmanResult", "nemenyi_q"]


# ------------------------------------------------------------------------------------------
# AUC and DeLong
# ------------------------------------------------------------------------------------------
def _check_binary(y_true, scores: Sequence[np.ndarray], name: str = "delong") -> tuple[np.ndarray, list[np.ndarray]]:
    y = np.asarray(y_true).ravel()
    out = []
    for s in scores:
        s = np.asarray(s, dtype=np.float64).ravel()
        if s.shape != y.shape:
            raise ValueError(f"{name}: y_true has {y.size} entries but a score vector has {s.size}; "
                             "pass one score per sample, aligned with y_true")
        if not np.all(np.isfinite(s)):
            raise ValueError(f"{name}: scores contain {int((~np.isfinite(s)).sum())} NaN/inf values")
        out.append(s)
    labels = set(np.unique(y).tolist())
    if not labels <= {0, 1, True, False}:
        raise ValueError(f"{name}: y_true must be binary 0/1; found labels {sorted(labels)}")
    y = y.astype(int)
    n_pos, n_neg = int(y.sum()), int((1 - y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"{name}: need both classes, found {n_pos} positive and {n_neg} negative "
                         "samples; the AUC is undefined")
    return y, out


def _midrank(x: np.ndarray) -> np.ndarray:
    """Midranks (1-based, ties share their mean rank): Sun & Xu (2014), Algorithm 'MidRank'."""
    return _st.rankdata(x, method="average")


def _fast_delong(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUCs and their covariance for K predictors on the same samples, O(K n log n).

    Sun & Xu (2014), Algorithm 2: with m positives X and n negatives Y, T_Z the midranks over all
    samples and T_X, T_Y within each class, the placements are V10 = (T_Z[X] - T_X) / n and
    V01 = 1 - (T_Z[Y] - T_Y) / m; AUC = mean(V10); S = cov(V10)/m + cov(V01)/n (DeLong 1988).
    scores: (K, N). Returns aucs (K,) and covariance (K, K).
    """
    pos, neg = scores[:, y == 1], scores[:, y == 0]                   # (K, m), (K, n)
    m, n = pos.shape[1], neg.shape[1]
    k = scores.shape[0]
    v10 = np.empty((k, m))
    v01 = np.empty((k, n))
    for r in range(k):
        tz = _midrank(np.concatenate([pos[r], neg[r]]))
        tx, ty = _midrank(pos[r]), _midrank(neg[r])
        v10[r] = (tz[:m] - tx) / n
        v01[r] = 1.0 - (tz[m:] - ty) / m
    aucs = v10.mean(axis=1)
    s10 = np.atleast_2d(np.cov(v10)) if m > 1 else np.zeros((k, k))
    s01 = np.atleast_2d(np.cov(v01)) if n > 1 else np.zeros((k, k))
    return aucs, s10 / m + s01 / n


def auc_score(y_true, p) -> float:
    """ROC AUC (Mann-Whitney form with ties counted 1/2) via midranks."""
    y, (s,) = _check_binary(y_true, [p], "auc")
    return float(_fast_delong(y, s[None])[0][0])


def delong_test(y_true, p1, p2) -> tuple[float, float, float, float]:
    """Paired DeLong test of two AUCs measured on the same samples.

    DeLong et al. (1988), with the fast midrank algorithm of Sun & Xu (2014).
    z = (AUC1 - AUC2) / sqrt(S11 + S22 - 2 S12); the p-value is two-sided (normal).
    Returns (auc1, auc2, z, p_value). Identical predictors give z = 0, p = 1.
    """
    y, (s1, s2) = _check_binary(y_true, [p1, p2], "delong_test")
    aucs, cov = _fast_delong(y, np.stack([s1, s2]))
    diff = aucs[0] - aucs[1]
    var = cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1]
    if var <= 1e-15:
        z = 0.0 if abs(diff) < 1e-12 else float(np.sign(diff) * np.inf)
    else:
        z = float(diff / np.sqrt(var))
    p = float(2.0 * _st.norm.sf(abs(z)))
    return float(aucs[0]), float(aucs[1]), z, p


def delong_ci(y_true, p, alpha: float = 0.05) -> tuple[float, float, float]:
    """AUC with its (1 - alpha) normal confidence interval from the DeLong variance.

    DeLong et al. (1988); the interval is clipped to [0, 1] (as pROC's ``ci.auc(method="delong")``).
    Returns (auc, lower, upper).
    """
    if not 0 < alpha < 1:
        raise ValueError(f"delong_ci: alpha must be in (0, 1), got {alpha}")
    y, (s,) = _check_binary(y_true, [p], "delong_ci")
    aucs, cov = _fast_delong(y, s[None])
    auc, se = float(aucs[0]), float(np.sqrt(max(cov[0, 0], 0.0)))
    z = _st.norm.ppf(1 - alpha / 2)
    return auc, max(0.0, auc - z * se), min(1.0, auc + z * se)


def bootstrap_auc_ci(y_true, p, groups=None, n: int = 2000, seed: int = 0,
                     alpha: float = 0.05) -> tuple[float, float, float]:
    """Percentile bootstrap CI of the AUC (Efron & Tibshirani 1993, ch. 13).

    With ``groups`` (e.g. patient ids, one per sample) whole groups are resampled with
    replacement, so the slides of one patient stay together (cluster bootstrap). Resamples that
    hold a single class are drawn again. Returns (auc, lower, upper).
    """
    y, (s,) = _check_binary(y_true, [p], "bootstrap_auc_ci")
    if n < 1:
        raise ValueError(f"bootstrap_auc_ci: n must be >= 1, got {n}")
    rng = np.random.default_rng(seed)
    auc = float(_fast_delong(y, s[None])[0][0])
    if groups is None:
        members = [np.array([i]) for i in range(y.size)]
    else:
        g = np.asarray(groups).ravel()
        if g.size != y.size:
            raise ValueError(f"bootstrap_auc_ci: groups has {g.size} entries for {y.size} samples")
        _, inv = np.unique(g, return_inverse=True)
        order = np.argsort(inv, kind="stable")
        members = np.split(order, np.cumsum(np.bincount(inv))[:-1])
    n_groups = len(members)
    boot = np.empty(n)
    done, tries = 0, 0
    while done < n:
        tries += 1
        if tries > 20 * n + 100:
            raise ValueError("bootstrap_auc_ci: too many single-class resamples; too few positives "
                             "or negatives to bootstrap")
        pick = rng.integers(0, n_groups, n_groups)
        idx = pick if groups is None else np.concatenate([members[i] for i in pick])
        yb = y[idx]
        if yb.min() == yb.max():
            continue
        boot[done] = _fast_delong(yb, s[idx][None])[0][0]
        done += 1
    lo, hi = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    return auc, float(lo), float(hi)


# ------------------------------------------------------------------------------------------
# Paired tests over folds x seeds
# ------------------------------------------------------------------------------------------
def corrected_ttest(diffs, n_train, n_test) -> tuple[float, float]:
    """Nadeau & Bengio (2003) corrected resampled t-test, two-sided.

    diffs: the J paired differences (method A - method B) over folds x seeds.
    t = mean(d) / sqrt((1/J + n_test/n_train) * var(d)), var with ddof=1, df = J - 1
    (Bouckaert & Frank 2004 for repeated k-fold). n_train / n_test may be scalars or one value
    per difference (their means are used). Returns (t, p_value); zero variance gives t = 0,
    p = 1 when the mean difference is 0 and t = +-inf, p = 0 otherwise.
    """
    d = np.asarray(diffs, dtype=np.float64).ravel()
    d = d[np.isfinite(d)]
    if d.size < 2:
        raise ValueError(f"corrected_ttest: need >= 2 paired differences, got {d.size}")
    n1 = float(np.mean(n_train))
    n2 = float(np.mean(n_test))
    if n1 <= 0 or n2 <= 0:
        raise ValueError(f"corrected_ttest: n_train and n_test must be > 0, got {n1}, {n2}")
    j = d.size
    mean, var = d.mean(), d.var(ddof=1)
    if var <= 1e-15:
        if abs(mean) < 1e-12:
            return 0.0, 1.0
        return float(np.sign(mean) * np.inf), 0.0
    t = mean / np.sqrt((1.0 / j + n2 / n1) * var)
    p = 2.0 * _st.t.sf(abs(t), df=j - 1)
    return float(t), float(p)


def wilcoxon_test(a, b) -> tuple[float, float]:
    """Two-sided Wilcoxon signed-rank test on paired scores (Wilcoxon 1945; scipy.stats.wilcoxon).

    The exact null distribution is used when n <= 50 and the |differences| have no ties or zeros;
    otherwise the normal approximation with tie correction (zero differences dropped, Wilcoxon's
    convention), which avoids scipy's slow permutation fallback. Returns (statistic, p_value);
    all-zero differences give (nan, 1.0).
    """
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"wilcoxon_test: paired samples differ in length ({a.size} vs {b.size})")
    if a.size < 1:
        raise ValueError("wilcoxon_test: need at least one pair")
    if np.allclose(a - b, 0.0):
        return float("nan"), 1.0
    d = a - b
    nz = np.abs(d[d != 0])
    exact = d.size <= 50 and nz.size == d.size and np.unique(nz).size == nz.size
    res = _st.wilcoxon(a, b, zero_method="wilcox", alternative="two-sided",
                       method="exact" if exact else "approx")
    return float(res.statistic), float(res.pvalue)


def holm(p_values) -> np.ndarray:
    """Holm (1979) step-down adjusted p-values (not Holm-Sidak).

    Sort the m p-values ascending; adj_(i) = max_{j <= i} min(1, (m - j + 1) p_(j)). NaNs are
    kept as NaN and do not count in m. Reject H_i at level alpha iff adj_i <= alpha.
    """
    p = np.asarray(p_values, dtype=np.float64).ravel()
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    if ok.size == 0:
        return out
    if np.any((p[ok] < 0) | (p[ok] > 1)):
        raise ValueError(f"holm: p-values must lie in [0, 1], got {p[ok].min()}..{p[ok].max()}")
    m = ok.size
    order = ok[np.argsort(p[ok], kind="stable")]
    adj = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(adj)
    return out


# ------------------------------------------------------------------------------------------
# Friedman + Nemenyi (several methods over several data sets / tasks)
# ------------------------------------------------------------------------------------------
def nemenyi_q(k: int, alpha: float = 0.05) -> float:
    """Critical value q_alpha of the Nemenyi test: studentized range(k, inf) / sqrt(2) (Demsar 2006, Table 5a)."""
    if k < 2:
        raise ValueError(f"nemenyi_q: need k >= 2 methods, got {k}")
    return float(_st.studentized_range.ppf(1 - alpha, k, np.inf) / np.sqrt(2.0))


@dataclass(frozen=True)
class FriedmanResult:
    """ranks: mean rank per method (1 = best); statistic: Friedman chi2_F (tie-corrected);
    p_value: chi2 with k-1 df; cd: Nemenyi critical difference at ``alpha``."""

    ranks: pd.Series
    statistic: float
    p_value: float
    cd: float
    n_blocks: int
    alpha: float


def friedman_nemenyi(scores, alpha: float = 0.05, higher_is_better: bool = True) -> FriedmanResult:
    """Friedman test over N blocks (tasks / data sets) x k methods, and the Nemenyi CD.

    Demsar (2006), Sec. 3.2.2: ranks within each block (ties share the mean rank),
    chi2_F = 12N / (k(k+1)) [sum_j R_j^2 - k(k+1)^2 / 4], divided by the tie correction
    1 - sum(t^3 - t) / (N k (k^2 - 1)) (as scipy.stats.friedmanchisquare), and
    CD = q_alpha sqrt(k(k+1) / (6N)). scores: DataFrame (blocks x methods) or a 2-D array;
    rows with a missing value are dropped.
    """
    df = scores if isinstance(scores, pd.DataFrame) else pd.DataFrame(np.asarray(scores, dtype=float))
    df = df.dropna(axis=0, how="any")
    n, k = df.shape
    if k < 2 or n < 2:
        raise ValueError(f"friedman_nemenyi: need >= 2 methods and >= 2 complete blocks, got "
                         f"{k} methods and {n} blocks")
    vals = df.to_numpy(dtype=np.float64)
    ranks = _st.rankdata(-vals if higher_is_better else vals, axis=1, method="average")  # (N, k)
    mean_ranks = ranks.mean(axis=0)
    chi2 = 12.0 * n / (k * (k + 1)) * (np.sum(mean_ranks ** 2) - k * (k + 1) ** 2 / 4.0)
    ties = 0.0
    for row in ranks:
        _, counts = np.unique(row, return_counts=True)
        ties += np.sum(counts ** 3 - counts)
    corr = 1.0 - ties / (n * k * (k * k - 1))
    chi2 = chi2 / corr if corr > 0 else float("nan")
    p = float(_st.chi2.sf(chi2, k - 1)) if np.isfinite(chi2) else float("nan")
    cd = nemenyi_q(k, alpha) * np.sqrt(k * (k + 1) / (6.0 * n))
    return FriedmanResult(ranks=pd.Series(mean_ranks, index=df.columns, name="mean_rank"),
                          statistic=float(chi2), p_value=p, cd=float(cd), n_blocks=n, alpha=alpha)


# ------------------------------------------------------------------------------------------
# CLI: print the pairwise tests of a finished run
# ------------------------------------------------------------------------------------------
def add_arguments(parser) -> None:
    parser.add_argument("--run", required=True, help="run directory (holds jobs/ and stats.csv)")
    parser.add_argument("--all", action="store_true", help="show every test, not only significant ones")


def main(args) -> int:
    """Print the pairwise significance tests of a run (re-computed from its saved job results)."""
    from pathlib import Path
    from tabulate import tabulate
    from . import report

    run = Path(args.run)
    if not (run / "jobs").is_dir():
        print(f"error: {run} has no jobs/ folder; pass a run directory written by `benchmarks run`")
        return 2
    metrics, preds = report.load_results(run)
    df = report.compute_stats(metrics, preds)
    if not getattr(args, "all", False) and not df.empty:
        df = df[df["significant"]]
    cols = ["table", "task", "split", "metric", "other", "test", "n", "diff", "p", "p_holm"]
    print(tabulate(df[cols], headers="keys", tablefmt="github", showindex=False, floatfmt=".4g")
          if not df.empty else "no significant differences" if len(metrics) else "no results")
    return 0
