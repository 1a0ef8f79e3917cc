"""Use gtpe's parts in your own PyG model -- no config system involved.

A small graph transformer for ZINC: atom embeddings concatenated with an RWSE encoding
(``gtpe.transforms.AddRWSE``, computed once for all graphs with ``gtpe.precompute``), a stack of
``gtpe.nn.GPSLayer`` (GINE message passing + full multi-head attention, Rampasek et al. 2022),
sum pooling and an MLP head, trained with L1 loss (the ZINC MAE).

    python examples/custom_model.py                  # ~1000 training graphs, 2 epochs
    python examples/custom_model.py --limit 10000 --epochs 50

Data comes from ``gtpe.datasets.load_dataset('zinc')`` (PyG's ZINC subset, or the offline mirror
named by ``$GTPE_MIRROR``).
"""
from __future__ import annotations

import argparse
import time

import torch
from torch import Tensor
from torch.nn import BatchNorm1d, Embedding, Linear, ModuleList, ReLU, Sequential
from torch_geometric.loader import DataLoader
from torch_geometric.nn import global_add_pool

import gtpe
from gtpe.datasets import load_dataset
from gtpe.nn import GPSLayer
from gtpe.transforms import AddRWSE


class GraphTransformer(torch.nn.Module):
    """Atom embedding ++ RWSE encoding -> ``num_layers`` x GPSLayer -> sum pool -> MLP."""

    def __init__(self, channels: int = 64, num_layers: int = 3, walk_length: int = 20,
                 pe_dim: int = 16, num_atom_types: int = 28, num_bond_types: int = 4):
        super().__init__()
        self.atom = Embedding(num_atom_types, channels - pe_dim)
        self.pe = Sequential(BatchNorm1d(walk_length), Linear(walk_length, pe_dim))
        self.bond = Embedding(num_bond_types, channels)
        self.layers = ModuleList([
            GPSLayer(channels, local='gine', attn='full', heads=4, norm='batch')
            for _ in range(num_layers)])
        self.head = Sequential(Linear(channels, channels), ReLU(), Linear(channels, 1))

    def forward(self, data) -> Tensor:
        x = torch.cat([self.atom(data.x.view(-1)), self.pe(data.rwse)], dim=-1)  # [N, C]
        edge_attr = self.bond(data.edge_attr.view(-1))                           # [E, C]
        for layer in self.layers:
            x = layer(x, data.edge_index, data.batch, edge_attr)
        return self.head(global_add_pool(x, data.batch)).view(-1)               # [B]


@torch.no_grad()
def mae(model: torch.nn.Module, loader: DataLoader) -> float:
    model.eval()
    err, n = 0.0, 0
    for data in loader:
        err += (model(data) - data.y).abs().sum().item()
        n += data.num_graphs
    return err / n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--limit', type=int, default=1000, help='training graphs (val/test: limit/5)')
    p.add_argument('--epochs', type=int, default=2)
    p.add_argument('--channels', type=int, default=64)
    p.add_argument('--layers', type=int, default=3)
    p.add_argument('--seed', type=int, default=0)
    args = p.parse_args()
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()

    splits = load_dataset('zinc')
    rwse = AddRWSE(walk_length=20)
    sizes = {'train': args.limit, 'val': max(1, args.limit // 5), 'test': max(1, args.limit // 5)}
    data = {}
    for name, n in sizes.items():
        graphs = [splits[name][i] for i in range(min(n, len(splits[name])))]
        data[name] = gtpe.precompute(graphs, rwse, progress=False)  # adds data.rwse [N, 20]

    train_loader = DataLoader(data['train'], batch_size=32, shuffle=True)
    val_loader = DataLoader(data['val'], batch_size=128)
    test_loader = DataLoader(data['test'], batch_size=128)

    model = GraphTransformer(channels=args.channels, num_layers=args.layers)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    print(f'{sum(p.numel() for p in model.parameters()):,} parameters, '
          f'{len(data["train"])} training graphs')
    for epoch in range(1, args.epochs + 1):
        model.train()
        total = 0.0
        for batch in train_loader:
            loss = torch.nn.functional.l1_loss(model(batch), batch.y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * batch.num_graphs
        print(f'epoch {epoch}: train loss {total / len(data["train"]):.4f}  '
              f'val mae {mae(model, val_loader):.4f}')
    print(f'test mae: {mae(model, test_loader):.4f} ({time.perf_counter() - t0:.1f}s)')


if __name__ == '__main__':
    main()
