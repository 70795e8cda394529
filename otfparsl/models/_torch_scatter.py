"""The three torch_scatter functions fairchem-core 1.0.0 imports, in plain torch.

fairchem-core 1.0.0 (the last release that contains EquiformerV2 and installs beside
torch 2.13 / numpy 2) does ``from torch_scatter import scatter, segment_coo, segment_csr``
at import time. torch_scatter has only a source distribution on PyPI: building it needs a C++
compiler and took more than 10 minutes of a 2-core machine (measured while writing this adapter;
a build in CI on every run is not reasonable), and its compiled extension must match the exact
torch build. EquiformerV2 uses these functions only to count neighbours while building the
graph (integer sums), never in the differentiable part of the model, so the plain-torch versions
below are exact. :func:`install` registers them as the module ``torch_scatter`` when the real
package is absent; a real torch_scatter, when installed, is always preferred.

Only the call forms fairchem-core uses are supported: ``reduce`` in sum/add/mean/min/max/mul,
a 1-D ``index`` (``scatter``, ``segment_coo``) and a 1-D ``indptr`` (``segment_csr``).
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import types

import torch

logger = logging.getLogger(__name__)

_REDUCE = {"sum": "sum", "add": "sum", "mean": "mean", "min": "amin", "max": "amax",
           "mul": "prod"}  # fmt: skip


def _check(reduce: str, index: torch.Tensor, what: str) -> str:
    if reduce not in _REDUCE:
        raise ValueError(f"reduce must be one of {sorted(_REDUCE)}; got {reduce!r}")
    if index.dim() != 1:
        raise NotImplementedError(
            f"this torch_scatter stand-in supports a 1-D {what} only; got shape "
            f"{tuple(index.shape)}. Install the real torch_scatter for other forms."
        )
    return _REDUCE[reduce]


def scatter(src: torch.Tensor, index: torch.Tensor, dim: int = -1,
            out: torch.Tensor | None = None, dim_size: int | None = None,
            reduce: str = "sum") -> torch.Tensor:
    """Reduce the slices of ``src`` along ``dim`` into the positions given by ``index``.

    Parameters
    ----------
    src
        Values, any shape.
    index
        ``(src.shape[dim],)`` long, target position of each slice.
    dim
        Dimension of ``src`` that ``index`` runs along.
    out
        Not supported (must be None).
    dim_size
        Size of the output along ``dim``; ``index.max() + 1`` when None.
    reduce
        ``"sum"`` (``"add"``), ``"mean"``, ``"min"``, ``"max"`` or ``"mul"``. Positions that
        receive nothing are 0, as in torch_scatter.

    Returns
    -------
    torch.Tensor
        ``src``'s shape with ``dim`` replaced by ``dim_size``.
    """
    op = _check(reduce, index, "index")
    if out is not None:
        raise NotImplementedError("this torch_scatter stand-in does not take 'out'")
    dim = dim + src.dim() if dim < 0 else dim
    if dim_size is None:
        dim_size = int(index.max()) + 1 if index.numel() else 0
    shape = [1] * src.dim()
    shape[dim] = -1
    expanded = index.view(shape).expand_as(src)
    size = list(src.shape)
    size[dim] = dim_size
    result = src.new_zeros(size)
    if op == "sum":
        return result.scatter_add_(dim, expanded, src)
    result = result.scatter_reduce(dim, expanded, src, reduce=op, include_self=False)
    return result


def segment_coo(src: torch.Tensor, index: torch.Tensor, out: torch.Tensor | None = None,
                dim_size: int | None = None, reduce: str = "sum") -> torch.Tensor:
    """Reduce ``src`` along its first dimension over the groups of a sorted 1-D ``index``.

    Equal to :func:`scatter` with ``dim=0`` (torch_scatter's ``segment_coo`` is a faster
    kernel for sorted indices; the result is the same).
    """
    _check(reduce, index, "index")
    return scatter(src, index, dim=0, out=out, dim_size=dim_size, reduce=reduce)


def segment_csr(src: torch.Tensor, indptr: torch.Tensor, out: torch.Tensor | None = None,
                reduce: str = "sum") -> torch.Tensor:
    """Reduce ``src`` along its first dimension over the segments ``indptr[k]:indptr[k+1]``.

    Parameters
    ----------
    src
        Values; the first dimension is segmented.
    indptr
        ``(n_segments + 1,)`` long, non-decreasing segment boundaries.

    Returns
    -------
    torch.Tensor
        ``(n_segments, *src.shape[1:])``; empty segments give 0.
    """
    _check(reduce, indptr, "indptr")
    counts = indptr[1:] - indptr[:-1]
    segment = torch.repeat_interleave(torch.arange(counts.numel(), device=src.device), counts)
    start = int(indptr[0]) if indptr.numel() else 0
    return scatter(src.narrow(0, start, segment.numel()), segment, dim=0, out=out,
                   dim_size=counts.numel(), reduce=reduce)


def install() -> bool:
    """Register this module as ``torch_scatter`` unless the real package is installed.

    torch_geometric is imported first, so it records that torch_scatter is absent and keeps
    its own pure-torch code paths (it would otherwise route its scatter calls here).

    Returns
    -------
    bool
        True when the stand-in was registered (now or earlier), False when the real
        torch_scatter is used.
    """
    existing = sys.modules.get("torch_scatter")
    if existing is not None:
        return bool(getattr(existing, "__otfparsl_stand_in__", False))
    if importlib.util.find_spec("torch_scatter") is not None:
        return False
    import torch_geometric.typing  # noqa: F401  (before the stand-in exists, see above)

    module = types.ModuleType("torch_scatter")
    module.__doc__ = __doc__
    module.scatter = scatter
    module.segment_coo = segment_coo
    module.segment_csr = segment_csr
    module.__otfparsl_stand_in__ = True
    sys.modules["torch_scatter"] = module
    logger.info("torch_scatter is not installed: using otfparsl's plain-torch stand-in")
    return True
