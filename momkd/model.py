"""MoMKD: momentum-memory knowledge distillation from omics to histology (Guo et al., arXiv
2602.21395; official code CAIR-LAB-WFUSM/MoMKD ``models/mkd.py``, ``utils/Mkd_train_utils.py``).

Forward (one slide; WSI only whenever ``bag.omics is None``):

    ctx  = WSIEncoder(features, kNN graph)                      (N, D)
    z    = normalize(W_P ctx)                                   (N, S)   Eq. 1, per patch
    s_i  = max_j z_i.c+_j - max_j z_i.c-_j  (centres detached)  Eq. 4
    a    = softmax_i(s / tau)                                   (N,)
    V    = sum_i a_i ctx_i ; logits = classifier(V)             (1, 2)
    w    = normalize(W_N V)                                     (1, S)   slide-level F_N-wsi
    r, g_hat = OmicsBranch(omics)            (training only)    (1, S), (1, G)

Loss (Eq. 5): lambda_ce CE + lambda_mse MSE(g_hat, g) + alpha_wsi L_align(w) + alpha_omics
L_align(r) + lambda_mem L_mem, with L_mem = commitment + orthogonality of the slide's class bank.

Gradient isolation: the memory enters the attention detached (CE never reaches it); the WSI and
omics branches share no module and no loss couples w and r directly, so their only interaction
is through the memory banks (which both alignment terms move in ``gradient`` mode).

Official quirks kept in the ``official`` preset: the VQ commitment assigns patches by Euclidean
distance to the UN-normalised codebook (``commit_assign="raw"``) while attention and alignment
use the normalised one; the regulariser covers only the slide's class bank; the attention
temperature is exp(log_tau) clamped to [0.01, 2] and the scores are divided by (tau + 1e-9).
Not reproduced: the vendored VQ returns a zero loss in eval mode (our ``loss`` always computes
every term), and sums its loss into a float32 tensor (ours keeps the model's dtype).
"""
from __future__ import annotations

import math
import weakref
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from momkd.config import MoMKDConfig, resolve
from momkd.contract import MILModel, Output, bag_label, check_bag
from momkd.encoders import GatedPool, OmicsBranch, WSIEncoder
from momkd.graph import knn_edge_index

# edge_index tensors whose patch range was checked (by identity: a tensor's == is elementwise)
_CHECKED_GRAPHS: dict[int, "weakref.ref[torch.Tensor]"] = {}
from momkd.losses import alignment_loss, memory_regulariser, reconstruction_loss
from momkd.memory import MemoryBanks, sample_class_projections, spherical_kmeans

_TAU_EPS = 1e-9  # mkd.py: softmax(scores / (attn_tau + 1e-9))


