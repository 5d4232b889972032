"""WiKG: dynamic graph representation with knowledge-aware attention (Li et al., CVPR 2024).

Follows WonderLandxD/WiKG ``model.py`` @ eb3144f (unchanged since c1d9d7a) with the settings of its
``train.py``. For one slide of N patches:

    x    = LeakyReLU(_fc1(features)); x = (x + mean_N(x)) / 2
    e_h  = W_head(x); e_t = W_tail(x)                                  # head / tail embeddings
    idx  = top-k over j of (e_h[i] * d^-0.5) . e_t[j]   (self included)  # neighbours in feature space
    w    = (e_h[i] * d^-0.5) . e_t[idx]; p = softmax_k(w); Nb = e_t[idx]  # (N, k), (N, k, d)
    eh_r = p * Nb + (1 - p) * e_h
    gate = tanh(e_h + eh_r)
    ka   = einsum('nkl,nkm->nk', Nb, gate)  # as written officially: (sum_l Nb) * (sum_m gate),
                                             # a product of channel sums, NOT a dot product
    e_Nh = sum_k softmax_k(ka) * Nb
    emb  = LeakyReLU(linear1(e_h + e_Nh)) + LeakyReLU(linear2(e_h * e_Nh))   # 'bi-interaction'
    logits = fc(LayerNorm(readout(Dropout(emb))))                          # readout over patches

Kept from the official code: LeakyReLU(0.01) everywhere, the (x + mean)/2 step, the
``(1 - p) * e_h`` term, the einsum quirk, self in the top-k, the 'gcn'/'sage' aggregations and
the torch_geometric readouts ('mean' = ``global_mean_pool``, 'max' = ``global_max_pool``,
'attn' = ``AttentionalAggregation``, of which the official ``GlobalAttention`` is a deprecated
alias with the same ``gate_nn.*`` keys). The default pool is 'mean', as ``train.py``
(``model.py``'s class default is 'attn').

Changes (same outputs, documented):
* Neighbour search without the N x N matrix: the official code forms the dense (N, N) score matrix
  and takes ``torch.topk`` over each row. Here the rows are processed ``topk_chunk_size`` at a
  time (a (chunk, N) block, without autograd), and only the indices are kept. The selected
  scores ``w`` are then recomputed differentiably from the gathered neighbours. ``topk``'s
  backward only reaches the selected entries, so values and gradients are the official ones.
  The search is still O(N^2 d) compute but O(chunk * N) memory; the rest is O(N k d).
* N < topk: the official ``torch.topk`` raises. Here every patch then takes all N patches
  (itself included) as its neighbours, i.e. k = min(topk, N); N = 1 works (k = 1).
* The unused ``gate_U``/``gate_V``/``gate_W`` layers of ``model.py`` (never called in forward)
  are not built; ``from_official`` drops their keys.
* ``model.py`` calls ``torch.autograd.set_detect_anomaly(True)`` on import; not reproduced.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch_geometric.nn import AttentionalAggregation, global_max_pool, global_mean_pool

from baselines.layers import FastDropout
from benchmarks.spec import MethodSpec
from momkd.contract import MILModel, Output, check_bag
from momkd.recipe import Recipe

AGG_TYPES = ("bi-interaction", "gcn", "sage")
POOLS = ("mean", "max", "attn")


@dataclass(frozen=True)
class WiKGConfig:
    dim_hidden: int = 512  # train.py WiKG(dim_hidden=512)
    topk: int = 6  # train.py topk=6
    agg_type: str = "bi-interaction"  # train.py agg_type='bi-interaction'
    dropout: float = 0.3  # train.py dropout=0.3 (message dropout before the readout)
    pool: str = "mean"  # train.py pool='mean' (model.py's own default is 'attn')
    topk_chunk_size: int = 1024  # ours: rows per block in the neighbour search (memory chunk x N)


def topk_neighbours(query: torch.Tensor, keys: torch.Tensor, k: int, chunk_size: int) -> torch.Tensor:
    """Indices (N, k) of the k largest ``query[i] . keys[j]`` over j, row block by row block.

    Equals ``torch.topk(query @ keys.T, k, dim=-1).indices`` without the (N, N) matrix: each block
    holds ``chunk_size`` rows. No gradient (the caller recomputes the selected scores)."""
    if chunk_size < 1:
        raise ValueError(f"wikg: topk_chunk_size must be >= 1, got {chunk_size}")
    n = query.shape[0]
    out = torch.empty(n, k, dtype=torch.long, device=query.device)
    with torch.no_grad():
        kt = keys.T
        for start in range(0, n, chunk_size):
            stop = min(start + chunk_size, n)
            out[start:stop] = torch.topk(query[start:stop] @ kt, k, dim=-1).indices
    return out


class WiKG(MILModel):
    """WiKG for one slide: ``forward(bag) -> Output(logits (1, C), attention=None,
    extras={"topk_index": (N, k) neighbour rows})``. The official model returns logits only."""

    def __init__(self, in_dim: int, n_classes: int = 2, dim_hidden: int = 512, topk: int = 6,
                 agg_type: str = "bi-interaction", dropout: float = 0.3, pool: str = "mean",
                 topk_chunk_size: int = 1024):
        super().__init__()
        if agg_type not in AGG_TYPES:
            raise ValueError(f"wikg: agg_type {agg_type!r} not in {AGG_TYPES}")
        if pool not in POOLS:
            raise ValueError(f"wikg: pool {pool!r} not in {POOLS}")
        if topk < 1 or topk_chunk_size < 1:
            raise ValueError(f"wikg: topk and topk_chunk_size must be >= 1, got {topk}, {topk_chunk_size}")
        self.topk, self.agg_type, self.pool = topk, agg_type, pool
        self.topk_chunk_size = topk_chunk_size
        self.scale = dim_hidden ** -0.5
        self._fc1 = nn.Sequential(nn.Linear(in_dim, dim_hidden), nn.LeakyReLU())
        self.W_head = nn.Linear(dim_hidden, dim_hidden)
        self.W_tail = nn.Linear(dim_hidden, dim_hidden)
        if agg_type == "gcn":
            self.linear = nn.Linear(dim_hidden, dim_hidden)
        elif agg_type == "sage":
            self.linear = nn.Linear(2 * dim_hidden, dim_hidden)
        else:
            self.linear1 = nn.Linear(dim_hidden, dim_hidden)
            self.linear2 = nn.Linear(dim_hidden, dim_hidden)
        self.activation = nn.LeakyReLU()
        self.message_dropout = FastDropout(dropout)
        self.norm = nn.LayerNorm(dim_hidden)
        self.fc = nn.Linear(dim_hidden, n_classes)
        if pool == "attn":  # model.py: GlobalAttention(Linear(d, d/2)-LeakyReLU-Linear(d/2, 1))
            self.readout = AttentionalAggregation(nn.Sequential(
                nn.Linear(dim_hidden, dim_hidden // 2), nn.LeakyReLU(), nn.Linear(dim_hidden // 2, 1)))

    def _readout(self, h: torch.Tensor) -> torch.Tensor:  # (N, d) -> (1, d)
        if self.pool == "mean":
            return global_mean_pool(h, None)
        if self.pool == "max":
            return global_max_pool(h, None)
        return self.readout(h)

    def forward(self, bag: Any) -> Output:
        check_bag(bag, "wikg")
        emb, idx, _ = self._nodes(bag.features)
        h = self._readout(self.message_dropout(emb))  # (1, d)
        logits = self.fc(self.norm(h))  # (1, C)
        return Output(logits, attention=None, extras={"topk_index": idx})

    @torch.no_grad()
    def attention_weights(self, bag: Any) -> torch.Tensor:
        """(N,) per-patch weights for heatmaps. With the ``attn`` readout: its gate's softmax over
        the nodes (the weight of each node in the slide vector, as ABMIL's). With ``mean`` (the
        official train.py) or ``max`` the readout weighs nodes alike, so each patch gets the
        knowledge-aware attention it receives from the nodes that picked it as a top-k neighbour
        (sum over i of softmax_k(ka)[i, k] where idx[i, k] is the patch), divided by N: the
        weights sum to 1 and show which patches the graph step draws on."""
        check_bag(bag, "wikg")
        emb, idx, ka_prob = self._nodes(bag.features)
        if self.pool == "attn":
            gate = self.readout.gate_nn(emb).reshape(-1)
            return torch.softmax(gate.float(), dim=0)
        n = emb.shape[0]
        received = torch.zeros(n, dtype=torch.float32, device=emb.device)
        received.index_add_(0, idx.reshape(-1), ka_prob.reshape(-1).float())
        return received / n

    def _nodes(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Node embeddings after the knowledge-aware graph step (N, d), the top-k neighbour index
        (N, k) and each node's attention over its neighbours (N, k)."""
        x = self._fc1(features)  # (N, d)
        x = (x + x.mean(dim=0, keepdim=True)) * 0.5
        e_h = self.W_head(x)  # (N, d)
        e_t = self.W_tail(x)  # (N, d)
        k = min(self.topk, x.shape[0])  # N < topk: all patches are neighbours (official: error)
        q = e_h * self.scale
        idx = topk_neighbours(q, e_t, k, self.topk_chunk_size)  # (N, k)
        nb = e_t[idx]  # (N, k, d)
        w = (q.unsqueeze(1) @ nb.transpose(1, 2)).squeeze(1)  # (N, k) = the selected scores
        p = torch.softmax(w, dim=1).unsqueeze(-1)  # (N, k, 1)
        eh_r = p * nb + (1 - p) * e_h.unsqueeze(1)  # (N, k, d)
        gate = torch.tanh(e_h.unsqueeze(1) + eh_r)  # (N, k, d)
        ka = torch.einsum("nkl,nkm->nk", nb, gate)  # official einsum: product of channel sums
        ka_prob = torch.softmax(ka, dim=1).unsqueeze(1)  # (N, 1, k)
        e_nh = (ka_prob @ nb).squeeze(1)  # (N, d)
        if self.agg_type == "gcn":
            emb = self.activation(self.linear(e_h + e_nh))
        elif self.agg_type == "sage":
            emb = self.activation(self.linear(torch.cat([e_h, e_nh], dim=1)))
        else:
            emb = self.activation(self.linear1(e_h + e_nh)) + self.activation(self.linear2(e_h * e_nh))
        return emb, idx, ka_prob.squeeze(1)


