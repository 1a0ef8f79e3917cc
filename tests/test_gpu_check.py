"""benchmarks/gpu_check.py (``make gpu-check``): the no-CUDA line, the CUDA test selection, the
pytest phase, the exit status, the time budget and the table (``--dry-run``, tiny, on the CPU)."""
import importlib.util
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / 'benchmarks' / 'gpu_check.py'


@pytest.fixture(scope='module')
def gc():
    spec = importlib.util.spec_from_file_location('gpu_check_under_test', SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run_script(*args, env=None, timeout=120):
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                       cwd=ROOT, timeout=timeout, env={**os.environ, **(env or {})})
    return p, time.monotonic() - t0


def table(stdout):
    rows = [ln for ln in stdout.splitlines() if ln.startswith('|')]
    return [[c.strip() for c in ln.strip().strip('|').split('|')] for ln in rows]


def test_without_a_gpu_prints_one_line_and_exits_0():
    p, _ = run_script(env={'CUDA_VISIBLE_DEVICES': ''})
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert len(lines) == 1, p.stdout
    m = re.fullmatch(r'gpu_check: no CUDA device \(torch (\S+), (CPU-only build|built with CUDA '
                     r'\S+, no device visible)\); nothing to check', lines[0])
    assert m, lines[0]
    assert m.group(1) == torch.__version__
    assert (m.group(2) == 'CPU-only build') == (torch.version.cuda is None)


PROBE = '''
import os
from _pytest.skipping import evaluate_skip_marks


def pytest_collection_finish(session):
    with open(os.environ['NEEDS_CUDA_OUT'], 'w') as f:
        for item in session.items:
            skip = evaluate_skip_marks(item)
            if skip is not None and skip.reason == 'needs CUDA':
                f.write(item.nodeid + '\\n')
'''


@pytest.mark.skipif(torch.cuda.is_available(), reason="compares with the CPU machine's skips")
def test_selection_equals_the_skips_of_a_cpu_machine(gc, tmp_path):
    """On a CPU machine the ids that name cuda are exactly the tests skipped with 'needs CUDA'
    (pytest's own evaluation of the skip marks over the whole suite); the selection adds the
    modules with a device switch, whose tests run on the CPU here."""
    (tmp_path / 'needs_cuda_probe.py').write_text(PROBE)
    out = tmp_path / 'needs_cuda.txt'
    env = {**os.environ, 'NEEDS_CUDA_OUT': str(out),
           'PYTHONPATH': os.pathsep.join([str(tmp_path), os.environ.get('PYTHONPATH', '')])}
    ids = gc.collect_test_ids(ROOT, timeout=300, extra_args=['-p', 'needs_cuda_probe'], env=env)
    needs_cuda = set(out.read_text().split())
    assert len(ids) > 100 and needs_cuda, (len(ids), needs_cuda)
    selected = gc.select_cuda_tests(ids, ROOT)
    switch = gc.device_switch_files(ids, ROOT)
    assert len(selected) == len(set(selected))
    assert needs_cuda <= set(selected)
    assert {i for i in selected if i.split('::')[0] not in switch} == needs_cuda
    assert switch, 'no test module puts its tests on the GPU any more: is the rule still right?'
    assert all(i in selected for i in ids if i.split('::')[0] in switch)


def test_selection_on_a_gpu_collection(gc, tmp_path):
    tests = tmp_path / 'tests'
    tests.mkdir()
    (tests / 'test_dev.py').write_text(
        'import torch\nDEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")\n')
    (tests / 'test_param.py').write_text(
        'import torch\nDEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])\n')
    (tests / 'test_plain.py').write_text(
        'def helper():\n    DEVICE = "cuda"  # not module level\n    return DEVICE\n')
    ids = ['tests/test_dev.py::test_a', 'tests/test_param.py::test_b[cpu]',
           'tests/test_param.py::test_b[cuda]', 'tests/test_param.py::TestX::test_CUDA_graph',
           'tests/test_plain.py::test_c', 'tests/test_plain.py::test_d[cuda-3]',
           'tests/test_dev.py::test_e[cpu]']
    assert gc.device_switch_files(ids, tmp_path) == {'tests/test_dev.py'}
    assert gc.select_cuda_tests(ids, tmp_path) == [
        'tests/test_dev.py::test_a', 'tests/test_param.py::test_b[cuda]',
        'tests/test_param.py::TestX::test_CUDA_graph', 'tests/test_plain.py::test_d[cuda-3]',
        'tests/test_dev.py::test_e[cpu]']


