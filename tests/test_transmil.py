"""TransMIL: golden reproduction (nystrom-attention 0.0.14), square padding, edge cases, seeding."""
from types import SimpleNamespace

import pytest
import torch

from baselines.transmil import TransMIL, build, from_official, square_pad
from tests.conftest import assert_close, golden_cases, load_golden, make_bag

TINY = dict(embed_dim=32, heads=4, num_landmarks=8)  # small widths for fast tests


def _bag(x, sid="s0", label=None):
    return SimpleNamespace(features=x, slide_id=sid, label=label)


def test_transmil_reproduces_official():
    fx = load_golden("transmil.pt")
    model = from_official(fx["state_dict"], **fx["official_config"]).double().eval()
    assert model._fc1[0].in_features == fx["run_config"]["in_dim"]
    for inputs, exp in golden_cases(fx):
        with torch.no_grad():
            out = model(_bag(inputs["features"], "golden"))
        assert_close(out.logits, exp["logits"], "logits")
        assert_close(torch.softmax(out.logits, dim=1), exp["Y_prob"], "Y_prob")
        assert_close(out.logits.argmax(dim=1).double(), exp["Y_hat"], "Y_hat")


def test_square_pad_appends_copies_of_the_first_rows():
    h = torch.arange(5 * 2, dtype=torch.float64).reshape(1, 5, 2)
    padded, side = square_pad(h)
    assert side == 3 and padded.shape == (1, 9, 2)
    assert torch.equal(padded[0, 5:], h[0, :4])
    for n, side in [(1, 1), (4, 2), (16, 4), (17, 5), (10**6, 1000), (10**6 + 1, 1001)]:
        assert square_pad(torch.zeros(1, n, 1))[1] == side


def test_transmil_padding_is_the_official_one():
    """A non-square bag gives the same logits as the same bag with its first rows appended by hand."""
    torch.manual_seed(0)
    model = build(12, None, 2, **TINY).double().eval()
    x = torch.randn(11, 12, dtype=torch.float64)  # k = 4: the first 5 rows are appended
    out = model(_bag(x))
    assert out.extras["grid_side"] == 4 and out.extras["n_padded"] == 5
    by_hand = model(_bag(torch.cat([x, x[:5]])))
    assert by_hand.extras["n_padded"] == 0
    assert torch.allclose(out.logits, by_hand.logits, atol=1e-12)
    zeros = model(_bag(torch.cat([x, torch.zeros(5, 12, dtype=torch.float64)])))
    assert not torch.allclose(out.logits, zeros.logits, atol=1e-6)


@pytest.mark.parametrize("n", [1, 2, 16, 17])
def test_transmil_edge_bag_sizes_with_official_widths(n):
    """1 instance, a perfect square (no padding), k^2 + 1; official widths (512, 8 heads, 256 landmarks)."""
    torch.manual_seed(0)
    model = build(24, None, 3).eval()
    out = model(make_bag(n=n, d=24))
    assert out.logits.shape == (1, 3) and torch.isfinite(out.logits).all() and out.attention is None
    side = {1: 1, 2: 2, 16: 4, 17: 5}[n]
    assert out.extras["grid_side"] == side and out.extras["n_padded"] == side * side - n


def test_transmil_depends_on_order_and_is_deterministic():
    torch.manual_seed(0)
    model = build(12, None, 2, **TINY).double().eval()
    x = torch.randn(20, 12, dtype=torch.float64)
    a, b = model(_bag(x)), model(_bag(x.clone()))
    assert torch.equal(a.logits, b.logits)
    perm = torch.randperm(20, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(a.logits, model(_bag(x[perm])).logits, atol=1e-6)  # official: order matters


def test_transmil_training_randomness_follows_the_global_seed():
    torch.manual_seed(0)
    model = build(12, None, 2, **TINY).train()
    bag = make_bag(n=20, d=12, label=1)

    def run(seed):
        torch.manual_seed(seed)
        return model(bag).logits.detach()

    assert torch.equal(run(3), run(3))
    assert not torch.equal(run(3), run(4))  # attention-output dropout 0.1


def test_transmil_any_dim_float32_loss_and_gradients():
    torch.manual_seed(0)
    model = build(20, None, 3, **TINY).train()
    bag = make_bag(n=10, d=20, label=2)
    out = model(bag)
    assert out.logits.dtype == torch.float32
    terms = model.loss(out, bag)
    assert set(terms) == {"total", "ce"} and torch.isfinite(terms["total"])
    terms["total"].backward()
    missing = [k for k, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient for {missing}"


def test_transmil_rejects_empty_bag_and_bad_config():
    model = build(8, None, 2, **TINY)
    with pytest.raises(ValueError, match="slide-0.*empty bag"):
        model(_bag(torch.zeros(0, 8), "slide-0"))
    with pytest.raises(ValueError, match="divisible"):
        build(8, None, 2, embed_dim=30, heads=4)


def test_transmil_from_official_reads_sizes_and_strips_lightning_prefix():
    torch.manual_seed(0)
    src = TransMIL(1536, 4)
    sd = {f"model.{k}": v for k, v in src.state_dict().items()}
    model = from_official(sd, n_classes=4)
    assert model._fc1[0].in_features == 1536 and model._fc2.out_features == 4
    with pytest.raises(ValueError, match="n_classes=2"):
        from_official(src.state_dict(), n_classes=2)
