import dataclasses

import numpy as np
import pytest
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
    # highest validation AUC; among equal AUCs the lowest validation log-loss, then the earliest
    keys = [(r["val_score"], -r["val_loss"], -r["epoch"]) for r in out["curve"]]
    assert out["best_epoch"] == max(range(len(keys)), key=keys.__getitem__)
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


def test_tied_validation_auc_is_broken_by_validation_loss():
    """A small validation part ties its AUC across epochs: the later, better-calibrated epoch wins
    over the first one, and a worse AUC never wins on loss."""
    from benchmarks.engine import _improves, _log_loss

    y = np.array([0, 0, 1, 1])
    flat, sharp = np.array([0.49, 0.49, 0.51, 0.51]), np.array([0.1, 0.2, 0.8, 0.9])
    assert _log_loss(y, sharp) < _log_loss(y, flat)
    assert _improves(1.0, _log_loss(y, sharp), 1.0, _log_loss(y, flat))
    assert not _improves(1.0, _log_loss(y, flat), 1.0, _log_loss(y, sharp))
    assert not _improves(0.9, 0.01, 1.0, _log_loss(y, flat))
    assert _improves(1.0, 5.0, 0.9, 0.01)


def test_padded_batch_of_one_equals_plain_path():
    """Optional multi-slide batching: a batch of one through ABMIL's padded path gives the plain
    path's logits, loss and gradients; in a padded batch of three each slide's logits equal its own
    forward (padding is masked out)."""
    from benchmarks.batching import pad_bags

    torch.manual_seed(0)
    model = ABMIL(8, 2, embed_dim=16, attn_dim=8).double().eval()
    bags = [dataclasses.replace(b, features=b.features.double()) for b in _bags(3, 5)]
    bags = [dataclasses.replace(b, features=b.features[: 3 + 2 * i]) for i, b in enumerate(bags)]

    def grads(loss):
        model.zero_grad()
        loss.backward()
        return [p.grad.clone() for p in model.parameters()]

    out = model(bags[0])
    plain = model.loss(out, bags[0])["total"]
    g_plain = grads(plain)
    one = pad_bags(bags[:1])
    out1 = model.forward_batch(one.features, one.mask)
    padded = model.loss(out1, one)["total"]
    torch.testing.assert_close(out1.logits, out.logits, rtol=0, atol=1e-12)
    torch.testing.assert_close(padded, plain, rtol=0, atol=1e-12)
    for a, b in zip(grads(padded), g_plain):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    three = pad_bags(bags)
    assert three.features.shape[1] == 7 and not bool(three.mask[0, 3:].any())
    logits = model.forward_batch(three.features, three.mask).logits
    for i, b in enumerate(bags):
        torch.testing.assert_close(logits[i:i + 1], model(b).logits, rtol=0, atol=1e-12)


def test_batch_size_setting_trains_and_falls_back_for_unbatched_models():
    from baselines.dsmil import build as build_dsmil

    proto = ProtocolConfig(max_epochs=2, min_epochs=1, patience=1, batch_size=4)
    seed_everything(0)
    out = fit(ABMIL(8, 2, embed_dim=16, attn_dim=8), _bags(16, 1), _bags(8, 2), proto, seed=0)
    assert {r["batch_size"] for r in out["curve"]} == {4}
    seed_everything(0)
    out = fit(build_dsmil(8, None, 2), _bags(16, 1), _bags(8, 2), proto, seed=0)
    assert {r["batch_size"] for r in out["curve"]} == {1}


@pytest.mark.slow
def test_compiled_forward_matches_eager():
    """``--compile``: the torch.compile'd forward trains to the eager model's curve (CPU inductor)."""
    proto = ProtocolConfig(max_epochs=2, min_epochs=1, patience=1, lr=1e-3)
    seed_everything(0)
    eager = fit(ABMIL(8, 2, embed_dim=16, attn_dim=8, dropout=0.0), _bags(16, 1), _bags(8, 2), proto, seed=0)
    seed_everything(0)
    comp = fit(ABMIL(8, 2, embed_dim=16, attn_dim=8, dropout=0.0), _bags(16, 1), _bags(8, 2),
               dataclasses.replace(proto, compile=True), seed=0)
    for a, b in zip(eager["curve"], comp["curve"]):
        assert abs(a["train_total"] - b["train_total"]) < 1e-4


def test_momkd_per_edge_attention_stays_float32_under_cpu_bf16():
    """Every method's bf16 step is a contract rule (benchmarks/checks.py); MoMKD's per-edge
    attention and softmax must stay float32 under it (its output dtype says so)."""
    from benchmarks.perf import make_case
    from momkd.encoders import cached_blocks, gatv2_chunked

    model, bag, step, _ = make_case("momkd", 40, 32, 16, bf16=True)
    step()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = gatv2_chunked(model.wsi.gat1, bag.features, cached_blocks(bag.edge_index, 40, 64))
    assert out.dtype == torch.float32


@pytest.fixture
def deterministic_state():
    was_on, was_warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    was_fill = torch.utils.deterministic.fill_uninitialized_memory
    yield
    torch.use_deterministic_algorithms(was_on, warn_only=was_warn)
    torch.utils.deterministic.fill_uninitialized_memory = was_fill


def test_seed_everything_keeps_determinism_without_the_nan_fill(deterministic_state):
    torch.utils.deterministic.fill_uninitialized_memory = True
    seed_everything(0)
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.utils.deterministic.fill_uninitialized_memory is False
