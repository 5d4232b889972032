"""DTFD-MIL: golden equivalence with the official code, pseudo-bag splits, edge cases, and the
single-backward update against the official two-optimizer step."""
from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from baselines.dtfdmil import build, from_official
from tests.conftest import assert_close, golden_cases, load_golden, make_bag

SMALL = {"m_dim": 32, "attn_dim": 16}  # tiny widths keep the tests fast


def test_dtfdmil_reproduces_official_outputs():
    fx = load_golden("dtfd.pt")
    model = from_official(fx["state_dict"], **fx["official_config"]).double().eval()
    for inputs, exp in golden_cases(fx):
        with torch.no_grad():
            out = model(SimpleNamespace(features=inputs["features"], slide_id="golden"), groups=inputs["groups"])
        got = {"logits": out.logits, "Y_prob": torch.softmax(out.logits, dim=1),
               "tier1_logits": out.extras["tier1_logits"], "distilled_features": out.extras["distilled_features"],
               "instance_attention": out.attention, "raw_attention": out.extras["raw_attention"],
               "tier2_attention": out.extras["tier2_attention"]}
        if "distilled_index" in exp:
            got["distilled_index"] = out.extras["distilled_index"]
        assert set(exp) <= set(got), f"unchecked expected keys: {set(exp) - set(got)}"
        for k, v in exp.items():
            assert_close(got[k], v, k)


def test_from_official_accepts_nested_save_dict_and_rejects_wrong_sizes():
    fx = load_golden("dtfd.pt")
    nested: dict = {}
    for k, v in fx["state_dict"].items():
        part, _, rest = k.partition(".")
        nested.setdefault(part, {})[rest] = v
    a = from_official(nested, **fx["official_config"]).double().eval()
    b = from_official(fx["state_dict"], **fx["official_config"]).double().eval()
    bag = SimpleNamespace(features=fx["inputs"]["features"][:30].double(), slide_id="s")
    groups = [list(range(i, 30, 4)) for i in range(4)]
    with torch.no_grad():
        assert torch.equal(a(bag, groups).logits, b(bag, groups).logits)
    with pytest.raises(ValueError, match="in_chn=1536"):
        from_official(fx["state_dict"], **{**fx["official_config"], "in_chn": 1536})


def test_random_split_sizes_seed_and_eval_determinism():
    model = build(16, None, 3, num_group=4, seed=5, **SMALL)
    groups = model.random_groups(10, 4, torch.Generator().manual_seed(0))
    assert [len(g) for g in groups] == [3, 3, 2, 2]  # np.array_split sizes
    assert sorted(torch.cat(groups).tolist()) == list(range(10))
    bag = make_bag(n=10, d=16)
    model.train()
    first = [model(bag).extras["groups"] for _ in range(3)]
    assert any(not torch.equal(first[0][0], f[0]) for f in first[1:]), "training splits should vary per step"
    model.on_fit_start([])  # resets the split generator: same sequence again
    again = [model(bag).extras["groups"] for _ in range(3)]
    assert all(torch.equal(a, b) for x, y in zip(first, again) for a, b in zip(x, y))
    twin = build(16, None, 3, num_group=4, seed=5, **SMALL)
    twin.load_state_dict(model.state_dict())
    model.eval(), twin.eval()
    with torch.no_grad():
        l1, l2, l3 = model(bag).logits, model(bag).logits, twin(bag).logits
    assert torch.equal(l1, l2) and torch.equal(l1, l3)


def test_mean_inference_averages_tier2_softmax_over_seeded_splits():
    model = build(16, None, 2, num_mean_inference=3, seed=7, **SMALL).double().eval()
    bag = make_bag(n=13, d=16)
    bag.features = bag.features.double()
    with torch.no_grad():
        out = model(bag)
        gen = torch.Generator().manual_seed(7)
        probs = [torch.softmax(model(bag, groups=model.random_groups(13, 4, gen)).logits, 1) for _ in range(3)]
    assert_close(out.logits.exp(), torch.stack(probs).mean(0), "mean prob")
    assert not torch.allclose(probs[0], probs[1])  # the three splits differ


