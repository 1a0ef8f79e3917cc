"""Graphormer attention on ZINC batches: gtpe's FullAttention with the sparse spatial bias
against a straightforward padded ``scaled_dot_product_attention`` with the same dense bias.

    python benchmarks/graphormer_bench.py [--steps N] [--rounds R] [--batches B] [--max-dist D]

One attention layer (64 channels, 4 heads, batch 32 ZINC graphs, ``AddSPD(max_dist=D)``
precomputed), forward + backward of ``(out * w).sum()`` including the spatial-bias embedding
lookup, on pre-collated batches.  Rows:

* ``gtpe kernel`` -- :class:`gtpe.nn.attention.graphormer.GraphormerAttention` with
  ``strategy='auto'`` (on CPU: the C kernel, bias scattered into its score layout);
* ``gtpe sdpa`` -- the same with ``strategy='sdpa'`` (size-bucketed SDPA, float mask; the GPU
  path);
* ``gtpe no bias`` -- plain ``FullAttention`` (what the bias costs);
* ``padded sdpa`` -- ``to_dense_batch`` + dense distance matrix (``to_dense_adj`` of the SPD
  pairs) + ``Embedding`` -> ``[B, H, L, L]`` float mask + one SDPA call over the batch padded
  to its largest graph (how Graphormer's reference code batches).

The models are timed interleaved, ``--rounds`` rounds of ``--steps`` steps (after warm-up);
the table gives the median step time and the ratio ``padded sdpa / row``.  The outputs of the
rows are checked to agree (1e-4) before timing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from torch_geometric.data import Batch  # noqa: E402
from torch_geometric.utils import to_dense_adj, to_dense_batch  # noqa: E402

from gtpe.nn.attention import FullAttention  # noqa: E402
from gtpe.nn.attention.graphormer import GraphormerAttention  # noqa: E402
from gtpe.transforms import AddSPD  # noqa: E402

CHANNELS, HEADS, BATCH = 64, 4, 32


def padded_sdpa(layer: GraphormerAttention, x, batch, spd_index, spd_val):
    """The straightforward implementation: everything padded to the largest graph."""
    fa, emb = layer.attn, layer.spatial.embedding
    H, D, far = fa.heads, fa.head_dim, layer.max_dist + 1
    xd, mask = to_dense_batch(x, batch)                                   # [B, L, C]
    B, L = mask.shape
    q, k, v = F.linear(xd, fa.in_proj_weight, fa.in_proj_bias).view(B, L, 3, H, D).permute(2, 0, 3, 1, 4)
    dist = to_dense_adj(spd_index, batch, edge_attr=spd_val.clamp_max(far) + 1, max_num_nodes=L)
    dist = torch.where(dist > 0, dist - 1, far).long()                    # [B, start, end]
    bias = emb(dist).permute(0, 3, 2, 1)                                  # [B, H, end=query, start=key]
    bias = bias.masked_fill(~mask.view(B, 1, 1, L), float("-inf"))
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    return fa.out_proj(o.transpose(1, 2).reshape(B, L, H * D)[mask])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--max-dist", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from train_bench import load_zinc_train

    data, _ = load_zinc_train(BATCH * args.batches)
    spd = AddSPD(max_dist=args.max_dist)
    batches = [spd(Batch.from_data_list(data[i : i + BATCH])) for i in range(0, len(data), BATCH)]
    torch.manual_seed(0)
    layer = GraphormerAttention(CHANNELS, heads=HEADS, max_dist=args.max_dist)
    sdpa_layer = GraphormerAttention(CHANNELS, heads=HEADS, max_dist=args.max_dist, strategy="sdpa")
    sdpa_layer.load_state_dict(layer.state_dict())
    plain = FullAttention(CHANNELS, heads=HEADS)
    plain.load_state_dict(layer.attn.state_dict())
    feats = [torch.randn(b.num_nodes, CHANNELS) for b in batches]
    rows = {
        "gtpe kernel": lambda b, x: layer(x, b.batch, b.spd_index, b.spd_val),
        "gtpe sdpa": lambda b, x: sdpa_layer(x, b.batch, b.spd_index, b.spd_val),
        "gtpe no bias": lambda b, x: plain(x, b.batch),
        "padded sdpa": lambda b, x: padded_sdpa(layer, x, b.batch, b.spd_index, b.spd_val),
    }
    ref = rows["padded sdpa"](batches[0], feats[0])
    for name in ("gtpe kernel", "gtpe sdpa"):
        torch.testing.assert_close(rows[name](batches[0], feats[0]), ref, rtol=1e-4, atol=1e-4)

    def step(fn, i):
        x = feats[i % len(batches)].requires_grad_()
        out = fn(batches[i % len(batches)], x)
        out.square().sum().backward()

    times: dict[str, list[float]] = {n: [] for n in rows}
    for fn in rows.values():  # warm-up (kernel build, plans)
        for i in range(3):
            step(fn, i)
    for _ in range(args.rounds):
        for name, fn in rows.items():
            for i in range(args.steps):
                t0 = time.perf_counter()
                step(fn, i)
                times[name].append(time.perf_counter() - t0)
    nodes = statistics.mean(b.num_nodes for b in batches)
    pairs = statistics.mean(b.spd_index.size(1) for b in batches)
    print(f"ZINC train, batch {BATCH} (~{nodes:.0f} nodes, ~{pairs:.0f} SPD pairs, max_dist "
          f"{args.max_dist}), {CHANNELS} channels, {HEADS} heads, {torch.get_num_threads()} thread(s), "
          f"forward + backward")
    base = statistics.median(times["padded sdpa"])
    print(f"{'row':<14} {'median ms':>10} {'padded sdpa / row':>18}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:<14} {med * 1e3:>10.3f} {base / med:>18.2f}")


if __name__ == "__main__":
    main()
