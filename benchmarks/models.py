"""Saved fold models: each job's best checkpoint, weights only, with what it takes to rebuild it.

``<run>/models/<job hash>.pt`` is a ``torch.save`` of plain data only (tensors, strings), loaded
with ``torch.load(weights_only=True)``, so opening a model file shared by someone else never runs
code: ``state_dict`` (the checkpoint the run selected), ``meta`` (a JSON string: method, variant,
task, fold, seed, hyper-parameters, recipe, feature and omics dimensions, data fingerprint,
threshold, feature standardisation, training stage) and, when the run standardised patch features
(``feature_norm = train_zscore``), the training part's ``feature_mean`` / ``feature_std``.
"""
from __future__ import annotations

import json
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch

FORMAT = "momkd-bench-model/1"


def model_path(run_dir: Path, job_hash: str) -> Path:
    return Path(run_dir) / "models" / f"{job_hash}.pt"


def save_model(run_dir: Path, job: Any, model: torch.nn.Module, *, in_dim: int, omics_dim: int | None,
               threshold: float | None, feature_norm: str, scaler: Any = None) -> dict[str, Any]:
    """Write the checkpoint atomically; returns ``{"file", "bytes"}`` for the job's result."""
    meta = {"format": FORMAT, "job_hash": job.hash, "suite": job.suite, "method": job.method,
            "variant": job.variant, "task": job.task, "fold": int(job.fold), "seed": int(job.seed),
            "hparams": job.hparams, "recipe": job.recipe, "train": job.train, "in_dim": int(in_dim),
            "omics_dim": None if omics_dim is None else int(omics_dim), "n_classes": 2,
            "data_fingerprint": job.data_fingerprint, "protocol_hash": job.protocol_hash,
            "threshold": None if threshold is None else float(threshold), "feature_norm": feature_norm,
            "stage": getattr(model, "stage", None)}  # multi-stage models (TDC) predict from their last stage
    payload: dict[str, Any] = {"meta": json.dumps(meta, default=str),
                               "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    if scaler is not None:
        payload["feature_mean"], payload["feature_std"] = scaler.mean_.cpu(), scaler.std_.cpu()
    path = model_path(run_dir, job.hash)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return {"file": str(path.relative_to(run_dir)), "bytes": path.stat().st_size}


def load_model(path: Path) -> tuple[torch.nn.Module, dict[str, Any], Any]:
    """Rebuild a saved fold model (eval mode); returns (model, meta, the run's fitted
    :class:`~benchmarks.data.normalize.FeatureScaler` or None)."""
    from benchmarks import registry
    from benchmarks.data.normalize import FeatureScaler

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        meta = json.loads(payload["meta"])
    except (OSError, RuntimeError, KeyError, ValueError, pickle.UnpicklingError) as e:
        first = str(e).splitlines()[0] if str(e) else ""
        raise ValueError(f"{path}: not a readable saved model ({type(e).__name__}: {first[:200]}); saved models "
                         "hold tensors and strings only and are never unpickled as code") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: model format {meta.get('format')!r}, this version reads {FORMAT!r}")
    spec = registry.get(meta["method"])
    model = spec.build_model(meta["in_dim"], meta["omics_dim"], meta["n_classes"], meta["hparams"])
    model.load_state_dict(payload["state_dict"], strict=True)
    if meta.get("stage") and hasattr(model, "set_stage"):
        model.set_stage(meta["stage"])
    model.eval()
    scaler = (FeatureScaler(mean_=payload["feature_mean"], std_=payload["feature_std"])
              if "feature_mean" in payload else None)
    return model, meta, scaler


@torch.no_grad()
def attention_of(model: torch.nn.Module, bag: Any) -> Any:
    """(N,) per-patch weights of one slide as a numpy array (the contract's ``attention_weights``),
    or None when the model has none."""
    a = model.attention_weights(bag) if hasattr(model, "attention_weights") else model(bag).attention
    if a is None:
        return None
    a = a.detach().float().reshape(-1).cpu().numpy()
    return a if a.shape[0] == bag.features.shape[0] else None
