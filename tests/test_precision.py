"""Float32 gradients against float64 for every method (eval mode, no dropout): a guard against
silent errors in the CPU kernels a model runs on (oneDNN returned a depthwise-conv weight gradient
off by several percent for TransMIL at 226 tokens; baselines/nystrom.py SequenceDepthwiseConv)."""
import copy
from types import SimpleNamespace

import pytest
import torch

from benchmarks import registry
from benchmarks.perf import make_case


@pytest.mark.parametrize("method", registry.names())
@pytest.mark.parametrize("n", [200])  # TransMIL: a 15 x 15 grid + cls = 226 tokens, where oneDNN went wrong
def test_float32_gradients_match_float64(method, n):
    model, bag, _, _ = make_case(method, n, 32, 16, seed=0)
    model64 = copy.deepcopy(model).double()
    grads = []
    for m, dt in ((model, torch.float32), (model64, torch.float64)):
        m.eval()
        out = m(SimpleNamespace(**{**vars(bag), "features": bag.features.to(dt), "omics": None}))
        (out.logits[..., 1] - out.logits[..., 0]).sum().backward()
        grads.append({k: p.grad.double() for k, p in m.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    # each tensor against its own largest entry; a floor at 1e-3 of the model's largest gradient
    # keeps exact zeros (e.g. the last attention bias: softmax ignores a shift) from dividing noise
    floor = 1e-3 * max(g.abs().max().item() for g in grads[1].values())
    for k, ref in grads[1].items():
        err = (grads[0][k] - ref).abs().max().item() / (ref.abs().max().item() + floor)
        assert err < 1e-4, f"{method}: {k} float32 gradient off by {err:.1e} of its largest entry"
