"""GPS on ogbg-molhiv with RWSE: a standalone PyG + OGB script, no config system.

GPS (Rampasek et al., NeurIPS 2022) predicts whether a molecule inhibits HIV replication (41k
molecules, OGB scaffold split, ROC-AUC from OGB's ``Evaluator``, higher is better). Atoms and
bonds go through OGB's ``AtomEncoder`` / ``BondEncoder``; the atom embedding is concatenated with
the RWSE encoding (``diag(P^t)``, t = 1..20, ``P = D^-1 A``) that ``gtpe.transforms.AddRWSE``
computes once. Each ``gtpe.nn.GPSLayer`` adds GINE message passing and full multi-head
attention; mean pooling, an MLP head, BCE-with-logits loss, AdamW with linear warmup then cosine
decay. Sizes are those of ``configs/ogbg-molhiv/gps+rwse.yaml`` (64 channels, 6 layers, 4 heads,
dropout 0.05, attention dropout 0.5, batch 32, lr 1e-4, 100 epochs).

    python examples/ogbg_molhiv.py --epochs 1 --limit 64          # quick look, seconds
    python examples/ogbg_molhiv.py --threads 1                    # full run, 100 epochs

Here (2 shared CPU cores, --threads 1) an epoch over the 33k training graphs, with the val and
test evaluation, takes about 110 s, so the default 100-epoch run takes about 3 h (not run to the
end here); one epoch reaches test ROC-AUC 0.716 (seed 0). The first run builds the dataset from
SMILES (about a minute) and its RWSE (~20 s); both are cached.
Same budget, example vs config (--limit 2000 --epochs 2, --threads 1), test ROC-AUC for seeds
0/1/2: 0.576/0.734/0.668 vs 0.652/0.638/0.676 (means 0.659 vs 0.655). With 2000 graphs (68
positives) the validation ROC-AUC stays near 0.55, so single runs are noise; the two models
compute the same function (checked by tests/test_examples.py). The config run:

    gtpe train configs/ogbg-molhiv/gps+rwse.yaml --set dataset.limit=2000 --set train.epochs=2 --threads 1
"""
from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F
from ogb.graphproppred import Evaluator
from ogb.graphproppred.mol_encoder import AtomEncoder, BondEncoder
from torch.nn import Linear, ModuleList, ReLU, Sequential
from torch_geometric.loader import DataLoader
from torch_geometric.nn import global_mean_pool

import gtpe
from gtpe.datasets import data_root, load_dataset
from gtpe.nn import GPSLayer, RWSEEncoder
from gtpe.transforms import AddRWSE

TRANSFORMS = [AddRWSE(walk_length=20)]  # computed once per graph: data.rwse [N, 20]


class GPS(torch.nn.Module):
    """[AtomEncoder || RWSE] -> num_layers x GPSLayer(GINE + attention) -> mean -> MLP."""

    def __init__(self, channels: int, num_layers: int, heads: int, dropout: float,
                 attn_dropout: float, pe_dim: int = 16):
        super().__init__()
        self.atom = AtomEncoder(channels - pe_dim)            # x: long [N, 9]
        self.rwse = RWSEEncoder(walk_length=20, dim=pe_dim)   # BatchNorm + Linear
        self.bond = BondEncoder(channels)                     # edge_attr: long [E, 3]
        self.layers = ModuleList([
            GPSLayer(channels, local='gine', attn='full', heads=heads, dropout=dropout,
                     attn_dropout=attn_dropout, norm='batch') for _ in range(num_layers)])
        self.head = Sequential(Linear(channels, channels), ReLU(), Linear(channels, 1))

    def forward(self, data) -> torch.Tensor:
        x = torch.cat([self.atom(data.x), self.rwse(data.rwse)], dim=-1)      # [N, C]
        edge_attr = self.bond(data.edge_attr)                                  # [E, C]
        state = {}  # shared by the layers of one forward (attention's padding plan, checks)
        for layer in self.layers:
            x = layer(x, data.edge_index, data.batch, edge_attr, state=state,
                      num_graphs=data.num_graphs)
        return self.head(global_mean_pool(x, data.batch))                     # [B, 1] logits


