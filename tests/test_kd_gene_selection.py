"""G-HANet's Welch t-test gene selection: hand-checked, and fitted on the training bags only."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy import stats

from baselines import ghanet
from baselines.omics_utils import GeneTokenizer, gene_groups, select_genes_welch, training_omics, welch_pvalues
from tests.conftest import make_bag

D_IN, G = 8, 12
TINY = dict(wsi_dim=16, heads=2, dim_head=8, ff_mult=1, gate_dim=8, out_dim=4, n_tokens=3)




def test_welch_pvalue_hand_case():
    a, b = [1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 6.0, 8.0, 10.0]
    ma, mb = sum(a) / 4, sum(b) / 5
    va = sum((x - ma) ** 2 for x in a) / 3
    vb = sum((x - mb) ** 2 for x in b) / 4
    se2 = va / 4 + vb / 5
    tstat = (ma - mb) / math.sqrt(se2)
    df = se2 ** 2 / ((va / 4) ** 2 / 3 + (vb / 5) ** 2 / 4)  # Welch-Satterthwaite
    p = 2 * stats.t.sf(abs(tstat), df)
    x = np.array(a + b)[:, None]
    y = np.array([1] * 4 + [0] * 5)
    assert welch_pvalues(x, y)[0] == pytest.approx(p, rel=1e-10)


def test_welch_selection_threshold_and_group_fallback():
    rng = np.random.default_rng(0)
    y = np.array([0, 1] * 10)
    x = rng.normal(size=(20, 9))
    x[:, 1] += 4.0 * y  # strongly differential gene in group 0
    x[:, 7] = 1.0  # constant gene: NaN p-value, never selected
    groups = gene_groups(9, 3)  # [0,1,2] [3,4,5] [6,7,8]
    p = welch_pvalues(x, y)
    assert np.isnan(p[7]) and p[1] < 1e-6
    mask = select_genes_welch(x, y, groups, alpha=0.05, min_per_group=1)
    assert mask[1] and not mask[7]
    assert np.array_equal(mask, (np.nan_to_num(p, nan=1.0) < 0.05) | _fallback(p, groups))
    for g in groups:
        assert mask[g].sum() >= 1


def _fallback(p: np.ndarray, groups) -> np.ndarray:
    """Groups without any p < 0.05 keep their single smallest p-value."""
    out = np.zeros(p.shape[0], dtype=bool)
    q = np.nan_to_num(p, nan=1.0)
    for g in groups:
        if not (q[g] < 0.05).any():
            out[g[int(np.argmin(q[g]))]] = True
    return out


def test_gene_tokenizer_pads_to_16_tokens():
    tok = GeneTokenizer(40, 16)
    assert tok.token_dim == 3
    out = tok(torch.arange(40.0))
    flat = out.reshape(-1)
    assert out.shape == (16, 3) and flat[:40].tolist() == list(range(40)) and flat[40:].abs().sum() == 0
    with pytest.raises(ValueError, match="slide x"):
        tok(torch.zeros(39), "x")


def _cohort(seed: int = 0):
    train, test = [], []
    for i in range(16):
        b = make_bag(n=10, d=D_IN, label=i % 2, omics_dim=G, seed=seed + i, slide_id=f"tr{i}")
        b.omics[0] += 3.0 * b.label  # gene 0 differs between the classes in the training part
        train.append(b)
    for i in range(8):
        b = make_bag(n=10, d=D_IN, label=i % 2, omics_dim=G, seed=100 + i, slide_id=f"te{i}")
        test.append(b)
    return train, test


def _fit_mask(bags) -> torch.Tensor:
    torch.manual_seed(0)
    m = ghanet.build(D_IN, G, 2, **TINY)
    m.on_fit_start(bags)
    return m.gene_mask.clone()


def test_selection_uses_only_the_bags_it_is_given():
    train, test = _cohort()
    mask = _fit_mask(train)
    x, y = training_omics(train)
    assert torch.equal(mask, torch.from_numpy(select_genes_welch(x, y, gene_groups(G, 3))))
    assert bool(mask[0])
    # change the non-training bags completely: a strong class signal on gene 5, flipped labels
    for b in test:
        b.omics = b.omics + 50.0 * b.label * torch.eye(G)[5]
        b.label = 1 - b.label
    assert torch.equal(_fit_mask(train), mask)
    # positive control: had those bags been part of the fit, the selection would change
    assert not torch.equal(_fit_mask(train + test), mask)


def test_engine_gives_on_fit_start_the_training_bags_only():
    from benchmarks.engine import fit
    from benchmarks.protocol import ProtocolConfig

    train, test = _cohort()
    val = [SimpleNamespace(**{**vars(b), "omics": None}) for b in test[:4]]
    seen: list[list[str]] = []

    class Spy(ghanet.GHANet):
        def on_fit_start(self, train_bags):
            seen.append([b.slide_id for b in train_bags])
            super().on_fit_start(train_bags)

    torch.manual_seed(0)
    m = Spy(D_IN, G, 2, **TINY)
    fit(m, train, val, ProtocolConfig(max_epochs=1, device="cpu", bf16=False), seed=0)
    assert seen == [[b.slide_id for b in train]]
    assert torch.equal(m.gene_mask, _fit_mask(train))


def test_fitted_selection_travels_with_the_state_dict():
    train, _ = _cohort()
    torch.manual_seed(0)
    m = ghanet.build(D_IN, G, 2, **TINY)
    m.on_fit_start(train)
    assert not bool(m.gene_mask.all())
    torch.manual_seed(1)
    fresh = ghanet.build(D_IN, G, 2, **TINY)
    fresh.load_state_dict(m.state_dict())
    assert torch.equal(fresh.gene_mask, m.gene_mask)
    m.eval(), fresh.eval()
    b = SimpleNamespace(**{**vars(train[0]), "omics": None})
    with torch.no_grad():
        assert torch.equal(fresh(b).logits, m(b).logits)


def test_reconstruction_loss_reads_the_selected_genes_and_follows_a_new_mask():
    from baselines.kd_losses import cosine_cubed

    train, _ = _cohort()
    torch.manual_seed(0)
    m = ghanet.build(D_IN, G, 2, **TINY).eval()
    m.on_fit_start(train)
    b = train[1]

    def by_hand(out):  # the official selection: g_j[mask_j] against head j's rows at mask_j
        sce = mse = 0.0
        for j, g in enumerate(gene_groups(G, 3)):
            keep = m.gene_mask[torch.as_tensor(g)]
            pred, target = out.extras["reconstruction"][j][keep], b.omics.reshape(-1)[torch.as_tensor(g)][keep]
            sce, mse = sce + cosine_cubed(pred, target, 3.0), mse + torch.nn.functional.mse_loss(pred, target)
        return sce, mse

    with torch.no_grad():
        out = m(b)
        terms = m.loss(out, b)
        sce, mse = by_hand(out)
        assert torch.allclose(terms["recon_sce"], sce) and torch.allclose(terms["recon_mse"], mse)
        new_mask = ~m.gene_mask  # a different selection loaded into the same model
        new_mask[torch.as_tensor([g[0] for g in gene_groups(G, 3)])] = True
        m.load_state_dict({**m.state_dict(), "gene_mask": new_mask})
        moved = m.loss(out, b)
        sce2, mse2 = by_hand(out)
        assert torch.allclose(moved["recon_mse"], mse2) and not torch.allclose(moved["recon_mse"], mse)
