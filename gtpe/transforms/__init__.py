"""Positional and structural encodings as PyG transforms.

Every transform accepts a single :class:`~torch_geometric.data.Data` and, vectorised,
a :class:`~torch_geometric.data.Batch` of many graphs (results equal the per-graph
results collated).  :func:`precompute` runs transforms over a whole dataset in
batches with an optional disk cache.
"""
from gtpe.transforms.expander import AddExpanderEdges
from gtpe.transforms.lap import AddLapPE
from gtpe.transforms.maglap import AddMagLapPE
from gtpe.transforms.precompute import precompute
from gtpe.transforms.rrwp import AddRRWP
from gtpe.transforms.rwse import AddRWSE
from gtpe.transforms.spd import AddSPD

__all__ = [
    'AddExpanderEdges',
    'AddLapPE',
    'AddMagLapPE',
    'AddRRWP',
    'AddRWSE',
    'AddSPD',
    'precompute',
]
