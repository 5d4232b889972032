"""k-nearest-neighbour patch graphs in O(N log N) with a KD-tree (never an N x N matrix).

Convention follows the official MoMKD code (``np.stack(kneighbors_graph(coords, k).nonzero())``):
a directed edge i -> j for each of patch i's k nearest neighbours j (self excluded), stored as
``edge_index[0] = i`` (source) and ``edge_index[1] = j`` (target), sorted by (i, j). With PyG's
default ``source_to_target`` flow node j aggregates messages from the patches that chose it.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.spatial import cKDTree


def knn_edge_index(coords, k: int = 8) -> torch.Tensor:
    """(2, N*min(k, N-1)) long tensor of directed kNN edges over ``coords`` (N, d)."""
    pts = coords.detach().cpu().numpy() if torch.is_tensor(coords) else np.asarray(coords)
    pts = np.asarray(pts, dtype=np.float64)
    n = pts.shape[0]
    kk = min(k, n - 1)
    if kk <= 0:
        return torch.empty(2, 0, dtype=torch.long)
    tree = cKDTree(pts)
    _, nbr = tree.query(pts, k=kk + 1)  # first hit is (usually) the point itself
    nbr = np.asarray(nbr).reshape(n, kk + 1)
    rows = np.arange(n)[:, None]
    # drop self: keep the kk neighbours that are not i (robust to duplicate coordinates)
    not_self = nbr != rows
    keep = np.zeros_like(nbr, dtype=bool)
    counts = np.cumsum(not_self, axis=1)
    keep[not_self & (counts <= kk)] = True
    dst = nbr[keep].reshape(n, kk)
    dst.sort(axis=1)
    src = np.repeat(np.arange(n), kk)
    return torch.from_numpy(np.stack([src, dst.reshape(-1)])).long()
