"""Hand-computed cases for the distillation losses (baselines/kd_losses.py, baselines/ghanet.py)."""
from __future__ import annotations

import math

import pytest
import torch

from baselines.ghanet import hyperedge_incidence, hyperedge_weights
from baselines.kd_losses import (ContrastMemory, KDWindow, TDCCriterion, coral, cosine_cubed, discrepancy_weights,
                                 distill_kl, mkd_orthogonality, nce_loss, similarity_preserving)



D = torch.float64


def t(x) -> torch.Tensor:
    return torch.tensor(x, dtype=D)


# ---- similarity-preserving --------------------------------------------------------------
def test_similarity_preserving_hand_case():
    # G_s = I; G_t = all ones -> rows (1/sqrt2, 1/sqrt2); ||diff||^2 = 2(1/sqrt2 - 1)^2 + 2 * 1/2 = 4 - 2 sqrt2
    loss = similarity_preserving(t([[1.0, 0.0], [0.0, 1.0]]), t([[1.0, 0.0], [1.0, 0.0]]))
    assert loss.item() == pytest.approx((4 - 2 * math.sqrt(2)) / 4, abs=1e-12)


def test_similarity_preserving_is_row_scale_invariant_only_up_to_the_gram_rows():
    f = torch.randn(5, 3, dtype=D, generator=torch.Generator().manual_seed(0))
    assert similarity_preserving(f, 3.0 * f).item() == pytest.approx(0.0, abs=1e-12)  # G scales by 9
    assert similarity_preserving(f, f.flip(0)).item() > 1e-3  # reordering the batch changes the relations


# ---- CORAL, orthogonality, KL ----------------------------------------------------------------
def test_coral_hand_case():
    # x: mean (1, 0), cov [[2, 0], [0, 0]]; y: mean (0, 1), cov [[0, 0], [0, 2]]
    # mean term ((1)^2 + (-1)^2) / 2 = 1; covariance term (4 + 0 + 0 + 4) / 4 = 2
    assert coral(t([[0.0, 0.0], [2.0, 0.0]]), t([[0.0, 0.0], [0.0, 2.0]])).item() == pytest.approx(3.0, abs=1e-12)
    with pytest.raises(ValueError, match=">= 2 rows"):
        coral(t([[1.0, 2.0]]), t([[1.0, 2.0]]))


def test_mkd_orthogonality_hand_case():
    f_s = t([[1.0, 0.0], [0.0, 1.0]])
    f_mm = t([[1.0, 0.0], [0.0, -1.0]])  # <f_mm, f_s> = (1, -1): |mean| = 0
    f_g = t([[2.0, 0.0], [0.0, 2.0]])  # <f_g, f_s> = (2, 2): 2;  <f_g, f_mm> = (2, -2): 0
    assert mkd_orthogonality(f_s, f_mm, f_g).item() == pytest.approx(2.0 / 6.0, abs=1e-12)


@pytest.mark.parametrize("temp", [1.0, 4.0])
def test_distill_kl_hand_case(temp):
    y_s, y_t = t([[0.0, 0.0], [1.0, -1.0]]), t([[math.log(3.0), 0.0], [0.0, 0.0]])
    expected = 0.0
    for zs, zt in zip(y_s.tolist(), y_t.tolist()):
        ps = [math.exp(v / temp) for v in zs]
        pt = [math.exp(v / temp) for v in zt]
        ps = [v / sum(ps) for v in ps]
        pt = [v / sum(pt) for v in pt]
        expected += sum(b * math.log(b / a) for a, b in zip(ps, pt))
    expected = expected / 2 * temp ** 2  # batch mean, times T^2
    assert distill_kl(y_s, y_t, temp).item() == pytest.approx(expected, abs=1e-12)


