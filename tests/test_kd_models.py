"""MKD, TDC and G-HANet on tiny bags: slide-only inference, training steps, windows, stages."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from baselines import ghanet, mkd, tdc
from baselines.kd_losses import coral, distill_kl, mkd_orthogonality, similarity_preserving
from tests.conftest import make_bag

D_IN, G = 12, 20
TINY = {
    "mkd": (mkd.build, dict(hidden_dim=8, attn_dim=4, n_gene_tokens=4, window=3)),
    "tdc": (tdc.build, dict(hidden_dim=8, attn_dim=4, n_gene_tokens=4, feat_dim=4, nce_k=2, window=3)),
    "ghanet": (ghanet.build, dict(wsi_dim=16, heads=2, dim_head=8, ff_mult=1, gate_dim=8, out_dim=4)),
}




def bags(n: int = 6, n_patches: int = 15, seed: int = 0) -> list:
    out = []
    for i in range(n):
        b = make_bag(n=n_patches, d=D_IN, label=i % 2, omics_dim=G, seed=seed + i, slide_id=f"s{seed}_{i}")
        b.omics = b.omics + 2.0 * b.label  # a class signal in the omics
        b.features = b.features + 0.5 * b.label
        out.append(b)
    return out


def without_omics(bag) -> SimpleNamespace:
    return SimpleNamespace(**{**vars(bag), "omics": None})


def model(name: str, **over):
    torch.manual_seed(0)
    build, hp = TINY[name]
    return build(D_IN, G, 2, **{**hp, **over})


def train_steps(m, train, n_steps: int, lr: float = 1e-3):
    """The engine's loop: forward, loss, backward, step, on_step_end (one slide per step)."""
    opt = torch.optim.AdamW(m.trainable_parameters(), lr=lr)
    terms = None
    for k in range(n_steps):
        b = train[k % len(train)]
        terms = m.loss(m(b), b)
        opt.zero_grad(set_to_none=True)
        terms["total"].backward()
        opt.step()
        m.on_step_end()
    return terms


STAGED = [("mkd", "main"), ("tdc", "teachers"), ("tdc", "student"), ("ghanet", "main")]


def enter(m, stage: str, train):
    m.set_stage(stage)
    m.train()
    m.on_fit_start(train)


@pytest.mark.parametrize("name,stage", STAGED, ids=[f"{n}-{s}" for n, s in STAGED])
def test_inference_without_omics_equals_with_omics(name, stage):
    train = bags()
    m = model(name)
    enter(m, stage, train)
    m.eval()
    with torch.no_grad():
        for b in train[:2]:
            a, c = m(b), m(without_omics(b))
            assert torch.equal(a.logits, c.logits)
            assert a.attention is not None and torch.equal(a.attention, c.attention)
            assert a.logits.shape == (1, 2)


@pytest.mark.parametrize("name,stage", STAGED, ids=[f"{n}-{s}" for n, s in STAGED])
def test_training_steps_give_finite_gradients_on_every_trainable_parameter(name, stage):
    train = bags()
    m = model(name)
    enter(m, stage, train)
    params = dict(m.named_parameters())
    trainable = {id(p) for p in m.trainable_parameters()}
    opt = torch.optim.AdamW(m.trainable_parameters(), lr=1e-3)
    for k in range(3):  # window = 3: the third slide carries the window terms
        b = train[k]
        terms = m.loss(m(b), b)
        opt.zero_grad(set_to_none=True)
        terms["total"].backward()
        if k < 2:
            opt.step()
            m.on_step_end()
    if name != "ghanet":
        assert ("kd" in terms) == (stage != "teachers")
    missing = [n for n, p in params.items()
               if id(p) in trainable and (p.grad is None or not torch.isfinite(p.grad).all())]
    assert not missing, f"{name}/{stage}: no finite gradient for {missing}"
    frozen_with_grad = [n for n, p in params.items() if id(p) not in trainable and p.grad is not None]
    assert not frozen_with_grad, f"{name}/{stage}: gradient reached non-trainable {frozen_with_grad}"


