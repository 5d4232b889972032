import dataclasses

import numpy as np
import torch

from baselines.abmil import ABMIL
from benchmarks.data.bag import Bag
from benchmarks.engine import evaluate, fit, run_job, seed_everything
from benchmarks.metrics import binary_metrics, choose_threshold
from benchmarks.protocol import ProtocolConfig


def _bags(n, seed, d=8, shift=1.0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        y = i % 2
        f = torch.randn(12, d, generator=g)
        f[:3, 0] += shift * y  # a few informative patches
        out.append(Bag(f"s{seed}_{i}", f"c{seed}_{i}", f, labels={"t": y}).for_task("t"))
    return out


PROTO = ProtocolConfig(max_epochs=3, min_epochs=1, patience=2, lr=1e-3)


def _run(seed=0, proto=PROTO, test=None):
    seed_everything(seed)
    model = ABMIL(8, 2, embed_dim=16, attn_dim=8)
    return run_job(model, _bags(16, 1), _bags(8, 2), test or _bags(8, 3), [], proto, seed=seed)


def test_same_seed_gives_identical_metrics_twice():
    a, b = _run(0), _run(0)
    assert a["metrics"]["test"] == b["metrics"]["test"]
    assert [r["train_total"] for r in a["curve"]] == [r["train_total"] for r in b["curve"]]
    c = _run(1)
    assert c["metrics"]["test"] != a["metrics"]["test"] or c["curve"] != a["curve"]


def test_test_labels_never_influence_choices():
    """Flipping every test label changes the test metrics but not the epoch or threshold chosen."""
    proto = dataclasses.replace(PROTO, threshold="val_f1")
    test = _bags(8, 3)
    flipped = [dataclasses.replace(b, label=1 - b.label) for b in test]
    a, b = _run(0, proto, test), _run(0, proto, flipped)
    assert a["best_epoch"] == b["best_epoch"] and a["threshold"] == b["threshold"]
    assert a["predictions"]["test"][0]["p"] == b["predictions"]["test"][0]["p"]
    assert a["metrics"]["test"]["auc"] != b["metrics"]["test"]["auc"]


def test_early_stopping_restores_best_validation_checkpoint():
    seed_everything(0)
    model = ABMIL(8, 2, embed_dim=16, attn_dim=8)
    proto = ProtocolConfig(max_epochs=6, min_epochs=1, patience=1, lr=5e-3)
    out = fit(model, _bags(16, 1), _bags(8, 2), proto, seed=0)
    scores = [r["val_score"] for r in out["curve"]]
    assert out["best_epoch"] == int(np.argmax(scores))
    # the restored model reproduces the best epoch's validation score
    res = evaluate(model, _bags(8, 2), [], [], proto)
    assert abs(res["metrics"]["val"]["auc"] - max(scores)) < 1e-9


def test_evaluation_refuses_bags_with_omics():
    model = ABMIL(8, 2, embed_dim=16, attn_dim=8)
    bag = dataclasses.replace(_bags(1, 0)[0], omics=torch.zeros(4))
    try:
        evaluate(model, [bag], [], [], PROTO)
    except RuntimeError as e:
        assert "must not carry omics" in str(e)
    else:
        raise AssertionError("evaluation accepted a bag with omics")


def test_metrics_match_sklearn_definitions_and_threshold_rule():
    from sklearn.metrics import f1_score, roc_auc_score

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 50)
    p = np.clip(y * 0.3 + rng.random(50) * 0.7, 0, 1)
    m = binary_metrics(y, p)
    assert m["auc"] == roc_auc_score(y, p)
    assert m["f1"] == f1_score(y, p >= 0.5, average="macro")
    t = choose_threshold(y, p, "f1")
    best = max(f1_score(y, p >= c, average="macro") for c in np.unique(p))
    assert f1_score(y, p >= t, average="macro") == best