# ---- discrepancy weights -------------------------------------------------------------------
def test_discrepancy_weights_hand_case():
    lg = math.log
    teacher = t([[lg(0.9), lg(0.1)], [lg(0.7), lg(0.3)], [lg(0.55), lg(0.45)], [lg(0.2), lg(0.8)]])
    student = t([[lg(0.6), lg(0.4)], [lg(0.6), lg(0.4)], [lg(0.9), lg(0.1)], [lg(0.5), lg(0.5)]])
    y = torch.tensor([0, 0, 0, 1])
    # conf = log p_gt - log p_other: teacher (log 9, log 7/3, log 11/9, log 4); student (log 1.5, log 1.5, log 9, 0)
    expected = [1.0, lg(7 / 3) - lg(1.5), 0.0, 1.0]  # clipped to [0, 1]
    w = discrepancy_weights(student, teacher, y, max_discrep=1.0)
    assert torch.allclose(w.double(), t(expected), atol=1e-6)
    assert not w.requires_grad
    # MKD trainer quirk: softmax over dim 0 of a (1, C) tensor -> student conf 0 -> teacher conf only
    q = discrepancy_weights(student, teacher, y, 1.0, student_softmax_dim0=True)
    assert torch.allclose(q.double(), t([1.0, lg(7 / 3), lg(11 / 9), 1.0]), atol=1e-6)
    # a larger cap lets the first weight reach conf_t - conf_s = log 6
    assert discrepancy_weights(student, teacher, y, 10.0)[0].item() == pytest.approx(lg(6.0), abs=1e-6)


# ---- NCE with a momentum memory bank -----------------------------------------------------------
def _memory(p_mem: torch.Tensor, q_mem: torch.Tensor, labels, nce_k=2, nce_t=0.5, m=0.5) -> ContrastMemory:
    mem = ContrastMemory(feat_dim=2, nce_k=nce_k, nce_t=nce_t, momentum=m).double()
    mem.reset(torch.tensor(labels), torch.Generator().manual_seed(0))
    mem.memory_v1.copy_(p_mem)
    mem.memory_v2.copy_(q_mem)
    return mem


def _ref_nce(scores, sims, n, k):
    """Independent per-sample NCE: -sum_p s_p [log(x_p/(x_p + k/n)) + sum_neg log((k/n)/(x_neg + k/n))] / sum s."""
    c = k / n
    neg = sum(math.log(c / (x + c + 1e-7)) for x in scores[len(sims):])
    return -sum(s * (math.log(x / (x + c + 1e-7)) + neg) for s, x in zip(sims, scores)) / sum(sims)


def test_nce_memory_bank_hand_case_and_momentum_update():
    T = 0.5
    mem1 = t([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])  # student memory, classes 0, 0, 1, 1
    mem2 = t([[0.0, 1.0], [1.0, 0.0], [0.0, -1.0], [-1.0, 0.0]])  # teacher memory
    mem = _memory(mem1, mem2, [0, 0, 1, 1], nce_t=T)
    v1, v2 = t([[0.6, 0.8]]), t([[1.0, 0.0]])
    idx, neg = torch.tensor([0]), torch.tensor([[2, 3]])
    out_v1, out_v2, sim1, sim2 = mem(v1, v2, idx, neg, num_pos=1)
    # positive = the query's own row (cos 1); rows scored: [0 | 2, 3]
    raw_v1 = [math.exp(0.8 / T), math.exp(-0.8 / T), math.exp(-0.6 / T)]  # teacher memory rows . v1
    raw_v2 = [math.exp(1.0 / T), math.exp(-1.0 / T), math.exp(0.0)]  # student memory rows . v2
    z1, z2 = sum(raw_v1) / 3 * 4, sum(raw_v2) / 3 * 4  # Z = mean score * n_data
    assert torch.allclose(out_v1[0], t([r / z1 for r in raw_v1]), atol=1e-12)
    assert torch.allclose(out_v2[0], t([r / z2 for r in raw_v2]), atol=1e-12)
    assert sim1.tolist() == [[1.0]] and sim2.tolist() == [[1.0]]
    loss, per = nce_loss(out_v1, 1, sim2, t([1.0]), 4)
    assert loss.item() == pytest.approx(_ref_nce([r / z1 for r in raw_v1], [1.0], 4, 2), abs=1e-9)
    # the discrepancy weight multiplies the per-sample loss
    loss_w, _ = nce_loss(out_v1, 1, sim2, t([0.25]), 4)
    assert loss_w.item() == pytest.approx(0.25 * loss.item(), abs=1e-12)
    # Z is fixed at the first call
    z_before = float(mem.z_v1)
    mem(t([[0.0, 1.0]]), v2, idx, neg, num_pos=1)
    assert float(mem.z_v1) == z_before
    # momentum update: memory[0] <- normalize(0.5 * memory[0] + 0.5 * v)
    mem.update(idx, v1, v2)
    assert torch.allclose(mem.memory_v1[0], t([0.8, 0.4]) / math.sqrt(0.8), atol=1e-12)  # (0.8, 0.4)/|.|
    assert torch.allclose(mem.memory_v2[0], t([0.5, 0.5]) / math.sqrt(0.5), atol=1e-12)
    assert torch.equal(mem.memory_v1[1:], mem1[1:]) and torch.equal(mem.memory_v2[1:], mem2[1:])


