"""Every encoding on a CUDA Batch equals the CPU result (runs only where CUDA is available)."""
import pytest
import torch
from torch_geometric.data import Batch, Data

from gtpe.transforms import AddExpanderEdges, AddMagLapPE, AddRRWP, AddRWSE

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')


def mixed_batch():
    gen = torch.Generator().manual_seed(0)
    graphs = [Data(edge_index=torch.randint(0, n, (2, 2 * n), generator=gen), num_nodes=n)
              for n in [1, 2, 5, 9, 17, 30, 64, 65, 130, 300]]
    graphs.append(Data(edge_index=torch.zeros(2, 0, dtype=torch.long), num_nodes=4))
    return Batch.from_data_list(graphs)


def test_rwse_cuda_matches_cpu():
    b = mixed_batch()
    cpu, gpu = AddRWSE(12)(b.clone()), AddRWSE(12)(b.clone().to('cuda'))
    assert gpu.rwse.is_cuda
    torch.testing.assert_close(gpu.rwse.cpu(), cpu.rwse, atol=1e-6, rtol=0)


def test_rrwp_cuda_matches_cpu():
    b = mixed_batch()
    cpu, gpu = AddRRWP(8)(b.clone()), AddRRWP(8)(b.clone().to('cuda'))
    assert gpu.rrwp_val.is_cuda
    assert torch.equal(gpu.rrwp_index.cpu(), cpu.rrwp_index)
    torch.testing.assert_close(gpu.rrwp_val.cpu(), cpu.rrwp_val, atol=1e-6, rtol=0)
    torch.testing.assert_close(gpu.rrwp.cpu(), cpu.rrwp, atol=1e-6, rtol=0)


def test_maglap_cuda_eigenvalues_match_cpu():
    b = mixed_batch()
    cpu, gpu = AddMagLapPE(k=4)(b.clone()), AddMagLapPE(k=4)(b.clone().to('cuda'))
    assert gpu.maglap_pe.is_cuda
    torch.testing.assert_close(gpu.maglap_eigval.cpu(), cpu.maglap_eigval, atol=1e-5, rtol=0)
    assert torch.isfinite(gpu.maglap_pe).all()


def test_expander_edges_on_cuda_stay_inside_their_graphs():
    b = mixed_batch().to('cuda')
    out = AddExpanderEdges(degree=3)(b)
    ei = out.expander_index
    assert ei.is_cuda and ei.numel() > 0
    assert torch.equal(out.batch[ei[0]], out.batch[ei[1]])
