"""Speed and memory of every registered method: seconds per training step, seconds per
inference and peak memory at 1k / 10k / 100k patches (1536-d) and the simulated small scale.

    python -m benchmarks perf [--methods abmil,momkd] [--sizes 1000,10000,100000] [--dim 1536]
                              [--steps 3] [--threads 2] [--out results/perf.csv]
    python -m benchmarks perf --sizes 250:64 --omics-dim 128 --scale-params small   # the small preset

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
# sustained fp32 matmul throughput of this project's reference machine (2 cores, torch 2.13 CPU),
# shared/research/official_bench.md; ``floor_frac`` = achieved matmul GFLOP/s / this
MATMUL_FLOOR_GFLOPS = 350.0


def make_case(method: str, n: int, dim: int, omics_dim: int, variant: str = "default",
              params: dict | None = None, seed: int = 0, bf16: bool = False):
    """A random bag of ``n`` patches on a jittered grid (kNN graph built once, as the cohort caches
    it) and the method's training step as the engine runs it: forward, the method's own loss,
    backward, global-norm clipping at 16, fused AdamW; ``bf16``: under the engine's CPU bf16 autocast
    (``--cpu-bf16``). Returns ``(model, bag, step, graph_s)``; the pytest-benchmark cases in
    tests/test_perf.py time the same ``step``."""
    import time
    from types import SimpleNamespace

    import torch

    from benchmarks import registry
    from benchmarks.engine import autocast_context, make_optimizer
    from benchmarks.protocol import ProtocolConfig
    from momkd.graph import knn_edge_index

    torch.manual_seed(seed)
    side = int(n**0.5) + 1
    xy = torch.stack(torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij"), -1).reshape(-1, 2)[:n]
    xy = xy.float() + 0.01 * torch.rand(n, 2)
    t0 = time.perf_counter()
    ei = knn_edge_index(xy, 8)
    graph_s = time.perf_counter() - t0
    bag = SimpleNamespace(slide_id=f"perf{n}", case_id="c", features=torch.randn(n, dim), coords=xy,
                          edge_index=ei, omics=torch.randn(omics_dim), label=1)
    model = registry.get(method).create(dim, omics_dim, 2, variant=variant, **(params or {}))
    if hasattr(model, "on_fit_start"):
        model.train()
        model.on_fit_start([bag])
    trainable = (model.trainable_parameters() if hasattr(model, "trainable_parameters")
                 else [p for p in model.parameters() if p.requires_grad])
    protocol = ProtocolConfig(cpu_bf16=bf16)
    opt = make_optimizer(trainable, protocol)
    cpu = torch.device("cpu")

    def step():
        model.train()
        with autocast_context(cpu, protocol):
            out = model(bag)
            loss = model.loss(out, bag)["total"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, protocol.grad_clip)
        opt.step()
        if hasattr(model, "on_step_end"):
            model.on_step_end()

    return model, bag, step, graph_s


def _measure(method: str, n: int, dim: int, omics_dim: int, steps: int, threads: int, variant: str,
             params: dict | None = None, bf16: bool = False) -> dict:
    """Runs inside the subprocess, in the runner's deterministic mode (``engine.seed_everything``),
    so a cost that only that mode adds shows up here too."""
    import resource
    import time
    from types import SimpleNamespace

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from benchmarks.engine import seed_everything

    seed_everything(0)
    torch.set_num_threads(threads)
    model, bag, step, graph_s = make_case(method, n, dim, omics_dim, variant, params, bf16=bf16)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    step()  # warm-up
    with FlopCounterMode(display=False) as fc:  # matmul/conv FLOPs of one step (forward + backward)
        step()
    flops = fc.get_total_flops()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    model.eval()
    ibag = SimpleNamespace(**{**vars(bag), "omics": None})
    from benchmarks.engine import autocast_context
    from benchmarks.protocol import ProtocolConfig

    with torch.no_grad(), autocast_context(torch.device("cpu"), ProtocolConfig(cpu_bf16=bf16)):
        t = time.perf_counter()
        model(ibag)
        infer = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    best = min(times)
    return {"method": method, "variant": variant, "n_patches": n, "dim": dim, "threads": threads,
            "params": json.dumps(params or {}, sort_keys=True), "bf16": bf16,
            "step_s": best, "step_s_mean": sum(times) / len(times), "infer_s": infer,
            "step_gflop": flops / 1e9, "gflop_per_s": flops / 1e9 / best,
            "floor_frac": flops / 1e9 / best / MATMUL_FLOOR_GFLOPS,
            "knn_graph_s": graph_s, "peak_mb": peak, "step_mb": peak - base}


def gemm_floor(threads: int = 2, sizes: tuple[int, ...] = (2048, 4096), repeats: int = 5) -> list[dict]:
    """This machine's matrix-product throughput (GFLOP/s, best of ``repeats``) for square fp32 and
    bf16 products and for MoMKD's largest shapes at 10k patches (the first layer's 1,536 -> 512
    projection and its weight gradient): the ceiling a CPU training step can reach."""
    import time

    import torch

    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    cases = []
    for n in sizes:
        a, b = torch.randn(n, n, generator=gen), torch.randn(n, n, generator=gen)
        cases.append((f"square {n} fp32", a, b, 2 * n**3))
        cases.append((f"square {n} bf16", a.bfloat16(), b.bfloat16(), 2 * n**3))
    x, w = torch.randn(10_000, 1536, generator=gen), torch.randn(1536, 512, generator=gen)
    g = torch.randn(10_000, 512, generator=gen)
    cases.append(("(10000,1536)@(1536,512) fp32", x, w, 2 * 10_000 * 1536 * 512))
    cases.append(("(512,10000)@(10000,1536) fp32", g.t(), x, 2 * 10_000 * 1536 * 512))
    rows = []
    for name, a, b, flops in cases:
        a @ b  # warm-up
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t)
        rows.append({"case": name, "threads": threads, "seconds": best, "gflop_per_s": flops / best / 1e9})
    return rows


def _drop_cache(paths) -> None:
    """Best effort: ask the kernel to evict these files from the page cache (cold reads)."""
    import os

    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        except (OSError, AttributeError):  # not every platform / file system honours it
            pass
        finally:
            os.close(fd)


def io_benchmark(n_slides: int = 32, n_patches: int = 4000, dim: int = 1536, workdir: str | None = None) -> list[dict]:
    """Load throughput of a cohort of TRIDENT-style h5 files: raw sequential read of the same files,
    our reader (h5 decode + validation), building the consolidated float16 store, and loading from
    the store (memory-mapped, every feature touched). MB/s of feature-file bytes; cold = after
    evicting the files from the page cache (posix_fadvise; best effort), warm = second pass."""
    import os
    import tempfile
    import time

    import h5py
    import numpy as np

    from benchmarks.data.readers import read_bag_file
    from benchmarks.data.store import FeatureStore

    tmp = Path(workdir or tempfile.mkdtemp(prefix="momkd_io_"))
    tmp.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = {}
    for i in range(n_slides):
        p = tmp / f"slide{i:04d}.h5"
        with h5py.File(p, "w") as f:
            f.create_dataset("features", data=rng.standard_normal((n_patches, dim), dtype=np.float32))
            f.create_dataset("coords", data=rng.integers(0, 10**5, (n_patches, 2)).astype(np.int64))
        paths[f"slide{i:04d}"] = p
    for p in paths.values():
        with open(p, "rb") as fh:
            os.fsync(fh.fileno())
    total_mb = sum(p.stat().st_size for p in paths.values()) / 1e6
    rows = []

    def timed(name, fn, files, cold=True):
        if cold:
            _drop_cache(files)
        t = time.perf_counter()
        fn()
        dt = time.perf_counter() - t
        rows.append({"case": name, "cache": "cold" if cold else "warm", "slides": n_slides, "patches": n_patches,
                     "dim": dim, "file_mb": round(total_mb, 1), "seconds": dt, "mb_per_s": total_mb / dt})

    def raw():
        for p in paths.values():
            with open(p, "rb", buffering=0) as fh:
                while fh.read(1 << 24):
                    pass

    def reader():
        for sid, p in paths.items():
            read_bag_file(p, slide_id=sid)

    cache = tmp / "store"
    timed("raw sequential read", raw, paths.values())
    timed("raw sequential read", raw, paths.values(), cold=False)
    timed("read_bag_file (h5 + checks)", reader, paths.values())
    timed("read_bag_file (h5 + checks)", reader, paths.values(), cold=False)
    timed("build float16 store", lambda: FeatureStore.open_or_build(paths, "float16", cache, progress=False),
          paths.values())
    store = FeatureStore.open_or_build(paths, "float16", cache, progress=False)
    store_files = [store.root / "features.bin", store.root / "coords.bin"]

    def load_store():
        st = FeatureStore(store.root)
        for sid in st:
            float(st[sid].sum(dtype=np.float32))

    timed("load from store (mmap, all touched)", load_store, store_files)
    timed("load from store (mmap, all touched)", load_store, store_files, cold=False)
    raw_cold = rows[0]["mb_per_s"]
    for r in rows:
        r["vs_raw_cold"] = r["mb_per_s"] / raw_cold
    if workdir is None:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return rows


def run_case(method: str, n: int, dim: int, omics_dim: int, steps: int, threads: int, variant: str = "default",
             timeout: float = 900, params: dict | None = None, bf16: bool = False) -> dict:
    code = (f"import json,sys; from benchmarks.perf import _measure; "
            f"print('RESULT'+json.dumps(_measure({method!r},{n},{dim},{omics_dim},{steps},{threads},{variant!r},"
            f"json.loads({json.dumps(params or {})!r}),{bf16!r})))")
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
    p.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)),
                   help="comma-separated patch counts, each optionally N:DIM (e.g. 1000,250:64)")
    p.add_argument("--dim", type=int, default=1536)
    p.add_argument("--scale-params", default=None, metavar="SCALE",
                   help="apply a scale preset's method widths from the suite file (e.g. small)")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="hyper-parameter override for every method measured (repeatable), e.g. "
                        "--param hidden_dim=256 (the seed listing's MoMKD sizes, see README)")
    p.add_argument("--suite", default="tcga_brca")
    p.add_argument("--io", action="store_true",
                   help="instead: load throughput of a cohort of h5 files vs raw sequential read (MB/s)")
    p.add_argument("--floor", action="store_true",
                   help="instead: this machine's matrix-product throughput (fp32/bf16 GFLOP/s), the ceiling of a step")
    p.add_argument("--io-slides", type=int, default=32)
    p.add_argument("--io-patches", type=int, default=4000)
    p.add_argument("--omics-dim", type=int, default=768)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--bf16", action="store_true",
                   help="steps under CPU bf16 autocast (the run flag --cpu-bf16); default fp32 as the official code")
    p.add_argument("--timeout", type=float, default=900)
    p.add_argument("--out", default="results/perf.csv")


def main(args) -> int:
    """Seconds per training step / inference and peak memory per method and bag size."""
    import pandas as pd
    from tabulate import tabulate

    from benchmarks import registry

    if args.floor:
        df = pd.DataFrame(gemm_floor(args.threads))
        print(tabulate(df, headers="keys", tablefmt="github", showindex=False, floatfmt=".3f"))
        return 0
    if args.io:
        rows = io_benchmark(args.io_slides, args.io_patches, args.dim)
        df = pd.DataFrame(rows)
        out = Path(args.out).with_name(Path(args.out).stem + "_io.csv")
        out.parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(out, index=False)
        print(tabulate(df, headers="keys", tablefmt="github", showindex=False, floatfmt=".2f"))
        return 0
    methods = args.methods.split(",") if args.methods else list(registry.METHODS)
    preset = {}
    if args.scale_params:
        from benchmarks.suites import load_suite

        preset = load_suite(args.suite).params_for_scale(args.scale_params)
    extra = {}
    for kv in args.param:
        k, _, v = kv.partition("=")
        try:
            extra[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            extra[k.strip()] = v.strip()
    sizes = []
    for tok in args.sizes.split(","):
        n, _, d = tok.strip().partition(":")
        sizes.append((int(n), int(d) if d else args.dim))
    rows = []
    for m in methods:
        for n, dim in sizes:
            r = run_case(m, n, dim, args.omics_dim, args.steps, args.threads, args.variant, args.timeout,
                         params={**preset.get(m, {}), **extra} or None, bf16=args.bf16)
            rows.append(r)
            print(json.dumps(r), file=sys.stderr)
    df = pd.DataFrame(rows)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out, index=False)
    cols = [c for c in ("method", "n_patches", "dim", "step_s", "infer_s", "peak_mb", "step_mb", "step_gflop",
                        "floor_frac", "error") if c in df]
    print(tabulate(df[cols], headers="keys", tablefmt="github", showindex=False, floatfmt=".3f"))
    return 0
