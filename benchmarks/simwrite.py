"""``python -m benchmarks simulate``: write a simulated cohort as real-data files.

TRIDENT-style ``features/<slide_id>.h5`` (float32 ``features`` and ``coords``), ``manifest.csv``
and ``omics.csv`` (:func:`benchmarks.data.simulated.write_h5`), so the real-data path
(``run --data DIR``) can be rehearsed at any size before the real features exist: ``--patches
1500:10000`` at the paper preset writes ~30 GB, a cohort larger than this 24 GB machine's RAM
(issue #19). Slides are generated one at a time; an interrupted write resumes.
"""
from __future__ import annotations

import sys
from pathlib import Path


def add_arguments(p) -> None:
    p.add_argument("--scale", choices=("tiny", "small", "paper"), default="paper")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--patches", default=None,
                   help="MIN:MAX patches per slide (log-uniform), e.g. 1500:10000 (default: the preset's)")
    p.add_argument("--external", action="store_true", help="the second site's cohort instead")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--no-progress", action="store_true")


def main(args) -> int:
    from benchmarks.data import simulated as sim

    over = {}
    if args.patches:
        try:
            lo, hi = (int(x) for x in args.patches.split(":"))
        except ValueError:
            raise ValueError(f"--patches: {args.patches!r} is not MIN:MAX (e.g. 1500:10000)") from None
        if not 1 <= lo <= hi:
            raise ValueError(f"--patches: need 1 <= MIN <= MAX, got {lo}:{hi}")
        over = {"n_patches_min": lo, "n_patches_max": hi}
    cfg = sim.SimConfig.preset(args.scale, lazy=True, **over)  # one slide in memory at a time
    cohort = sim.simulate_external(cfg, seed=args.seed) if args.external else sim.simulate(cfg, seed=args.seed)
    n = cohort.source.slides["n_patches"]
    gb = int(n.sum()) * cfg.feature_dim * 4 / 2**30
    print(f"{len(n)} slides, {int(n.sum()):,} patches x {cfg.feature_dim}-d: {gb:.1f} GB of float32 features "
          f"-> {args.out}", file=sys.stderr)
    out = sim.write_h5(cohort, Path(args.out), progress=not args.no_progress)
    print(f"wrote {out}; run it with `python -m benchmarks run --data {out}`", file=sys.stderr)
    return 0
