"""G-HANet: genome-informed hyper-attention network, adapted from survival to classification.

Paper: Z. Wang, Y. Zhang, Y. Xu, S. Imoto, H. Chen, J. Song, "Histo-Genomic Knowledge Association
for Cancer Prognosis from Histopathology Whole Slide Images", IEEE TMI 2025 (arXiv 2403.10040,
"Histo-Genomic Knowledge Distillation ..."). Code: ZacharyWang-007/G-HANet @ 54020e8
(``models/model_coattn.py`` ``G_HANet_Surv``, ``models/model_reconstruction.py``
``Reconstruction_Net``, ``models/hyper_attention_module.py``, ``models/attention_modules.py``,
``utils/coattn_train_utils.py``, ``utils/core_utils.py``, ``main.py``).

Architecture (official widths; D = input feature dim)
----------------------------------------------------
Cross-modal associating branch (CAB, ``Reconstruction_Net``): h = Dropout(ReLU(Linear(D, 512) x));
6 learnable genomic tokens T (1, 6, 512) cross-attend to the patches (4 heads x 128, softmax over
patches, attention dropout 0.25): r = CA(LN1(T), LN2(h)); r = FFN0(LN3(r)) + r;
r, S = CA(LN4(T + r), LN2(h)); r = FFN1(LN5(r)) + r; r = LN6(r). Each token j reconstructs its gene
group through Linear(512, 512)-LN-ELU-Dropout-Linear(512, |g_j|). The official forward calls
``cross_attention0`` twice (``cross_attention1`` is built but unused);
``reuse_first_cross_attention=True`` reproduces that (and does not build the unused module).

Hyper-attention branch: h' = Dropout(ReLU(LN(Linear(D, 512) x))); patch weights w = gated
attention 512-256-1 (no dropout); M = head-mean of the second cross-attention logits S (6, N);
hyperedge incidence E = 1[M >= the k-th largest of its row], k = int(ratio * N), ratio 0.2;
G = (softmax_N(w) + sg[softmax_N(M + (1 - E)(-1e5))]) / 2 (6, N); Hyper_attention:
x_ = G h'; u = ReLU(LN2(W2 ReLU(LN1(W1 x_)))) + x_. Fusion f = (u + r) / 2; f = SA(f) + f
(4 x 128); f = FFN(LN(f)) + f; z = [Linear(512, 256), LN, ReLU, Dropout](f) flattened (6 * 256).

Loss (``coattn_train_utils.py``): task loss + 0.3 * sum_j [SCE(g_hat_j, g_j[mask_j]) +
MSE(g_hat_j, g_j[mask_j])], SCE(x, y) = mean((1 - cos(x, y))^3). The mask keeps the genes whose
Welch t-test p-value between the two outcome groups of the TRAINING set is < 0.05
(``core_utils.py``, ``scipy.stats.ttest_ind(equal_var=False)``).

Adaptations for MoMKD's classification tasks (documented choices)
-----------------------------------------------------------------
* Head: the survival head (sigmoid hazards over 4 bins, NLL survival loss) becomes
  Linear(6 * 256, C) logits with cross-entropy.
* Gene selection: the Welch t-test compares the classes (positive vs negative; for C > 2 the
  smallest one-vs-rest p-value, an extension) instead of high- vs low-risk patients. It runs in
  ``on_fit_start(train_bags)``, i.e. on the fold's training bags only (the engine never passes
  validation/test bags there; the official code also fits it on its training split). A group
  with no significant gene keeps its single best gene (the official code would build
  Linear(512, 0) and get a NaN loss).
* Gene groups: G-HANet uses 6 MCAT signature groups (mut/cnv/rnaseq per gene). Our omics are a
  z-scored expression vector without signature annotation, so the genes are split into
  ``n_tokens`` = 6 contiguous groups (``np.array_split``).
* Reconstruction heads are built with the full group width |g_j| and the loss reads the
  selected outputs; the selected rows are exactly the official Linear(512, |g_j[mask]|) (rows are
  independent; the unselected rows get no gradient), and the model's shape does not depend on the
  fold, so ``state_dict`` round-trips. The selection is a persistent buffer ``gene_mask``.
* k = max(1, int(ratio * N)): the official ``topk(k=0)`` fails on bags with fewer than 5 patches.
* Training: official Adam(lr 2e-4, wd 1e-5), StepLR(30, 0.1), 20 epochs, gradient accumulation
  32 (plain accumulation, no batch terms), weighted sampling, model chosen by the best c-index on
  the evaluated fold. The shared protocol replaces these (one slide per step, AdamW/cosine, early
  stopping on the validation part, never on the test fold). Input width D is read from the data
  (official 1024, ResNet-50 features).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from baselines.kd_losses import cosine_cubed
from baselines.layers import FastDropout, GatedAttention
from baselines.omics_utils import gene_groups, select_genes_welch, training_omics
from benchmarks.spec import MethodSpec
from momkd.contract import MILModel, Output, bag_label, check_bag
from momkd.recipe import Recipe


# ------------------------------------------------------------------------------------------
# building blocks (attention_modules.py, hyper_attention_module.py)
# ------------------------------------------------------------------------------------------
class GEGLUFeedForward(nn.Module):
    """Linear(d, 2 * mult * d) -> GEGLU (x * gelu(gate)) -> Linear(mult * d, d) -> Dropout."""

    def __init__(self, dim: int = 512, mult: int = 4, dropout: float = 0.0):
        super().__init__()
        self.proj_in = nn.Linear(dim, dim * mult * 2)
        self.proj_out = nn.Linear(dim * mult, dim)
        self.dropout = FastDropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, gate = self.proj_in(x).chunk(2, dim=-1)
        return self.dropout(self.proj_out(h * F.gelu(gate)))


class MultiHeadAttention(nn.Module):
    """``Cross_Attention`` / ``Self_Attention``: q (no bias), k (no bias), v (no bias), scaled dot
    product per head, softmax over keys, dropout on the probabilities, ``to_out`` Linear. Returns
    the output (1, Q, heads * dim_head) and the pre-softmax logits (heads, Q, K)."""

    def __init__(self, query_dim: int = 512, context_dim: int = 512, heads: int = 4, dim_head: int = 128,
                 dropout: float = 0.0):
        super().__init__()
        inner = heads * dim_head
        self.heads, self.scale = heads, dim_head ** -0.5
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Linear(inner, inner)
        self.dropout = FastDropout(dropout)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        ctx = x if context is None else context  # (1, K, c)
        h = self.heads

        def split(t: torch.Tensor) -> torch.Tensor:  # (1, L, h*d) -> (h, L, d)
            return t.reshape(t.shape[1], h, -1).transpose(0, 1)

        q, k, v = split(self.to_q(x)), split(self.to_k(ctx)), split(self.to_v(ctx))
        sim = torch.einsum("hid,hjd->hij", q, k) * self.scale  # (h, Q, K)
        attn = self.dropout(sim.softmax(dim=-1))
        out = torch.einsum("hij,hjd->hid", attn, v)  # (h, Q, d)
        out = out.transpose(0, 1).reshape(1, x.shape[1], -1)
        return self.to_out(out), sim


class HyperAttention(nn.Module):
    """``Hyper_attention``: x_ = G x; ReLU(LN2(W2 ReLU(LN1(W1 x_)))) + x_."""

    def __init__(self, in_ft: int = 512, out_ft: int = 512):
        super().__init__()
        self.linear1 = nn.Linear(in_ft, out_ft)
        self.linear2 = nn.Linear(out_ft, out_ft)
        self.ln1 = nn.LayerNorm(out_ft)
        self.ln2 = nn.LayerNorm(out_ft)

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:  # (N, d), (T, N) -> (T, d)
        x_ = g @ x
        return F.relu(self.ln2(self.linear2(F.relu(self.ln1(self.linear1(x_)))))) + x_


def hyperedge_incidence(m: torch.Tensor, ratio: float = 0.2) -> torch.Tensor:
    """(T, N) float incidence: 1 where m is >= the k-th largest value of its row (ties included),
    k = max(1, int(ratio * N)) (``G_HANet_Surv.forward``, ``edge``)."""
    k = max(1, int(m.shape[1] * ratio))
    kth = torch.topk(m, k=k, dim=1).values[:, -1:]  # (T, 1)
    return (m >= kth).to(m.dtype)


def hyperedge_weights(w: torch.Tensor, m: torch.Tensor, ratio: float = 0.2) -> torch.Tensor:
    """G = (softmax(w) + sg[softmax(m + (1 - E) * -1e5)]) / 2; w (1, N) gate scores, m (T, N)."""
    e = hyperedge_incidence(m, ratio)
    g2 = torch.softmax(m + (1 - e) * (-100000.0), dim=1).detach()
    return (torch.softmax(w, dim=1) + g2) / 2


# ------------------------------------------------------------------------------------------
# G-HANet
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GHANetConfig:
    wsi_dim: int = 512  # G_HANet_Surv wsi_size
    n_tokens: int = 6  # main.py --num_tokens (6 signature groups)
    ratio: float = 0.2  # main.py --ratio (hyperedge top-20%)
    heads: int = 4  # Cross_Attention / Self_Attention heads
    dim_head: int = 128  # dim_head
    ff_mult: int = 4  # FeedForward mult
    gate_dim: int = 256  # Attn_Net_Gated(L=512) D default
    out_dim: int = 256  # butter Linear(512, 256)
    dropout: float = 0.25  # G_HANet_Surv / Reconstruction_Net dropout
    recon_weight: float = 0.3  # coattn_train_utils.py: loss + 0.3 * (sce + mse)
    sce_alpha: float = 3.0  # sce_loss alpha
    p_threshold: float = 0.05  # core_utils.py: p_values < 0.05
    min_genes_per_group: int = 1  # adaptation: never an empty reconstruction head
    reuse_first_cross_attention: bool = True  # official forward calls cross_attention0 twice


class GHANet(MILModel):
    """G-HANet with a classification head; omics only as reconstruction targets at training."""

    def __init__(self, in_dim: int, omics_dim: int | None, n_classes: int = 2, wsi_dim: int = 512, n_tokens: int = 6,
                 ratio: float = 0.2, heads: int = 4, dim_head: int = 128, ff_mult: int = 4, gate_dim: int = 256,
                 out_dim: int = 256, dropout: float = 0.25, recon_weight: float = 0.3, sce_alpha: float = 3.0,
                 p_threshold: float = 0.05, min_genes_per_group: int = 1, reuse_first_cross_attention: bool = True):
        super().__init__()
        if not omics_dim:
            raise ValueError("ghanet needs omics at training: build it with omics_dim = number of genes")
        if heads * dim_head != wsi_dim:
            raise ValueError(f"ghanet: heads * dim_head must equal wsi_dim ({heads} * {dim_head} != {wsi_dim})")
        self.omics_dim, self.n_tokens, self.ratio = int(omics_dim), int(n_tokens), float(ratio)
        self.recon_weight, self.sce_alpha = float(recon_weight), float(sce_alpha)
        self.p_threshold, self.min_genes_per_group = float(p_threshold), int(min_genes_per_group)
        self.groups = gene_groups(self.omics_dim, n_tokens)
        d = wsi_dim
        # --- cross-modal associating branch (Reconstruction_Net) ---
        self.recon_wsi_net = nn.Sequential(nn.Linear(in_dim, d), nn.ReLU(), FastDropout(dropout))
        self.tokens = nn.Parameter(torch.randn(1, n_tokens, d))
        self.cross_attention0 = MultiHeadAttention(d, d, heads, dim_head, dropout)
        self.cross_attention1 = (None if reuse_first_cross_attention
                                 else MultiHeadAttention(d, d, heads, dim_head, dropout))
        self.ffn0 = GEGLUFeedForward(d, ff_mult, dropout)
        self.ffn1 = GEGLUFeedForward(d, ff_mult, dropout)
        self.ln = nn.ModuleList([nn.LayerNorm(d) for _ in range(6)])  # ln_1 .. ln_6
        self.recon_heads = nn.ModuleList([
            nn.Sequential(nn.Linear(d, d), nn.LayerNorm(d), nn.ELU(), FastDropout(dropout), nn.Linear(d, len(g)))
            for g in self.groups])
        self.register_buffer("gene_mask", torch.ones(self.omics_dim, dtype=torch.bool))  # fitted per fold
        self._selection: tuple | None = None  # cached per-group indices of the selected genes
        # --- hyper-attention branch ---
        self.gate = GatedAttention(d, gate_dim, 0.0)
        self.wsi_net = nn.Sequential(nn.Linear(in_dim, d), nn.LayerNorm(d), nn.ReLU(), FastDropout(dropout))
        self.hyperconv1 = HyperAttention(d, d)
        self.attention = MultiHeadAttention(d, d, heads, dim_head, dropout)
        self.ffn = GEGLUFeedForward(d, ff_mult, dropout)
        self.ln1 = nn.LayerNorm(d)
        self.butter = nn.Sequential(nn.Linear(d, out_dim), nn.LayerNorm(out_dim), nn.ReLU(), FastDropout(dropout))
        self.classifier = nn.Linear(n_tokens * out_dim, n_classes)

    # ---- forward --------------------------------------------------------------------------
    def _associate(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """CAB: tokens (1, T, d) reconstructed from patches and the round-2 logits (heads, T, N)."""
        ln = self.ln
        h = ln[1](self.recon_wsi_net(x)[None])  # (1, N, d), LN2 applied to both rounds
        ca2 = self.cross_attention1 if self.cross_attention1 is not None else self.cross_attention0
        r, _ = self.cross_attention0(ln[0](self.tokens), h)
        r = self.ffn0(ln[2](r)) + r
        r, sim = ca2(ln[3](self.tokens + r), h)
        r = self.ffn1(ln[4](r)) + r
        return ln[5](r), sim

    def forward(self, bag: Any) -> Output:
        check_bag(bag, "ghanet")
        x = bag.features
        recon_tokens, sim = self._associate(x)  # (1, T, d), (heads, T, N)
        h = self.wsi_net(x)  # (N, d)
        w = self.gate(h).T  # (1, N)
        m = sim.mean(dim=0)  # (T, N)
        g = hyperedge_weights(w, m, self.ratio)
        fea = (self.hyperconv1(h, g)[None] + recon_tokens) / 2  # (1, T, d)
        fea = self.attention(fea)[0] + fea
        fea = self.ffn(self.ln1(fea)) + fea
        logits = self.classifier(self.butter(fea).reshape(1, -1))  # (1, C)
        extras: dict[str, Any] = {"hyperedge_weights": g, "association": m}
        if bag.omics is not None:  # reconstruction targets exist only at training
            extras["reconstruction"] = [head(recon_tokens[0, j]) for j, head in enumerate(self.recon_heads)]
        return Output(logits, attention=torch.softmax(w, dim=1)[0], extras=extras)

    # ---- loss -----------------------------------------------------------------------------
    def loss(self, output: Output, bag: Any) -> dict[str, torch.Tensor]:
        ce = F.cross_entropy(output.logits, bag_label(bag))
        if "reconstruction" not in output.extras:
            return {"total": ce, "ce": ce}
        om = bag.omics.reshape(-1).to(output.logits.device, output.logits.dtype)
        if om.numel() != self.omics_dim:
            raise ValueError(f"ghanet: slide {getattr(bag, 'slide_id', '?')}: omics has {om.numel()} genes, "
                             f"the model was built for {self.omics_dim}")
        sce = mse = ce.new_zeros(())
        for j, (rows, genes) in enumerate(self._selected_genes(om.device)):
            pred = output.extras["reconstruction"][j].index_select(0, rows)
            target = om.index_select(0, genes)
            sce = sce + cosine_cubed(pred, target, self.sce_alpha)
            mse = mse + F.mse_loss(pred, target)
        return {"total": ce + self.recon_weight * (sce + mse), "ce": ce, "recon_sce": sce, "recon_mse": mse}

    def _selected_genes(self, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per gene group j: (rows of head j's output, indices into the omics vector) of the genes
        selected by ``gene_mask``, in gene order. Rebuilt only when the mask changes (fitted in
        ``on_fit_start``, loaded with a state_dict), not at every step."""
        key = (self.gene_mask._version, self.gene_mask.data_ptr(), str(device))
        if self._selection is None or self._selection[0] != key:
            mask = self.gene_mask.cpu()
            sel = []
            for g in self.groups:
                g = torch.as_tensor(g, dtype=torch.long)
                keep = mask[g]
                sel.append((keep.nonzero().squeeze(1).to(device), g[keep].to(device)))
            self._selection = (key, sel)
        return self._selection[1]

    # ---- hooks ----------------------------------------------------------------------------
    def on_fit_start(self, train_bags) -> None:
        """Welch t-test gene selection on exactly the bags given (the fold's training part)."""
        x, y = training_omics(list(train_bags), "ghanet")
        if x.shape[1] != self.omics_dim:
            raise ValueError(f"ghanet: training omics have {x.shape[1]} genes, the model was built for "
                             f"{self.omics_dim}")
        mask = select_genes_welch(x, y, self.groups, self.p_threshold, self.min_genes_per_group)
        self.gene_mask.copy_(torch.from_numpy(mask))
        self.selected_per_group_ = [int(mask[g].sum()) for g in self.groups]


