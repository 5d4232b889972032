"""Baselines: slide-only MIL (ABMIL, DSMIL, TransMIL, DTFD-MIL, WiKG) and omics distillation
(TDC, MKD, G-HANet). Each module holds one method: its config dataclass, its nn.Module, a
``build`` factory for the registry and, where official weights exist, ``from_official``.
This package never imports ``benchmarks``."""