def test_pytest_phase_counts_outcomes_and_stops_at_its_timeout(gc, tmp_path):
    (tmp_path / 'test_t.py').write_text(textwrap.dedent('''
        import time
        import pytest

        @pytest.fixture
        def broken():
            raise RuntimeError('fixture broke')

        def test_ok():
            pass

        def test_bad():
            assert 1 == 2, 'this one fails'

        @pytest.mark.skip(reason='not here')
        def test_skip():
            pass

        def test_error(broken):
            pass

        def test_slow():
            time.sleep(60)
    '''))
    ids = [f'test_t.py::{n}' for n in ('test_ok', 'test_bad', 'test_skip', 'test_error')]
    r = gc.run_cuda_tests(ids, tmp_path, timeout=120)
    assert (r['selected'], r['passed'], r['failed'], r['skipped'], r['errors']) == (4, 1, 1, 1, 1)
    assert 'this one fails' in r['output']
    t0 = time.monotonic()
    r = gc.run_cuda_tests(['test_t.py::test_ok', 'test_t.py::test_slow'], tmp_path, timeout=4)
    assert r['timeout'] == 4 and time.monotonic() - t0 < 15
    assert 'passed' not in r


def _fake_phases(gc, monkeypatch, tests, pe=None, train=None):
    ids = ['tests/test_pe_cuda.py::test_rwse_cuda_matches_cpu', 'tests/test_x.py::test_cpu']
    monkeypatch.setattr(gc, 'cuda_available', lambda: True)
    monkeypatch.setattr(gc, 'describe_device', lambda device: 'FakeGPU 80 GiB, torch 9, CUDA 99')
    monkeypatch.setattr(gc, 'collect_test_ids', lambda root, timeout, **kw: ids)
    seen = {}

    def run_tests(node_ids, root, timeout):
        seen['ids'], seen['tests'] = node_ids, timeout
        return dict(tests, selected=len(node_ids), seconds=1.0, output='E   assert 0\n1 failed')

    def run_worker(spec, timeout):
        seen[spec['phase']] = (spec, timeout)
        if spec['phase'] == 'pe':
            return pe or {'data': 'ZINC train', 'graphs': 100, 'gtpe_s': 0.5, 'pyg_s': 5.0,
                          'pyg_graphs_timed': 100, 'device': 'cuda'}
        rows = {k: {'ms': 10.0, 'graphs_per_s': 3200.0} for k in gc.TRAIN_ROWS}
        rows['pyg'] = {'ms': 20.0, 'graphs_per_s': 1600.0}
        return train or {'data': 'ZINC train', 'steps': 4, 'rows': rows}
    monkeypatch.setattr(gc, 'run_cuda_tests', run_tests)
    monkeypatch.setattr(gc, 'run_worker', run_worker)
    return seen


