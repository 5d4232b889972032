"""MoMKD as a model: inference without omics, tiny bags, errors, presets, the chunked GATv2,
registry variants and the interpretability exports."""
from types import SimpleNamespace

import pytest
import torch
from torch_geometric.nn import GATv2Conv

from momkd import MoMKD, MoMKDConfig, build
from momkd.config import resolve
from momkd.encoders import gatv2_chunked, prepare_blocks
from momkd.graph import knn_edge_index
from momkd.interpret import patch_attention, plot_attention_heatmap, top_patches_per_centroid
from tests.conftest import make_bag

TINY = dict(hidden_dim=8, proj_dim=4, n_memory=3, omics_hidden=8, omics_embed_dim=8, cls_hidden=6)


def _model(**kw) -> MoMKD:
    torch.manual_seed(0)
    return MoMKD(16, 12, 2, **{**TINY, **kw})


def test_inference_needs_no_omics_and_equals_inference_with_omics():
    model = _model().eval()
    bag = make_bag(n=25, d=16, omics_dim=12)
    with torch.no_grad():
        with_omics = model(bag)
        bag.omics = None
        without = model(bag)
    assert torch.equal(with_omics.logits, without.logits)
    assert torch.equal(with_omics.attention, without.attention)
    assert "omics_proj" in with_omics.extras and "omics_proj" not in without.extras
    assert set(model.loss(without, bag)) == {"ce", "align_wsi", "mem", "mem_commit", "mem_orth", "total"}


@pytest.mark.parametrize("n", [1, 2, 3])
def test_tiny_bags_train_and_predict(n):
    model = _model().train()
    bag = make_bag(n=n, d=16, omics_dim=12, label=n % 2)
    out = model(bag)
    assert out.logits.shape == (1, 2) and out.attention.shape == (n,)
    assert torch.isclose(out.attention.sum(), torch.tensor(1.0))
    terms = model.loss(out, bag)
    terms["total"].backward()
    assert torch.isfinite(terms["total"])
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_float64_and_graph_built_from_coords():
    model = _model().double().eval()
    bag = make_bag(n=12, d=16, omics_dim=12)
    bag.edge_index = None
    out = model(bag)  # float32 features are cast to the model's dtype
    assert out.logits.dtype == torch.float64
    assert torch.equal(bag.edge_index, knn_edge_index(bag.coords, 8))  # cached on the bag


def test_errors_name_the_slide():
    with pytest.raises(ValueError, match="n_classes=3"):
        MoMKD(16, 12, 3, **TINY)
    model = _model()
    bag = make_bag(n=5, d=16, coords=False, slide_id="TCGA-XX")
    with pytest.raises(ValueError, match="TCGA-XX.*coords"):
        model(bag)
    bag = make_bag(n=5, d=16, slide_id="TCGA-YY")
    bag.edge_index = torch.tensor([[0, 9], [1, 2]])
    with pytest.raises(ValueError, match="TCGA-YY.*patch 9"):
        model(bag)
    bag = make_bag(n=5, d=16, omics_dim=7, slide_id="TCGA-ZZ")
    with pytest.raises(ValueError, match="TCGA-ZZ.*omics"):
        model(bag)
    with pytest.raises(KeyError, match="unknown settings"):
        MoMKDConfig.from_dict({"hiden_dim": 3})
    with pytest.raises(ValueError, match="memory_mode"):
        resolve(MoMKDConfig(memory_mode="momentum"))


def test_presets_fill_only_unset_numbers():
    off, pap = resolve(MoMKDConfig()), resolve(MoMKDConfig(preset="paper"))
    assert (off.hidden_dim, off.proj_dim, off.n_memory, off.lambda_mse, off.learnable_tau, off.kmeans_samples,
            off.commit_assign) == (512, 64, 16, 0.05, True, 50_000, "raw")
    assert (pap.hidden_dim, pap.proj_dim, pap.lambda_mse, pap.learnable_tau, pap.kmeans_samples,
            pap.commit_assign) == (256, 128, 0.01, False, 10_000, "normalized")
    assert resolve(MoMKDConfig(preset="paper", lambda_mse=0.0, proj_dim=32)).proj_dim == 32
    assert (pap.lambda_ce, pap.alpha_wsi, pap.alpha_omics, pap.lambda_mem, pap.margin, pap.beta, pap.tau_agg) == \
        (0.5, 0.2, 0.05, 0.1, 0.3, 20.0, 5.0)


