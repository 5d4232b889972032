"""``Bag``: one slide as the models see it (DESIGN.md, "Core objects")."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from momkd.graph import knn_edge_index


@dataclass
class Bag:
    """One slide: patch features, optional coordinates, labels per task, optional omics.

    ``label`` is the class of the task currently being trained/evaluated (set by
    :meth:`for_task`); ``labels`` keeps every task's value (``None`` when unlabelled).
    The kNN graph is built lazily from ``coords`` with a KD-tree and cached on the bag.
    """

    slide_id: str
    case_id: str
    features: torch.Tensor  # (N, D)
    coords: torch.Tensor | None = None  # (N, 2)
    labels: dict[str, int | None] = field(default_factory=dict)
    omics: torch.Tensor | None = None  # (G,)
    site: str = ""
    label: int | None = None
    knn_k: int = 8
    _edge_index: torch.Tensor | None = field(default=None, repr=False)

    @property
    def n_patches(self) -> int:
        return int(self.features.shape[0])

    @property
    def in_dim(self) -> int:
        return int(self.features.shape[1])

    @property
    def edge_index(self) -> torch.Tensor | None:
        """(2, N*k) directed kNN edges on ``coords``, built once and cached; ``None`` without coords."""
        if self._edge_index is None and self.coords is not None:
            self._edge_index = knn_edge_index(self.coords, self.knn_k).to(self.features.device)
        return self._edge_index

    @edge_index.setter
    def edge_index(self, value: torch.Tensor | None) -> None:
        self._edge_index = value

    def for_task(self, task: str | None, with_omics: bool = True) -> "Bag":
        """A shallow view with ``label`` set to this task's class (shares tensors and graph cache)."""
        label = None if task is None else self.labels.get(task)
        view = dataclasses.replace(self, label=label, omics=self.omics if with_omics else None)
        if self._edge_index is None and self.coords is not None:
            # share the graph cache with the parent so it is built once per slide
            view._edge_index = self.edge_index
        return view

    def with_features(self, features: torch.Tensor) -> "Bag":
        """A view with other features of the same patches (a float32 compute copy, standardised
        features); the kNN graph is built once on this bag and shared with the view."""
        if self._edge_index is None and self.coords is not None:
            self.edge_index  # noqa: B018 - builds and caches the graph here, so the view shares it
        return dataclasses.replace(self, features=features)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "Bag":
        def mv(t):
            if t is None:
                return None
            t = t.to(device)
            return t.to(dtype) if dtype is not None and t.is_floating_point() else t

        return dataclasses.replace(self, features=mv(self.features), coords=self.coords,
                                   omics=mv(self.omics),
                                   _edge_index=None if self._edge_index is None else self._edge_index.to(device))
