"""Distillation losses of the omics-distillation baselines (MKD, TDC, G-HANet).

Each function follows one official file (cited in its docstring); tests in
``tests/test_kd_losses.py`` check them on tiny hand-computed cases.

MKD (zqb77/MICCAI25 ``trainer/online_kd_trainer.py``):
  :func:`similarity_preserving`, :func:`distill_kl`, :func:`mkd_orthogonality`, :func:`coral`.
TDC (zqb77/MICCAI25 ``utils/loss/CRD_criterion_v10.py`` = Xing et al.'s ``CRD_criterion_v10.py``):
  :class:`Embed`, :class:`ContrastMemory` (memory bank + momentum update), :func:`nce_loss`,
  :class:`TDCCriterion`, :func:`discrepancy_weights`.
G-HANet (ZacharyWang-007/G-HANet ``utils/coattn_train_utils.py``): :func:`cosine_cubed`.

:class:`KDWindow` holds the slides of a multi-slide window (MKD and TDC compute their batch terms
every ``gc`` = 16 slides while the engine steps once per slide).
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

EPS_NCE = 1e-7  # CRD_criterion_v10.py ``eps``


# ------------------------------------------------------------------------------------------
# MKD window terms
# ------------------------------------------------------------------------------------------
def similarity_preserving(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """Similarity-preserving KD (Tung & Mori, ICCV 2019), RepDistiller ``Similarity``.

    G = F F^T per network, each row L2-normalised (``F.normalize(G)``, dim 1); loss =
    ||G_t - G_s||_F^2 / B^2. f_s, f_t: (B, d_s), (B, d_t). MKD's ``utils/loss/SP.py`` is only in
    the snapshot as ``SP.cpython-39.pyc``; the class it imports (``Similarity``) is the RepDistiller
    one that Xing et al. ship as ``MIA 2022/distiller_zoo/SP.py``, followed here.
    """
    b = f_s.shape[0]
    fs, ft = f_s.reshape(b, -1), f_t.reshape(b, -1)
    g_s = F.normalize(fs @ fs.T, dim=1)
    g_t = F.normalize(ft @ ft.T, dim=1)
    return ((g_t - g_s) ** 2).sum() / (b * b)


def distill_kl(y_s: torch.Tensor, y_t: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(softmax(y_t/T) || softmax(y_s/T)) * T^2, batch mean (RepDistiller/MKD ``DistillKL``).
    The caller detaches ``y_t`` where the official code does."""
    log_p_s = F.log_softmax(y_s / temperature, dim=1)
    p_t = F.softmax(y_t / temperature, dim=1)
    return F.kl_div(log_p_s, p_t, reduction="batchmean") * temperature ** 2


def mkd_orthogonality(f_s: torch.Tensor, f_mm: torch.Tensor, f_g: torch.Tensor) -> torch.Tensor:
    """MKD decomposition term (``--OR OR``): (|mean_i <f_mm,i, f_s,i>| + |mean_i <f_g,i, f_s,i>|
    + |mean_i <f_g,i, f_mm,i>|) / 6 with raw (unnormalised) dot products."""
    def dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.abs(torch.mean(torch.sum(a * b, dim=1)))
    return (dot(f_mm, f_s) + dot(f_g, f_s) + dot(f_g, f_mm)) / 6


