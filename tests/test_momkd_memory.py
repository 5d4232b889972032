"""MoMKD memory: gradient isolation, the three update modes, and the K-means warm start."""
import pytest
import torch
import torch.nn.functional as F

from momkd import MoMKD
from momkd.memory import sample_class_projections, spherical_kmeans
from tests.conftest import make_bag

TINY = dict(hidden_dim=8, proj_dim=4, n_memory=3, omics_hidden=8, omics_embed_dim=8, cls_hidden=6,
            kmeans_samples=40)


def _model(**kw) -> MoMKD:
    torch.manual_seed(0)
    return MoMKD(16, 12, 2, **{**TINY, **kw})


def _bag(label=1, seed=0, n=20):
    return make_bag(n=n, d=16, omics_dim=12, label=label, seed=seed, slide_id=f"s{seed}")


def _grads(terms, params):
    """Gradients of terms (a scalar) w.r.t. params; None (unused) reported as zeros."""
    gs = torch.autograd.grad(terms, params, retain_graph=True, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, gs)]


def _groups(model):
    named = dict(model.named_parameters())
    memory = [p for n, p in named.items() if n.startswith("memory.")]
    omics = [p for n, p in named.items() if n.startswith("omics.")]
    wsi = [p for n, p in named.items() if not n.startswith(("memory.", "omics."))]
    return memory, omics, wsi


@pytest.mark.parametrize("label", [0, 1])
def test_gradient_isolation(label):
    model = _model().train()
    bag = _bag(label)
    out = model(bag)
    t = model.loss(out, bag)
    memory, omics, wsi = _groups(model)
    assert memory and omics and wsi
    # the cross-entropy never reaches the memory (stop-gradient in the attention path)
    assert all(torch.count_nonzero(g) == 0 for g in _grads(t["ce"], memory))
    # ... but it does train the WSI encoder and the learnable temperature
    assert any(torch.count_nonzero(g) > 0 for g in _grads(t["ce"], wsi))
    # omics terms never reach the WSI branch, WSI terms never reach the omics branch
    assert all(torch.count_nonzero(g) == 0 for g in _grads(t["align_omics"] + t["recon"], wsi))
    assert all(torch.count_nonzero(g) == 0 for g in _grads(t["ce"] + t["align_wsi"] + t["mem"], omics))
    # both alignments move the memory (their only meeting point)
    assert any(torch.count_nonzero(g) > 0 for g in _grads(t["align_omics"], memory))
    assert any(torch.count_nonzero(g) > 0 for g in _grads(t["align_wsi"], memory))
    # the VQ commitment target is detached: it moves patch projections, not centroids
    assert all(torch.count_nonzero(g) == 0 for g in _grads(t["mem_commit"], memory))
    assert any(torch.count_nonzero(g) > 0 for g in _grads(t["mem_commit"], wsi))


def test_gradient_mode_memory_moves_only_through_alignment_and_regulariser():
    model = _model(memory_mode="gradient").train()
    bag = _bag(1)
    out = model(bag)
    t = model.loss(out, bag)
    memory, _, _ = _groups(model)
    c = model.cfg
    g_total = _grads(t["total"], memory)
    g_parts = _grads(c.alpha_wsi * t["align_wsi"] + c.alpha_omics * t["align_omics"] + c.lambda_mem * t["mem_orth"]
                     * c.orth_weight, memory)
    for a, b in zip(g_total, g_parts):
        torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-6)
    before = [p.detach().clone() for p in memory]
    opt = torch.optim.SGD(model.trainable_parameters(), lr=0.1)
    t["total"].backward()
    opt.step()
    assert all(not torch.equal(b, p) for b, p in zip(before, memory))


def test_fixed_memory_does_not_move():
    model = _model(memory_mode="fixed").train()
    bags = [_bag(y, seed=s) for s, y in enumerate([0, 1, 0, 1])]
    model.on_fit_start(bags)
    before = (model.memory.pos.detach().clone(), model.memory.neg.detach().clone())
    assert not any(p is model.memory.pos or p is model.memory.neg for p in model.trainable_parameters())
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=0.1, weight_decay=0.1)
    for b in bags:
        t = model.loss(model(b), b)
        t["total"].backward()
        opt.step()
        opt.zero_grad()
        model.on_step_end()
    assert torch.equal(before[0], model.memory.pos) and torch.equal(before[1], model.memory.neg)
    # the alignment still trains the encoders against the frozen memory
    t = model.loss(model(bags[1]), bags[1])
    assert any(torch.count_nonzero(g) > 0 for g in _grads(t["align_wsi"], _groups(model)[2]))