@pytest.mark.parametrize("distill", ["AFS", "MaxS", "MaxMinS"])
@pytest.mark.parametrize("n", [1, 3, 4, 9])
def test_small_bags_fewer_instances_than_pseudo_bags(distill, n):
    model = build(8, None, 3, distill=distill, num_group=4, total_instance=8 if distill != "AFS" else 4, **SMALL)
    model.train()
    bag = make_bag(n=n, d=8, label=2)
    out = model(bag)
    g = min(4, n)
    per = 2 if distill != "AFS" else 1
    rows = {"AFS": g, "MaxS": sum(min(per, len(x)) for x in out.extras["groups"]),
            "MaxMinS": 2 * sum(min(per, len(x)) for x in out.extras["groups"])}[distill]
    assert out.logits.shape == (1, 3) and out.extras["tier1_logits"].shape == (g, 3)
    assert out.extras["distilled_features"].shape[0] == rows
    assert torch.allclose(out.attention.sum(), torch.tensor(float(g)))  # each pseudo-bag softmax sums to 1
    terms = model.loss(out, bag)
    terms["total"].backward()
    assert torch.isfinite(terms["total"])
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    model.eval()
    with torch.no_grad():
        assert model(bag).extras["tier1_logits"].shape == (g, 3)


def test_explicit_groups_are_checked_and_empty_groups_dropped():
    model = build(8, None, 2, **SMALL).eval()
    bag = make_bag(n=3, d=8, slide_id="S-42")
    out = model(bag, groups=[[0], [1, 2], [], []])  # what np.array_split gives for some N < G
    assert out.extras["tier1_logits"].shape == (2, 2)
    with pytest.raises(ValueError, match="S-42.*\\[0, 3\\)"):
        model(bag, groups=[[0, 3]])
    with pytest.raises(ValueError, match="S-42.*more than one"):
        model(bag, groups=[[0, 1], [1, 2]])
    with pytest.raises(ValueError, match="S-42.*empty"):
        model(bag, groups=[[], []])
    with pytest.raises(ValueError, match="total_instance // num_group"):
        build(8, None, 2, distill="MaxS", num_group=4, total_instance=3)


def test_loss_terms_and_gradient_routing():
    """tier-1 parameters get exactly d(tier1), tier-2 parameters exactly d(tier2)."""
    torch.manual_seed(0)
    for distill in ("AFS", "MaxMinS"):
        model = build(8, None, 2, distill=distill, total_instance=4, **SMALL).double().train()
        bag = make_bag(n=17, d=8, label=1)
        bag.features = bag.features.double()
        groups = model.random_groups(17, 4, torch.Generator().manual_seed(1))
        out = model(bag, groups=groups)
        terms = model.loss(out, bag)
        y = torch.tensor([1])
        assert_close(terms["tier1"], F.cross_entropy(out.extras["tier1_logits"], y.expand(4)), "tier1")
        assert_close(terms["tier2"], F.cross_entropy(out.logits, y), "tier2")
        assert_close(terms["total"], terms["tier1"] + terms["tier2"], "total")
        params = dict(model.named_parameters())
        g_total = torch.autograd.grad(terms["total"], list(params.values()), retain_graph=True)
        g_t1 = torch.autograd.grad(terms["tier1"], list(params.values()), retain_graph=True, allow_unused=True)
        g_t2 = torch.autograd.grad(terms["tier2"], list(params.values()), allow_unused=True)
        for (name, _), gt, g1, g2 in zip(params.items(), g_total, g_t1, g_t2):
            own, other = (g2, g1) if name.startswith("att_classifier") else (g1, g2)
            assert own is not None and torch.equal(gt, own), name
            assert other is None or not other.any(), f"{name}: gradient from the other tier"


