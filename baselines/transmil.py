"""TransMIL: a two-layer Nystrom transformer with a pyramid position encoding (PPEG).

Shao et al., "TransMIL: Transformer based correlated multiple instance learning for whole slide
image classification", NeurIPS 2021 (Sec. 3.3, Algorithm 1, the TPT module). Follows
szc19990412/TransMIL ``models/TransMIL.py`` (commit 9d6aee5; unchanged since 2021-10-03):

    h = ReLU(Linear(D, 512)(x))                          # (N, 512); the official hard-codes D = 1024
    square padding to k^2 rows, k = ceil(sqrt(N)),       # appends COPIES of the FIRST k^2 - N rows
    prepend the cls token                                 # (1 + k^2, 512)
    h = h + NystromAttention(LayerNorm(h))               # TransLayer 1 (no feed-forward sublayer)
    h = PPEG(h): x + dwconv7(x) + dwconv5(x) + dwconv3(x) on the k x k grid (cls token untouched)
    h = h + NystromAttention(LayerNorm(h))               # TransLayer 2
    logits = Linear(512, C)(LayerNorm(h)[cls])

NystromAttention: 8 heads x 64, 256 landmarks, 6 Moore-Penrose iterations, residual depthwise
conv (kernel 33) on the values, output dropout 0.1. Its memory is O(N x landmarks), never N x N.

Which ``nystrom-attention``: the function of the ``nystrom_attention`` package **0.0.14** (the
current release), computed by :mod:`baselines.nystrom` with fewer operations (same weights and
keys; tests/test_nystrom.py compares values and gradients with the package, a test dependency).
TransMIL's ``requirements.txt`` pins **0.0.9**, whose output slice ``out[:, :n]`` after the left
zero-padding returns the wrong rows (lucidrains/nystrom-attention issue 5, fixed in 0.0.10 by
``out[:, -n:]``, commit d7eb229); with the same weights the 0.0.9 logits differ from the fixed
ones by about 0.05-0.1 (measured for N in {100, 254, 1000, 6000}, shared/research/mil_baselines.md
3.2). 0.0.14 has the fix, so results here follow the fixed code,
which is also what ``pip install nystrom-attention`` gives today; the golden fixture was made
with it. PPEG's three convolutions run as one (:class:`PPEG`), equal up to float rounding.

Instance order matters (PPEG's 2-D grid, the copied first rows, contiguous landmark segments):
the bag is read in its stored order, as the official ``data_shuffle: False``. Given the order the
forward is deterministic; the only training randomness is the attention-output dropout, which
draws from torch's global RNG (seeded by the engine; a ``rand``-drawn mask, the distribution of
``nn.Dropout``). Departures from the official code, none of which changes a value: any input
dim (read from the weights in ``from_official``), no hard-coded ``.cuda()``, and the features are
cast to the weights' dtype instead of ``.float()``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from baselines.nystrom import NystromAttention
from benchmarks.spec import MethodSpec
from momkd.contract import MILModel, Output, check_bag
from momkd.recipe import Recipe


@dataclass(frozen=True)
class TransMILConfig:
    embed_dim: int = 512  # TransMIL.py: _fc1 = Linear(1024, 512), dim=512 throughout
    heads: int = 8  # TransLayer: heads=8, dim_head = dim // 8
    num_landmarks: int = 256  # TransLayer: num_landmarks = dim // 2
    pinv_iterations: int = 6  # TransLayer: pinv_iterations=6
    residual_conv_kernel: int = 33  # NystromAttention default (residual=True)
    dropout: float = 0.1  # TransLayer: NystromAttention(dropout=0.1), on the attention output


class TransLayer(nn.Module):
    """``x + NystromAttention(LayerNorm(x))`` (``TransMIL.py`` ``TransLayer``). (B, n, d) -> same."""

    def __init__(self, dim: int = 512, heads: int = 8, num_landmarks: int = 256, pinv_iterations: int = 6,
                 residual_conv_kernel: int = 33, dropout: float = 0.1):
        super().__init__()
        if dim % heads:
            raise ValueError(f"transmil: embed_dim {dim} must be divisible by heads {heads}")
        self.norm = nn.LayerNorm(dim)
        self.attn = NystromAttention(dim=dim, dim_head=dim // heads, heads=heads, num_landmarks=num_landmarks,
                                     pinv_iterations=pinv_iterations, residual=True,
                                     residual_conv_kernel=residual_conv_kernel, dropout=dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.attn(self.norm(x))


class PPEG(nn.Module):
    """Pyramid position encoding generator (``TransMIL.py`` ``PPEG``): depthwise 7/5/3 convs on the
    k x k token grid plus identity; the cls token passes through. (B, 1 + k^2, d) -> same.

    The official sums three convolutions and the input; the sum is linear, so it is computed as ONE
    depthwise 7 x 7 convolution whose kernel is W7 + pad(W5) + pad(W3) + identity and whose bias is
    b7 + b5 + b3 (same parameters and names, gradients reach all three through the sum; equal up to
    float rounding, tested against the three-conv form). Saves the 5 x 5 and 3 x 3 passes (~35% of
    the PPEG time in oneDNN at 10k tokens)."""

    def __init__(self, dim: int = 512):
        super().__init__()
        self.proj = nn.Conv2d(dim, dim, 7, 1, 7 // 2, groups=dim)
        self.proj1 = nn.Conv2d(dim, dim, 5, 1, 5 // 2, groups=dim)
        self.proj2 = nn.Conv2d(dim, dim, 3, 1, 3 // 2, groups=dim)

    def fused_kernel(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight (d, 1, 7, 7), bias (d,)) of the single conv equal to proj + proj1 + proj2 + identity."""
        w = self.proj.weight + F.pad(self.proj1.weight, (1, 1, 1, 1)) + F.pad(self.proj2.weight, (2, 2, 2, 2))
        centre = torch.zeros_like(w[:1])
        centre[..., 3, 3] = 1.0
        return w + centre, self.proj.bias + self.proj1.bias + self.proj2.bias

    def forward(self, x: torch.Tensor, side: int) -> torch.Tensor:
        b, _, d = x.shape
        cls_token, tokens = x[:, :1], x[:, 1:]
        # row-major k x k layout, as the official transpose(1, 2).view(B, C, H, W), but built by a
        # permute so the view keeps a batch stride >= H*W*C and torch recognises it as channels-last:
        # oneDNN then runs the depthwise conv in that layout (backward 1.4-2x faster on CPU, no copy
        # in or out) instead of copying to NCHW. Same values up to float rounding (tested).
        grid = tokens.reshape(b, side, side, d).permute(0, 3, 1, 2)
        weight, bias = self.fused_kernel()
        grid = F.conv2d(grid, weight, bias, padding=3, groups=d)
        return torch.cat((cls_token, grid.flatten(2).transpose(1, 2)), dim=1)