def load_splits(name: str, transforms: list, limit: int | None) -> dict:
    """The three splits with the PEs computed once and cached under the data root. With a
    limit, only the first ``limit`` graphs of each split are kept (and get PEs)."""
    if limit is None:
        return load_dataset(name, pre_transform=transforms)
    splits = load_dataset(name)
    return {split: gtpe.precompute(ds[:limit], transforms, cache_dir=data_root() / name / 'pe')
            for split, ds in splits.items()}


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: DataLoader, device: torch.device) -> float:
    model.eval()
    y_true, y_pred = [], []
    for batch in loader:
        batch = batch.to(device)
        y_pred.append(model(batch).cpu())
        y_true.append(batch.y.view(-1, 1).cpu())
    evaluator = Evaluator('ogbg-molhiv')  # the official metric: ROC-AUC
    return evaluator.eval({'y_true': torch.cat(y_true), 'y_pred': torch.cat(y_pred)})['rocauc']


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f'expected a positive integer, got {value}')
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--epochs', type=positive, default=100)
    p.add_argument('--limit', type=positive, help='keep the first N graphs of each split')
    p.add_argument('--device', default='auto', help="'auto' (cuda if available), 'cpu', 'cuda'")
    p.add_argument('--threads', type=positive, help='CPU threads for torch')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--channels', type=positive, default=64)
    p.add_argument('--layers', type=positive, default=6)
    p.add_argument('--heads', type=positive, default=4)
    p.add_argument('--dropout', type=float, default=0.05)
    p.add_argument('--attn-dropout', type=float, default=0.5)
    p.add_argument('--batch-size', type=positive, default=32)
    p.add_argument('--lr', type=float, default=1e-4)
    p.add_argument('--weight-decay', type=float, default=1e-5)
    p.add_argument('--warmup-epochs', type=int, default=5)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(('cuda' if torch.cuda.is_available() else 'cpu')
                          if args.device == 'auto' else args.device)
    torch.manual_seed(args.seed)

    splits = load_splits('ogbg-molhiv', TRANSFORMS, args.limit)
    print(' / '.join(f'{len(splits[s])} {s}' for s in ('train', 'val', 'test')) + ' graphs')
    train_loader = DataLoader(splits['train'], batch_size=args.batch_size, shuffle=True)
    val_loader = DataLoader(splits['val'], batch_size=args.batch_size)
    test_loader = DataLoader(splits['test'], batch_size=args.batch_size)

    model = GPS(args.channels, args.layers, args.heads, args.dropout, args.attn_dropout).to(device)
    print(f'{sum(p.numel() for p in model.parameters()):,} parameters on {device} '
          f'(torch threads: {torch.get_num_threads()})')
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    warmup = min(args.warmup_epochs, args.epochs // 5)  # as `gtpe train`: at most 1/5 of the run

    def lr_factor(epoch: int) -> float:  # linear warmup, then half a cosine down to 0
        if epoch < warmup:
            return (epoch + 1) / (warmup + 1)
        return 0.5 * (1 + math.cos(math.pi * (epoch - warmup) / max(1, args.epochs - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)

    best = (-math.inf, math.nan, 0)  # (val ROC-AUC, test ROC-AUC, epoch)
    for epoch in range(1, args.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        total = 0.0
        for batch in train_loader:
            batch = batch.to(device)
            loss = F.binary_cross_entropy_with_logits(model(batch), batch.y.view(-1, 1).float())
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            total += loss.item() * batch.num_graphs
        scheduler.step()
        val, test = evaluate(model, val_loader, device), evaluate(model, test_loader, device)
        if val > best[0]:
            best = (val, test, epoch)
        print(f'epoch {epoch:3d}/{args.epochs}  loss {total / len(splits["train"]):.4f}  '
              f'val rocauc {val:.4f}  test rocauc {test:.4f}  {time.perf_counter() - t0:.1f}s',
              flush=True)
    print(f'test rocauc: {best[1]:.4f} (best val {best[0]:.4f} at epoch {best[2]})')


if __name__ == '__main__':
    main()
