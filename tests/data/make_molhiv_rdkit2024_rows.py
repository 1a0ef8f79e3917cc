"""Regenerate ``molhiv_rdkit2024_rows.json`` (run OUTSIDE the project venv).

The 7 HIV.csv rows below are hypervalent Al/B/Ge complexes that RDKit >= 2025.03 refuses to parse.
This script records OGB's ``smiles2graph`` output for them under RDKit 2024.03.6, the reference that
``gtpe.datasets.smiles`` must reproduce with its fallback parser::

    python -m venv /tmp/rdkit2024
    /tmp/rdkit2024/bin/pip install rdkit==2024.3.6 numpy ogb==1.3.6 --no-deps
    /tmp/rdkit2024/bin/python tests/data/make_molhiv_rdkit2024_rows.py /path/to/HIV.csv.gz
"""
import csv
import gzip
import json
import sys

import rdkit
from ogb.utils import smiles2graph

ROWS = [137, 987, 12882, 18293, 30784, 30785, 35728]


def main(path: str) -> None:
    with gzip.open(path, 'rt', newline='') as f:
        rows = list(csv.DictReader(f))
    out = {'rdkit_version': rdkit.__version__, 'source': 'HIV.csv (ogbg_molhiv mirror)',
           'function': 'ogb.utils.smiles2graph (ogb 1.3.6)', 'rows': {}}
    for i in ROWS:
        g = smiles2graph(rows[i]['smiles'])
        out['rows'][str(i)] = {
            'smiles': rows[i]['smiles'],
            'num_nodes': int(g['num_nodes']),
            'node_feat': g['node_feat'].tolist(),
            'edge_index': g['edge_index'].tolist(),
            'edge_feat': g['edge_feat'].tolist(),
        }
    json.dump(out, sys.stdout, separators=(',', ':'))
    sys.stdout.write('\n')


if __name__ == '__main__':
    main(sys.argv[1] if len(sys.argv) > 1 else '../shared/data/ogbg_molhiv/HIV.csv.gz')
