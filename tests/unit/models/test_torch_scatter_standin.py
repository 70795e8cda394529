"""The plain-torch torch_scatter functions that fairchem-core 1.0.0 needs (no fairchem here)."""

from __future__ import annotations

import pytest
import torch

from otfparsl.models._torch_scatter import scatter, segment_coo, segment_csr


def test_scatter_reductions_against_a_python_loop():
    gen = torch.Generator().manual_seed(0)
    src = torch.randn(7, 3, generator=gen, dtype=torch.float64)
    index = torch.tensor([0, 2, 2, 4, 0, 2, 4])
    for reduce, fn in [("sum", lambda v: v.sum(0)), ("mean", lambda v: v.mean(0)),
                       ("max", lambda v: v.max(0).values), ("min", lambda v: v.min(0).values),
                       ("mul", lambda v: v.prod(0))]:  # fmt: skip
        out = scatter(src, index, dim=0, dim_size=6, reduce=reduce)
        for k in range(6):
            rows = src[index == k]
            expected = fn(rows) if len(rows) else torch.zeros(3, dtype=src.dtype)
            assert torch.allclose(out[k], expected), (reduce, k)
    # along the last dimension, as torch_scatter's default dim=-1
    assert torch.equal(scatter(src.T, index, dim_size=6), scatter(src, index, 0, dim_size=6).T)


def test_segment_coo_and_csr_count_neighbours_as_fairchem_does():
    index = torch.tensor([0, 0, 0, 1, 3, 3])  # sorted centre atoms of six edges
    ones = index.new_ones(1).expand_as(index)
    per_atom = segment_coo(ones, index, dim_size=5)
    assert per_atom.tolist() == [3, 1, 0, 2, 0]
    indptr = torch.tensor([0, 2, 2, 5])  # atoms of three structures: 2, 0 and 3
    assert segment_csr(per_atom, indptr).tolist() == [4, 0, 2]
    assert segment_csr(torch.arange(6.0).view(6, 1)[1:], torch.tensor([1, 3, 5]) - 1,
                       reduce="max").view(-1).tolist() == [2.0, 4.0]


def test_unsupported_forms_say_so():
    with pytest.raises(NotImplementedError, match="1-D index"):
        scatter(torch.ones(2, 2), torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="reduce must be one of"):
        segment_coo(torch.ones(2), torch.zeros(2, dtype=torch.long), reduce="median")