def coral(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """CORAL alignment, MKD ``utils/MMD_loss.py`` ``kernel_type='mean_cov'``:
    mean((mu_x - mu_y)^2) + mean((C_x - C_y)^2), covariances with the (n - 1) denominator."""
    if x.shape[0] < 2 or y.shape[0] < 2:
        raise ValueError(f"coral needs >= 2 rows per side (unbiased covariance), got {x.shape[0]} and {y.shape[0]}")
    mx, my = x.mean(0, keepdim=True), y.mean(0, keepdim=True)
    cx, cy = x - mx, y - my
    cov_x = cx.T @ cx / (x.shape[0] - 1)
    cov_y = cy.T @ cy / (y.shape[0] - 1)
    return (mx - my).pow(2).mean() + (cov_x - cov_y).pow(2).mean()


# ------------------------------------------------------------------------------------------
# TDC: CRD-style NCE with a momentum memory bank, discrepancy-based sample weights
# ------------------------------------------------------------------------------------------
def discrepancy_weights(logits_s: torch.Tensor, logits_t: torch.Tensor, labels: torch.Tensor,
                        max_discrep: float = 1.0, student_softmax_dim0: bool = False) -> torch.Tensor:
    """Per-sample weights from teacher vs student confidence (``assign_sample_weights``).

    conf = log p_gt - log max_{c != gt} p_c for each network; w = min(max(conf_t - conf_s, 0),
    max_discrep), detached. Computed from log-softmax (the official takes log of softmax
    probabilities; identical unless a probability underflows). ``student_softmax_dim0`` reproduces
    the MKD trainer (``trainer/batch_kd_trainer.py``), which stores the student's prediction as
    ``F.softmax(logits, dim=0)`` of a (1, C) tensor, i.e. all ones, so conf_s = 0 and the weight
    depends on the teacher only.
    """
    labels = labels.reshape(-1).long()

    def conf(logits: torch.Tensor) -> torch.Tensor:
        lp = F.log_softmax(logits.float(), dim=1)  # (B, C)
        gt = lp.gather(1, labels[:, None])[:, 0]
        other = lp.masked_fill(F.one_hot(labels, lp.shape[1]).bool(), -math.inf).max(1).values
        return gt - other

    c_t = conf(logits_t)
    c_s = torch.zeros_like(c_t) if student_softmax_dim0 else conf(logits_s)
    return (c_t - c_s).clamp(min=0.0, max=max_discrep).detach()


class Embed(nn.Module):
    """CRD ``Embed``: Linear(dim_in, dim_out) followed by L2 normalisation of each row."""

    def __init__(self, dim_in: int, dim_out: int = 128):
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, dim_in) -> (B, dim_out), unit rows
        x = self.linear(x.reshape(x.shape[0], -1))
        return x / x.norm(p=2, dim=1, keepdim=True)