def build(in_dim: int, omics_dim: int | None, n_classes: int, **hp: Any) -> WiKG:
    return WiKG(in_dim, n_classes, **hp)


def from_official(state_dict: dict, dim_in: int | None = None, dim_hidden: int = 512, topk: int = 6,
                  n_classes: int | None = None, agg_type: str = "bi-interaction", dropout: float = 0.3,
                  pool: str = "attn", topk_chunk_size: int = 1024, **_unused: Any) -> WiKG:
    """Build from an official ``WiKG`` state_dict (``model.py`` key names; ``gate_U/V/W.*`` are
    unused by the official forward and dropped). Arguments are ``WiKG.__init__``'s (``pool``
    defaults to the class default 'attn'); sizes are checked against the weights."""
    sd = {k.replace("module.", "", 1) if k.startswith("module.") else k: v for k, v in state_dict.items()}
    sd = {k: v for k, v in sd.items() if not k.startswith(("gate_U.", "gate_V.", "gate_W."))}
    w1 = sd["_fc1.0.weight"]  # (d, D)
    n_out = sd["fc.weight"].shape[0]
    for name, given, found in (("dim_in", dim_in, w1.shape[1]), ("dim_hidden", dim_hidden, w1.shape[0]),
                               ("n_classes", n_classes, n_out)):
        if given is not None and given != found:
            raise ValueError(f"wikg: {name}={given} but the state_dict has {found}")
    model = WiKG(w1.shape[1], n_out, dim_hidden=w1.shape[0], topk=topk, agg_type=agg_type,
                 dropout=dropout, pool=pool, topk_chunk_size=topk_chunk_size)
    model.load_state_dict(sd, strict=True)
    return model