@pytest.mark.parametrize("name,stage", STAGED, ids=[f"{n}-{s}" for n, s in STAGED])
def test_a_few_epochs_reduce_the_training_cross_entropy(name, stage):
    train = bags(4)
    m = model(name)
    if name == "tdc" and stage == "student":
        enter(m, "teachers", train)
        train_steps(m, train, 8)
    enter(m, stage, train)

    def eval_ce() -> float:
        m.eval()
        with torch.no_grad():
            ce = sum(F.cross_entropy(m(without_omics(b)).logits, torch.tensor([b.label])).item() for b in train)
        m.train()
        return ce / len(train)

    before = eval_ce()
    train_steps(m, train, 24, lr=3e-3)
    assert eval_ce() < before


def test_double_precision_forward_and_loss():
    train = bags(3)
    for name in TINY:
        m = model(name).double()
        m.train()
        m.on_fit_start(train)
        b = SimpleNamespace(**{**vars(train[0]), "features": train[0].features.double()})
        out = m(b)
        assert out.logits.dtype == torch.float64
        assert torch.isfinite(m.loss(out, b)["total"])


# ---- MKD window --------------------------------------------------------------------------
def _no_dropout_mkd(window_grad: str):
    return model("mkd", dropout=0.0, window_grad=window_grad)


def test_mkd_window_terms_match_the_official_batch_and_reach_every_slide():
    """No step inside the window: recompute == the official accumulated window (same outputs, and
    the window gradient reaches all slides); 'current' lets it reach the last slide only."""
    train = bags(3)
    grads = {}
    for mode in ("recompute", "current"):
        m = _no_dropout_mkd(mode)
        for mod in m.modules():  # incl. the hard-coded 0.25 path/fusion dropouts, off for exactness
            if isinstance(mod, torch.nn.Dropout):
                mod.p = 0.0
        m.train()
        m.on_fit_start(train)
        for b in train[:2]:
            m.loss(m(b), b)  # no optimizer step: weights unchanged within the window
        b = train[2]
        terms = m.loss(m(b), b)
        # independent official computation on the stacked window
        outs = [(m.student(x.features), m._teachers(x)) for x in train]
        fs = torch.cat([o[0][1] for o in outs])
        zs = torch.cat([o[0][0] for o in outs])
        fm = torch.cat([o[1]["feature_mm"] for o in outs])
        zm = torch.cat([o[1]["logits_mm"] for o in outs])
        fg = torch.cat([o[1]["feature_omics"] for o in outs])
        zg = torch.cat([o[1]["logits_omics"] for o in outs])
        sp = (similarity_preserving(fs, fm) + similarity_preserving(fs, fg)) * 3
        kl = (distill_kl(zs, zm.detach(), 4) + distill_kl(zm, zs.detach(), 4)
              + distill_kl(zs, zg.detach(), 4) + distill_kl(zg, zs.detach(), 4))
        official = sp + kl + mkd_orthogonality(fs, fm, fg) + coral(fm, fs) + coral(fg, fs) + coral(fg, fm)
        assert torch.allclose(terms["kd"], official, atol=1e-5)
        m.zero_grad()
        terms["kd"].backward()
        grads[mode] = m.student.fc[0].weight.grad.clone()
        if mode == "recompute":
            m.zero_grad()
            official.backward()
            assert torch.allclose(grads[mode], m.student.fc[0].weight.grad, atol=1e-6)
    assert not torch.allclose(grads["recompute"], grads["current"], atol=1e-6)


def test_mkd_window_resets_each_epoch_and_ce_is_divided_by_the_accumulation():
    train = bags(4)
    m = model("mkd")
    m.train()
    m.on_fit_start(train)
    terms = m.loss(m(train[0]), train[0])  # "auto", one slide per step: the CE counts fully
    ce = terms["ce_student"] + terms["ce_multimodal"] + terms["ce_omics"]
    assert torch.allclose(terms["total"], ce)
    m.set_accumulation(3)  # the official recipe: one step per window of 3 slides, CE / 3 per slide
    m.on_epoch_start(0)
    terms = m.loss(m(train[0]), train[0])
    ce = terms["ce_student"] + terms["ce_multimodal"] + terms["ce_omics"]
    assert torch.allclose(terms["total"], ce / 3)
    fixed = model("mkd", ce_over_window=True)  # the old fixed division, whatever the engine does
    fixed.on_fit_start(train)
    fixed.set_accumulation(1)
    t = fixed.loss(fixed(train[0]), train[0])
    assert torch.allclose(t["total"], (t["ce_student"] + t["ce_multimodal"] + t["ce_omics"]) / 3)
    m.loss(m(train[1]), train[1])
    m.on_epoch_start(1)
    assert len(m._window) == 0
    for b in train[:2]:
        assert "kd" not in m.loss(m(b), b)
    assert "kd" in m.loss(m(train[2]), train[2])


