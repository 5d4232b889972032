"""The pooling floor (baselines/pooling.py): mean and max pooling with a linear head."""
from __future__ import annotations

import pytest
import torch

from baselines.pooling import PoolingMIL
from benchmarks import registry
from tests.conftest import make_bag


@pytest.mark.parametrize("pool", ["mean", "max"])
def test_logits_are_a_linear_head_on_the_pooled_features(pool: str) -> None:
    torch.manual_seed(0)
    bag = make_bag(n=30, d=12, label=1)
    model = PoolingMIL(12, 2, pool=pool).eval()
    x = bag.features
    pooled = x.mean(0) if pool == "mean" else x.max(0).values
    want = pooled @ model.classifier.weight.T + model.classifier.bias
    out = model(bag)
    torch.testing.assert_close(out.logits[0], want)
    assert out.attention.shape == (30,) and float(out.attention.sum()) == pytest.approx(1.0)
    if pool == "mean":
        assert torch.allclose(out.attention, torch.full((30,), 1 / 30))
    else:  # each patch's share of the dimensions whose maximum it holds
        holders = x.argmax(0)
        assert float(out.attention[holders[0]]) >= 1 / 12 and int((out.attention > 0).sum()) == holders.unique().numel()


@pytest.mark.parametrize("pool", ["mean", "max"])
@pytest.mark.parametrize("hidden_dim", [0, 16])
def test_padded_batch_equals_each_slide_alone(pool: str, hidden_dim: int) -> None:
    torch.manual_seed(1)
    model = PoolingMIL(8, 2, pool=pool, hidden_dim=hidden_dim).eval()
    bags = [make_bag(n=n, d=8, label=0) for n in (5, 11, 3)]
    feats = torch.zeros(3, 11, 8)
    mask = torch.zeros(3, 11, dtype=torch.bool)
    for i, b in enumerate(bags):
        feats[i, :len(b.features)] = b.features
        mask[i, :len(b.features)] = True
    batch = model.forward_batch(feats, mask).logits
    for i, b in enumerate(bags):
        torch.testing.assert_close(batch[i], model(b).logits[0])


def test_the_floor_is_its_own_family_and_learns_a_mean_shift() -> None:
    from benchmarks.engine import fit, predict
    from benchmarks.metrics import binary_metrics
    from benchmarks.protocol import ProtocolConfig

    for name in ("meanpool", "maxpool"):
        assert registry.get(name).family == "floor"
    g = torch.Generator().manual_seed(0)

    def bag(i: int, y: int):
        b = make_bag(n=20, d=6, label=y)
        b.features = torch.randn(20, 6, generator=g) + (0.8 * y) * torch.tensor([1.0, 0, 0, 0, 0, 0])
        b.slide_id = f"s{i}"
        return b

    train = [bag(i, i % 2) for i in range(40)]
    test = [bag(100 + i, i % 2) for i in range(20)]
    model = registry.get("meanpool").create(6, None, 2)
    proto = ProtocolConfig(max_epochs=5, min_epochs=5, patience=None, lr=1e-2)
    fit(model, train, test[:10], proto, seed=0)
    p = predict(model, test, torch.device("cpu"), proto)
    assert binary_metrics([b.label for b in test], p)["auc"] > 0.9


@pytest.mark.parametrize("pool", ["mean", "max"])
def test_the_linear_probe_standardises_pooled_vectors_with_training_bags_only(pool: str) -> None:
    torch.manual_seed(2)
    train = [make_bag(n=10 + i, d=5, label=i % 2, seed=i) for i in range(12)]
    for i, b in enumerate(train):
        b.features = b.features * 30 + 100  # far from unit scale, as raw foundation-model features often are
    model = PoolingMIL(5, 2, pool=pool)
    model.on_fit_start(train)
    z = torch.cat([model._scale(model._pool(b.features)) for b in train])
    torch.testing.assert_close(z.mean(0), torch.zeros(5), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.std(0, unbiased=False), torch.ones(5), atol=1e-5, rtol=0)
    assert "pool_mean" in model.state_dict()  # saved with the weights
    embedded = PoolingMIL(5, 2, pool=pool, hidden_dim=8)
    embedded.on_fit_start(train)
    assert not embedded.standardize and torch.equal(embedded.pool_mean, torch.zeros(5))


def test_the_probe_starts_from_the_logistic_regression_of_the_training_bags() -> None:
    from sklearn.linear_model import LogisticRegression

    train = [make_bag(n=8 + i, d=4, label=int(i % 3 == 0), seed=10 + i) for i in range(15)]
    model = PoolingMIL(4, 2, pool="mean").eval()
    model.on_fit_start(train)
    z = torch.cat([model._scale(b.features.mean(0, keepdim=True)) for b in train]).double().numpy()
    lr = LogisticRegression(C=1.0, class_weight="balanced", max_iter=2000).fit(z, [b.label for b in train])
    logits = torch.cat([model(b).logits for b in train])
    diff = (logits[:, 1] - logits[:, 0]).detach().double().numpy()
    assert abs(diff - lr.decision_function(z)).max() < 1e-4
    random = PoolingMIL(4, 2, pool="mean", init="random")
    before = random.classifier.weight.clone()
    random.on_fit_start(train)
    assert torch.equal(random.classifier.weight, before)
