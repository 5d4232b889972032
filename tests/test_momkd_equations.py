"""Each MoMKD equation on a case small enough to compute by hand."""
import math

import pytest
import torch
import torch.nn.functional as F

from momkd import MoMKD
from momkd.losses import (alignment_loss, commitment_loss, lse_aggregate, memory_differential,
                          memory_regulariser, reconstruction_loss)
from momkd.memory import orthogonality
from tests.conftest import make_bag

E1, E2 = [1.0, 0.0], [0.0, 1.0]
TINY = dict(hidden_dim=8, proj_dim=4, n_memory=3, omics_hidden=8, omics_embed_dim=8, cls_hidden=6)


def t(x):
    return torch.tensor(x, dtype=torch.float64)


def test_eq2_logsumexp_aggregate():
    # phi([1,0], {e1, e2}) = ln(e^5 + e^0) / 5
    got = lse_aggregate(t([E1]), t([E1, E2]), tau_agg=5.0)
    assert got.item() == pytest.approx(math.log(math.exp(5) + 1) / 5, abs=1e-12)
    # one centroid: phi = F.c exactly; large tau -> max
    assert lse_aggregate(t([[0.6, 0.8]]), t([E2]), 5.0).item() == pytest.approx(0.8, abs=1e-12)
    assert lse_aggregate(t([[0.6, 0.8]]), t([E1, E2]), 1e4).item() == pytest.approx(0.8, abs=1e-3)


def test_eq3_alignment_both_labels():
    f, pos, neg = t([E1]), t([E1]), t([E2])  # Delta = 1 - 0 = 1
    assert memory_differential(f, pos, neg).item() == pytest.approx(1.0, abs=1e-12)
    # y = 1: softplus(20 (0.3 - 1)) = ln(1 + e^-14)
    assert alignment_loss(f, pos, neg, 1).item() == pytest.approx(math.log1p(math.exp(-14)), rel=1e-9)
    # y = 0: softplus(20 (0.3 + 1)) = 26 (softplus is linear above its threshold 20)
    assert alignment_loss(f, pos, neg, 0).item() == pytest.approx(26.0, abs=1e-9)
    # the margin: Delta exactly 0.3 gives softplus(0) = ln 2 for y = 1
    f2 = t([[0.3, 0.0]])
    assert alignment_loss(f2, pos, neg, 1).item() == pytest.approx(math.log(2), abs=1e-12)


def test_orthogonality_regulariser():
    assert orthogonality(t([E1, E2])).item() == pytest.approx(0.0, abs=1e-12)
    assert orthogonality(t([[2.0, 0.0], [0.0, 3.0]])).item() == pytest.approx(0.0, abs=1e-12)  # scale-free
    assert orthogonality(t([E1, E1])).item() == pytest.approx(4 / 4 - 1 / 2, abs=1e-12)  # sum cos^2 / K^2 - 1/K


def test_commitment_raw_vs_normalized_assignment():
    """The official quirk: Euclidean to the UN-normalised codebook can pick another centroid."""
    z = t([[0.8, 0.6]])
    bank = t([[2.0, 0.0], [0.0, 0.5]])  # cosine prefers 0 (0.8 > 0.6); Euclidean prefers 1 (0.65 < 1.8)
    loss_raw, idx_raw = commitment_loss(z, bank, "raw")
    loss_norm, idx_norm = commitment_loss(z, bank, "normalized")
    assert idx_raw.tolist() == [1] and idx_norm.tolist() == [0]
    assert loss_raw.item() == pytest.approx((0.8 ** 2 + 0.1 ** 2) / 2, abs=1e-12)  # target (0, 0.5)
    assert loss_norm.item() == pytest.approx((0.2 ** 2 + 0.6 ** 2) / 2, abs=1e-12)  # target (1, 0)
    reg = memory_regulariser(z, bank, "raw", commit_weight=1.0, orth_weight=10.0)
    assert reg["mem"].item() == pytest.approx(reg["mem_commit"].item() + 10 * reg["mem_orth"].item(), abs=1e-12)


def test_reconstruction_mse():
    assert reconstruction_loss(t([[1.0, 2.0, 3.0]]), t([1.0, 0.0, 0.0])).item() == pytest.approx((4 + 9) / 3)


def _tiny(preset="paper", **kw):
    torch.manual_seed(0)
    return MoMKD(16, 12, 2, preset=preset, **{**TINY, **kw}).double()


def test_eq4_memory_guided_attention_and_pooling():
    model = _tiny("paper").eval()  # fixed temperature 0.2
    bag = make_bag(n=15, d=16, omics_dim=12)
    bag.features = bag.features.double()
    with torch.no_grad():
        out = model(bag)
    ex = out.extras
    z, pos, neg = ex["patch_proj"], ex["pos_centers"], ex["neg_centers"]
    score = torch.tensor([max(float(zi @ c) for c in pos) - max(float(zi @ c) for c in neg) for zi in z], dtype=torch.float64)
    expected_att = torch.softmax(score.double() / (0.2 + 1e-9), 0)  # mkd.py divides by tau + 1e-9
    torch.testing.assert_close(out.attention, expected_att, atol=1e-9, rtol=0)
    torch.testing.assert_close(ex["pooled"][0], (expected_att[:, None] * ex["contextual"]).sum(0), atol=1e-9, rtol=0)
    torch.testing.assert_close(out.logits, model.classifier(ex["pooled"]), atol=1e-12, rtol=0)
    # Eq. 1: unit-sphere projections
    torch.testing.assert_close(z.norm(dim=1), torch.ones(15, dtype=torch.float64))
    assert ex["wsi_proj"].norm().item() == pytest.approx(1.0) and ex["omics_proj"].norm().item() == pytest.approx(1.0)


@pytest.mark.parametrize("preset,lam_mse", [("official", 0.05), ("paper", 0.01)])
def test_eq5_total_weights(preset, lam_mse):
    model = _tiny(preset).eval()
    bag = make_bag(n=10, d=16, omics_dim=12, label=0)
    bag.features, bag.omics = bag.features.double(), bag.omics.double()
    out = model(bag)
    terms = model.loss(out, bag)
    want = (0.5 * terms["ce"] + lam_mse * terms["recon"] + 0.2 * terms["align_wsi"] + 0.05 * terms["align_omics"]
            + 0.1 * terms["mem"])
    assert terms["total"].item() == pytest.approx(want.item(), abs=1e-12)
    assert terms["ce"].item() == pytest.approx(F.cross_entropy(out.logits, torch.tensor([0])).item())
    # label 0 -> the regulariser is that of C- (the slide's class bank)
    assert terms["mem_orth"].item() == pytest.approx(orthogonality(model.memory.neg).item(), abs=1e-12)
    assert model.cfg.learnable_tau is (preset == "official")