class ContrastMemory(nn.Module):
    """Memory bank of one student/teacher pair (``ContrastMemory`` in ``CRD_criterion_v10.py``).

    ``memory_v1`` holds the student's and ``memory_v2`` the teacher's embedding of every training
    sample (n_data x feat_dim, initialised U(-s, s) with s = 1/sqrt(feat_dim/3)). For a query i:

    * positives (``pos_extra='neighbors'``): the ``num_pos`` memory rows of the same class most
      cosine-similar to memory[i] (memory[i] itself first), with their similarities as weights;
    * negatives: ``nce_k`` random other training samples;
    * scores exp(<memory_row, v>/T) / Z; Z = mean(first scores) * n_data, set once (official);
    * after the step, memory[i] <- normalize(m * memory[i] + (1 - m) * v)  (momentum m = 0.5).

    The bank is training state only: buffers are non-persistent (not in ``state_dict``), sized in
    :meth:`reset` from the training bags (``on_fit_start``).
    """

    def __init__(self, feat_dim: int = 128, nce_k: int = 4, nce_t: float = 0.07, momentum: float = 0.5):
        super().__init__()
        self.feat_dim, self.nce_k, self.nce_t, self.momentum = int(feat_dim), int(nce_k), float(nce_t), float(momentum)
        self.register_buffer("memory_v1", torch.zeros(0, feat_dim), persistent=False)
        self.register_buffer("memory_v2", torch.zeros(0, feat_dim), persistent=False)
        self.register_buffer("labels", torch.zeros(0, dtype=torch.long), persistent=False)
        self.register_buffer("z_v1", torch.tensor(-1.0), persistent=False)
        self.register_buffer("z_v2", torch.tensor(-1.0), persistent=False)

    @property
    def n_data(self) -> int:
        return int(self.memory_v1.shape[0])

    def reset(self, labels: torch.Tensor, generator: torch.Generator) -> None:
        """Fresh uniform memory for ``len(labels)`` training samples; Z unset."""
        n = int(labels.numel())
        dev, dt = self.memory_v1.device, self.memory_v1.dtype
        stdv = 1.0 / math.sqrt(self.feat_dim / 3)
        m1 = torch.rand(n, self.feat_dim, generator=generator) * 2 * stdv - stdv
        m2 = torch.rand(n, self.feat_dim, generator=generator) * 2 * stdv - stdv
        self.memory_v1 = m1.to(dev, dt)
        self.memory_v2 = m2.to(dev, dt)
        self.labels = labels.reshape(-1).long().to(dev)
        self.z_v1 = torch.tensor(-1.0, device=dev, dtype=dt)
        self.z_v2 = torch.tensor(-1.0, device=dev, dtype=dt)

    def sample_negatives(self, idx: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """(B, nce_k) random training indices other than each query (official ``np.random.choice``
        over all other indices, with replacement only when nce_k exceeds their number)."""
        n, k = self.n_data, self.nce_k
        if n < 2:
            raise ValueError(f"contrastive memory needs >= 2 training samples, has {n}")
        rows = []
        for i in idx.reshape(-1).tolist():
            if k > n - 1:
                r = torch.randint(0, n - 1, (k,), generator=generator)
            else:
                r = torch.randperm(n - 1, generator=generator)[:k]
            rows.append(r + (r >= i).long())  # skip the query's own index
        return torch.stack(rows).to(self.memory_v1.device)

    def _neighbours(self, memory: torch.Tensor, idx: torch.Tensor, num_pos: int) -> tuple[torch.Tensor, torch.Tensor]:
        q = F.normalize(memory[idx], dim=1)
        sim = q @ F.normalize(memory, dim=1).T  # (B, n_data) cosine
        same = (self.labels[None, :] == self.labels[idx][:, None]).to(sim.dtype)
        top = torch.topk(sim * same, num_pos, dim=1)  # other classes count as similarity 0 (official)
        return top.indices, top.values

    def forward(self, v1: torch.Tensor, v2: torch.Tensor, idx: torch.Tensor, neg_idx: torch.Tensor,
                num_pos: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """v1 (student) and v2 (teacher) embeddings (B, d) -> (out_v1, out_v2, sim_v1, sim_v2).

        out_v2 scores v2 against student-memory rows [positives | negatives] (B, P + K); out_v1
        scores v1 against teacher-memory rows. sim_v1 / sim_v2: (B, P) neighbour similarities in
        the student / teacher memory.
        """
        if self.n_data == 0:
            raise RuntimeError("ContrastMemory: call reset(train labels) before use (on_fit_start)")
        mem1, mem2 = self.memory_v1.detach(), self.memory_v2.detach()
        nb1, sim1 = self._neighbours(mem1, idx, num_pos)
        nb2, sim2 = self._neighbours(mem2, idx, num_pos)
        w1 = torch.cat([mem1[nb1], mem1[neg_idx]], 1)  # (B, P+K, d)
        w2 = torch.cat([mem2[nb2], mem2[neg_idx]], 1)
        out_v2 = torch.exp(torch.bmm(w1, v2.to(w1.dtype)[:, :, None])[:, :, 0] / self.nce_t)
        out_v1 = torch.exp(torch.bmm(w2, v1.to(w2.dtype)[:, :, None])[:, :, 0] / self.nce_t)
        if float(self.z_v1) < 0:
            self.z_v1 = (out_v1.mean() * self.n_data).detach()
        if float(self.z_v2) < 0:
            self.z_v2 = (out_v2.mean() * self.n_data).detach()
        return out_v1 / self.z_v1, out_v2 / self.z_v2, sim1, sim2

    @torch.no_grad()
    def update(self, idx: torch.Tensor, v1: torch.Tensor, v2: torch.Tensor) -> None:
        """Momentum update memory[i] <- normalize(m * memory[i] + (1 - m) * v). When a sample
        appears twice in the window the last occurrence wins (as ``index_copy_`` on CPU)."""
        idx = idx.reshape(-1).long()
        last = {int(i): j for j, i in enumerate(idx.tolist())}
        rows = torch.tensor(list(last.values()), device=idx.device, dtype=torch.long)
        ids = idx[rows]
        for mem, v in ((self.memory_v1, v1), (self.memory_v2, v2)):
            new = mem[ids] * self.momentum + v[rows].to(mem.dtype) * (1 - self.momentum)
            mem[ids] = new / new.norm(p=2, dim=1, keepdim=True)


def nce_loss(x: torch.Tensor, num_pos: int, knn_sim: torch.Tensor, sample_weights: torch.Tensor,
             n_data: int, form: str = "official") -> tuple[torch.Tensor, torch.Tensor]:
    """NCE loss with similarity-weighted positives (``ContrastLoss_v2``, zqb77/MICCAI25
    utils/loss/CRD_criterion_v10.py:L280-314). Per sample i, with x: (B, P + K) normalised scores
    (positives first), knn_sim: (B, P), d1_ip = log(x_ip / (x_ip + K/n)), d0_ik = log((K/n) / (x_ik + K/n))
    (the official code adds ``eps`` = 1e-7 to each denominator):

    * ``form="per_sample"`` (the intended CRD loss):
      l_i = -sum_p s_ip [d1_ip + sum_k d0_ik] / sum_p s_ip;
    * ``form="official"``: the code as written. For P = 1, ``log_D1.squeeze()`` (B,) plus the (B, 1)
      negative sum broadcast to a (B, B) matrix M_ij = d1_j + sum_k d0_ik, scaled by s_i and summed
      over j, then divided by s_i: l_i = -(sum_j d1_j + B sum_k d0_ik): each sample gets every
      positive term of the window and B times its own negative term. For P > 1 (and B = 1) both
      forms agree.

    Weights w_i multiply l_i; returns (sum_i w_i l_i / B, w * l).
    """
    if form not in NCE_FORMS:
        raise ValueError(f"nce form must be one of {NCE_FORMS}, got {form!r}")
    b, m = x.shape[0], x.shape[1] - num_pos
    pn = 1.0 / float(n_data)
    pos, neg = x[:, :num_pos], x[:, num_pos:]
    log_d1 = torch.log(pos / (pos + m * pn + EPS_NCE))  # (B, P)
    log_d0 = torch.log((m * pn) / (neg + m * pn + EPS_NCE))  # (B, K)
    sim = knn_sim.to(x.dtype)
    neg_sum = log_d0.sum(1, keepdim=True)  # (B, 1)
    if form == "official" and num_pos == 1:
        per = -(log_d1.sum() + b * neg_sum.squeeze(1))
    else:
        per = -((log_d1 + neg_sum) * sim).sum(1) / sim.sum(1).clamp_min(1e-12)
    per = sample_weights.reshape(-1).to(x.dtype) * per
    return per.sum() / b, per


NCE_FORMS = ("official", "per_sample")


class TDCCriterion(nn.Module):
    """``TDCLoss`` (``CRD_criterion_v10.py``) for one teacher: two embedding heads, one memory
    bank, NCE in both directions (student as anchor over teacher memory and vice versa), each
    weighted by the discrepancy weights. The memory update is staged by :meth:`forward` and
    applied by :meth:`apply_update` after the optimizer step (``on_step_end``)."""

    def __init__(self, s_dim: int, t_dim: int, feat_dim: int = 128, nce_k: int = 4, nce_t: float = 0.07,
                 nce_m: float = 0.5, nce_p: int = 1, nce_form: str = "official"):
        super().__init__()
        self.nce_form = nce_form
        self.embed_s = Embed(s_dim, feat_dim)
        self.embed_t = Embed(t_dim, feat_dim)
        self.contrast = ContrastMemory(feat_dim, nce_k, nce_t, nce_m)
        self.num_pos = int(nce_p)
        self._pending: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def forward(self, sample_weights: torch.Tensor, f_s: torch.Tensor, f_t: torch.Tensor, idx: torch.Tensor,
                neg_idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dt = self.contrast.memory_v1.dtype
        v_s = self.embed_s(f_s).to(dt)
        v_t = self.embed_t(f_t).to(dt)
        # exp(<m, v> / 0.07) is computed in the memory's precision, never under bf16 autocast
        with torch.autocast(device_type=v_s.device.type, enabled=False):
            out_s, out_t, sim_s, sim_t = self.contrast(v_s, v_t, idx, neg_idx, self.num_pos)
            n = self.contrast.n_data
            s_loss, s_per = nce_loss(out_s, self.num_pos, sim_t, sample_weights, n, self.nce_form)
            t_loss, t_per = nce_loss(out_t, self.num_pos, sim_s, sample_weights, n, self.nce_form)
        self._pending = (idx.detach(), v_s.detach(), v_t.detach())
        return s_loss + t_loss, s_per + t_per

    def apply_update(self) -> None:
        if self._pending is not None:
            self.contrast.update(*self._pending)
            self._pending = None


# ------------------------------------------------------------------------------------------
# G-HANet reconstruction
# ------------------------------------------------------------------------------------------
def cosine_cubed(x: torch.Tensor, y: torch.Tensor, alpha: float = 3.0) -> torch.Tensor:
    """Scaled cosine error (G-HANet ``sce_loss``): mean over rows of (1 - cos(x, y))^alpha, cosine
    along the last dimension (a 1-D pair gives one term)."""
    x = F.normalize(x, p=2, dim=-1)
    y = F.normalize(y, p=2, dim=-1)
    return (1 - (x * y).sum(dim=-1)).pow(alpha).mean()


# ------------------------------------------------------------------------------------------
# multi-slide windows
# ------------------------------------------------------------------------------------------
class KDWindow:
    """The last slides of a distillation window: (bag, cached outputs) pairs.

    The official trainers keep the graphs of ``gc`` slides alive (``backward(retain_graph=True)``)
    and step once per window, so the window terms reach every slide's forward. With one optimizer
    step per slide those old graphs are stale (their parameters changed in place), so a model
    either re-runs the earlier slides of the window with the current weights (``recompute``) or
    lets the window terms reach the current slide only (``current``, cached detached outputs).
    """

    def __init__(self, size: int):
        if size < 2:
            raise ValueError(f"a distillation window needs >= 2 slides (batch statistics), got {size}")
        self.size = int(size)
        self.items: list[tuple[Any, dict[str, Any]]] = []

    def __len__(self) -> int:
        return len(self.items)

    def append(self, bag: Any, cache: dict[str, Any]) -> None:
        self.items.append((bag, cache))

    def push_and_reduce(self, bag: Any, cache: dict[str, Any], release: Any, reduce: Any) -> dict[str, Any] | None:
        """Append the current slide, the previous one's cache becoming ``release(cache)`` (its graph
        dropped or detached); when the window is full return ``reduce()`` (the window terms) and
        start a new window, else ``None``."""
        if self.items:
            prev_bag, prev = self.items[-1]
            self.items[-1] = (prev_bag, release(prev))
        self.append(bag, cache)
        if not self.full:
            return None
        out = reduce()
        self.clear()
        return out

    @property
    def full(self) -> bool:
        return len(self.items) >= self.size

    def clear(self) -> None:
        self.items.clear()


class WindowCE:
    """The per-slide CE scale of a method whose loss is defined over a window of slides (MKD, TDC).

    The official trainers divide each slide's CE by the window ``gc`` and step once per window
    (``loss / gc`` with gc-slide accumulation). ``ce_over_window``: True divides by the window
    always, False never, ``"auto"`` by the slides the engine accumulates per optimizer step
    (:meth:`set_accumulation`, called by the engine before each stage): by 16 under the official
    recipe, not under the shared one-slide steps. Dividing by 16 while stepping every slide made each
    CE step 16x smaller than the window steps, which Adam's normalisation then sized alike: the
    students' CE hardly fell in 8 epochs (README, "Why the distillation baselines trail ABMIL")."""

    def init_ce_scale(self, ce_over_window: bool | str, window: int) -> None:
        if ce_over_window not in (True, False, "auto"):
            raise ValueError(f"{type(self).__name__.lower()}: ce_over_window must be True, False or 'auto', "
                             f"got {ce_over_window!r}")
        self.ce_over_window = ce_over_window
        self.ce_scale = 1.0 / window if ce_over_window is True else 1.0

    def set_accumulation(self, slides_per_step: int) -> None:
        if self.ce_over_window == "auto":
            self.ce_scale = 1.0 / max(1, int(slides_per_step))