def test_loss_without_omics_is_the_student_cross_entropy():
    train = bags(2)
    for name, stage in STAGED:
        m = model(name)
        enter(m, stage, train)
        b = without_omics(train[0])
        terms = m.loss(m(b), b)
        assert set(terms) <= {"total", "ce", "ce_student", "ce_wsi"}


# ---- TDC stages ---------------------------------------------------------------------------
def test_tdc_stages_freeze_teachers_and_update_memory_after_the_step():
    train = bags(5)
    m = model("tdc")
    assert m.stages == ("teachers", "student")
    assert m.stage_options("teachers") == {}
    assert model("tdc", teacher_epochs=7).stage_options("teachers") == {"max_epochs": 7, "early_stopping": False}
    enter(m, "teachers", train)
    teacher_ids = {id(p) for t in m.teachers().values() for p in t.parameters()}
    assert {id(p) for p in m.trainable_parameters()} == teacher_ids
    train_steps(m, train, 3)
    enter(m, "student", train)
    assert all(not t.training for t in m.teachers().values()) and m.student.training
    snap = {k: v.clone() for k, v in m.state_dict().items() if k.startswith("teacher")}
    mem0 = {t: c.contrast.memory_v1.clone() for t, c in m.criteria.items()}
    assert mem0["wsi"].shape == (5, 4)
    opt = torch.optim.AdamW(m.trainable_parameters(), lr=1e-2)
    for k in range(3):
        b = train[k]
        terms = m.loss(m(b), b)
        opt.zero_grad()
        terms["total"].backward()
        opt.step()
        if k == 2:  # window slide: the memory moves only in on_step_end
            assert all(torch.equal(c.contrast.memory_v1, mem0[t]) for t, c in m.criteria.items())
        m.on_step_end()
    for t, c in m.criteria.items():
        moved = (c.contrast.memory_v1 != mem0[t]).any(1).tolist()
        assert moved == [True, True, True, False, False], t  # rows of the window's slides s0..s2
    assert all(torch.equal(v, snap[k]) for k, v in m.state_dict().items() if k in snap)
    assert "memory_v1" not in " ".join(m.state_dict())  # training state only


def test_tdc_computes_frozen_teacher_outputs_once_per_slide_and_stage():
    train = bags(4)
    m = model("tdc")
    enter(m, "student", train)
    calls = []
    forward = m.teacher_wsi.forward
    m.teacher_wsi.forward = lambda x: calls.append(1) or forward(x)
    first = [m(b).extras["teachers"] for b in train]
    again = [m(b).extras["teachers"] for b in train]  # a second epoch: no teacher forward
    assert len(calls) == 4
    fresh = [m._teacher_outputs(b) for b in train]  # recomputed by hand (4 more calls): the same values
    for a, b, c in zip(first, again, fresh):
        for t in c:
            assert all(torch.equal(x, y) and torch.equal(x, z) for x, y, z in zip(a[t], b[t], c[t]))
    with torch.no_grad():  # teachers changed by hand: a new stage (on_fit_start) recomputes them
        m.teacher_wsi.classifier[1].bias.add_(1.0)
    enter(m, "student", train)
    changed = m(train[0]).extras["teachers"]["wsi"][0]
    assert len(calls) == 4 + 4 + 1 and not torch.equal(changed, first[0]["wsi"][0])


def test_tdc_rejects_a_slide_not_given_to_on_fit_start():
    train = bags(3)
    m = model("tdc")
    enter(m, "student", train)
    stranger = make_bag(n=10, d=D_IN, label=0, omics_dim=G, seed=99, slide_id="unknown")
    with pytest.raises(KeyError, match="unknown"):
        m.loss(m(stranger), stranger)


def test_models_need_omics_dim_and_matching_omics():
    for name in TINY:
        build, hp = TINY[name]
        with pytest.raises(ValueError, match="omics"):
            build(D_IN, None, 2, **hp)
    m = model("mkd")
    b = make_bag(n=10, d=D_IN, label=0, omics_dim=G + 1, seed=3, slide_id="wrong")
    with pytest.raises(ValueError, match="slide wrong"):
        m(b)
