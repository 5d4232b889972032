"""Speed and memory of every registered method: seconds per training step, seconds per
inference and peak memory at 1k / 10k / 100k patches (1536-d) and the simulated small scale.

    python -m benchmarks perf [--methods abmil,momkd] [--sizes 1000,10000,100000] [--dim 1536]
                              [--steps 3] [--threads 2] [--out results/perf.csv]

Each (method, size) runs in a fresh subprocess so peak resident memory (``ru_maxrss``) is its own;
``peak_mb`` is the process peak, ``step_mb`` the peak above the memory held before the first step
(model + inputs), i.e. what training one slide costs. A step is forward + the method's own loss +
backward + AdamW. Targets live here, never in unit tests.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

DEFAULT_SIZES = (1000, 10000, 100000)


def _measure(method: str, n: int, dim: int, omics_dim: int, steps: int, threads: int, variant: str) -> dict:
    """Runs inside the subprocess."""
    import resource
    import time

    import torch

    from benchmarks import registry
    from momkd.graph import knn_edge_index

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    side = int(n**0.5) + 1
    xy = torch.stack(torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij"), -1).reshape(-1, 2)[:n]
    xy = xy.float() + 0.01 * torch.rand(n, 2)
    from types import SimpleNamespace

    t0 = time.perf_counter()
    ei = knn_edge_index(xy, 8)
    graph_s = time.perf_counter() - t0
    bag = SimpleNamespace(slide_id=f"perf{n}", case_id="c", features=torch.randn(n, dim), coords=xy,
                          edge_index=ei, omics=torch.randn(omics_dim), label=1)
    spec = registry.get(method)
    model = spec.create(dim, omics_dim, 2, variant=variant)
    if hasattr(model, "on_fit_start"):
        model.train()
        model.on_fit_start([bag])
    params = model.trainable_parameters() if hasattr(model, "trainable_parameters") else list(model.parameters())
    opt = torch.optim.AdamW(params, lr=1e-4)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def step():
        model.train()
        out = model(bag)
        loss = model.loss(out, bag)["total"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if hasattr(model, "on_step_end"):
            model.on_step_end()

    step()  # warm-up
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    model.eval()
    ibag = SimpleNamespace(**{**vars(bag), "omics": None})
    with torch.no_grad():
        t = time.perf_counter()
        model(ibag)
        infer = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"method": method, "variant": variant, "n_patches": n, "dim": dim, "threads": threads,
            "step_s": min(times), "step_s_mean": sum(times) / len(times), "infer_s": infer,
            "knn_graph_s": graph_s, "peak_mb": peak, "step_mb": peak - base}


def run_case(method: str, n: int, dim: int, omics_dim: int, steps: int, threads: int, variant: str = "default",
             timeout: float = 900) -> dict:
    code = (f"import json,sys; from benchmarks.perf import _measure; "
            f"print('RESULT'+json.dumps(_measure({method!r},{n},{dim},{omics_dim},{steps},{threads},{variant!r})))")
    try:
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"method": method, "variant": variant, "n_patches": n, "dim": dim, "error": f"timeout {timeout}s"}
    for line in p.stdout.splitlines():
        if line.startswith("RESULT"):
            return json.loads(line[6:])
    err = (p.stderr.strip().splitlines() or ["killed (out of memory?)"])[-1]
    return {"method": method, "variant": variant, "n_patches": n, "dim": dim, "error": err[:200]}


def add_arguments(p) -> None:
    p.add_argument("--methods", default=None, help="comma-separated (default: all registered)")
    p.add_argument("--variant", default="default")
    p.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)))
    p.add_argument("--dim", type=int, default=1536)
    p.add_argument("--omics-dim", type=int, default=768)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--timeout", type=float, default=900)
    p.add_argument("--out", default="results/perf.csv")


def main(args) -> int:
    """Seconds per training step / inference and peak memory per method and bag size."""
    import pandas as pd
    from tabulate import tabulate

    from benchmarks import registry

    methods = args.methods.split(",") if args.methods else list(registry.METHODS)
    rows = []
    for m in methods:
        for n in [int(s) for s in args.sizes.split(",")]:
            r = run_case(m, n, args.dim, args.omics_dim, args.steps, args.threads, args.variant, args.timeout)
            rows.append(r)
            print(json.dumps(r), file=sys.stderr)
    df = pd.DataFrame(rows)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out, index=False)
    cols = [c for c in ("method", "n_patches", "dim", "step_s", "infer_s", "peak_mb", "step_mb", "error") if c in df]
    print(tabulate(df[cols], headers="keys", tablefmt="github", showindex=False, floatfmt=".3f"))
    return 0
