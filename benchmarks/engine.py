"""Train and evaluate one job with the generic one-slide-per-step loop (DESIGN.md "Protocol").

The loop follows a :class:`~momkd.recipe.Recipe`: the shared one (AdamW, cosine schedule,
class-balanced sampling, gradient clipping, early stopping on validation AUC with patience, best
checkpoint by validation AUC) or a method's official one (its optimiser, schedule, gradient
accumulation, clipping, monitor and selection rule). The threshold is chosen on validation when
asked. The test and external parts are only predicted, after every choice is made.
Seeded; deterministic on CPU; CUDA + bf16 autocast when available. Multi-stage methods (e.g.
teachers first) run each stage in order on the same training split.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
import platform
import random
import subprocess
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch

from benchmarks.batching import pad_bags, supports_batching
from benchmarks.metrics import binary_metrics, choose_threshold
from benchmarks.optim import build_optimizer, build_scheduler
from benchmarks.protocol import ProtocolConfig
from benchmarks.recipes import shared_recipe
from momkd.recipe import Recipe


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """One place that seeds python, numpy and torch (STYLE.md 14).

    Deterministic algorithms are switched on without torch's companion setting that fills every
    newly allocated tensor with NaN (``torch.utils.deterministic.fill_uninitialized_memory``, a
    debugging aid for reads of uninitialised memory): it changes no result of code that never
    reads such memory (the contract rule ``no_uninitialised_reads``, benchmarks/checks.py, checks every
    method's step with and without it) and
    it is one extra write per allocation: 7.8% of a profiled MoMKD job's CPU time on the ``small``
    cohort (138k fills) and 1-5% of its wall time in alternating A/B runs (the default command's
    total moved by less than this VM's noise: most of a fill's cost is the first touch of fresh
    memory, which the kernels that write it then pay instead)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.utils.deterministic.fill_uninitialized_memory = False


def select_device(protocol: ProtocolConfig) -> torch.device:
    if protocol.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(protocol.device)


def autocast_context(device: torch.device, protocol: ProtocolConfig):
    """bf16 autocast on CUDA (``bf16``, default on) and, when asked, on CPU (``cpu_bf16``, off:
    the official code trains in fp32; on CPUs with AVX512-BF16/AMX it halves GEMM time)."""
    if device.type == "cuda" and protocol.bf16:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if device.type == "cpu" and protocol.cpu_bf16:
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return nullcontext()


def _positive_prob(model: torch.nn.Module, out: Any) -> torch.Tensor:
    """P(class 1) for one slide: the model's own scoring rule when it has one (``probabilities``),
    else softmax over the logits (sigmoid for a single logit)."""
    if hasattr(model, "probabilities"):
        probs = model.probabilities(out).float().reshape(1, -1)
        return probs[:, -1] if probs.shape[1] <= 2 else probs[:, 1]
    logits = out.logits.float().reshape(1, -1)
    if logits.shape[1] == 1:
        return torch.sigmoid(logits[:, 0])
    return torch.softmax(logits, dim=1)[:, 1]


def compute_view(bag: Any) -> Any:
    """The bag with float32 features when they are stored in float16/bfloat16 (``--feature-dtype``
    or the feature store): storage stays half size, every step computes in float32."""
    f = getattr(bag, "features", None)
    if f is None or f.dtype not in (torch.float16, torch.bfloat16):
        return bag
    if hasattr(bag, "with_features"):  # Bag: the view shares the slide's cached graph
        return bag.with_features(f.float())
    if dataclasses.is_dataclass(bag):
        return dataclasses.replace(bag, features=f.float())
    return type(bag)(**{**vars(bag), "features": f.float()})


def prepare(bag: Any, device: torch.device) -> Any:
    """The bag as a step computes on it: on ``device`` (bags left on the host because the
    cohort exceeds the device budget move here, one at a time) and in float32 (:func:`compute_view`).
    The slide's kNN graph is built once on the host bag, so a per-step copy never rebuilds it."""
    f = getattr(bag, "features", None)
    if f is not None and f.device != device and hasattr(bag, "to"):
        if getattr(bag, "coords", None) is not None and hasattr(bag, "edge_index"):
            bag.edge_index  # noqa: B018 - cached on the host bag, moved with it
        bag = bag.to(device)
    return compute_view(bag)


def needs_preparation(bags: Sequence[Any], device: torch.device) -> bool:
    """Whether producing a step's bag costs anything (half-precision storage to cast, a memory-
    mapped store to read, a host-to-device copy): then the next one is prefetched."""
    f = getattr(bags[0], "features", None) if len(bags) else None
    return f is not None and (f.dtype in (torch.float16, torch.bfloat16) or f.device != device)


def prefetched(make: Callable[[int], Any], n: int, enabled: bool = True) -> Iterator[Any]:
    """``make(0), ..., make(n - 1)``, each next item produced in a background thread while the
    caller trains on the current one (issue #19: data must never be the step's bottleneck).
    Items come back in order and are the same objects ``make`` returns, so results do not change."""
    if not enabled or n < 2:
        for i in range(n):
            yield make(i)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch") as pool:
        nxt = pool.submit(make, 0)
        for i in range(n):
            cur = nxt.result()
            if i + 1 < n:
                nxt = pool.submit(make, i + 1)
            yield cur


def host_sync_each_step(device: torch.device) -> bool:
    """Whether the step loop may read values back to the host each step (the finiteness check
    names the slide at once). On CPU that costs nothing; on an accelerator it would stall the
    queue every step, so the check waits for the epoch end (tests switch the CPU to that path)."""
    return device.type == "cpu"


DEVICE_FRACTION = 0.5  # of the free accelerator memory the bags of a job may take when moved once


def stage_bags(parts: Sequence[Sequence[Any]], device: torch.device) -> tuple[list[list[Any]], bool]:
    """Move every bag of a job to the accelerator once when they fit ``DEVICE_FRACTION`` of its
    free memory (no copy per step); otherwise leave them on the host and move each per step,
    prefetched (a paper-scale cohort on a 24 GB card). Returns the parts and whether they moved."""
    parts = [list(p) for p in parts]
    if device.type == "cpu":
        return parts, False
    total = sum(b.features.nelement() * b.features.element_size() for p in parts for b in p)
    free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else math.inf
    if total > DEVICE_FRACTION * free:
        return parts, False
    return [[b.to(device) for b in p] for p in parts], True


@torch.no_grad()
def predict(model: torch.nn.Module, bags: Sequence[Any], device: torch.device,
            protocol: ProtocolConfig) -> np.ndarray:
    """Positive-class probability per bag, from slide features only (omics stripped)."""
    model.eval()
    out = []
    with autocast_context(device, protocol):
        for b in prefetched(lambda i: prepare(bags[i], device), len(bags), needs_preparation(bags, device)):
            if getattr(b, "omics", None) is not None:
                raise RuntimeError(f"slide {b.slide_id}: evaluation bags must not carry omics")
            out.append(_positive_prob(model, model(b)))
    return torch.cat(out).float().cpu().numpy() if out else np.zeros(0)


def _labels(bags: Sequence[Any]) -> np.ndarray:
    return np.array([int(b.label) for b in bags])


def _log_loss(y: np.ndarray, p: np.ndarray) -> float:
    q = np.clip(p, 1e-6, 1 - 1e-6)
    return float(-np.mean(y * np.log(q) + (1 - y) * np.log(1 - q))) if len(y) else 0.0


def _selection_score(y: np.ndarray, p: np.ndarray, monitor: str = "val_auc") -> float:
    """The monitored validation score (higher is better): AUC (``val_auc``), minus the log-loss
    (``val_loss``) or (AUC + accuracy at 0.5) / 2 (``val_auc_acc``, DSMIL ``train_tcga.py``). A
    validation part with one class has no AUC: minus the log-loss then."""
    if monitor == "val_loss" or len(np.unique(y)) < 2:
        return -_log_loss(y, p)
    m = binary_metrics(y, p)
    return float(m["auc"]) if monitor != "val_auc_acc" else 0.5 * (float(m["auc"]) + float(m["acc"]))


def _improves(score: float, loss: float, best_score: float, best_loss: float) -> bool:
    """Higher validation AUC wins; an equal AUC wins with a lower validation log-loss. Small
    validation parts (a few slides) tie their AUC across many epochs; without the tie-break the
    first such epoch is kept, often epoch 0 with near-constant predictions (measured on UCSB/MUSK)."""
    return score > best_score or (score == best_score and loss < best_loss)


def _epoch_order(train_bags: Sequence[Any], balanced: bool, gen: torch.Generator) -> list[int]:
    n = len(train_bags)
    if not balanced:
        return torch.randperm(n, generator=gen).tolist()
    y = torch.tensor([int(b.label) for b in train_bags])
    counts = torch.bincount(y).float()
    w = 1.0 / counts[y]
    return torch.multinomial(w, n, replacement=True, generator=gen).tolist()


def _compiled(model: torch.nn.Module) -> Callable:
    """``torch.compile`` of the forward with dynamic bag sizes (one graph for every patch count).
    Losses, hooks and evaluation keep the eager module; compiled and eager forwards share weights."""
    return torch.compile(model, dynamic=True)


def make_optimizer(params, protocol_or_recipe: ProtocolConfig | Recipe, model: torch.nn.Module | None = None):
    """The recipe's optimiser (``benchmarks/optim.py``) over ``params``; a protocol means its shared
    recipe (AdamW, fused kernel where torch has one). ``model`` names the parameters for a decay
    mask (TransMIL: no decay on biases and 1-D parameters)."""
    r = protocol_or_recipe if isinstance(protocol_or_recipe, Recipe) else shared_recipe(protocol_or_recipe)
    params = list(params)
    names = {id(p): n for n, p in model.named_parameters()} if model is not None else {}
    return build_optimizer([(names.get(id(p), f"p{i}"), p) for i, p in enumerate(params)], r)


def _clip(params: Sequence[torch.Tensor], model: torch.nn.Module, recipe: Recipe) -> None:
    """Global-norm clipping, or per group where the recipe asks (DTFD-MIL: each module to norm 5)."""
    if not recipe.grad_clip:
        return
    if recipe.clip_per_group and hasattr(model, "grad_clip_groups"):
        for group in model.grad_clip_groups().values():
            torch.nn.utils.clip_grad_norm_(group, recipe.grad_clip)
    else:
        torch.nn.utils.clip_grad_norm_(params, recipe.grad_clip)


def environment() -> dict[str, Any]:
    """Versions and machine of this process (recorded in every job result)."""
    env = dict(_static_environment())
    env["threads"] = torch.get_num_threads()
    return env


@functools.lru_cache(maxsize=1)
def _static_environment() -> dict[str, Any]:
    """The parts that cannot change within a process, looked up once (package versions are read
    from their metadata: importing torch_geometric only for its version costs ~2 s and ~160 MiB)."""
    from importlib.metadata import PackageNotFoundError, version

    def ver(dist: str) -> str | None:
        try:
            return version(dist)
        except PackageNotFoundError:
            return None

    try:
        here = Path(__file__).resolve().parent
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=here).stdout.strip()
        if commit and subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                     text=True, timeout=5, cwd=here).stdout.strip():
            commit += "-dirty"  # uncommitted changes: the commit alone does not name the code
    except Exception:  # pragma: no cover - git missing
        commit = ""
    return {"package": ver("momkd-bench"), "python": platform.python_version(), "torch": torch.__version__,
            "torch_geometric": ver("torch_geometric") or ver("torch-geometric"), "sklearn": ver("scikit-learn"),
            "numpy": np.__version__, "platform": platform.platform(), "git_commit": commit,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def fit(model: torch.nn.Module, train_bags: Sequence[Any], val_bags: Sequence[Any],
        protocol: ProtocolConfig, seed: int, device: torch.device | None = None,
        on_epoch: Callable[[dict], None] | None = None, recipe: Recipe | None = None,
        watch: Mapping[str, Sequence[Any]] | None = None) -> dict[str, Any]:
    """Train every stage of ``model`` in place with ``recipe`` (default: the protocol's shared
    recipe); keep the best validation checkpoint per stage (the last epoch when the recipe
    monitors nothing).

    ``watch``: parts (e.g. ``{"test": bags}``) whose probabilities are recorded after every epoch
    in the curve (``row["watch"]``). Only the literature protocols reproduced "as published"
    use it (``benchmarks/reproduce.py``), to apply a paper's own test-fold selection afterwards; no
    choice made here ever reads it.

    Returns the loss curve (one row per stage x epoch) and the best epoch of the last stage.
    """
    device = device or select_device(protocol)
    recipe = recipe or shared_recipe(protocol)
    gen = torch.Generator().manual_seed(seed)
    curve: list[dict[str, Any]] = []
    y_val = _labels(val_bags) if recipe.uses_validation else np.zeros(0)  # monitor "none": never read
    if recipe.uses_validation and not len(y_val):
        raise ValueError(f"recipe {recipe.name!r} monitors {recipe.monitor} but the validation part is empty")
    best_epoch = -1
    accum = recipe.grad_accumulation
    for stage in getattr(model, "stages", ("main",)):
        if hasattr(model, "set_stage"):
            model.set_stage(stage)
        opts = model.stage_options(stage) if hasattr(model, "stage_options") else {}
        max_epochs = int(opts.get("max_epochs", recipe.epochs))
        monitor = recipe.monitor
        early = bool(opts.get("early_stopping", True)) and recipe.patience is not None and monitor != "none"
        if hasattr(model, "on_fit_start"):
            model.train()
            model.on_fit_start(list(train_bags))
        params = (model.trainable_parameters() if hasattr(model, "trainable_parameters")
                  else [p for p in model.parameters() if p.requires_grad])
        if hasattr(model, "set_accumulation"):
            model.set_accumulation(accum)
        opt = make_optimizer(params, recipe, model)
        sched = build_scheduler(opt, recipe, max_epochs)
        best_score, best_loss, best_state, since_best = -math.inf, math.inf, None, 0
        forward = _compiled(model) if protocol.compile else model
        batch_size = protocol.batch_size if supports_batching(model) else 1
        sync_each_step = host_sync_each_step(device)
        prefetch = needs_preparation(train_bags, device)
        for epoch in range(max_epochs):
            model.train()
            if hasattr(model, "on_epoch_start"):
                model.on_epoch_start(epoch)
            sums: dict[str, torch.Tensor] = {}
            nonfinite: list[tuple[str, torch.Tensor]] = []
            t0 = time.perf_counter()
            order = _epoch_order(train_bags, recipe.balanced_sampling, gen)
            starts = range(0, len(order), batch_size)
            if epoch == 0 or recipe.partial_accumulation != "carry":
                opt.zero_grad(set_to_none=True)

            def make(i: int, order=order, starts=starts):
                if batch_size == 1:
                    return prepare(train_bags[order[starts[i]]], device)
                # optional padded multi-slide step (batching.py)
                return pad_bags([prepare(train_bags[j], device) for j in order[starts[i]:starts[i] + batch_size]])

            for i, bag in enumerate(prefetched(make, len(starts), prefetch)):
                with autocast_context(device, protocol):
                    out = forward(bag) if batch_size == 1 else model.forward_batch(bag.features, bag.mask)
                    terms = model.loss(out, bag)
                total = terms["total"]
                if sync_each_step:
                    if not torch.isfinite(total):
                        raise FloatingPointError(f"stage {stage} epoch {epoch}: non-finite loss on slide "
                                                 f"{bag.slide_id} ({ {k: float(v) for k, v in terms.items()} })")
                else:  # no host sync inside the step loop on an accelerator
                    nonfinite.append((bag.slide_id, ~torch.isfinite(total.detach())))
                (total / accum if accum > 1 and recipe.accumulate_scaled else total).backward()
                if (i + 1) % accum == 0 or (i + 1 == len(starts) and recipe.partial_accumulation == "step"):
                    _clip(params, model, recipe)
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                    if hasattr(model, "on_step_end"):
                        model.on_step_end()
                for k, v in terms.items():  # summed on device; one host sync per epoch
                    v = v.detach().float()
                    sums[k] = sums[k] + v if k in sums else v
            if nonfinite:
                flags = torch.stack([f for _, f in nonfinite]).cpu()
                if bool(flags.any()):
                    bad = [sid for (sid, _), f in zip(nonfinite, flags) if bool(f)]
                    raise FloatingPointError(f"stage {stage} epoch {epoch}: non-finite loss on slide(s) "
                                             f"{', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}")
            row = {"stage": stage, "epoch": epoch, "train_s": time.perf_counter() - t0,
                   "lr": float(opt.param_groups[-1]["lr"]),
                   **{f"train_{k}": float(v) / max(1, len(starts)) for k, v in sums.items()},
                   "batch_size": batch_size}
            score = val_loss = None
            if monitor != "none":
                p_val = predict(model, val_bags, device, protocol)
                score, val_loss = _selection_score(y_val, p_val, monitor), _log_loss(y_val, p_val)
                row.update(val_score=score, val_loss=val_loss)
                if len(np.unique(y_val)) == 2:
                    row["val_auc"] = float(binary_metrics(y_val, p_val)["auc"])
            if watch:
                row["watch"] = {part: predict(model, bags, device, protocol).tolist() for part, bags in watch.items()}
            sched.step(score)
            curve.append(row)
            if on_epoch:
                on_epoch(row)
            selectable = (not recipe.select_after or epoch > int(recipe.select_after * max_epochs)
                          or epoch == max_epochs - 1)
            keep_last = monitor == "none" or not opts.get("early_stopping", True)
            if selectable and (keep_last or best_state is None or _improves(score, val_loss, best_score, best_loss)):
                best_score, best_loss, since_best, best_epoch = score, val_loss, 0, epoch
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            elif selectable:
                since_best += 1
                if early and epoch + 1 >= recipe.min_epochs and since_best >= recipe.patience:
                    break
        if best_state is not None:
            model.load_state_dict(best_state)
    return {"curve": curve, "best_epoch": best_epoch}


def evaluate(model: torch.nn.Module, val_bags, test_bags, external_bags, protocol: ProtocolConfig,
             device: torch.device | None = None) -> dict[str, Any]:
    """Threshold from validation (or 0.5); metrics and per-slide predictions for each part."""
    device = device or select_device(protocol)
    p_val = predict(model, val_bags, device, protocol)
    y_val = _labels(val_bags)
    thr = 0.5
    if protocol.threshold == "val_f1":
        thr = choose_threshold(y_val, p_val, "f1")
    elif protocol.threshold == "val_youden":
        thr = choose_threshold(y_val, p_val, "youden")
    res: dict[str, Any] = {"threshold": thr, "metrics": {}, "predictions": {}}
    for part, bags, p in (("val", val_bags, p_val), ("test", test_bags, None), ("external", external_bags, None)):
        if not bags:
            res["metrics"][part] = None
            res["predictions"][part] = []
            continue
        if p is None:
            p = predict(model, bags, device, protocol)
        y = _labels(bags)
        res["metrics"][part] = binary_metrics(y, p, thr)
        res["predictions"][part] = [{"slide_id": b.slide_id, "case_id": b.case_id, "y": int(yy), "p": float(pp)}
                                    for b, yy, pp in zip(bags, y, p)]
    return res


def run_job(model: torch.nn.Module, train_bags, val_bags, test_bags, external_bags,
            protocol: ProtocolConfig, seed: int, recipe: Recipe | None = None,
            watch_test: bool = False) -> dict[str, Any]:
    """Fit then evaluate; returns the result body (the runner adds the job description)."""
    device = select_device(protocol)
    model.to(device)
    (train_bags, val_bags, test_bags, external_bags), moved = stage_bags(
        (train_bags, val_bags, test_bags, external_bags), device)
    from benchmarks.memprobe import PeakMemory

    with PeakMemory(device=device) as mem:  # the job's own footprint (smoke table, GPU budget)
        t0 = time.perf_counter()
        fitted = fit(model, train_bags, val_bags, protocol, seed, device, recipe=recipe,
                     watch={"test": test_bags} if watch_test else None)
        t1 = time.perf_counter()
        res = evaluate(model, val_bags, test_bags, external_bags, protocol, device)
        t2 = time.perf_counter()
    res.update(curve=fitted["curve"], best_epoch=fitted["best_epoch"],
               n_train=len(train_bags), n_val=len(val_bags), n_test=len(test_bags),
               timings={"fit_s": t1 - t0, "eval_s": t2 - t1,
                        "steps": sum(1 for _ in fitted["curve"]) * len(train_bags),
                        "train_patches_mean": round(float(np.mean([b.features.shape[0] for b in train_bags])), 1)
                        if len(train_bags) else 0.0, "bags_on_device": moved, **mem.report()},
               env=environment())
    return res


def configure_threads(workers: int) -> int:
    """Give each of ``workers`` processes cores // workers torch threads (no oversubscription)."""
    n = max(1, (os.cpu_count() or 1) // max(1, workers))
    torch.set_num_threads(n)
    return n
