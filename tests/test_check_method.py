"""``check-method``: every registered method meets the model contract (benchmarks/checks.py), and
a method that breaks a rule fails with that rule named."""
import pytest
import torch

from baselines.abmil import ABMIL, build as build_abmil
from benchmarks import registry
from benchmarks.__main__ import main
from benchmarks.checks import RULES, check_method


@pytest.mark.parametrize("method", registry.names())
def test_every_registered_method_meets_the_contract(method):
    failed = [r.detail for r in check_method(method) if not r.ok]
    assert not failed, f"{method}: " + "; ".join(failed)


class _NoTotal(ABMIL):
    def loss(self, output, bag):
        return {"ce": super().loss(output, bag)["ce"]}


class _ReadsOmics(ABMIL):
    def forward(self, bag):
        out = super().forward(bag)
        if getattr(bag, "omics", None) is not None:
            out.logits = out.logits + torch.stack([bag.omics.mean() * 0, bag.omics.mean()])  # moves P(class 1)
        return out


class _StateOutside(ABMIL):
    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.shift = torch.randn(())  # a plain attribute: not in the state_dict

    def forward(self, bag):
        out = super().forward(bag)
        out.logits = out.logits + torch.stack([self.shift * 0, self.shift])
        return out


def _builder(cls):
    def build(in_dim, omics_dim, n_classes, **hp):
        model = build_abmil(in_dim, omics_dim, n_classes, **hp)
        broken = cls.__new__(cls)
        broken.__dict__ = model.__dict__
        if cls is _StateOutside:
            broken.shift = torch.randn(())
        return broken
    return build


@pytest.mark.parametrize("cls,rule", [(_NoTotal, "loss"), (_ReadsOmics, "inference_without_omics"),
                                      (_StateOutside, "state_dict_round_trip")])
def test_a_broken_method_fails_the_rule_it_breaks(monkeypatch, capsys, cls, rule):
    spec = registry.MethodSpec("broken", family="mil", build=_builder(cls), config="baselines.abmil:ABMILConfig")
    monkeypatch.setitem(registry.METHODS, "broken", spec)
    results = {r.rule: r for r in check_method("broken")}
    assert not results[rule].ok and f"[{rule}]" in results[rule].detail
    assert results["builds"].ok and results["output"].ok  # the rest of the contract still holds
    assert main(["check-method", "broken", "--rules", rule]) == 1
    out = capsys.readouterr()
    assert "FAILED" in out.out and rule in out.out and "failed" in out.err


def test_check_method_refuses_unknown_names():
    with pytest.raises(KeyError, match="abmil"):
        check_method("abmill")
    with pytest.raises(ValueError, match="rules"):
        check_method("abmil", ["no_such_rule"])
    assert set(RULES) >= {"loss", "determinism", "float64_gradients", "bf16_step", "no_uninitialised_reads"}
