"""WiKG: golden equivalence with the official model.py, chunked neighbour search == the official
dense N x N top-k (values and gradients), small bags, converter."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from baselines.wikg import WiKG, build, from_official, topk_neighbours
from tests.conftest import assert_close, golden_cases, load_golden, make_bag


def test_wikg_reproduces_official_logits():
    fx = load_golden("wikg.pt")
    assert fx["inputs"]["features"].shape[0] >= fx["official_config"]["topk"]  # official needs N >= topk
    model = from_official(fx["state_dict"], **fx["official_config"]).double().eval()
    for inputs, exp in golden_cases(fx):
        with torch.no_grad():
            out = model(SimpleNamespace(features=inputs["features"], slide_id="golden"))
        assert_close(out.logits, exp["logits"], "logits")
        assert_close(torch.softmax(out.logits, dim=1), exp["Y_prob"], "Y_prob")
        assert out.extras["topk_index"].shape == (inputs["features"].shape[0], fx["official_config"]["topk"])


def test_einsum_quirk_matters_on_the_golden_bag():
    """The official einsum (product of channel sums) is kept: a dot product would miss the fixture."""
    fx = load_golden("wikg.pt")
    model = from_official(fx["state_dict"], **fx["official_config"]).double().eval()
    inputs, exp = golden_cases(fx)[0]
    with torch.no_grad():
        dot = _dense_reference(model, inputs["features"], dot_product=True)
    assert (dot - exp["logits"]).abs().max() > 1e-3


def _dense_reference(model: WiKG, x: torch.Tensor, dot_product: bool = False) -> torch.Tensor:
    """The official WiKG.forward written out on a [1, N, D] batch: dense N x N logits, topk."""
    x = model._fc1(x[None])
    x = (x + x.mean(dim=1, keepdim=True)) * 0.5
    e_h, e_t = model.W_head(x), model.W_tail(x)
    logit = (e_h * model.scale) @ e_t.transpose(-2, -1)  # (1, N, N)
    w, idx = torch.topk(logit, k=min(model.topk, x.shape[1]), dim=-1)
    nb = e_t[torch.zeros(1, 1, 1, dtype=torch.long), idx, :]  # (1, N, k, d)
    p = F.softmax(w, dim=2)
    eh_r = p.unsqueeze(-1) * nb + torch.matmul((1 - p).unsqueeze(-1), e_h.unsqueeze(2))
    gate = torch.tanh(e_h.unsqueeze(2).expand(-1, -1, idx.shape[-1], -1) + eh_r)
    ka = (nb * gate).sum(-1) if dot_product else torch.einsum("ijkl,ijkm->ijk", nb, gate)
    e_nh = torch.matmul(F.softmax(ka, dim=2).unsqueeze(2), nb).squeeze(2)
    if model.agg_type == "gcn":
        emb = model.activation(model.linear(e_h + e_nh))
    elif model.agg_type == "sage":
        emb = model.activation(model.linear(torch.cat([e_h, e_nh], dim=2)))
    else:
        emb = model.activation(model.linear1(e_h + e_nh)) + model.activation(model.linear2(e_h * e_nh))
    h = model._readout(model.message_dropout(emb).squeeze(0))
    return model.fc(model.norm(h))


@pytest.mark.parametrize("agg_type,pool", [("bi-interaction", "mean"), ("gcn", "attn"), ("sage", "max")])
def test_chunked_topk_equals_dense_values_and_gradients(agg_type, pool):
    torch.manual_seed(0)
    n = 37
    model = build(12, None, 3, dim_hidden=16, topk=6, agg_type=agg_type, pool=pool, dropout=0.0).double()
    bag = make_bag(n=n, d=12)
    bag.features = bag.features.double()
    ref = _dense_reference(model, bag.features)
    g_ref = torch.autograd.grad(ref.sum(), list(model.parameters()))
    for chunk in (1, 5, n, 1000):
        model.topk_chunk_size = chunk
        out = model(bag)
        assert_close(out.logits, ref.detach(), f"logits chunk={chunk}")
        g = torch.autograd.grad(out.logits.sum(), list(model.parameters()))
        for (name, _), a, b in zip(model.named_parameters(), g, g_ref):
            assert_close(a, b, f"grad {name} chunk={chunk}")


def test_topk_neighbours_matches_torch_topk():
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(23, 8, generator=g), torch.randn(23, 8, generator=g)
    dense = torch.topk(q @ k.T, 4, dim=-1).indices
    for chunk in (1, 4, 23, 64):
        assert torch.equal(topk_neighbours(q, k, 4, chunk), dense)
    with pytest.raises(ValueError, match="topk_chunk_size"):
        topk_neighbours(q, k, 4, 0)


@pytest.mark.parametrize("n", [1, 3, 6])
def test_fewer_patches_than_topk_use_all_patches(n):
    model = build(8, None, 2, dim_hidden=16, topk=6, dropout=0.0).double()
    bag = make_bag(n=n, d=8, label=1)
    bag.features = bag.features.double()
    out = model(bag)
    idx = out.extras["topk_index"]
    assert idx.shape == (n, min(6, n))
    assert all(sorted(r) == list(range(n)) for r in idx.tolist())  # every patch sees all N (self included)
    assert_close(out.logits, _dense_reference(model, bag.features).detach(), "logits")
    loss = model.loss(out, bag)["total"]
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_from_official_drops_unused_gates_and_checks_sizes():
    fx = load_golden("wikg.pt")
    cfg = fx["official_config"]
    model = from_official(fx["state_dict"], **cfg)
    assert not any(k.startswith("gate_") for k in model.state_dict())
    assert set(model.state_dict()) == {k for k in fx["state_dict"] if not k.startswith("gate_")}
    with pytest.raises(ValueError, match="dim_in=1536"):
        from_official(fx["state_dict"], **{**cfg, "dim_in": 1536})
    # pool='attn' (model.py's default) adds readout.gate_nn.{0,2}.*: an official-layout dict of
    # another model (its keys + the unused gates) loads back to the same logits
    attn = build(cfg["dim_in"], None, 2, pool="attn").eval()
    sd = {**attn.state_dict(), **{k: v for k, v in fx["state_dict"].items() if k.startswith("gate_")}}
    assert any(k.startswith("readout.gate_nn.") for k in sd)
    again = from_official(sd, **{**cfg, "pool": "attn"}).eval()
    bag = SimpleNamespace(features=fx["inputs"]["features"][:20], slide_id="s")
    with torch.no_grad():
        assert torch.equal(attn(bag).logits, again(bag).logits)


@pytest.mark.parametrize("pool", ["attn", "mean", "max"])
def test_attention_weights_per_patch(pool):
    """attn readout: the weights are the readout's own (they rebuild its slide vector); mean/max:
    the knowledge-aware attention each patch receives, recomputed here by a plain loop."""
    from benchmarks.data.bag import Bag
    from baselines.wikg import WiKG

    torch.manual_seed(0)
    model = WiKG(12, 2, dim_hidden=16, topk=4, pool=pool).eval()
    bag = Bag("s", "c", torch.randn(30, 12))
    w = model.attention_weights(bag)
    assert w.shape == (30,) and torch.all(w >= 0) and torch.isclose(w.sum(), torch.tensor(1.0), atol=1e-5)
    emb, idx, ka = model._nodes(bag.features)
    if pool == "attn":
        torch.testing.assert_close((w[:, None] * emb).sum(0, keepdim=True), model.readout(emb), atol=1e-5, rtol=1e-5)
    else:
        want = torch.zeros(30)
        for i in range(30):
            for j in range(idx.shape[1]):
                want[idx[i, j]] += ka[i, j]
        torch.testing.assert_close(w, want / 30)
    # the forward is the one the golden test checks: the refactor kept its output
    torch.testing.assert_close(model(bag).logits, model.fc(model.norm(model._readout(emb))))