def _official_step(mods, opt0, opt1, x, y, groups, per_group, distill, clip):
    """Main_DTFD_MIL.train_attention_preFeature_DTFD for one slide, written out literally."""
    classifier, attention, dim_red, att_cls = mods
    pseudo, preds = [], []
    for idx in groups:
        mid = dim_red(x[idx])
        a = torch.softmax(attention(mid), dim=0)
        weighted = mid * a[:, None]
        feat = weighted.sum(0, keepdim=True)
        preds.append(classifier(feat))
        cam = torch.softmax(weighted @ classifier.fc.weight.T, dim=1)
        order = torch.sort(cam[:, -1], descending=True).indices
        if distill == "MaxMinS":
            pseudo.append(mid[torch.cat([order[:per_group], order[-per_group:]])])
        else:
            pseudo.append(feat)
    loss0 = F.cross_entropy(torch.cat(preds), y.expand(len(groups)))
    opt0.zero_grad()
    loss0.backward(retain_graph=True)
    for m in (dim_red, attention, classifier):
        torch.nn.utils.clip_grad_norm_(m.parameters(), clip)
    opt0.step()
    logits, _ = att_cls(torch.cat(pseudo))
    loss1 = F.cross_entropy(logits, y)
    opt1.zero_grad()
    loss1.backward()
    torch.nn.utils.clip_grad_norm_(att_cls.parameters(), clip)
    opt1.step()


def test_single_backward_update_equals_official_two_optimizer_step():
    torch.manual_seed(3)
    ours = build(8, None, 2, distill="MaxMinS", total_instance=8, **SMALL).double().train()
    ref, start = copy.deepcopy(ours), copy.deepcopy(ours)
    mods = (ref.classifier, ref.attention, ref.dim_reduction, ref.att_classifier)
    opt0 = torch.optim.Adam([p for m in mods[:3] for p in m.parameters()], lr=1e-2, weight_decay=1e-4)
    opt1 = torch.optim.Adam(ref.att_classifier.parameters(), lr=1e-2, weight_decay=1e-4)
    opt = torch.optim.Adam(ours.parameters(), lr=1e-2, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(0)
    for step in range(3):
        bag = make_bag(n=21, d=8, label=step % 2, seed=step)
        bag.features = bag.features.double()
        groups = ours.random_groups(21, 4, gen)
        _official_step(mods, opt0, opt1, bag.features, torch.tensor([bag.label]), groups, 2, "MaxMinS", 0.5)
        opt.zero_grad()
        ours.loss(ours(bag, groups=groups), bag)["total"].backward()
        for params in ours.grad_clip_groups().values():
            torch.nn.utils.clip_grad_norm_(params, 0.5)
        opt.step()
    for (name, p), q in zip(ours.named_parameters(), ref.parameters()):
        assert torch.allclose(p, q, atol=1e-12, rtol=0), f"{name}: max |diff| {(p - q).abs().max():.2e}"
    moved = sum((p - q).abs().sum() for p, q in zip(ours.parameters(), start.parameters()))
    assert moved > 0


def test_official_afs_step_fails_on_current_torch():
    """The reason for the single-backward update (module docstring)."""
    model = build(8, None, 2, **SMALL).train()
    mods = (model.classifier, model.attention, model.dim_reduction, model.att_classifier)
    opt0 = torch.optim.Adam([p for m in mods[:3] for p in m.parameters()], lr=1e-4)
    opt1 = torch.optim.Adam(model.att_classifier.parameters(), lr=1e-4)
    bag = make_bag(n=12, d=8)
    groups = model.random_groups(12, 4, torch.Generator().manual_seed(0))
    with pytest.raises(RuntimeError, match="inplace operation"):
        _official_step(mods, opt0, opt1, bag.features, torch.tensor([1]), groups, 1, "AFS", 5.0)