def square_pad(h: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Official square padding: append copies of the FIRST ``k^2 - N`` rows, k = ceil(sqrt(N)).
    (B, N, d) -> ((B, k^2, d), k)."""
    n = h.shape[1]
    side = math.isqrt(n)
    side += side * side < n
    return torch.cat([h, h[:, : side * side - n]], dim=1), side


class TransMIL(MILModel):
    """``TransMIL.py`` ``TransMIL`` on one bag; parameter names match the official state_dict."""

    def __init__(self, in_dim: int, n_classes: int = 2, embed_dim: int = 512, heads: int = 8,
                 num_landmarks: int = 256, pinv_iterations: int = 6, residual_conv_kernel: int = 33,
                 dropout: float = 0.1):
        super().__init__()
        self.n_classes = n_classes
        layer = dict(dim=embed_dim, heads=heads, num_landmarks=num_landmarks, pinv_iterations=pinv_iterations,
                     residual_conv_kernel=residual_conv_kernel, dropout=dropout)
        self.pos_layer = PPEG(embed_dim)
        self._fc1 = nn.Sequential(nn.Linear(in_dim, embed_dim), nn.ReLU())
        self.cls_token = nn.Parameter(torch.randn(1, 1, embed_dim))
        self.layer1 = TransLayer(**layer)
        self.layer2 = TransLayer(**layer)
        self.norm = nn.LayerNorm(embed_dim)
        self._fc2 = nn.Linear(embed_dim, n_classes)

    def forward(self, bag: Any) -> Output:
        check_bag(bag, "transmil")
        x = bag.features.to(self._fc1[0].weight.dtype).unsqueeze(0)  # (1, N, D), stored row order
        h = self._fc1(x)  # (1, N, 512)
        h, side = square_pad(h)  # (1, k^2, 512)
        h = torch.cat((self.cls_token.expand(h.shape[0], -1, -1), h), dim=1)  # (1, 1 + k^2, 512)
        h = self.layer1(h)
        h = self.pos_layer(h, side)
        h = self.layer2(h)
        cls = self.norm(h)[:, 0]  # (1, 512)
        logits = self._fc2(cls)  # (1, C)
        return Output(logits, attention=None, extras={"cls_embedding": cls, "grid_side": side,
                                                      "n_padded": side * side - x.shape[1]})


    @torch.no_grad()
    def attention_weights(self, bag: Any) -> torch.Tensor:
        """(N,) the cls token's attention over the patches in the last layer (row 0 of its Nystrom
        attention matrix, mean over heads; :meth:`NystromAttention.row_attention`), the weights of
        the official square-padding copies added back to the patches they copy. Nystrom weights
        approximate a softmax row and may be slightly negative; the row's remaining mass sits on the
        cls token itself and on the package's zero padding."""
        x = bag.features.to(self._fc1[0].weight.dtype).unsqueeze(0)
        n = x.shape[1]
        h, side = square_pad(self._fc1(x))
        h = torch.cat((self.cls_token.expand(h.shape[0], -1, -1), h), dim=1)
        h = self.pos_layer(self.layer1(h), side)
        row = self.layer2.attn.row_attention(self.layer2.norm(h), row=0).mean(dim=1)[0, 1:]  # (k^2,)
        out = row[:n].clone()
        out[: side * side - n] += row[n:]  # square_pad appended copies of the first k^2 - N patches
        return out