def test_nce_neighbour_positives_are_same_class_and_similarity_weighted():
    mem1 = t([[1.0, 0.0], [0.6, 0.8], [1.0, 0.0], [0.0, -1.0]])  # row 2 (class 1) is the most similar, but other class
    mem2 = t([[0.0, 1.0], [0.8, 0.6], [0.0, -1.0], [-1.0, 0.0]])
    mem = _memory(mem1, mem2, [0, 0, 1, 1], nce_k=1)
    v1, v2 = t([[1.0, 0.0]]), t([[0.0, 1.0]])
    out_v1, out_v2, sim1, sim2 = mem(v1, v2, torch.tensor([0]), torch.tensor([[3]]), num_pos=2)
    assert torch.allclose(sim1, t([[1.0, 0.6]])) and torch.allclose(sim2, t([[1.0, 0.6]]))
    # student-memory rows scored against v2: [row 0, row 1 | row 3]
    raw = [math.exp(0.0 / 0.5), math.exp(0.8 / 0.5), math.exp(-1.0 / 0.5)]
    z = sum(raw) / 3 * 4
    assert torch.allclose(out_v2[0], t([r / z for r in raw]), atol=1e-12)
    loss, _ = nce_loss(out_v2, 2, sim1, t([1.0]), 4)
    assert loss.item() == pytest.approx(_ref_nce([r / z for r in raw], [1.0, 0.6], 4, 1), abs=1e-9)


def test_official_nce_broadcasts_a_window_as_contrastloss_v2():
    """For nce_p = 1, ContrastLoss_v2 adds the (B,) positive terms to the (B, 1) negative sums: a
    (B, B) matrix. Hand-computed on a window of 3: l_i = -(sum_j d1_j + 3 sum_k d0_ik), times w_i."""
    x = t([[0.5, 0.1, 0.2], [0.3, 0.4, 0.05], [0.9, 0.01, 0.3]])  # (B=3, 1 positive + 2 negatives)
    sim = t([[0.7], [1.0], [0.2]])
    w = t([1.0, 0.5, 0.0])
    n = 10
    c = 2 / n + 1e-7  # K / n + eps

    def d1(v):
        return math.log(v / (v + c))

    def d0(v):
        return math.log((2 / n) / (v + c))

    pos = sum(d1(r[0]) for r in x.tolist())
    want = [-(pos + 3 * (d0(r[1]) + d0(r[2]))) * wi for r, wi in zip(x.tolist(), w.tolist())]
    loss, per = nce_loss(x, 1, sim, w, n)  # the default form: the official one
    assert torch.allclose(per, t(want), atol=1e-12)
    assert loss.item() == pytest.approx(sum(want) / 3, abs=1e-12)
    # the intended per-sample loss (variant ``per_sample``): each sample its own terms
    _, per2 = nce_loss(x, 1, sim, w, n, form="per_sample")
    want2 = [-(d1(r[0]) + d0(r[1]) + d0(r[2])) * wi for r, wi in zip(x.tolist(), w.tolist())]
    assert torch.allclose(per2, t(want2), atol=1e-12)
    # one sample: both forms agree
    assert torch.allclose(nce_loss(x[:1], 1, sim[:1], w[:1], n)[0], nce_loss(x[:1], 1, sim[:1], w[:1], n, "per_sample")[0])


def test_tdc_defaults_are_the_official_loss_and_student_term():
    from benchmarks import registry

    hp = registry.get("tdc").hparams()
    assert hp["nce_form"] == "official" and hp["student_softmax_dim0"] is True
    var = registry.get("tdc").hparams("per_sample")
    assert var["nce_form"] == "per_sample" and var["student_softmax_dim0"] is False


