"""Float32 gradients against float64 for every method (eval mode, no dropout): a guard against
silent errors in the CPU kernels a model runs on (oneDNN returned a depthwise-conv weight gradient
off by several percent for TransMIL at 226 tokens; baselines/nystrom.py SequenceDepthwiseConv)."""
import copy
from types import SimpleNamespace

import pytest
import torch

from benchmarks import registry
from momkd.graph import knn_edge_index

METHODS = ["abmil", "dsmil", "transmil", "dtfdmil", "wikg", "tdc", "mkd", "ghanet", "momkd"]


def _bag(n: int, dim: int, dtype: torch.dtype, seed: int = 0) -> SimpleNamespace:
    g = torch.Generator().manual_seed(seed)
    side = int(n**0.5) + 1
    xy = torch.stack(torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij"), -1).reshape(-1, 2)[:n]
    xy = xy.float() + 0.01 * torch.rand(n, 2, generator=g)
    feats = torch.randn(n, dim, generator=g)
    return SimpleNamespace(slide_id=f"p{n}", case_id="c", features=feats.to(dtype), coords=xy,
                           edge_index=knn_edge_index(xy, 8), omics=None, label=1)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("n", [200])  # TransMIL: a 15 x 15 grid + cls = 226 tokens, where oneDNN went wrong
def test_float32_gradients_match_float64(method, n):
    torch.manual_seed(0)
    model = registry.get(method).create(32, 16, 2)
    model64 = copy.deepcopy(model).double()
    grads = []
    for m, dt in ((model, torch.float32), (model64, torch.float64)):
        m.eval()
        out = m(_bag(n, 32, dt))
        (out.logits[..., 1] - out.logits[..., 0]).sum().backward()
        grads.append({k: p.grad.double() for k, p in m.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    # each tensor against its own largest entry; a floor at 1e-3 of the model's largest gradient
    # keeps exact zeros (e.g. the last attention bias: softmax ignores a shift) from dividing noise
    floor = 1e-3 * max(g.abs().max().item() for g in grads[1].values())
    for k, ref in grads[1].items():
        err = (grads[0][k] - ref).abs().max().item() / (ref.abs().max().item() + floor)
        assert err < 1e-4, f"{method}: {k} float32 gradient off by {err:.1e} of its largest entry"