def build(in_dim: int, omics_dim: int | None, n_classes: int, **hp: Any) -> TransMIL:
    return TransMIL(in_dim, n_classes, **hp)


def from_official(state_dict: dict, n_classes: int | None = None, **_unused: Any) -> TransMIL:
    """Build from an official ``TransMIL(n_classes)`` state_dict (official key names; a leading
    ``model.`` from a Lightning checkpoint is stripped). The input dim is read from
    ``_fc1.0.weight`` (the official class hard-codes 1024)."""
    sd = {(k[len("model."):] if k.startswith("model.") else k): v for k, v in state_dict.items()}
    embed_dim, in_dim = sd["_fc1.0.weight"].shape
    found = sd["_fc2.weight"].shape[0]
    if n_classes is not None and n_classes != found:
        raise ValueError(f"transmil.from_official: n_classes={n_classes} but _fc2.weight has {found} rows")
    heads = sd["layer1.attn.res_conv.weight"].shape[0]
    kernel = sd["layer1.attn.res_conv.weight"].shape[2]
    model = TransMIL(in_dim, found, embed_dim=embed_dim, heads=heads, num_landmarks=embed_dim // 2,
                     residual_conv_kernel=kernel)
    model.load_state_dict(sd, strict=True)
    return model


TRANSMIL_REPO = "szc19990412/TransMIL@9d6aee5"

# Camelyon/TransMIL.yaml + train.py (README.md:L63) + MyOptimizer (timm's 2020 optimiser factory).
RECIPE = Recipe(
    name="official", optimizer="lookahead_radam", lr=2e-4, weight_decay=1e-5, decay_mask="matrices",
    lookahead_alpha=0.5, lookahead_k=6, epochs=200, scheduler="none", grad_accumulation=2, grad_clip=None,
    monitor="val_loss", patience=10, min_epochs=0, balanced_sampling=False,
    sources={
        "optimizer": f"{TRANSMIL_REPO} Camelyon/TransMIL.yaml:L38 (lookahead_radam), MyOptimizer/optim_factory.py:"
                     "L77-78, L118-120, MyOptimizer/lookahead.py:L13 (alpha 0.5, k 6)",
        "lr": f"{TRANSMIL_REPO} Camelyon/TransMIL.yaml:L39 (2e-4)",
        "weight_decay": f"{TRANSMIL_REPO} Camelyon/TransMIL.yaml:L43 (1e-5)",
        "decay_mask": f"{TRANSMIL_REPO} MyOptimizer/optim_factory.py:L25-37 (no decay on 1-D parameters and biases)",
        "epochs": f"{TRANSMIL_REPO} Camelyon/TransMIL.yaml:L9 (200)",
        "scheduler": f"{TRANSMIL_REPO} models/model_interface.py:L154-156 (optimizer only, no scheduler)",
        "grad_accumulation": f"{TRANSMIL_REPO} Camelyon/TransMIL.yaml:L10 (grad_acc 2), train.py:L63",
        "grad_clip": f"{TRANSMIL_REPO} train.py:L55-66 (no gradient_clip_val)",
        "monitor": f"{TRANSMIL_REPO} utils/utils.py:L43-60 (EarlyStopping and ModelCheckpoint on val_loss, min)",
        "patience": f"{TRANSMIL_REPO} Camelyon/TransMIL.yaml:L12 (patience 10)",
        "balanced_sampling": f"{TRANSMIL_REPO} datasets/data_interface.py:L60 (shuffle=True, no sampler)",
        "loss": f"{TRANSMIL_REPO} Camelyon/TransMIL.yaml:L46 (CrossEntropyLoss)",
        "precision": f"{TRANSMIL_REPO} Camelyon/TransMIL.yaml:L4-6 (fp16, amp O2)",
        "seed": f"{TRANSMIL_REPO} Camelyon/TransMIL.yaml:L3 (2021)",
    },
    notes="Trained in float32 (bf16 autocast on GPU) instead of fp16 AMP O2. Lightning divides each slide's loss by "
          "the 2 accumulated steps and steps on a partial accumulation at the epoch end, as here.")


SPEC = MethodSpec(
    "transmil", family="mil", display="TransMIL", job_cost=20.9, build=build, config=TransMILConfig,
    recipes={"wsi": RECIPE},
    search_space=("lr=1e-5:1e-3:log", "weight_decay=1e-6:1e-2:log", "dropout=0.0:0.5", "num_landmarks=32,64,128,256"),
    scale_params={"small": {"embed_dim": 128, "num_landmarks": 64}},  # keeps landmarks = dim / 2
    paper="Shao et al., NeurIPS 2021",
    code="szc19990412/TransMIL models/TransMIL.py + nystrom-attention 0.0.14",
    description="Nystrom transformer MIL with PPEG position encoding and a cls token")
