"""Malformed graphs and bad arguments give one clear error in every batched transform."""
import numpy as np
import pytest
import torch
from torch_geometric.data import Batch, Data

from gtpe.transforms import (
    AddExpanderEdges,
    AddLapPE,
    AddMagLapPE,
    AddRRWP,
    AddRWSE,
    AddSPD,
    precompute,
)
from gtpe.transforms._validate import check_edge_index, check_int

TRANSFORMS = [AddRWSE(3), AddRRWP(3), AddExpanderEdges(2), AddLapPE(2), AddMagLapPE(2),
              AddSPD(3)]
IDS = ['rwse', 'rrwp', 'expander', 'lap', 'maglap', 'spd']


def ring(n):
    i = torch.arange(n)
    return torch.stack([torch.cat([i, (i + 1) % n]), torch.cat([(i + 1) % n, i])])


@pytest.mark.parametrize('t', TRANSFORMS, ids=IDS)
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64, torch.bool])
def test_non_integer_edge_index_is_rejected(t, dtype):
    # 1.7 was truncated to 1, a bool tensor read as node ids 0/1
    ei = ring(9).to(dtype)
    if dtype.is_floating_point:
        ei = ei + 0.7
    name = type(t).__name__
    with pytest.raises(ValueError, match=rf'{name}: edge_index must be an integer tensor.*'
                                         rf'{str(dtype).replace(".", "[.]")}'):
        t(Data(edge_index=ei, num_nodes=9))


@pytest.mark.parametrize('t', TRANSFORMS, ids=IDS)
@pytest.mark.parametrize('bad', [-1, 9])
def test_out_of_range_node_ids_are_rejected(t, bad):
    ei = ring(9)
    ei[1, 4] = bad
    with pytest.raises(ValueError, match=rf'edge_index has node ids outside \[0, 9\).*'
                                         rf'edge 4: 4 -> {bad}'):
        t(Data(edge_index=ei, num_nodes=9))


@pytest.mark.parametrize('t', TRANSFORMS, ids=IDS)
def test_edge_between_two_graphs_of_a_batch_is_rejected(t):
    b = Batch.from_data_list([Data(edge_index=ring(n), num_nodes=n) for n in (6, 9, 7)])
    b.edge_index = torch.cat([b.edge_index, torch.tensor([[2], [10]])], 1)   # graph 0 -> 1
    e = b.edge_index.size(1) - 1
    with pytest.raises(ValueError, match=rf'{type(t).__name__}: edge_index connects nodes of '
                                         rf'different graphs of the batch \(edge {e}: node 2 '
                                         rf'of graph 0 -> node 10 of graph 1\)'):
        t(b)


@pytest.mark.parametrize('t', TRANSFORMS, ids=IDS)
def test_edge_index_of_wrong_shape_is_rejected(t):
    with pytest.raises(ValueError, match=r'edge_index must have shape \[2, E\], got \[3, 4\]'):
        t(Data(edge_index=torch.zeros(3, 4, dtype=torch.long), num_nodes=5))


def test_batch_whose_ptr_disagrees_with_num_nodes_is_rejected():
    b = Batch.from_data_list([Data(edge_index=ring(n), num_nodes=n) for n in (6, 9)])
    b.num_nodes = 14
    with pytest.raises(ValueError, match=r'AddRWSE: Batch.ptr ends at 15 but the batch has 14'):
        AddRWSE(3)(b)


def test_valid_inputs_still_accepted():
    # every integer dtype, an empty edge set, no edge_index at all, a Batch without ptr
    for dtype in (torch.int8, torch.int16, torch.int32, torch.uint8, torch.long):
        d = AddRWSE(3)(Data(edge_index=ring(5).to(dtype), num_nodes=5))
        assert torch.allclose(d.rwse[:, 1], torch.full((5,), 0.5))
    assert AddRRWP(2)(Data(edge_index=torch.empty(2, 0, dtype=torch.long),
                           num_nodes=3)).rrwp.shape == (3, 2)
    assert AddExpanderEdges(1)(Data(num_nodes=4)).expander_index.shape == (2, 8)
    # the expander does not read edge_weight (not even to check it)
    d = Data(edge_index=ring(4), edge_weight=-torch.ones(8), num_nodes=4)
    assert torch.equal(AddExpanderEdges(1)(d.clone()).expander_index,
                       AddExpanderEdges(1)(Data(edge_index=ring(4), num_nodes=4)).expander_index)
    ei = check_edge_index(Data(edge_index=ring(4).int(), num_nodes=4), 'X')
    assert ei.dtype == torch.long and torch.equal(ei, ring(4))


