"""The contract every registered method must meet: ``python -m benchmarks check-method NAME``.

Each rule builds the method on a small random bag (``perf.make_case``: a jittered grid with its kNN
graph and omics, the engine's own training step) and raises :class:`ContractViolation` naming
itself when the method breaks it. CI runs every rule for every registered method
(tests/test_check_method.py); a plugin author runs it on a new method before a benchmark does.

Rules, in order: the model builds from the spec's defaults; one forward gives (1, C) finite logits
and attention of one weight per patch (or none); the loss is a dict whose ``total`` is a finite
scalar with finite gradients; inference works without omics and never reads them (equal
probabilities whatever the bag's omics); ``attention_weights`` gives one finite weight per patch
or ``None``; a ``state_dict`` round trip into a fresh build gives the same outputs; two runs with
one seed give identical weights; float32 gradients match float64 (eval mode); one step under CPU
bf16 autocast stays finite and moves the weights; and no step reads memory it did not write
(torch's NaN fill of fresh buffers changes nothing).
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Callable

import torch

N_PATCHES, DIM, OMICS = 40, 32, 16
N_PRECISION = 200  # float64 rule: TransMIL's 15 x 15 grid + cls = 226 tokens, where oneDNN once went wrong


class ContractViolation(AssertionError):
    """A method broke rule ``rule`` of the contract."""

    def __init__(self, rule: str, message: str):
        super().__init__(f"[{rule}] {message}")
        self.rule = rule


@dataclass
class RuleResult:
    rule: str
    ok: bool
    detail: str
    seconds: float


def _case(method: str, seed: int = 0, bf16: bool = False, n: int = N_PATCHES):
    from benchmarks.perf import make_case

    return make_case(method, n, DIM, OMICS, seed=seed, bf16=bf16)


def _check(rule: str, cond: bool, message: str) -> None:
    if not cond:
        raise ContractViolation(rule, message)


def _without_omics(bag: Any, **changes: Any) -> SimpleNamespace:
    return SimpleNamespace(**{**vars(bag), "omics": None, **changes})


def rule_builds(method: str) -> None:
    from benchmarks import registry

    spec = registry.get(method)
    model = spec.build_model(DIM, OMICS if "omics_train" in spec.needs else None, 2, spec.defaults())
    _check("builds", isinstance(model, torch.nn.Module), f"build returned {type(model).__name__}, not an nn.Module")
    for attr in ("forward", "loss"):
        _check("builds", callable(getattr(model, attr, None)), f"the model has no {attr}()")


def rule_output(method: str) -> None:
    model, bag, _, _ = _case(method)
    model.eval()
    with torch.no_grad():
        out = model(_without_omics(bag))
    logits = getattr(out, "logits", None)
    _check("output", torch.is_tensor(logits) and logits.dim() == 2 and logits.shape[0] == 1,
           f"forward must return an Output whose logits are (1, C); got {None if logits is None else tuple(logits.shape)}")
    _check("output", bool(torch.isfinite(logits).all()), "non-finite logits")
    a = getattr(out, "attention", None)
    if a is not None:
        _check("output", a.numel() == N_PATCHES,
               f"attention must hold one weight per patch ({N_PATCHES}) or be None; got {tuple(a.shape)}")


def rule_loss(method: str) -> None:
    model, bag, _, _ = _case(method)
    model.train()
    terms = model.loss(model(bag), bag)
    _check("loss", isinstance(terms, dict) and "total" in terms,
           f"loss() must return a dict with a 'total' entry; got {type(terms).__name__} "
           f"{sorted(terms) if isinstance(terms, dict) else ''}")
    total = terms["total"]
    _check("loss", torch.is_tensor(total) and total.numel() == 1 and total.requires_grad,
           "the 'total' loss must be a scalar tensor that requires grad")
    _check("loss", bool(torch.isfinite(total.detach())), f"non-finite total loss {float(total.detach())}")
    total.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    _check("loss", bool(grads), "the total loss reaches no parameter")
    _check("loss", all(bool(torch.isfinite(g).all()) for g in grads), "non-finite gradients")


def _probability(model: torch.nn.Module, bag: Any) -> torch.Tensor:
    from benchmarks.engine import _positive_prob

    with torch.no_grad():
        return _positive_prob(model, model(bag))


def rule_inference_without_omics(method: str) -> None:
    model, bag, step, _ = _case(method)
    step()  # trained once, so omics-dependent parts are not at their init
    model.eval()
    p = _probability(model, _without_omics(bag))
    _check("inference_without_omics", bool(torch.isfinite(p).all()) and 0.0 <= float(p) <= 1.0,
           f"probability {float(p)} is not in [0, 1]")
    if getattr(bag, "omics", None) is not None:
        q = _probability(model, SimpleNamespace(**{**vars(bag), "omics": torch.randn_like(bag.omics) * 3}))
        _check("inference_without_omics", torch.allclose(p, q, atol=1e-6),
               f"the evaluation output depends on the bag's omics ({float(p):.6f} vs {float(q):.6f}): "
               "a slide-only model at test time must never read them")


def rule_attention(method: str) -> None:
    model, bag, _, _ = _case(method)
    model.eval()
    if not hasattr(model, "attention_weights"):
        return
    a = model.attention_weights(_without_omics(bag))
    if a is None:
        return
    _check("attention", torch.is_tensor(a) and a.reshape(-1).numel() == N_PATCHES,
           f"attention_weights must give one weight per patch ({N_PATCHES}); got {getattr(a, 'shape', a)}")
    _check("attention", bool(torch.isfinite(a).all()), "non-finite attention weights")


def rule_state_dict_round_trip(method: str) -> None:
    from benchmarks import registry

    model, bag, step, _ = _case(method)
    step()
    model.eval()
    spec = registry.get(method)
    fresh = spec.build_model(DIM, OMICS if "omics_train" in spec.needs else None, 2, spec.defaults())
    try:
        fresh.load_state_dict(model.state_dict(), strict=True)
    except RuntimeError as e:
        raise ContractViolation("state_dict_round_trip", f"a fresh build does not load the state_dict: {e}") from None
    fresh.eval()
    p, q = _probability(model, _without_omics(bag)), _probability(fresh, _without_omics(bag))
    _check("state_dict_round_trip", torch.equal(p, q),
           f"a fresh build with the loaded state_dict predicts {float(q):.6f}, the original {float(p):.6f} "
           "(state kept outside the state_dict?)")


def rule_determinism(method: str) -> None:
    weights = []
    for _ in range(2):
        model, _, step, _ = _case(method, seed=3)
        torch.manual_seed(4)
        step()
        step()
        weights.append([p.detach().clone() for p in model.parameters()])
    _check("determinism", all(torch.equal(a, b) for a, b in zip(*weights)),
           "two runs with the same seeds end with different weights")


def rule_float64_gradients(method: str) -> None:
    model, bag, _, _ = _case(method, n=N_PRECISION)
    model64 = copy.deepcopy(model).double()
    grads = []
    for m, dt in ((model, torch.float32), (model64, torch.float64)):
        m.eval()
        out = m(_without_omics(bag, features=bag.features.to(dt)))
        (out.logits[..., -1] - out.logits[..., 0]).sum().backward()
        grads.append({k: p.grad.double() for k, p in m.named_parameters() if p.grad is not None})
    _check("float64_gradients", grads[0].keys() == grads[1].keys() and bool(grads[0]),
           "float32 and float64 builds differ in which parameters get gradients")
    # each tensor against its own largest entry; a floor at 1e-3 of the model's largest gradient
    # keeps exact zeros (e.g. a bias a softmax ignores) from dividing noise
    floor = 1e-3 * max(g.abs().max().item() for g in grads[1].values())
    for k, ref in grads[1].items():
        err = (grads[0][k] - ref).abs().max().item() / (ref.abs().max().item() + floor)
        _check("float64_gradients", err < 1e-4, f"{k}: float32 gradient off by {err:.1e} of its largest entry")


def rule_bf16_step(method: str) -> None:
    model, _, step, _ = _case(method, bf16=True)
    before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    step()
    after = [p.detach() for p in model.parameters() if p.requires_grad]
    _check("bf16_step", all(bool(torch.isfinite(p).all()) for p in after), "non-finite weights after a bf16 step")
    _check("bf16_step", any(not torch.equal(a, b) for a, b in zip(before, after)), "a bf16 step moved no weight")
    _check("bf16_step", all(p.dtype == torch.float32 for p in after), "autocast must keep float32 master weights")


def rule_no_uninitialised_reads(method: str) -> None:
    state = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.utils.deterministic.fill_uninitialized_memory)
    weights = {}
    try:
        for fill in (True, False):
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.utils.deterministic.fill_uninitialized_memory = fill
            model, _, step, _ = _case(method)
            torch.manual_seed(1)
            step()
            step()
            weights[fill] = [p.detach().clone() for p in model.parameters()]
    finally:
        torch.use_deterministic_algorithms(state[0], warn_only=state[1])
        torch.utils.deterministic.fill_uninitialized_memory = state[2]
    _check("no_uninitialised_reads", all(bool(torch.isfinite(p).all()) for p in weights[True]),
           "NaN weights when fresh buffers start as NaN: a step reads memory it did not write")
    _check("no_uninitialised_reads", all(torch.equal(a, b) for a, b in zip(weights[True], weights[False])),
           "weights depend on the contents of fresh buffers: a step reads memory it did not write")


RULES: dict[str, Callable[[str], None]] = {
    "builds": rule_builds, "output": rule_output, "loss": rule_loss,
    "inference_without_omics": rule_inference_without_omics, "attention": rule_attention,
    "state_dict_round_trip": rule_state_dict_round_trip, "determinism": rule_determinism,
    "float64_gradients": rule_float64_gradients, "bf16_step": rule_bf16_step,
    "no_uninitialised_reads": rule_no_uninitialised_reads,
}


def check_method(method: str, rules: list[str] | None = None, stop_first: bool = False) -> list[RuleResult]:
    """Run the contract's rules on one registered method; a rule that raises anything fails."""
    from benchmarks import registry

    registry.get(method)  # unknown names: the registry's error, with the closest match
    unknown = sorted(set(rules or ()) - set(RULES))
    if unknown:
        raise ValueError(f"unknown rule(s) {unknown}; rules: {', '.join(RULES)}")
    out = []
    for name in rules or list(RULES):
        t0 = time.perf_counter()
        try:
            RULES[name](method)
            ok, detail = True, ""
        except ContractViolation as e:
            ok, detail = False, str(e)
        except Exception as e:  # noqa: BLE001 - a crash breaks the rule it happened in
            ok, detail = False, f"[{name}] {type(e).__name__}: {e}"
        out.append(RuleResult(name, ok, detail, time.perf_counter() - t0))
        if stop_first and not ok:
            break
    return out


def add_arguments(p) -> None:
    p.add_argument("methods", nargs="*", help="registered method names (default: every registered method)")
    p.add_argument("--rules", default=None, help=f"comma-separated subset of: {', '.join(RULES)}")


def main(args) -> int:
    from tabulate import tabulate

    from benchmarks import registry

    methods = args.methods or registry.names()
    rules = [r.strip() for r in args.rules.split(",")] if args.rules else None
    rows, failed = [], 0
    for m in methods:
        for r in check_method(m, rules):
            rows.append({"method": m, "rule": r.rule, "result": "ok" if r.ok else "FAILED",
                         "seconds": round(r.seconds, 2), "detail": r.detail})
            failed += not r.ok
    print(tabulate(rows, headers="keys", tablefmt="github"))
    if failed:
        print(f"error: {failed} rule(s) failed; each row names the rule and why", file=__import__("sys").stderr)
    return 1 if failed else 0
