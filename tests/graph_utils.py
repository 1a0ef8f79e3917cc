"""Small graph helpers shared by the encoding tests."""
import torch
from torch_geometric.data import Data


def permuted(d: Data, perm: torch.Tensor) -> Data:
    """``d`` relabelled so that node ``i`` of the result is node ``perm[i]`` of ``d``; the edge
    order is shuffled too and ``edge_weight`` (if any) follows its edges."""
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(perm.numel())
    order = torch.randperm(d.edge_index.size(1), generator=torch.Generator().manual_seed(1))
    out = Data(edge_index=inv[d.edge_index][:, order], num_nodes=d.num_nodes)
    if getattr(d, 'edge_weight', None) is not None:
        out.edge_weight = d.edge_weight[order]
    return out