def test_precompute_names_the_dataset_graph_with_a_bad_node_id():
    # collated, graph 1's id 7 (>= its 5 nodes) would silently become a node of graph 2
    ds = [Data(edge_index=ring(n), num_nodes=n) for n in (4, 5, 6)]
    ds[1].edge_index[0, 3] = 7
    for t in TRANSFORMS:
        with pytest.raises(ValueError, match=r'precompute: graph 1: edge_index has node ids '
                                             r'outside \[0, 5\)'):
            precompute(ds, [t], progress=False)
    ds[1].edge_index = ring(5).float()
    with pytest.raises(ValueError, match=r'precompute: graph 1: edge_index must be an integer'):
        precompute(ds, [AddRWSE(3)], progress=False)


# ----------------------------------------------------------------------------- arguments
@pytest.mark.parametrize('make,arg', [
    (lambda v: AddRWSE(v), 'walk_length'),
    (lambda v: AddRWSE(3, num_walks=v), 'num_walks'),
    (lambda v: AddRRWP(v), 'walk_length'),
    (lambda v: AddSPD(v), 'max_dist'),
    (lambda v: AddExpanderEdges(v), 'degree'),
    (lambda v: AddExpanderEdges(2, max_retries=v), 'max_retries'),
])
@pytest.mark.parametrize('value', [True, False, 2.0, 2.5, '3', None, 0, -1])
def test_counts_must_be_positive_integers(make, arg, value):
    with pytest.raises(ValueError, match=rf'{arg} must be an integer >= 1, got {value!r}'):
        make(value)


def test_integer_like_arguments_are_accepted():
    assert AddRWSE(np.int64(4)).walk_length == 4
    assert type(AddRRWP(np.int32(3)).walk_length) is int
    assert AddExpanderEdges(np.int64(2), seed=np.int64(5)).seed == 5


def test_seed_must_be_an_integer():
    for bad in (None, True, 1.5):
        with pytest.raises(ValueError, match=rf'AddExpanderEdges: seed must be an integer'
                                             rf'.*got {bad!r}'):
            AddExpanderEdges(2, seed=bad)
        with pytest.raises(ValueError, match=rf'AddRWSE: seed must be an integer.*got {bad!r}'):
            AddRWSE(3, seed=bad)
    for make in (lambda v: AddRWSE(3, seed=v), lambda v: AddExpanderEdges(2, seed=v)):
        for bad in (-1, 2**64):
            with pytest.raises(ValueError, match=r'seed must be an integer in \[0, 2\*\*64\)'):
                make(bad)
        assert make(2**64 - 1).seed == 2**64 - 1


def test_other_numeric_arguments():
    with pytest.raises(ValueError, match=r'dense_max_nodes must be an integer >= 0, got 1.5'):
        AddRRWP(3, dense_max_nodes=1.5)
    with pytest.raises(ValueError, match=r'exact_max_nodes must be an integer >= 0'):
        AddRWSE(3, exact_max_nodes=-2)
    with pytest.raises(ValueError, match=r'dense_check_nodes must be an integer >= 0'):
        AddExpanderEdges(2, dense_check_nodes=True)
    for bad in (-0.1, float('nan'), float('inf'), True, 'x'):
        with pytest.raises(ValueError, match=r'AddExpanderEdges: tol must be a finite number '
                                             r'>= 0'):
            AddExpanderEdges(2, tol=bad)
    assert AddRRWP(3, dense_max_nodes=0).dense_max_nodes == 0    # 0: always the sparse path


def test_check_int_helper():
    assert check_int(np.int16(7), 'k', 'X') == 7
    with pytest.raises(ValueError, match=r"X: k must be an integer >= 2, got 1"):
        check_int(1, 'k', 'X', minimum=2)
