"""GPU readiness without a GPU (issue #19, item 7): the accelerator's step loop, run on the CPU,
reads nothing back to the host per step. A host read (``.item()``, ``.cpu()``, ``bool(t)``,
``float(t)``, ``.tolist()``, ``.numpy()``, ``.nonzero()``) stalls a CUDA queue; the loop may do
so once per epoch (losses, validation), never once per step."""
import pytest
import torch
from torch.overrides import TorchFunctionMode

from benchmarks import engine, registry
from benchmarks.protocol import ProtocolConfig
from tests.conftest import make_bag

SYNCS = {"item", "cpu", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__", "nonzero"}
METHODS = list(registry.METHODS)


class HostReads(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.n = 0
        self.paused = False
        self.names: dict[str, int] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in SYNCS and not self.paused:
            self.n += 1
            self.names[name] = self.names.get(name, 0) + 1
        return func(*args, **(kwargs or {}))


def _host_reads(method: str, n_train: int, epochs: int) -> HostReads:
    spec = registry.get(method)
    omics = 16 if "omics_train" in spec.needs else None
    train = [make_bag(20 + i, 8, label=i % 2, omics_dim=omics, seed=i, slide_id=f"t{i}") for i in range(n_train)]
    val = [make_bag(25, 8, label=i % 2, seed=100 + i, slide_id=f"v{i}") for i in range(4)]
    engine.seed_everything(0)
    model = spec.build_model(8, omics, 2, {})
    reads = HostReads()
    if hasattr(model, "on_fit_start"):  # per-stage set-up (e.g. the pooling floor's fit) is not a step
        setup = model.on_fit_start

        def paused_setup(bags):
            reads.paused = True
            try:
                setup(bags)
            finally:
                reads.paused = False

        model.on_fit_start = paused_setup
    protocol = ProtocolConfig(max_epochs=epochs, min_epochs=epochs, patience=100)
    with reads:
        engine.fit(model, train, val, protocol, seed=0, device=torch.device("cpu"))
    return reads


@pytest.mark.parametrize("method", METHODS)
def test_the_accelerator_step_loop_reads_nothing_back_per_step(method, monkeypatch):
    monkeypatch.setattr(engine, "host_sync_each_step", lambda device: False)
    per_epoch = {n: _host_reads(method, n, 2).n - _host_reads(method, n, 1).n for n in (4, 8)}
    assert per_epoch[8] == per_epoch[4], (
        f"{method}: {(per_epoch[8] - per_epoch[4]) / 4:.1f} host read(s) per training step")


def test_the_counter_sees_a_per_step_read(monkeypatch):
    """The check can fail: the CPU path's per-step finiteness check is one read per step."""
    monkeypatch.setattr(engine, "host_sync_each_step", lambda device: True)
    per_epoch = {n: _host_reads("abmil", n, 2).n - _host_reads("abmil", n, 1).n for n in (4, 8)}
    assert per_epoch[8] - per_epoch[4] >= 4