def test_exit_status_follows_the_gpu_tests(gc, monkeypatch, capsys):
    seen = _fake_phases(gc, monkeypatch, dict(passed=0, failed=1, skipped=0, errors=0))
    assert gc.main([]) == 1
    out = capsys.readouterr().out
    assert seen['ids'] == ['tests/test_pe_cuda.py::test_rwse_cuda_matches_cpu']
    (pe, pe_s), (train, train_s) = seen['pe'], seen['train']
    assert (pe['device'], pe['limit'], pe['repeat'], pe['pyg_cap_s']) == ('cuda', None, 3, 60)
    assert (train['steps'], train['rounds'], train['warmup']) == (20, 3, 5)
    assert train['rows'] == ['full', 'linear', 'exphormer', 'grit'] and train['device'] == 'cuda'
    # budget 480 s: the tests until 240 s are left, PE until 120 s, training the rest
    assert 0 < seen['tests'] <= 240
    assert abs(pe_s - seen['tests'] - 120) < 5 and abs(train_s - seen['tests'] - 240) < 5
    assert '0 passed, 1 failed, 0 skipped' in out and 'E   assert 0' in out
    rows = {r[0]: r for r in table(out)}
    assert rows['PE precompute: ZINC train, 100 graphs, LapPE(8)+RWSE(20)'][1:4] == [
        '0.50 s (200 graphs/s)', '5.00 s', '10.0x']
    assert rows['train step: GPSLayer gine+full'][1:4] == [
        '10.0 ms (3,200 graphs/s)', '20.0 ms (1,600 graphs/s)', '2.00x']

    _fake_phases(gc, monkeypatch, dict(passed=1, failed=0, skipped=3, errors=0))
    assert gc.main([]) == 0
    assert '1 passed, 0 failed, 3 skipped' in capsys.readouterr().out
    for tests in (dict(passed=1, failed=0, skipped=0, errors=1), dict(timeout=9)):
        _fake_phases(gc, monkeypatch, tests)
        assert gc.main([]) == 1, tests
    _fake_phases(gc, monkeypatch, dict(passed=1, failed=0, skipped=0, errors=0),
                 pe={'timeout': 7})
    assert gc.main([]) == 1
    assert 'timeout (>7 s)' in capsys.readouterr().out
    _fake_phases(gc, monkeypatch, dict(passed=1, failed=0, skipped=0, errors=0),
                 train={'data': 'ZINC train', 'steps': 4, 'rows': {
                     'pyg': {'ms': 20.0, 'graphs_per_s': 1600.0},
                     'full': {'error': 'RuntimeError: CUDA error | bad'},
                     **{k: {'ms': 10.0, 'graphs_per_s': 3200.0} for k in ('linear', 'exphormer', 'grit')}}})
    assert gc.main([]) == 1
    out = capsys.readouterr().out
    assert 'RuntimeError: CUDA error / bad' in out  # a '|' would break the table
    assert all(len(r) == 5 for r in table(out))

    _fake_phases(gc, monkeypatch, dict(passed=1, failed=0, skipped=0, errors=0),
                 pe={'data': 'random ZINC-sized graphs (FileNotFoundError: x)', 'graphs': 1000,
                     'gtpe_s': 0.5, 'pyg_s': 5.0, 'pyg_graphs_timed': 10, 'device': 'cuda'})
    assert gc.main([]) == 0
    row = next(r for r in table(capsys.readouterr().out) if r[0].startswith('PE precompute'))
    assert row[0] == 'PE precompute: random ZINC-sized graphs, 1,000 graphs, LapPE(8)+RWSE(20)'
    assert row[2] == '5.00 s (est.)' and 'FileNotFoundError: x' in row[4], row


def test_collection_error_or_no_gpu_test_fails_the_check(gc, monkeypatch, capsys):
    _fake_phases(gc, monkeypatch, dict(passed=1, failed=0, skipped=0, errors=0))

    def broken(root, timeout, **kw):
        raise RuntimeError('collection failed (pytest exit 2): ERROR tests/test_x.py')
    monkeypatch.setattr(gc, 'collect_test_ids', broken)
    assert gc.main([]) == 1
    assert 'collection failed (pytest exit 2)' in capsys.readouterr().out
    monkeypatch.setattr(gc, 'collect_test_ids', lambda root, timeout, **kw: ['t.py::test_cpu'])
    assert gc.main([]) == 1
    rows = table(capsys.readouterr().out)
    assert rows[2][:2] == ['CUDA tests (0 selected)', 'no CUDA test found']


def test_collect_test_ids_reports_a_collection_error(gc, tmp_path):
    (tmp_path / 'test_ok.py').write_text('def test_a():\n    pass\n')
    assert gc.collect_test_ids(tmp_path, timeout=60) == ['test_ok.py::test_a']
    (tmp_path / 'test_broken.py').write_text('import no_such_module_here\n')
    with pytest.raises(RuntimeError, match=r'collection failed \(pytest exit 2\)'):
        gc.collect_test_ids(tmp_path, timeout=60)


def test_pe_worker_scales_pyg_past_its_cap(gc):
    r = gc.pe_worker({'device': 'cpu', 'limit': 16, 'repeat': 2, 'seconds': 60, 'pyg_cap_s': 0})
    assert (r['graphs'], r['pyg_graphs_timed'], r['gtpe_runs']) == (16, 1, 2)
    assert r['data'] == 'ZINC train' and r['gtpe_s'] > 0 and r['pyg_s'] > 0
    row = gc.pe_rows(r)[0][0]
    assert row[2].endswith(' s (est.)') and '1 graphs timed, scaled' in row[4]


