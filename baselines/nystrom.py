"""Nystrom self-attention as TransMIL uses it, the same function as ``nystrom_attention.NystromAttention``
0.0.14 (lucidrains/nystrom-attention ``nystrom_attention.py``; Xiong et al., AAAI 2021, Eq. 15) with
fewer operations. Same submodules and state_dict keys (``to_qkv``, ``to_out.0``, ``res_conv``), so
official TransMIL checkpoints load unchanged.

The package, for a sequence of n rows padded in front with zeros to a multiple of m landmarks:

    q, k, v = split(to_qkv(pad(x)));  q *= d^-1/2                    # (b, h, n_pad, d)
    q~, k~ = means of l = n_pad / m consecutive rows                  # landmarks, (b, h, m, d)
    A1 = softmax(q k~^T), A2 = softmax(q~ k~^T), A3 = softmax(q~ k^T)
    Z  = Moore-Penrose iteration of A2 (6 steps, scaled by the GLOBAL max row/column sums)
    out = (A1 @ Z) @ (A3 @ v) + res_conv(v);  out = to_out(out)[:, -n:]

What is computed differently here (values equal up to float rounding; tests compare with the package):

* ``A1 @ (Z @ (A3 @ v))`` instead of ``(A1 @ Z) @ (A3 @ v)``: the (n_pad, m) x (m, m) product is
  never formed (at n = 10k, m = 256 that is 5.4 of ~26 GFLOP per layer, forward only).
* Only the n real rows go through ``to_qkv``, ``A1``, the output product and ``to_out``: the padded
  rows of q, k, v are exact zeros (``to_qkv`` has no bias) and the padded output rows are cut off;
  k and v are padded with zeros where the landmark means and ``A3`` need them, and the depthwise
  ``res_conv`` already pads with zeros.
* ``res_conv`` (one (33, 1) kernel per head, sliding along the sequence) runs as a depthwise conv
  over the h * d channels of the (b, n, h * d) layout the values already have, each head's kernel
  repeated over its d channels: same weights and sums, ~1.5x faster in oneDNN than the (b, h, n, d)
  grouped conv and no transposed copy of v (measured at n = 10k, 512 wide, forward + backward).
  Its weight gradient is computed by :class:`SequenceDepthwiseConv`, not by oneDNN, whose float32
  result is wrong at some lengths (class docstring): on CPU the package, and so the official
  TransMIL, trains ``res_conv`` with that wrong gradient; on CUDA both agree with ours.
* Each iteration of the pseudo-inverse is one ``bmm`` and three ``baddbmm`` (``13I - (...)`` etc.
  folded into beta/alpha) instead of four matmuls plus six scaled identities and subtractions.
* The output dropout is :class:`baselines.layers.FastDropout` (mask drawn with ``rand``, the same
  distribution as ``nn.Dropout``'s ``bernoulli_``, several times faster on CPU); only the random
  stream differs from the package, eval mode is exact.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from baselines.layers import FastDropout


def moore_penrose_pinv(x: torch.Tensor, iters: int = 6) -> torch.Tensor:
    """Iterative pseudo-inverse of a batch of square matrices (..., m, m), as the package's
    ``moore_penrose_iter_pinv``: z0 = x^T / (max_col_sum * max_row_sum) over the WHOLE batch, then
    z <- 0.25 z (13I - xz (15I - xz (7I - xz)))."""
    shape = x.shape
    x3 = x.reshape(-1, shape[-2], shape[-1])
    a = x3.abs()
    z = x3.transpose(-1, -2) / (a.sum(dim=-1).max() * a.sum(dim=-2).max())
    return pinv_iterations(x3, z, iters).reshape(shape)


def pinv_iterations(x: torch.Tensor, z: torch.Tensor, iters: int) -> torch.Tensor:
    """The package's iteration z <- 0.25 z (13I - xz (15I - xz (7I - xz))) on (B, m, m) matrices, as
    one ``bmm`` and three ``baddbmm`` (the scaled identities folded into beta / alpha)."""
    for _ in range(iters):
        xz = torch.bmm(x, z)
        t = torch.baddbmm(xz, xz, xz, beta=7.0, alpha=-1.0)  # xz (7I - xz)
        t = torch.baddbmm(xz, xz, t, beta=15.0, alpha=-1.0)  # xz (15I - t)
        z = torch.baddbmm(z, z, t, beta=3.25, alpha=-0.25)  # 0.25 z (13I - t)
    return z


def few_rows_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, p: int, iters: int) -> torch.Tensor:
    """The package's output rows for a sequence of n < m rows (q already scaled), (b, h, n, d).

    Then every landmark is one row of the sequence padded in front with p = m - n zero rows, so the
    three softmax matrices are one, A = softmax(q_pad k_pad^T) (m x m), and the real output rows are
    those of A Z (A v), Z the pseudo-inverse iteration of A. The p padded rows are identical (zero
    query, key and value: logits 0), so A, its transpose and every product of them map the vectors
    that are constant over the padded rows to such vectors. On that (n + 1)-dimensional space (index
    0: the common value of the padded rows) A acts as

        A_S = [[p / m, 1 / m ... 1 / m], [p w_i, E_ij]]    (p w_i: row i's softmax mass on the padded keys)

    and a product of such operators is the product of their (n + 1) x (n + 1) matrices. So the
    iteration runs on A_S, started from (A^T)_S = [[p / m, w^T], [p / m, E^T]] with the package's
    scale (its largest row and column sums of the full A), at O(n^3) instead of O(m^3); the values
    are the package's up to float rounding (tests/test_nystrom.py compares them)."""
    b, h, n, d = q.shape
    a_s, z = _few_rows_operators(q, k, p, iters)
    v_s = torch.cat((v.new_zeros(b * h, 1, d), v.reshape(b * h, n, d)), dim=1)  # padded values are zero
    out = torch.matmul(a_s, torch.matmul(z, torch.matmul(a_s, v_s)))[:, 1:]
    return out.reshape(b, h, n, d)


def _few_rows_operators(q: torch.Tensor, k: torch.Tensor, p: int, iters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A_S and the pseudo-inverse iterate Z_S of :func:`few_rows_attention`, (b * h, n + 1, n + 1)."""
    b, h, n, d = q.shape
    m = n + p
    s = torch.matmul(q, k.transpose(-1, -2)).reshape(b * h, n, n)  # real-real logits
    ext = torch.cat((s.new_full((b * h, n, 1), math.log(p)), s), dim=-1)  # the p zero logits as one log(p)
    sm = ext.softmax(dim=-1)  # (B, n, n + 1): [p w_i, E_i.]
    first = s.new_full((b * h, 1, n + 1), 1.0 / m)
    first[..., 0] = p / m
    a_s = torch.cat((first, sm), dim=1)  # (B, n + 1, n + 1)
    at_top = torch.cat((first[..., :1], sm[..., :1].transpose(-1, -2) / p), dim=-1)  # [p / m, w^T]
    at_low = torch.cat((s.new_full((b * h, n, 1), p / m), sm[..., 1:].transpose(-1, -2)), dim=-1)  # [p / m, E^T]
    at_s = torch.cat((at_top, at_low), dim=1)
    # the package's scale: the largest absolute row sum and column sum of the full (m x m) A
    row_max = torch.maximum(a_s[:, 0, 0] + a_s[:, 0, 1:].sum(-1), sm.sum(-1).max(-1).values).max()
    col_pad = p / m + (sm[..., 0] / p).sum(-1)  # a padded column: p rows of 1/m + each real row's w_i
    col_real = p / m + sm[..., 1:].sum(-2)  # a real column j: p rows of 1/m + column j of E
    col_max = torch.maximum(col_pad.max(), col_real.max())
    z = pinv_iterations(a_s, at_s / (col_max * row_max), iters)
    return a_s, z


class NystromAttention(nn.Module):
    """Drop-in for ``nystrom_attention.NystromAttention`` (no mask argument: TransMIL passes none)."""

    def __init__(self, dim: int, dim_head: int = 64, heads: int = 8, num_landmarks: int = 256,
                 pinv_iterations: int = 6, residual: bool = True, residual_conv_kernel: int = 33,
                 eps: float = 1e-8, dropout: float = 0.0):
        super().__init__()
        inner = heads * dim_head
        self.eps = eps  # the package uses it only with a mask, which TransMIL never passes
        self.num_landmarks, self.pinv_iterations = num_landmarks, pinv_iterations
        self.heads, self.scale = heads, dim_head ** -0.5
        self.to_qkv = nn.Linear(dim, inner * 3, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), FastDropout(dropout))
        self.residual = residual
        if residual:
            self.res_conv = nn.Conv2d(heads, heads, (residual_conv_kernel, 1),
                                      padding=(residual_conv_kernel // 2, 0), groups=heads, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        h, m = self.heads, self.num_landmarks
        pad = (m - n % m) % m
        l = math.ceil(n / m)  # rows per landmark (the padded length is m * l)
        q, k, v = self.to_qkv(x).chunk(3, dim=-1)  # real rows only, (b, n, h * d) each
        v_flat = v
        q, k, v = (t.reshape(b, n, h, -1).transpose(1, 2) for t in (q, k, v))  # (b, h, n, d)
        q = q * self.scale
        if 0 < n < m:  # fewer rows than landmarks: the same function in (n x n) blocks
            out = few_rows_attention(q, k, v, m - n, self.pinv_iterations).transpose(1, 2).reshape(b, n, -1)
            if self.residual:
                out = out + self._value_conv(v_flat)
            return self.to_out(out)
        k_pad = F.pad(k, (0, 0, pad, 0)) if pad else k  # zeros in front, as the package pads x
        q_l = (F.pad(q, (0, 0, pad, 0)) if pad else q).reshape(b, h, m, l, -1).sum(dim=3) / l
        k_l = k_pad.reshape(b, h, m, l, -1).sum(dim=3) / l
        attn1 = torch.matmul(q, k_l.transpose(-1, -2)).softmax(dim=-1)  # (b, h, n, m)
        attn2 = torch.matmul(q_l, k_l.transpose(-1, -2)).softmax(dim=-1)  # (b, h, m, m)
        attn3 = torch.matmul(q_l, k_pad.transpose(-1, -2)).softmax(dim=-1)  # (b, h, m, n_pad)
        av = torch.matmul(attn3[..., pad:], v)  # padded v rows are zero: (b, h, m, d)
        out = torch.matmul(attn1, torch.matmul(moore_penrose_pinv(attn2, self.pinv_iterations), av))
        out = out.transpose(1, 2).reshape(b, n, -1)  # (b, n, h * d)
        if self.residual:
            out = out + self._value_conv(v_flat)
        return self.to_out(out)

    @torch.no_grad()
    def row_attention(self, x: torch.Tensor, row: int = 0) -> torch.Tensor:
        """The attention weights of query ``row`` over the n real keys, (b, h, n): that row of the
        package's Nystrom matrix ``attn1 @ pinv(attn2) @ attn3`` (its ``return_attn``), without the
        padded keys. For explanation only (heatmaps); the residual conv is not part of it."""
        b, n, _ = x.shape
        h, m = self.heads, self.num_landmarks
        pad = (m - n % m) % m
        l = math.ceil(n / m)
        q, k, _ = self.to_qkv(x).chunk(3, dim=-1)
        q, k = (t.reshape(b, n, h, -1).transpose(1, 2) for t in (q, k))
        q = q * self.scale
        if 0 < n < m:
            a_s, z = _few_rows_operators(q, k, m - n, self.pinv_iterations)
            full = torch.matmul(a_s, torch.matmul(z, a_s))  # (b * h, n + 1, n + 1); index 0: the padded rows
            return full[:, 1 + row, 1:].reshape(b, h, n)
        k_pad = F.pad(k, (0, 0, pad, 0)) if pad else k
        q_l = (F.pad(q, (0, 0, pad, 0)) if pad else q).reshape(b, h, m, l, -1).sum(dim=3) / l
        k_l = k_pad.reshape(b, h, m, l, -1).sum(dim=3) / l
        attn1 = torch.matmul(q[:, :, row:row + 1], k_l.transpose(-1, -2)).softmax(dim=-1)  # (b, h, 1, m)
        attn2 = torch.matmul(q_l, k_l.transpose(-1, -2)).softmax(dim=-1)
        attn3 = torch.matmul(q_l, k_pad.transpose(-1, -2)).softmax(dim=-1)[..., pad:]  # (b, h, m, n)
        return torch.matmul(attn1, torch.matmul(moore_penrose_pinv(attn2, self.pinv_iterations), attn3))[:, :, 0]

    def _value_conv(self, v: torch.Tensor) -> torch.Tensor:
        """``res_conv`` on (b, h, n, d) values, computed on their (b, n, h * d) layout: a depthwise
        conv over h * d channels with head h's kernel on its d channels. Returns (b, n, h * d)."""
        return SequenceDepthwiseConv.apply(v, self.res_conv.weight)


class SequenceDepthwiseConv(torch.autograd.Function):
    """y[b, t, c] = sum_k w[c // d, k] x[b, t + k - K // 2, c] (zeros outside): ``res_conv`` on the
    (b, n, h * d) layout, head h's (K, 1) kernel shared by its d channels.

    Why a Function: oneDNN (torch's CPU convolution, torch 2.13) returns a WRONG weight gradient
    for depthwise convolutions with a kernel of 33 or more rows at some lengths (K = 33: every
    n = 1 mod 15 from 46 on, e.g. n = 226, 256, 901, 2026; K = 65: every n >= 65), off by 2-20% of
    its largest entry in float32 whatever the memory layout, the package's included; the values
    and the input gradient are right. TransMIL's sequences have n = k^2 + 1 rows (the package pads
    to a multiple of 256), so every bag whose square side is a multiple of 15 was hit here.
    Forward and input gradient stay on the conv (a correlation with the flipped kernel); the weight
    gradient is computed here as banded products: blocks of B rows of g against windows of
    B + K - 1 rows of x (one ``bmm``), whose K diagonals are the lags. Checked against float64.
    """

    BLOCK = 64

    @staticmethod
    def conv(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """The oneDNN depthwise conv on the (b, n, h * d) layout (right values and input gradient)."""
        hd, h, kk = x.shape[-1], weight.shape[0], weight.shape[2]
        w = weight.to(x.dtype).repeat_interleave(hd // h, dim=0)  # (h * d, 1, K, 1)
        out = F.conv2d(x.transpose(1, 2).unsqueeze(-1), w, padding=(kk // 2, 0), groups=hd)
        return out.squeeze(-1).transpose(1, 2)

    @staticmethod
    def forward(ctx, v, weight):  # noqa: D401
        ctx.save_for_backward(v, weight)
        return SequenceDepthwiseConv.conv(v, weight)

    @staticmethod
    def backward(ctx, g):
        v, weight = ctx.saved_tensors
        g = g.to(v.dtype)
        g_v = SequenceDepthwiseConv.conv(g, weight.flip(2)) if ctx.needs_input_grad[0] else None
        g_w = None
        if ctx.needs_input_grad[1]:
            g_w = SequenceDepthwiseConv.weight_grad(v, g, weight.shape[0], weight.shape[2]).to(weight.dtype)
        return g_v, g_w

    @staticmethod
    def weight_grad(v: torch.Tensor, g: torch.Tensor, heads: int, kk: int) -> torch.Tensor:
        """dL/dw[h, k] = sum over b, t and head h's channels of g[b, t, c] x[b, t + k - K // 2, c]."""
        b, n, hd = v.shape
        d, blk = hd // heads, SequenceDepthwiseConv.BLOCK
        nb = -(-n // blk)
        win = blk + kk - 1
        g_p = F.pad(g, (0, 0, 0, nb * blk - n))  # (b, nb * B, hd)
        x_p = F.pad(v, (0, 0, kk // 2, nb * blk - n + kk - 1 - kk // 2))  # (b, nb * B + K - 1, hd)
        gb = g_p.view(b, nb, blk, heads, d).permute(0, 1, 3, 2, 4).reshape(-1, blk, d)  # (b nb h, B, d)
        xw = x_p.unfold(1, win, blk)  # (b, nb, hd, B + K - 1) windows, a view
        xw = xw.reshape(b, nb, heads, d, win).reshape(-1, d, win)  # (b nb h, d, B + K - 1)
        prod = torch.bmm(gb, xw)  # (b nb h, B, B + K - 1): row i against window column j
        lags = prod.as_strided((prod.shape[0], blk, kk), (blk * win, win + 1, 1))  # j = i + k
        return lags.sum(1).view(b * nb, heads, kk).sum(0).view(heads, 1, kk, 1)
