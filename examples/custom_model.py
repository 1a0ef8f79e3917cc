"""Use gtpe's parts in your own PyG model -- no config system involved.

A small graph transformer for ZINC, the README's "own PyG model" snippet grown into a script:
atom embeddings concatenated with an RWSE and a LapPE encoding (``gtpe.transforms.AddRWSE`` and
``AddLapPE``, precomputed once for all graphs by ``load_dataset(pre_transform=...)`` and cached;
encoded by ``gtpe.nn.RWSEEncoder`` / ``LapPEEncoder``), bond embeddings as edge features, a stack
of ``gtpe.nn.GPSLayer`` (GINE message passing + full multi-head attention, Rampasek et al. 2022),
sum pooling and an MLP head, trained with L1 loss (the ZINC MAE).

    python examples/custom_model.py                  # ~1000 training graphs, 2 epochs
    python examples/custom_model.py --limit 10000 --epochs 50
    python examples/custom_model.py --limit 64 --epochs 1     # a smoke run

Data comes from ``gtpe.datasets.load_dataset('zinc')`` (PyG's ZINC subset, or the offline mirror
named by ``$GTPE_MIRROR``).
"""
from __future__ import annotations

import argparse
import time

import torch
from torch import Tensor
from torch.nn import Embedding, Linear, ModuleList, ReLU, Sequential
from torch_geometric.loader import DataLoader
from torch_geometric.nn import global_add_pool

from gtpe.datasets import load_dataset
from gtpe.nn import GPSLayer, LapPEEncoder, RWSEEncoder
from gtpe.transforms import AddLapPE, AddRWSE

NUM_ATOM_TYPES, NUM_BOND_TYPES = 28, 4  # ZINC: x [N, 1] long atom types, edge_attr [E] long bond types


class GraphTransformer(torch.nn.Module):
    """Atom embedding ++ RWSE ++ LapPE -> ``num_layers`` x GPSLayer -> sum pool -> MLP
    (``pe_dim`` features per encoding, default ``channels // 4``; the atoms get the rest)."""

    def __init__(self, channels: int = 64, num_layers: int = 3, walk_length: int = 20, k: int = 8,
                 pe_dim: int | None = None):
        super().__init__()
        pe_dim = pe_dim if pe_dim is not None else channels // 4  # 64 -> 32 atom + 16 + 16
        self.atom = Embedding(NUM_ATOM_TYPES, channels - 2 * pe_dim)
        self.bond = Embedding(NUM_BOND_TYPES, channels)
        self.rwse = RWSEEncoder(walk_length=walk_length, dim=pe_dim)  # data.rwse [N, walk_length]
        self.lap = LapPEEncoder(k=k, dim=pe_dim)                      # data.lap_pe, lap_eigval [N, k]
        self.layers = ModuleList([
            GPSLayer(channels, local='gine', attn='full', heads=4, norm='batch')
            for _ in range(num_layers)])
        self.head = Sequential(Linear(channels, channels), ReLU(), Linear(channels, 1))

    def forward(self, data) -> Tensor:
        x = torch.cat([self.atom(data.x.view(-1)), self.rwse(data.rwse),
                       self.lap(data.lap_pe, data.lap_eigval, data.batch, data.num_graphs)],
                      dim=-1)                                                   # [N, C]
        edge_attr = self.bond(data.edge_attr.view(-1))                          # [E, C]
        for layer in self.layers:
            x = layer(x, data.edge_index, data.batch, edge_attr)
        return self.head(global_add_pool(x, data.batch)).view(-1)              # [B]


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
    if args.limit < 1 or args.epochs < 0 or args.layers < 1:
        p.error(f'--limit ({args.limit}) and --layers ({args.layers}) must be >= 1, --epochs >= 0')
    if args.channels < 4 or args.channels % 4:
        p.error(f'--channels must be a positive multiple of 4 (the attention heads), got {args.channels}')
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()

    # RWSE and LapPE of all graphs, computed in batches and cached (later runs load them)
    splits = load_dataset('zinc', pre_transform=[AddRWSE(walk_length=20), AddLapPE(k=8)])
    sizes = {'train': args.limit, 'val': max(1, args.limit // 5), 'test': max(1, args.limit // 5)}
    data = {name: splits[name][:min(n, len(splits[name]))] for name, n in sizes.items()}

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
