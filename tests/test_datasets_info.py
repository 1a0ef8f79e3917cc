"""Registry, describe() and datasets_table() (no dataset is built here)."""
import dataclasses
import json

import pytest

from gtpe.datasets import (
    DatasetError,
    DatasetInfo,
    dataset_info,
    datasets_table,
    describe,
    list_datasets,
)
from gtpe.datasets.metrics import higher_is_better


def test_list_and_info_fields():
    assert list_datasets() == ['zinc', 'ogbg-molhiv', 'peptides-func', 'cora', 'citeseer',
                               'sorting-networks', 'dag-distance', 'ogbn-arxiv', 'ogbn-products',
                               'sbm-1000', 'sbm-10000', 'sbm-100000', 'sbm-1000000']
    names = {f.name for f in dataclasses.fields(DatasetInfo)}
    assert {'name', 'level', 'task', 'metric', 'higher_is_better', 'num_tasks', 'node_input',
            'node_in_dim', 'edge_input', 'edge_in_dim', 'num_graphs', 'splits'} <= names
    for name in list_datasets():
        info = dataset_info(name)
        assert info.higher_is_better == higher_is_better(info.metric)
        if info.level in ('graph', 'node-inductive'):
            assert sum(info.splits.values()) == info.num_graphs
        assert info.directed == (name in ('sorting-networks', 'dag-distance', 'ogbn-arxiv'))


@pytest.mark.parametrize('name,expected', [
    ('zinc', ('graph', 'regression', 'mae', 1, 'embedding', 28, 'embedding', 4, 12_000)),
    ('ogbg-molhiv', ('graph', 'binary', 'rocauc', 1, 'ogb_atom', 9, 'ogb_bond', 3, 41_127)),
    ('peptides-func', ('graph', 'multilabel', 'ap', 10, 'ogb_atom', 9, 'ogb_bond', 3, 15_535)),
    ('cora', ('node', 'multiclass', 'accuracy', 7, 'linear', 1_433, None, 0, 1)),
    ('citeseer', ('node', 'multiclass', 'accuracy', 6, 'linear', 3_703, None, 0, 1)),
    ('sorting-networks', ('graph', 'binary', 'accuracy', 1, 'sinusoid', 2, None, 0, 5_800)),
    ('dag-distance', ('node-inductive', 'multiclass', 'accuracy', 6, 'embedding', 2, None, 0,
                      4_000)),
])
def test_registry_values(name, expected):
    i = dataset_info(name)
    assert (i.level, i.task, i.metric, i.num_tasks, i.node_input, i.node_in_dim, i.edge_input,
            i.edge_in_dim, i.num_graphs) == expected


def test_aliases_and_unknown():
    assert dataset_info('ZINC').name == 'zinc'
    assert dataset_info('ogbg_molhiv').name == 'ogbg-molhiv'
    assert dataset_info('molhiv').name == 'ogbg-molhiv'
    assert dataset_info('Peptides-func').name == 'peptides-func'
    assert dataset_info('sorting_networks').name == 'sorting-networks'
    assert dataset_info('DAG_distance').name == 'dag-distance'
    with pytest.raises(DatasetError, match="did you mean 'citeseer'"):
        dataset_info('citeser')
    with pytest.raises(DatasetError, match='known datasets: zinc, ogbg-molhiv'):
        dataset_info('mnist')


def test_describe_is_json_and_table(tmp_path, monkeypatch):
    monkeypatch.setenv('GTPE_MIRROR', '/nonexistent-mirror')
    d = describe('peptides-func', root=tmp_path)
    json.dumps(d)
    assert d['name'] == 'peptides-func' and d['num_graphs'] == 15_535
    assert d['splits'] == {'train': 10_873, 'val': 2_331, 'test': 2_331}
    assert d['num_node_features'] == 9 and d['task'] == 'multilabel' and d['metric'] == 'ap'
    assert d['avg_nodes'] == pytest.approx(150.94) and d['avg_edges'] == pytest.approx(307.30)
    assert d['cached'] is False and 'GTPE_MIRROR' in d['mirror_error']
    d = describe('dag-distance', root=tmp_path)                      # generated: no mirror
    assert d['source_kind'] == 'generated' and d['mirror'] is None and 'mirror_error' not in d
    assert d['directed'] is True and d['level'] == 'node-inductive'
    monkeypatch.delenv('GTPE_MIRROR')
    assert describe('cora', root=tmp_path)['source_kind'] == 'official'
    assert describe('cora', root=tmp_path)['directed'] is False
    table = datasets_table(root=tmp_path).splitlines()
    header = table[0]
    assert header.split() == ['name', 'level', 'graphs', 'task', 'metric', 'splits',
                              '(train/val/test)', 'source', 'cached']
    rows = table[2:2 + len(list_datasets())]
    assert [r.split()[0] for r in rows] == list_datasets()
    col = header.index('metric')                                   # aligned columns
    assert [r[col:].split()[0] for r in rows] == ['mae', 'rocauc', 'ap'] + ['accuracy'] * 10
    col = header.index('source')
    assert [r[col:].split()[0] for r in rows] == (['official'] * 5 + ['generated'] * 2
                                                  + ['official'] * 2 + ['generated'] * 4)
    assert rows[6].split()[1] == 'node-inductive' and '3,000/500/500 ' in rows[6]
    assert all(r.rstrip().endswith('no') for r in rows)
