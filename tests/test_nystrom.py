"""Our Nystrom attention and fused PPEG against the forms they replace: the ``nystrom-attention``
0.0.14 package (TransMIL's attention) and the official three-convolution PPEG."""
import pytest
import torch
from nystrom_attention import NystromAttention as PackageAttention

from baselines.nystrom import NystromAttention, moore_penrose_pinv
from baselines.transmil import PPEG


def _pair(dim, heads, landmarks, dropout=0.0):
    torch.manual_seed(0)
    ref = PackageAttention(dim=dim, dim_head=dim // heads, heads=heads, num_landmarks=landmarks,
                           pinv_iterations=6, residual=True, residual_conv_kernel=33, dropout=dropout).double()
    ours = NystromAttention(dim, dim // heads, heads, landmarks, 6, True, 33, dropout=dropout).double()
    ours.load_state_dict(ref.state_dict(), strict=True)  # same keys: official checkpoints load
    return ref, ours


@pytest.mark.parametrize("dim,heads,landmarks,n", [
    (32, 4, 8, 1),  # one row, seven padded in front
    (32, 4, 8, 5),  # fewer rows than landmarks
    (32, 4, 8, 16),  # a multiple of the landmarks: no padding
    (32, 4, 8, 17),  # two rows per landmark, 7 padded
    (64, 8, 16, 170),
])
def test_nystrom_equals_the_package_values_and_gradients(dim, heads, landmarks, n):
    ref, ours = _pair(dim, heads, landmarks)
    ref.eval(), ours.eval()
    x = torch.randn(1, n, dim, dtype=torch.float64, requires_grad=True)
    a, b = ref(x), ours(x)
    assert b.shape == a.shape == (1, n, dim)
    assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)
    ga = torch.autograd.grad((a * torch.linspace(-1, 1, a.numel()).view_as(a)).sum(), [x, *ref.parameters()])
    gb = torch.autograd.grad((b * torch.linspace(-1, 1, b.numel()).view_as(b)).sum(), [x, *ours.parameters()])
    for u, v in zip(ga, gb):
        assert torch.allclose(u, v, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("n,batch", [(10, 1), (50, 2), (255, 1)])
def test_few_rows_path_equals_the_package_at_transmil_sizes(n, batch):
    """Fewer rows than the 256 landmarks (classic MIL bags, small slides): the O(n^3) block path
    (``few_rows_attention``) is the package's O(256^3) function, values and gradients."""
    ref, ours = _pair(64, 8, 256)
    ref.eval(), ours.eval()
    x = torch.randn(batch, n, 64, dtype=torch.float64, requires_grad=True)
    a, b = ref(x), ours(x)
    assert torch.allclose(a, b, rtol=1e-9, atol=1e-11)
    wt = torch.randn_like(a)
    ga = torch.autograd.grad((a * wt).sum(), [x, *ref.parameters()])
    gb = torch.autograd.grad((b * wt).sum(), [x, *ours.parameters()])
    for u, v in zip(ga, gb):
        assert torch.allclose(u, v, rtol=1e-8, atol=1e-10)


def test_nystrom_pinv_equals_the_package_iteration():
    from nystrom_attention.nystrom_attention import moore_penrose_iter_pinv

    torch.manual_seed(0)
    x = torch.randn(2, 3, 10, 10, dtype=torch.float64).softmax(dim=-1)
    assert torch.allclose(moore_penrose_pinv(x, 6), moore_penrose_iter_pinv(x, 6), rtol=1e-10, atol=1e-12)
    # one scale for the whole batch, as the package: scaling one matrix changes the others' result
    y = x.clone()
    y[0, 0] *= 10
    assert not torch.allclose(moore_penrose_pinv(y, 2)[1], moore_penrose_pinv(x, 2)[1])


def test_nystrom_training_dropout_keeps_the_expectation():
    _, ours = _pair(32, 4, 8, dropout=0.5)
    x = torch.randn(1, 40, 32, dtype=torch.float64)
    ours.eval()
    full = ours(x)
    ours.train()
    torch.manual_seed(1)
    drops = torch.stack([ours(x) for _ in range(400)])
    assert (drops == 0).float().mean().item() == pytest.approx(0.5, abs=0.02)  # half the outputs dropped
    assert torch.allclose(drops.mean(0), full, atol=0.25 * full.abs().max().item())


@pytest.mark.parametrize("side", [1, 2, 5, 9])
def test_fused_ppeg_equals_the_official_sum_of_three_convolutions(side):
    torch.manual_seed(0)
    m = PPEG(6).double()
    x = torch.randn(2, 1 + side * side, 6, dtype=torch.float64, requires_grad=True)

    def official(x):
        cls, tok = x[:, :1], x[:, 1:]
        g = tok.transpose(1, 2).reshape(2, 6, side, side)
        g = m.proj(g) + g + m.proj1(g) + m.proj2(g)
        return torch.cat((cls, g.flatten(2).transpose(1, 2)), dim=1)

    a, b = official(x), m(x, side)
    assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)
    w = torch.randn_like(a)
    ga = torch.autograd.grad((a * w).sum(), [x, *m.parameters()])
    gb = torch.autograd.grad((b * w).sum(), [x, *m.parameters()])
    for u, v in zip(ga, gb):
        assert torch.allclose(u, v, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("n", [226, 901])  # TransMIL lengths k^2 + 1 with k = 15, 30
def test_residual_conv_weight_gradient_is_right_in_float32(n):
    """oneDNN's float32 depthwise-conv weight gradient is wrong for 33-row kernels at n = 1 mod 15
    (2-10% of its largest entry at these n); ours must match the float64 gradient."""
    torch.manual_seed(0)
    ours = NystromAttention(128, 16, 8, 64, 6, True, 33)
    ours64 = NystromAttention(128, 16, 8, 64, 6, True, 33).double()
    ours64.load_state_dict(ours.state_dict())
    x = torch.randn(1, n, 128)
    w = torch.randn(1, n, 128)
    grads = []
    for m, dt in ((ours, torch.float32), (ours64, torch.float64)):
        (m(x.to(dt)) * w.to(dt)).sum().backward()
        grads.append(m.res_conv.weight.grad.double())
    err = (grads[0] - grads[1]).abs().max() / grads[1].abs().max()
    assert err < 1e-4


def test_sequence_depthwise_conv_gradients_pass_gradcheck():
    from baselines.nystrom import SequenceDepthwiseConv

    torch.manual_seed(0)
    for n in (1, 7, 40, 130):  # shorter than the kernel, one block, several blocks
        v = torch.randn(2, n, 8, dtype=torch.float64, requires_grad=True)
        w = torch.randn(2, 1, 33, 1, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(SequenceDepthwiseConv.apply, (v, w))


@pytest.mark.parametrize("landmarks,n", [(8, 5), (8, 17), (16, 170), (256, 50)])
def test_row_attention_is_the_packages_attention_matrix_row(landmarks, n):
    """The weights TransMIL's heatmaps use: row 0 (the cls token) of the package's Nystrom attention
    matrix (``return_attn``), its real keys only, on both our paths (fewer rows than landmarks or not)."""
    ref, ours = _pair(64, 8, landmarks)
    ref.eval(), ours.eval()
    x = torch.randn(1, n, 64, dtype=torch.float64)
    _, attn = ref(x, return_attn=True)  # (1, h, n_padded, n_padded), padding in front
    pad = attn.shape[-1] - n
    want = attn[:, :, pad, pad:]
    got = ours.row_attention(x, row=0)
    assert got.shape == (1, 8, n)
    assert torch.allclose(got, want, rtol=1e-8, atol=1e-10)