WIKG_REPO = "WonderLandxD/WiKG@eb3144f"

# train.py (README.md:L39); the model settings are WiKGConfig's defaults (train.py:L163).
RECIPE = Recipe(
    name="official", optimizer="adam", lr=1e-4, weight_decay=1e-5, epochs=100, scheduler="none", grad_clip=None,
    monitor="val_auc", patience=None, balanced_sampling=False,
    sources={
        "optimizer": f"{WIKG_REPO} train.py:L165 (Adam, lr 1e-4, weight_decay 1e-5)",
        "lr": f"{WIKG_REPO} train.py:L165", "weight_decay": f"{WIKG_REPO} train.py:L165",
        "epochs": f"{WIKG_REPO} train.py:L125 (100)",
        "scheduler": f"{WIKG_REPO} train.py (none)", "grad_clip": f"{WIKG_REPO} train.py (none)",
        "monitor": f"{WIKG_REPO} train.py:L200-224 (one checkpoint per validation metric; best_auc.pth is used here)",
        "balanced_sampling": f"{WIKG_REPO} train.py:L160 (shuffle=True)",
        "loss": f"{WIKG_REPO} train.py:L167 (CrossEntropyLoss)",
        "dropout": f"{WIKG_REPO} train.py:L163 (dropout=0.3, pool='mean')",
        "seed": f"{WIKG_REPO} train.py:L132 (2023)",
    },
    notes="No early stopping: every epoch is trained and the best validation-AUC epoch is kept.")


SPEC = MethodSpec(
    "wikg", family="mil", display="WiKG", job_cost=3.0, build=build, config=WiKGConfig,
    recipes={"wsi": RECIPE},
    search_space=("lr=1e-5:1e-3:log", "weight_decay=1e-6:1e-2:log", "dropout=0.0:0.5", "topk=4,6,8,12"),
    scale_params={"small": {"dim_hidden": 128}},
    paper="Li et al., CVPR 2024",
    code="WonderLandxD/WiKG model.py, train.py",
    description="dynamic top-k graph with knowledge-aware attention (WiKG), mean readout")