@pytest.mark.parametrize("chunk", [7, 40, 10_000])
def test_chunked_gatv2_equals_torch_geometric(chunk):
    torch.manual_seed(0)
    n = 60
    ei = knn_edge_index(torch.rand(n, 2), 8)
    ei = torch.cat([ei, torch.tensor([[3, 5], [3, 5]])], 1)  # explicit self loops are replaced, as in PyG
    conv = GATv2Conv(10, 4, heads=3, dropout=0.0).double()
    x = torch.randn(n, 10, dtype=torch.float64, requires_grad=True)
    ref = conv(x, ei)
    g = torch.randn_like(ref)
    ref_grads = torch.autograd.grad((ref * g).sum(), [x, *conv.parameters()])
    blocks = prepare_blocks(ei, n, chunk)
    max_in = int(torch.bincount(blocks.dst).max())
    assert all(e1 - e0 <= chunk + max_in for _, _, e0, e1 in blocks.bounds)
    assert blocks.bounds[0][0] == 0 and blocks.bounds[-1][1] == n and blocks.bounds[-1][3] == n * 8 + n
    assert len(blocks.bounds) >= min(n, (n * 9) // (chunk + max_in))
    got = gatv2_chunked(conv, x, blocks)
    got_grads = torch.autograd.grad((got * g).sum(), [x, *conv.parameters()])
    torch.testing.assert_close(got, ref, atol=1e-12, rtol=0)
    for a, b in zip(got_grads, ref_grads):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


@pytest.mark.parametrize("in_dim,channels,heads", [(10, 4, 3), (1536, 256, 2)])
def test_gatv2_params_match_torch_geometric(in_dim, channels, heads):
    """The chunked path's own parameter module has GATv2Conv's state_dict keys, shapes and, for the
    same seed, the same initial values (seeded runs do not depend on which one is built), and the
    next random draw agrees too (the RNG stream is consumed identically)."""
    from momkd.encoders import GATv2Params

    torch.manual_seed(3)
    ref = GATv2Conv(in_dim, channels, heads=heads, dropout=0.5, share_weights=False)
    after_ref = torch.rand(3)
    torch.manual_seed(3)
    own = GATv2Params(in_dim, channels, heads, 0.2, 0.5)
    after_own = torch.rand(3)
    assert list(own.state_dict()) == list(ref.state_dict())
    for k, v in ref.state_dict().items():
        assert torch.equal(own.state_dict()[k], v), k
    assert torch.equal(after_own, after_ref)
    assert own.bias.abs().sum() == 0 and own.att.abs().sum() > 0


def test_chunked_gatv2_dropout_is_consistent_with_its_backward():
    """With attention dropout on, the gradient is that of the function actually computed."""
    torch.manual_seed(0)
    n = 30
    ei = knn_edge_index(torch.rand(n, 2), 4)
    conv = GATv2Conv(6, 3, heads=2, dropout=0.5).double().train()
    blocks = prepare_blocks(ei, n, 16)
    x = torch.randn(n, 6, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(1)
    y = gatv2_chunked(conv, x, blocks)
    (gx,) = torch.autograd.grad(y.pow(2).sum(), [x])
    eps, i = 1e-6, (4, 2)
    for sign in (1, -1):
        xp = x.detach().clone()
        xp[i] += sign * eps
        torch.manual_seed(1)  # the same dropout draw
        val = gatv2_chunked(conv, xp, blocks).pow(2).sum().item()
        if sign == 1:
            up = val
        else:
            down = val
    assert (up - down) / (2 * eps) == pytest.approx(gx[i].item(), rel=1e-5, abs=1e-8)


def test_registry_variants_train_one_step():
    from benchmarks.registry import get

    spec = get("momkd")
    assert spec.family == "ours" and spec.needs == {"coords", "omics_train"}
    assert {"full", "wsi_only", "no_omics_align", "no_wsi_align", "no_recon", "fixed_memory",
            "ema_memory"} <= set(spec.variant_names())
    bags = [make_bag(n=10, d=16, omics_dim=12, label=y, seed=s) for s, y in enumerate([0, 1, 1, 0])]
    for variant in spec.variant_names():
        torch.manual_seed(0)
        model = spec.create(16, 12, 2, variant, **{**TINY, "kmeans_samples": 20})
        model.on_fit_start(bags)
        opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-3)
        out = model(bags[1])
        terms = model.loss(out, bags[1])
        terms["total"].backward()
        opt.step()
        model.on_step_end()
        names = {n for n, p in model.named_parameters() if p.requires_grad}
        if variant == "wsi_only":
            assert set(terms) == {"ce", "total"} and not any(n.startswith(("memory", "omics")) for n in names)
        elif variant in ("fixed_memory", "ema_memory"):
            assert not any(n.startswith("memory") for n in names) and "align_omics" in terms
        else:
            assert {"memory.pos", "memory.neg"} <= names and "recon" in terms
    assert get("momkd").hparams("no_recon")["lambda_mse"] == 0.0


def test_build_matches_registry_signature():
    model = build(in_dim=16, omics_dim=12, n_classes=2, **{**TINY, "preset": "paper"})
    assert isinstance(model, MoMKD) and model.cfg.preset == "paper" and not hasattr(model, "log_tau")


def test_interpretability_exports(tmp_path):
    model = _model().eval()
    bags = [make_bag(n=12, d=16, omics_dim=12, label=y, seed=s, slide_id=f"slide{s}") for s, y in enumerate([0, 1])]
    rec = patch_attention(model, bags[0])
    with torch.no_grad():
        out = model(SimpleNamespace(**{**vars(bags[0]), "omics": None}))
    assert rec["slide_id"] == "slide0" and rec["coords"].shape == (12, 2)
    assert torch.allclose(torch.from_numpy(rec["attention"]), out.attention)
    assert {"score", "s_pos", "s_neg", "idx_pos", "idx_neg"} <= set(rec)
    top = top_patches_per_centroid(model, bags, top=2)
    with torch.no_grad():
        z = {b.slide_id: model.encode_patches(b) for b in bags}
    assert len(top) == 2 * 3 * 2  # banks x centroids x top
    for bank, centers in (("pos", out.extras["pos_centers"]), ("neg", out.extras["neg_centers"])):
        for c in range(3):
            rows = [r for r in top if r["bank"] == bank and r["centroid"] == c]
            best = max((float(z[b.slide_id][i] @ centers[c]), b.slide_id, i)
                       for b in bags for i in range(12))
            assert rows[0]["rank"] == 0 and rows[0]["similarity"] >= rows[1]["similarity"]
            assert (rows[0]["slide_id"], rows[0]["patch"]) == best[1:]
            assert rows[0]["similarity"] == pytest.approx(best[0], abs=1e-6)
    png = plot_attention_heatmap(rec["coords"], rec["attention"], tmp_path / "heat" / "slide0.png", title="slide0")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_layernorm_elu_dropout_and_maximum_equal_autograd_composition():
    """The fused post-GATv2 block and the layer max give the values and gradients of the plain
    autograd ops (same dropout draw as fast_dropout; ties of the max split in halves)."""
    from momkd.encoders import _LayerNormELUDropout, _Maximum, fast_dropout

    torch.manual_seed(0)
    ln = torch.nn.LayerNorm(6).double()
    torch.nn.init.normal_(ln.weight)
    torch.nn.init.normal_(ln.bias)
    g = torch.randn(9, 6, dtype=torch.float64, requires_grad=True)
    res = torch.randn(9, 6, dtype=torch.float64, requires_grad=True)
    up = torch.randn(9, 6, dtype=torch.float64)
    for p in (0.0, 0.5):
        torch.manual_seed(3)
        ref = fast_dropout(torch.nn.functional.elu(ln(g)), p, True)
        torch.manual_seed(3)
        got = _LayerNormELUDropout.apply(g, ln.weight, ln.bias, ln.eps, p)
        assert torch.equal(got, ref)
        a = res + ref
        ref_out = torch.maximum(a, res)  # ties wherever dropout zeroed an entry
        got_out = _Maximum.apply(res + got, res)
        assert torch.equal(got_out, ref_out)
        assert p == 0.0 or bool((ref == 0).any())
        ref_g = torch.autograd.grad((ref_out * up).sum(), [g, res, ln.weight, ln.bias])
        got_g = torch.autograd.grad((got_out * up).sum(), [g, res, ln.weight, ln.bias])
        for x, y in zip(got_g, ref_g):
            torch.testing.assert_close(x, y, atol=1e-14, rtol=0)


def test_block_cache_hits_the_same_graph_only():
    from momkd.encoders import cached_blocks

    ei = knn_edge_index(torch.rand(20, 2), 3)
    first = cached_blocks(ei, 20, 16)
    assert cached_blocks(ei, 20, 16) is first  # same tensor, unmodified: reused
    assert cached_blocks(ei.clone(), 20, 16) is not first  # another tensor: prepared anew
    assert cached_blocks(ei, 20, 8) is not cached_blocks(ei, 20, 16)  # other block size
    ei[1, 0] = (int(ei[1, 0]) + 1) % 20  # in-place change bumps the version: not reused
    again = cached_blocks(ei, 20, 16)
    assert again is not first
    assert torch.equal(again.src, prepare_blocks(ei, 20, 16).src)
