"""Input problems of the data layer: ``DataProblem`` (one finding) and ``DataError`` (all of them).

Readers and checks never stop at the first problem they can recover from: they collect
``DataProblem`` records, and :func:`benchmarks.data.validate.raise_if_problems` either raises one
``DataError`` listing every problem (the default) or hands the slide-level ones back so the caller
can drop those slides and record which (``--skip-bad-slides``). STYLE.md rule 7: each message names
the slide, the file, what was found and the fix, e.g.::

    slide TCGA-A1-A0SB (feats/A1.h5): 'features' has shape (0, 1024); need >=1 patch. Re-extract or drop it from the manifest.
"""
from __future__ import annotations

from dataclasses import dataclass
from os import PathLike
from typing import Iterable

#: every problem kind, with what it means
KINDS: dict[str, str] = {
    "missing_file": "a feature/manifest/omics file (or folder) does not exist",
    "unreadable": "a file exists but cannot be read (not HDF5, unsafe pickle, unknown suffix)",
    "wrong_key": "the feature array is not under any key the reader knows",
    "bad_shape": "the feature array is not (N, D) (e.g. a slide-level (D,) embedding)",
    "nan_inf": "NaN or Inf values in features or omics",
    "empty_bag": "a slide with zero patches",
    "dim_mismatch": "a slide's feature dimension differs from the rest of the cohort",
    "bad_coords": "coords are not (N, 2) for the N patches, or not finite",
    "duplicate_slide": "a slide_id appears more than once in the manifest",
    "duplicate_case": "a case_id appears more than once in the omics table",
    "unknown_label": "a label value that the task's label map does not know",
    "missing_omics": "omics are needed at training but missing for a case",
    "missing_clinical": "a slide's case has no row in the clinical table (prepare)",
    "missing_column": "a required manifest/omics column is absent",
    "bad_value": "an empty id, or a non-numeric value where numbers are needed",
    "bad_id": "a slide id that is not a plain file name (folders, '..', an absolute path, too long)",
    "conflicting_label": "one patient's slides carry different labels for one task",
    "empty_table": "a manifest or table with a header but no rows",
}


@dataclass(frozen=True)
class DataProblem:
    """One problem with the input data.

    ``message`` is the complete, self-contained line shown to the user (it already names the slide
    and the file); ``slide_id`` is ``None`` for cohort-level problems (a missing column, a broken
    omics table), which cannot be fixed by dropping one slide.
    """

    slide_id: str | None
    path: str | None
    kind: str
    message: str

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown DataProblem kind {self.kind!r}; kinds are {sorted(KINDS)}")

    def __str__(self) -> str:
        return self.message


def where(slide_id: str | None, path: str | PathLike | None) -> str:
    """The message prefix: ``slide S (file)``, ``slide S``, ``file`` or ``input``."""
    p = None if path is None else str(path)
    if slide_id is not None:
        return f"slide {slide_id} ({p})" if p else f"slide {slide_id}"
    return p if p else "input"


def problem(kind: str, slide_id: str | None, path: str | PathLike | None, detail: str) -> DataProblem:
    """Build a ``DataProblem`` whose message is ``"<where>: <detail>"``."""
    return DataProblem(slide_id=slide_id, path=None if path is None else str(path), kind=kind,
                       message=f"{where(slide_id, path)}: {detail}")


class DataError(ValueError):
    """Bad input data. ``str(err)`` lists every problem, one per line; ``err.problems`` holds them."""

    def __init__(self, problems: DataProblem | Iterable[DataProblem], header: str | None = None) -> None:
        self.problems: list[DataProblem] = [problems] if isinstance(problems, DataProblem) else list(problems)
        if not self.problems:
            raise ValueError("DataError needs at least one DataProblem")
        self.header = header
        lines = [p.message for p in self.problems]
        if header is None and len(lines) > 1:
            header = f"{len(lines)} problems with the input data:"
        super().__init__("\n".join(([header] if header else []) + lines))

    @property
    def kinds(self) -> set[str]:
        return {p.kind for p in self.problems}

    def __reduce__(self):  # picklable across worker processes (args hold only the text)
        return (type(self), (self.problems, self.header))