def test_tdc_criterion_stages_the_update_until_apply():
    crit = TDCCriterion(3, 3, feat_dim=2, nce_k=2, nce_t=0.07, nce_m=0.5, nce_p=1).double()
    crit.contrast.reset(torch.tensor([0, 0, 1, 1, 0]), torch.Generator().manual_seed(1))
    before = crit.contrast.memory_v1.clone()
    f = torch.randn(2, 3, dtype=D, generator=torch.Generator().manual_seed(2))
    idx = torch.tensor([1, 3])
    neg = crit.contrast.sample_negatives(idx, torch.Generator().manual_seed(3))
    assert neg.shape == (2, 2) and not (neg == idx[:, None]).any()
    loss, per = crit(t([1.0, 0.5]), f, f + 1, idx, neg)
    assert torch.isfinite(loss) and per.shape == (2,)
    assert torch.equal(crit.contrast.memory_v1, before)  # nothing moves before the step
    crit.apply_update()
    changed = (crit.contrast.memory_v1 != before).any(1)
    assert changed.tolist() == [False, True, False, True, False]
    assert torch.allclose(crit.contrast.memory_v1[idx].norm(dim=1), t([1.0, 1.0]))


def test_sample_negatives_with_replacement_when_few_samples():
    mem = ContrastMemory(feat_dim=2, nce_k=5)
    mem.reset(torch.tensor([0, 1, 0]), torch.Generator().manual_seed(0))
    neg = mem.sample_negatives(torch.tensor([0, 2]), torch.Generator().manual_seed(0))
    assert neg.shape == (2, 5)
    assert not (neg[0] == 0).any() and not (neg[1] == 2).any() and int(neg.max()) <= 2


# ---- cosine-cubed reconstruction ---------------------------------------------------------------
def test_cosine_cubed_hand_case():
    assert cosine_cubed(t([1.0, 0.0]), t([0.0, 1.0])).item() == pytest.approx(1.0)
    assert cosine_cubed(t([1.0, 1.0]), t([-2.0, -2.0])).item() == pytest.approx(8.0)
    assert cosine_cubed(t([1.0, 0.0]), t([3.0, 3.0])).item() == pytest.approx((1 - 1 / math.sqrt(2)) ** 3)
    # rows: mean of (1 - 0)^3 and (1 + 1)^3
    assert cosine_cubed(t([[1.0, 0.0], [1.0, 1.0]]), t([[0.0, 1.0], [-1.0, -1.0]])).item() == pytest.approx(4.5)
    assert cosine_cubed(t([2.0, 5.0]), t([4.0, 10.0])).item() == pytest.approx(0.0, abs=1e-12)


# ---- hyperedge top-20% -----------------------------------------------------------------------
def test_hyperedge_top_20_percent():
    m = t([[0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [9, 0, 0, 0, 0, 0, 0, 0, 0, 0], [3, 3, 3, 0, 0, 0, 0, 0, 0, 0]])
    e = hyperedge_incidence(m, 0.2)  # k = int(0.2 * 10) = 2
    assert e[0].tolist() == [0] * 8 + [1, 1]
    assert e[1].tolist() == [1] + [1] * 9  # the 2nd largest is 0: every entry >= it (ties kept, as officially)
    assert e[2].tolist() == [1, 1, 1] + [0] * 7
    assert hyperedge_incidence(t([[1.0, 4.0, 2.0, 3.0]]), 0.2).tolist() == [[0, 1, 0, 0]]  # k = max(1, 0)


def test_hyperedge_weights_mix_gate_and_detached_association():
    w = torch.zeros(1, 10, dtype=D, requires_grad=True)
    m = t([[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]]).requires_grad_(True)
    g = hyperedge_weights(w, m, 0.2)
    e = math.e
    expected = [0.05] * 8 + [(0.1 + 1 / (1 + e)) / 2, (0.1 + e / (1 + e)) / 2]
    assert torch.allclose(g[0], t(expected), atol=1e-9)
    assert g.sum().item() == pytest.approx(1.0)
    (g * torch.arange(10, dtype=D)).sum().backward()
    assert m.grad is None or torch.all(m.grad == 0)  # the association branch is detached
    assert w.grad is not None and w.grad.abs().sum() > 0


def test_window_needs_two_slides():
    with pytest.raises(ValueError, match=">= 2 slides"):
        KDWindow(1)