def build(in_dim: int, omics_dim: int | None, n_classes: int, **hp: Any) -> GHANet:
    return GHANet(in_dim, omics_dim, n_classes, **hp)


GHANET_REPO = "ZacharyWang-007/G-HANet@54020e8"

# main.py defaults (README.md:L16: `python main.py`).
RECIPE = Recipe(
    name="official", optimizer="adam", lr=2e-4, weight_decay=1e-5, epochs=20, scheduler="none",
    grad_accumulation=32, accumulate_scaled=True, partial_accumulation="carry", grad_clip=None,
    monitor="val_auc", patience=None, balanced_sampling=True,
    sources={
        "optimizer": f"{GHANET_REPO} main.py:L129 (--opt adam), utils/utils.py:L115-117",
        "lr": f"{GHANET_REPO} main.py:L133 (2e-4)", "weight_decay": f"{GHANET_REPO} main.py:L137 (--reg 1e-5)",
        "epochs": f"{GHANET_REPO} main.py:L132 (20)",
        "scheduler": f"{GHANET_REPO} utils/core_utils.py:L252 (StepLR(30, 0.1) built, never stepped)",
        "grad_accumulation": f"{GHANET_REPO} main.py:L131 (--gc 32), utils/coattn_train_utils.py:L88-93 "
                             "(loss / gc; no flush at the epoch end)",
        "monitor": f"{GHANET_REPO} utils/core_utils.py:L259-262 (best validation c-index checkpoint; no early stopping)",
        "balanced_sampling": f"{GHANET_REPO} main.py:L141 (--weighted_sample True), utils/utils.py:L101-103",
        "loss": f"{GHANET_REPO} utils/coattn_train_utils.py:L74 (task + 0.3 (sce + mse))",
        "dropout": f"{GHANET_REPO} models/model_coattn.py:L41 (0.25; --drop_out is never passed)",
        "seed": f"{GHANET_REPO} main.py:L106 (1)",
    },
    notes="A survival model adapted to classification: the best validation c-index becomes the best validation AUC.")


SPEC = MethodSpec(
    "ghanet", family="kd", display="G-HANet", job_cost=10.1, build=build, config=GHANetConfig,
    needs=frozenset({"omics_train"}),
    recipes={"wsi": RECIPE},
    search_space=("lr=1e-5:1e-3:log", "weight_decay=1e-6:1e-2:log", "dropout=0.0:0.5", "recon_weight=0.03:1.0:log"),
    scale_params={"small": {"wsi_dim": 128, "dim_head": 32, "gate_dim": 64, "out_dim": 64}},
    paper="Wang et al., IEEE TMI 2025 (arXiv 2403.10040), survival model adapted to classification",
    code="ZacharyWang-007/G-HANet models/model_coattn.py, models/model_reconstruction.py, "
         "models/hyper_attention_module.py",
    description="genomic tokens reconstruct omics from patches (CAB) + hyper-attention branch; slides only at test")