@pytest.mark.parametrize("label", [0, 1])
def test_ema_memory_moves_by_the_stated_rule(label):
    m = 0.9
    model = _model(memory_mode="ema", ema_decay=m).train()
    assert not any(p is model.memory.pos or p is model.memory.neg for p in model.trainable_parameters())
    bag = _bag(label, n=30)
    out = model(bag)
    terms = model.loss(out, bag)
    z, idx = out.extras["patch_proj"].detach(), out.extras["vq_index"]
    own, other = (model.memory.pos, model.memory.neg) if label == 1 else (model.memory.neg, model.memory.pos)
    own0, other0 = own.detach().clone(), other.detach().clone()
    expected = own0.clone()
    for k in range(own0.shape[0]):
        sel = z[idx == k]
        if len(sel):
            expected[k] = F.normalize(m * own0[k] + (1 - m) * sel.mean(0), dim=0)
    assert (expected != own0).any()
    terms["total"].backward()  # no gradient reaches the memory in ema mode
    assert own.grad is None and other.grad is None
    model.on_step_end()
    torch.testing.assert_close(own.detach(), expected, atol=1e-6, rtol=1e-6)
    assert torch.equal(other.detach(), other0)
    model.on_step_end()  # stats are consumed: a second call does nothing
    torch.testing.assert_close(own.detach(), expected, atol=1e-6, rtol=1e-6)


def test_spherical_kmeans_recovers_separated_directions():
    """Random-sample initial centres (as core_utils.bootstrap_codebooks): whenever they start in
    distinct clusters, the clusters are recovered; the result is always a fixed point."""
    g = torch.Generator().manual_seed(0)
    dirs = torch.eye(4)[:3]
    x = torch.cat([d + 0.05 * torch.randn(50, 4, generator=g) for d in dirs])  # rows 50c..50c+49: cluster c
    covered = 0
    for seed in range(20):
        c = spherical_kmeans(x, 3, iters=20, generator=torch.Generator().manual_seed(seed))
        torch.testing.assert_close(c.norm(dim=1), torch.ones(3))
        xn = F.normalize(x, dim=1)
        a = (xn @ c.T).argmax(1)
        for k in range(3):
            if (a == k).any():
                torch.testing.assert_close(c[k], F.normalize(xn[a == k].sum(0), dim=0))
        init = torch.randperm(150, generator=torch.Generator().manual_seed(seed))[:3]
        if len(set((init // 50).tolist())) == 3:
            covered += 1
            sims = c @ dirs.T
            assert sorted(sims.argmax(1).tolist()) == [0, 1, 2] and sims.max(1).values.min() > 0.99
    assert covered > 0


def test_sample_class_projections_caps_and_separates_classes():
    bags = [_bag(y, seed=s, n=n) for s, (y, n) in enumerate([(0, 20), (1, 15), (0, 25), (1, 5)])]

    def encode(b):  # a projection that names its slide's class and row
        return torch.stack([torch.full((b.features.shape[0],), float(b.label)), torch.arange(b.features.shape[0])], 1)

    got = sample_class_projections(bags, encode, per_class=30, seed=3)
    assert got[0].shape[0] == 30 and got[1].shape[0] == 20  # class 1 has only 20 patches: all taken
    assert (got[0][:, 0] == 0).all() and (got[1][:, 0] == 1).all()
    again = sample_class_projections(bags, encode, per_class=30, seed=3)
    assert torch.equal(got[0], again[0])


def test_warm_start_sets_kmeans_centres_of_each_class():
    model = _model(kmeans_samples=1000, kmeans_iters=30)
    bags = [_bag(y, seed=s) for s, y in enumerate([0, 1, 0, 1, 1])]
    model.train()
    model.on_fit_start(bags)
    assert model.training  # mode restored
    with torch.no_grad():
        model.eval()
        samples = {y: torch.cat([model.encode_patches(b) for b in bags if b.label == y]) for y in (0, 1)}
    for y, bank in ((1, model.memory.pos), (0, model.memory.neg)):
        c = bank.detach()
        torch.testing.assert_close(c.norm(dim=1), torch.ones(3))
        a = (samples[y] @ c.T).argmax(1)  # a converged spherical K-means is its own fixed point
        for k in range(3):
            if (a == k).any():
                torch.testing.assert_close(c[k], F.normalize(samples[y][a == k].mean(0), dim=0), atol=1e-5, rtol=0)
    other = _model(kmeans_samples=1000, kmeans_iters=30)
    other.on_fit_start(bags)
    assert torch.equal(other.memory.pos, model.memory.pos)  # seeded
