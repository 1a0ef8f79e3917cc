"""A dataset build says what it does and prints a line at least every ``GTPE_PROGRESS_INTERVAL``
seconds in a log (non-terminal stderr); listing datasets imports no heavy library."""
import re
import subprocess
import sys
import time

import pytest

import gtpe.datasets.load as load_mod
import gtpe.datasets.smiles as smiles_mod
import gtpe.datasets.zinc as zinc_mod
from gtpe.datasets import load_dataset

SMILES = ['CCO', 'c1ccccc1', 'CC(=O)O', 'CCN', 'O=C=O', 'C1CC1', 'CCCl', 'c1ccncc1'] * 4


def _slow(fn, seconds):
    def wrapper(*args, **kwargs):
        time.sleep(seconds)
        return fn(*args, **kwargs)
    return wrapper


def test_build_notice_and_heartbeat_in_a_log(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv('GTPE_PROGRESS_INTERVAL', '0.05')
    # a silent phase (reading the mirror file) made long enough to need several heartbeats
    monkeypatch.setattr(zinc_mod, 'read_gzip_json', _slow(zinc_mod.read_gzip_json, 0.3))
    load_dataset('zinc', root=tmp_path)
    err = capsys.readouterr().err
    lines = err.splitlines()
    mirror = load_mod.mirror_root() / 'zinc_subset'
    assert lines[0] == (f'gtpe: building zinc from the mirror {mirror} into {tmp_path / "zinc"} '
                        f'(first time only, a few seconds)')
    assert sum('zinc: reading zinc_subset.json.gz: working, ' in ln for ln in lines) >= 3
    assert any(ln.startswith('zinc: reading zinc_subset.json.gz: done in ') for ln in lines)
    assert '\r' not in err
    load_dataset('zinc', root=tmp_path)                               # cached: quiet
    assert capsys.readouterr().err == ''


def test_rebuild_notice_names_the_reason_and_progress_false_is_quiet(tmp_path, monkeypatch,
                                                                     capsys):
    monkeypatch.setenv('GTPE_PROGRESS_INTERVAL', '0.01')
    load_dataset('cora', root=tmp_path, progress=False)
    assert capsys.readouterr().err == ''
    (tmp_path / 'cora' / 'processed' / 'data.pt').write_bytes(b'junk')
    load_dataset('cora', root=tmp_path)
    first = capsys.readouterr().err.splitlines()[0]
    assert first.startswith('gtpe: rebuilding cora from the mirror '), first
    assert f'into {tmp_path / "cora"} (corrupt: data file has 4 bytes' in first, first


def test_smiles_featurisation_prints_counted_lines(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv('GTPE_PROGRESS_INTERVAL', '0.02')
    monkeypatch.setattr(smiles_mod, 'featurize_chunk', _slow(smiles_mod.featurize_chunk, 0.05))
    smiles_mod.featurize_smiles(SMILES, num_workers=1, chunk_size=4, desc='mols')
    lines = capsys.readouterr().err.splitlines()
    assert all(re.match(r'mols: \d+/32 mol \(\d+%\), \d+ s', ln) for ln in lines), lines
    assert len(lines) >= 4 and any('left' in ln for ln in lines[:-1])
    assert lines[-1].startswith('mols: 32/32 mol (100%)') and lines[-1].endswith('done')
    # resumed: the chunks done before are named, the count covers the remaining work
    smiles_mod.featurize_smiles(SMILES, num_workers=1, chunk_size=4, desc='mols',
                                resume_dir=tmp_path)
    capsys.readouterr()
    (sorted(tmp_path.glob('chunk_*.npz'))[-1]).unlink()
    smiles_mod.featurize_smiles(SMILES, num_workers=1, chunk_size=4, desc='mols',
                                resume_dir=tmp_path)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith('mols (28 done before): '), lines
    assert lines[-1].startswith('mols (28 done before): 4/4 mol (100%)')
    smiles_mod.featurize_smiles(SMILES, num_workers=1, chunk_size=4, progress=False)
    assert capsys.readouterr().err == ''


@pytest.mark.parametrize('code', [
    'import gtpe.datasets as d; d.datasets_table(); d.describe("zinc"); d.dataset_info("cora")',
    'from gtpe.datasets import datasets_table, data_root, list_datasets; datasets_table()',
    'import gtpe.cli as c; c._build_parser()',
])
def test_listing_imports_no_heavy_library(code, tmp_path):
    heavy = ('torch', 'torch_geometric', 'rdkit', 'ogb', 'numpy', 'scipy', 'sklearn')
    check = (f'import sys; {code}; '
             f'loaded = [m for m in {heavy!r} if m in sys.modules]; '
             'assert not loaded, loaded')
    subprocess.run([sys.executable, '-c', check], check=True, cwd=tmp_path, timeout=60,
                   env={'GTPE_DATA_ROOT': str(tmp_path), 'PATH': '/usr/bin:/bin'})


def test_lazy_package_still_exports_everything():
    import gtpe.datasets as d
    for name in d.__all__:
        assert getattr(d, name) is not None, name
    assert 'load_dataset' in dir(d)
    with pytest.raises(AttributeError, match="gtpe.datasets' has no attribute 'nope'"):
        d.nope


def test_submodules_are_attributes_after_a_plain_import():
    """``import gtpe.datasets`` then ``gtpe.datasets.metrics.evaluate`` works in a fresh
    interpreter (the package imports lazily), and every submodule file is reachable so."""
    from pathlib import Path

    import gtpe.datasets as d
    files = {p.stem for p in Path(d.__file__).parent.glob('*.py')} - {'__init__'}
    code = ('import gtpe.datasets as d\n'
            f'for name in {sorted(files)!r}:\n'
            '    getattr(d, name)\n'
            'assert callable(d.metrics.evaluate)\n')
    subprocess.run([sys.executable, '-c', code], check=True)
