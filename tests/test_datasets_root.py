"""Where processed data go: ``root=``, else ``$GTPE_DATA_ROOT``, else the user's cache folder
(``$XDG_CACHE_HOME/gtpe``, default ``~/.cache/gtpe``), never the current folder; the Makefile keeps
runs from the checkout in its ``datasets/``."""
import os
import subprocess
from pathlib import Path

import pytest

from gtpe.datasets import data_root, describe, load_dataset

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def user_env(tmp_path, monkeypatch):
    """No GTPE_DATA_ROOT; a fake HOME; the current folder an empty tmp folder."""
    monkeypatch.delenv('GTPE_DATA_ROOT', raising=False)
    monkeypatch.delenv('XDG_CACHE_HOME', raising=False)
    monkeypatch.setenv('HOME', str(tmp_path / 'home'))
    cwd = tmp_path / 'cwd'
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return tmp_path


def test_default_root_is_xdg_cache_never_cwd(user_env, monkeypatch):
    monkeypatch.setenv('XDG_CACHE_HOME', str(user_env / 'xdg'))
    assert data_root() == user_env / 'xdg' / 'gtpe'
    ds = load_dataset('cora', progress=False)
    assert ds['train'][0].num_nodes == 2_708
    assert (user_env / 'xdg' / 'gtpe' / 'cora' / 'processed' / 'manifest.json').is_file()
    assert list((user_env / 'cwd').iterdir()) == []                 # nothing written in cwd
    assert not (user_env / 'home').exists()
    assert describe('cora')['data_dir'] == str(user_env / 'xdg' / 'gtpe' / 'cora')
    assert describe('cora')['cached'] is True


def test_default_root_falls_back_to_home_cache(user_env, monkeypatch):
    assert data_root() == user_env / 'home' / '.cache' / 'gtpe'
    monkeypatch.setenv('XDG_CACHE_HOME', '')                        # empty: unset (XDG spec)
    assert data_root() == user_env / 'home' / '.cache' / 'gtpe'
    monkeypatch.setenv('XDG_CACHE_HOME', 'relative/cache')          # relative: ignored (XDG spec)
    assert data_root() == user_env / 'home' / '.cache' / 'gtpe'
    monkeypatch.delenv('XDG_CACHE_HOME')
    load_dataset('zinc', progress=False)
    assert (user_env / 'home' / '.cache' / 'gtpe' / 'zinc' / 'processed' / 'data.pt').is_file()
    assert list((user_env / 'cwd').iterdir()) == []


def test_env_and_argument_win_over_the_user_cache(user_env, monkeypatch):
    monkeypatch.setenv('XDG_CACHE_HOME', str(user_env / 'xdg'))
    monkeypatch.setenv('GTPE_DATA_ROOT', str(user_env / 'env'))
    assert data_root() == user_env / 'env'
    assert data_root(user_env / 'arg') == user_env / 'arg'
    monkeypatch.setenv('GTPE_DATA_ROOT', 'rel')                     # relative: against cwd
    assert data_root() == user_env / 'cwd' / 'rel'
    monkeypatch.setenv('GTPE_DATA_ROOT', '  ')                      # blank: unset
    assert data_root() == user_env / 'xdg' / 'gtpe'


def _make_root(env: dict) -> str:
    """``$GTPE_DATA_ROOT`` as a Makefile recipe sees it."""
    out = subprocess.run(
        ['make', '-s', '--no-print-directory', '-C', str(REPO),
         '--eval=_print_data_root: ; @echo "root=$$GTPE_DATA_ROOT"', '_print_data_root'],
        env=env, capture_output=True, text=True, timeout=30, check=True)
    return out.stdout.strip()


@pytest.mark.skipif(not any((Path(p) / 'make').is_file()
                            for p in os.environ.get('PATH', '').split(os.pathsep)),
                    reason='make is not installed')
def test_makefile_keeps_the_checkout_datasets_folder(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ('GTPE_DATA_ROOT', 'MAKEFLAGS')}
    assert _make_root(env) == f'root={REPO / "datasets"}'
    env['GTPE_DATA_ROOT'] = str(tmp_path / 'mine')
    assert _make_root(env) == f'root={tmp_path / "mine"}'
    # make demo records that root in its run, so `gtpe evaluate runs/demo` finds the data
    # from a plain shell too
    out = subprocess.run(['make', '-n', '-C', str(REPO), 'demo', 'VENV=.venv-none'], env=env,
                         capture_output=True, text=True, timeout=30, check=True).stdout
    assert f'--set dataset.root={tmp_path / "mine"}' in out


def test_official_source_without_network_says_what_to_do(tmp_path, monkeypatch):
    """Offline and without GTPE_MIRROR: one DatasetError naming the dataset and GTPE_MIRROR,
    not urllib's bare '<urlopen error ...>'."""
    import urllib.error

    from gtpe.datasets import DatasetError, load_dataset
    from gtpe.datasets import zinc as zinc_mod

    def offline(folder, progress=True):
        raise urllib.error.URLError(OSError(-2, 'Name or service not known'))

    monkeypatch.delenv('GTPE_MIRROR', raising=False)
    monkeypatch.setattr(zinc_mod, 'build_official', offline)
    with pytest.raises(DatasetError, match=r"zinc: cannot download the official files .*"
                                           r"set GTPE_MIRROR"):
        load_dataset('zinc', root=tmp_path, progress=False)