class MoMKD(MILModel):
    """The MoMKD model. Build with ``MoMKD(in_dim, omics_dim, n_classes=2, **settings)`` where the
    settings are :class:`MoMKDConfig` fields (or pass ``config=``). Binary tasks only: the memory
    is class-conditioned on C+ / C-."""

    def __init__(self, in_dim: int, omics_dim: int | None = None, n_classes: int = 2,
                 config: MoMKDConfig | None = None, **settings: Any):
        super().__init__()
        if n_classes != 2:
            raise ValueError(f"MoMKD: n_classes={n_classes}, but its class-conditioned memory (C+ and C-) "
                             "needs a binary task (n_classes=2)")
        if config is not None and settings:
            raise TypeError("MoMKD: pass either config= or keyword settings, not both")
        cfg = resolve(config if config is not None else MoMKDConfig.from_dict(settings))
        self.cfg, self.in_dim, self.omics_dim, self.n_classes = cfg, in_dim, omics_dim, n_classes
        d, s = cfg.hidden_dim, cfg.proj_dim
        self.wsi = WSIEncoder(in_dim, d, cfg.gat_heads, cfg.gat_layers, cfg.gat_dropout, cfg.feat_dropout,
                              cfg.gat_negative_slope, cfg.gat_impl, cfg.gat_chunk_edges)
        if cfg.use_memory:
            self.patch_projector = nn.Linear(d, s)  # mkd.py wsi_patch_projector (Eq. 1)
            self.pool_projector = nn.Linear(d, s)  # mkd.py wsi_pool_projector (F_N-wsi)
            self.memory = MemoryBanks(cfg.n_memory, s, cfg.memory_mode)
            if cfg.learnable_tau:
                self.log_tau = nn.Parameter(torch.tensor(math.log(cfg.tau_attn)))
        else:
            self.gated = GatedPool(d, cfg.gated_attn_dim)
        self.classifier = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, cfg.cls_hidden), nn.ReLU(),
                                        nn.Dropout(cfg.cls_dropout), nn.Linear(cfg.cls_hidden, n_classes))
        self.omics = (OmicsBranch(omics_dim, cfg.omics_hidden, cfg.omics_embed_dim, s, cfg.omics_dropout)
                      if cfg.use_omics and cfg.use_memory and omics_dim else None)
        self._ema_stats: tuple[int, torch.Tensor, torch.Tensor] | None = None

    # ---- helpers -------------------------------------------------------------------------
    @property
    def _dtype(self) -> torch.dtype:
        return self.classifier[1].weight.dtype

    def attn_tau(self) -> torch.Tensor:
        """The attention temperature: exp(log_tau) clamped (official) or the fixed ``tau_attn``."""
        if hasattr(self, "log_tau"):
            return torch.exp(self.log_tau).clamp(self.cfg.tau_min, self.cfg.tau_max)
        return torch.tensor(self.cfg.tau_attn, dtype=self._dtype, device=self.classifier[1].weight.device)

    def edges(self, bag: Any) -> torch.Tensor:
        """The bag's cached kNN ``edge_index``, or one built from ``coords`` (and cached on the bag)."""
        sid = getattr(bag, "slide_id", "?")
        n = bag.features.shape[0]
        ei = getattr(bag, "edge_index", None)
        if ei is None:
            coords = getattr(bag, "coords", None)
            if coords is None:
                raise ValueError(f"momkd: slide {sid}: needs patch coordinates (coords) or an edge_index to "
                                 "build its kNN graph; the data source has none for this slide")
            if coords.shape[0] != n:
                raise ValueError(f"momkd: slide {sid}: {coords.shape[0]} coords for {n} patches")
            ei = knn_edge_index(coords, self.cfg.knn_k)
            try:
                bag.edge_index = ei
            except AttributeError:
                pass
        if ei.dim() != 2 or ei.shape[0] != 2:
            raise ValueError(f"momkd: slide {sid}: edge_index must be (2, E), got {tuple(ei.shape)}")
        seen = _CHECKED_GRAPHS.get(id(ei))
        if seen is not None and seen() is ei:  # range checked on an earlier step: no device read per step
            return ei.to(bag.features.device)
        if ei.numel() and (int(ei.max()) >= n or int(ei.min()) < 0):
            raise ValueError(f"momkd: slide {sid}: edge_index refers to patch {int(ei.max())} but the bag has "
                             f"{n} patches; rebuild the graph from this slide's coords")
        _CHECKED_GRAPHS[id(ei)] = weakref.ref(ei, lambda _, k=id(ei): _CHECKED_GRAPHS.pop(k, None))
        return ei.to(bag.features.device)

    def encode_patches(self, bag: Any) -> torch.Tensor:
        """Unit-sphere patch projections z (N, S) (Eq. 1)."""
        ctx = self.wsi(bag.features.to(self._dtype), self.edges(bag))
        return F.normalize(self.patch_projector(ctx), p=2, dim=-1)

    # ---- forward ---------------------------------------------------------------------------
    def forward(self, bag: Any) -> Output:
        check_bag(bag, "momkd")
        x = bag.features.to(self._dtype)
        ctx = self.wsi(x, self.edges(bag))  # (N, D)
        extras: dict[str, Any] = {}
        if self.cfg.use_memory:
            z = F.normalize(self.patch_projector(ctx), p=2, dim=-1)  # (N, S)
            pos_c, neg_c = self.memory.centers()  # (K, S) each
            s_pos, idx_pos = (z @ pos_c.detach().T).max(dim=1)  # stop-gradient: CE never reaches memory
            s_neg, idx_neg = (z @ neg_c.detach().T).max(dim=1)
            scores = s_pos - s_neg  # Eq. 4
            tau = self.attn_tau()
            attention = torch.softmax(scores / (tau + _TAU_EPS), dim=0)  # (N,)
            extras.update(patch_proj=z, pos_centers=pos_c, neg_centers=neg_c, idx_pos=idx_pos, idx_neg=idx_neg,
                          s_pos=s_pos, s_neg=s_neg, scores=scores, attn_tau=tau)
        else:
            scores = self.gated(ctx)
            attention = torch.softmax(scores, dim=0)
            extras["scores"] = scores
        pooled = attention.unsqueeze(0) @ ctx  # (1, D)
        logits = self.classifier(pooled)  # (1, 2)
        extras.update(pooled=pooled, contextual=ctx)
        if self.cfg.use_memory:
            extras["wsi_proj"] = F.normalize(self.pool_projector(pooled), p=2, dim=-1)  # (1, S)
        omics = getattr(bag, "omics", None)
        if omics is not None and self.omics is not None:  # training only
            g = omics.to(self._dtype).reshape(1, -1)
            if g.shape[1] != self.omics_dim:
                raise ValueError(f"momkd: slide {getattr(bag, 'slide_id', '?')}: omics has {g.shape[1]} values, "
                                 f"the model was built for omics_dim={self.omics_dim}")
            r, recon = self.omics(g)
            extras.update(omics_proj=r, reconstructed_omics=recon)
        return Output(logits=logits, attention=attention, extras=extras)

    # ---- loss -------------------------------------------------------------------------------
    def loss(self, output: Output, bag: Any) -> dict[str, torch.Tensor]:
        """Eq. 5 terms by name: ce, align_wsi, mem (= mem_commit, mem_orth parts), and with omics
        align_omics, recon; ``total`` is their weighted sum."""
        c, ex = self.cfg, output.extras
        y = bag_label(bag)
        raw = getattr(bag, "label", None)  # the host's own int when the bag has one: no device read
        label = int(raw) if raw is not None and not torch.is_tensor(raw) else int(y.item())
        if label not in (0, 1):
            raise ValueError(f"momkd: slide {getattr(bag, 'slide_id', '?')}: label {label}; MoMKD needs 0/1")
        ce = F.cross_entropy(output.logits, y)
        terms = {"ce": ce}
        total = c.lambda_ce * ce
        if c.use_memory:
            pos_c, neg_c = ex["pos_centers"], ex["neg_centers"]
            align_wsi = alignment_loss(ex["wsi_proj"], pos_c, neg_c, label, c.tau_agg, c.margin, c.beta)
            reg = memory_regulariser(ex["patch_proj"], self.memory.bank(label), c.commit_assign,
                                     c.commit_weight, c.orth_weight)
            ex["vq_index"] = reg.pop("vq_index")
            terms.update(align_wsi=align_wsi, **reg)
            total = total + c.alpha_wsi * align_wsi + c.lambda_mem * reg["mem"]
            if c.memory_mode == "ema" and self.training:
                z = ex["patch_proj"].detach()
                idx = ex["vq_index"]
                sums = torch.zeros(c.n_memory, z.shape[1], dtype=z.dtype, device=z.device).index_add_(0, idx, z)
                self._ema_stats = (label, sums, torch.bincount(idx, minlength=c.n_memory))
            if "omics_proj" in ex:
                align_omics = alignment_loss(ex["omics_proj"], pos_c, neg_c, label, c.tau_agg, c.margin, c.beta)
                recon = reconstruction_loss(ex["reconstructed_omics"], bag.omics.to(self._dtype))
                terms.update(align_omics=align_omics, recon=recon)
                total = total + c.alpha_omics * align_omics + c.lambda_mse * recon
        terms["total"] = total
        return terms

    # ---- hooks ------------------------------------------------------------------------------
    def on_step_end(self) -> None:
        """ema mode: move the class bank of the last training slide toward its assigned patches."""
        if self._ema_stats is not None and self.cfg.use_memory and self.cfg.memory_mode == "ema":
            label, sums, counts = self._ema_stats
            self.memory.ema_update(label, sums, counts, self.cfg.ema_decay)
        self._ema_stats = None

    def on_fit_start(self, train_bags: Iterable[Any]) -> None:
        """Warm start: spherical K-means per class on patch projections sampled from the training
        slides through the (untrained) encoder in eval mode (core_utils.bootstrap_codebooks)."""
        if not (self.cfg.use_memory and self.cfg.warm_start):
            return
        bags = list(train_bags)
        for b in bags:
            if getattr(b, "label", None) is not None and int(b.label) not in (0, 1):
                raise ValueError(f"momkd: slide {getattr(b, 'slide_id', '?')}: label {b.label}; MoMKD needs 0/1")
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                samples = sample_class_projections(bags, self.encode_patches, self.cfg.kmeans_samples,
                                                   self.cfg.kmeans_seed)
                gen = torch.Generator().manual_seed(self.cfg.kmeans_seed)
                new = {}
                for y in (1, 0):
                    if y in samples:
                        new[y] = spherical_kmeans(samples[y], self.cfg.n_memory, self.cfg.kmeans_iters, gen,
                                                  fallback=self.memory.bank(y).detach())
                self.memory.set_banks(new.get(1), new.get(0))
        finally:
            self.train(was_training)
        self._ema_stats = None


def build(in_dim: int, omics_dim: int | None, n_classes: int, **hp: Any) -> MoMKD:
    """Registry factory: ``hp`` are :class:`MoMKDConfig` fields (variant overrides applied)."""
    return MoMKD(in_dim, omics_dim, n_classes, **hp)