def test_train_worker_waits_for_the_device_and_reports_a_failing_row(gc, monkeypatch):
    tb = gc.sibling('train_bench')
    syncs, made = [], []
    monkeypatch.setattr(gc, '_sync', lambda dev: syncs.append(dev.type))
    real = tb.make_step

    def make_step(model):
        made.append(model)
        if len(made) == 3:  # pyg, full, then linear breaks
            def boom(b):
                raise RuntimeError('boom')
            return boom
        return real(model)
    monkeypatch.setattr(tb, 'make_step', make_step)
    r = gc.train_worker({'device': 'cpu', 'limit': 64, 'steps': 2, 'rounds': 1, 'warmup': 1,
                         'rows': ['full', 'linear']})
    assert r['rows']['linear'] == {'error': 'RuntimeError: boom'}
    assert r['rows']['pyg']['ms'] > 0 and r['rows']['full']['ms'] > 0
    # each of the 1 + 2 steps of pyg and full is followed by a sync (more: the warm-up steps
    # before linear broke)
    assert syncs.count('cpu') >= 2 * 3


def test_random_graphs_when_zinc_cannot_be_loaded(gc, monkeypatch):
    tb = gc.sibling('train_bench')

    def no_zinc(limit):
        raise FileNotFoundError('no mirror here')
    monkeypatch.setattr(tb, 'load_zinc_train', no_zinc)
    graphs, src = gc.load_graphs(40)
    assert len(graphs) == 40 and src.startswith('random ZINC-sized graphs')
    assert 'FileNotFoundError: no mirror here' in src
    for g in graphs:
        assert 9 <= g.num_nodes <= 38
        assert g.x.shape == (g.num_nodes, 1) and 0 <= g.x.min() and g.x.max() < 28
        assert g.edge_attr.size(0) == g.edge_index.size(1) and g.edge_attr.max() < 4
        a = torch.zeros(g.num_nodes, g.num_nodes)
        a[g.edge_index[0], g.edge_index[1]] = g.edge_attr.float()
        assert torch.equal(a, a.T) and a.diagonal().eq(0).all()
        assert g.y.shape == (1,)
    assert len(tb.make_batches(graphs, 2, [])) == 2


def test_dry_run_prints_a_well_formed_table():
    p, sec = run_script('--dry-run')
    assert p.returncode == 0, p.stdout + p.stderr
    rows = table(p.stdout)
    assert rows[0] == ['check', 'gtpe', 'PyG', 'speed-up vs PyG', 'note']
    assert all(set(c) <= set('-: ') for c in rows[1])
    assert all(len(r) == 5 for r in rows), rows
    body = {r[0]: r[1:] for r in rows[2:]}
    assert body['CUDA tests'][0] == 'not run (dry run)'
    pe = next(v for k, v in body.items() if k.startswith('PE precompute: ZINC train, 64 graphs'))
    assert re.fullmatch(r'\d+\.\d\d s \([\d,]+ graphs/s\)', pe[0]), pe
    assert re.fullmatch(r'\d+\.\d\d s', pe[1]) and re.fullmatch(r'\d+\.\dx', pe[2]), pe
    train = [k for k in body if k.startswith('train step: ')]
    assert train == ['train step: GPSLayer gine+full', 'train step: GPSLayer gine+linear',
                     'train step: GPSLayer gine+exphormer', 'train step: GPSLayer grit (no local)']
    assert 'median of 2 steps' in body[train[0]][3]
    for k in train:
        assert re.fullmatch(r'\d+\.\d ms \([\d,]+ graphs/s\)', body[k][0]), body[k]
        assert re.fullmatch(r'\d+\.\d ms \([\d,]+ graphs/s\)', body[k][1]), body[k]
        assert re.fullmatch(r'\d+\.\d\dx', body[k][2]), body[k]
    caption = [ln for ln in p.stdout.splitlines() if ln.startswith('**gpu_check')]
    assert len(caption) == 1 and 'dry run' in caption[0] and torch.__version__ in caption[0]
    import torch_geometric

    import gtpe
    assert f'PyG {torch_geometric.__version__}, gtpe {gtpe.__version__}, commit ' in caption[0]
    assert sec < 60, sec


def test_budget_bounds_the_run():
    p, sec = run_script('--dry-run', '--budget-s', '2')
    assert p.returncode == 1, p.stdout + p.stderr
    assert 'timeout (>' in p.stdout or 'budget spent' in p.stdout, p.stdout
    assert all(len(r) == 5 for r in table(p.stdout))
    # interpreter start (importing torch: up to ~12 s on a loaded 2-core machine) and the kill,
    # not the whole benchmark (minutes)
    assert sec < 2 + 25, sec
