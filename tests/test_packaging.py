"""The package as installed: ``py.typed`` (PEP 561) and the C kernel source ship in the wheel."""
import importlib.resources
import importlib.util
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_py_typed_is_in_the_package():
    assert importlib.resources.files('gtpe').joinpath('py.typed').is_file()


@pytest.mark.skipif(importlib.util.find_spec('setuptools') is None,
                    reason='setuptools is needed to build the wheel offline')
def test_wheel_contains_py_typed_and_kernel_source(tmp_path):
    src = tmp_path / 'src'
    src.mkdir()
    for name in ('pyproject.toml', 'README.md'):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / 'gtpe', src / 'gtpe',
                    ignore=shutil.ignore_patterns('__pycache__', '*.so', '*.pyc'))
    subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation',
                    '--no-index', '-q', '-w', str(tmp_path / 'out'), str(src)],
                   check=True, capture_output=True, timeout=120)
    (wheel,) = (tmp_path / 'out').glob('gtpe-*.whl')
    names = set(zipfile.ZipFile(wheel).namelist())
    assert 'gtpe/py.typed' in names
    assert 'gtpe/nn/attention/full_kernel.c' in names
    assert 'gtpe/datasets/load.py' in names


def test_installed_version_matches_the_package():
    """pyproject's version (what pip installed) and ``gtpe.__version__`` (the precompute cache
    key's part) move together."""
    import importlib.metadata
    import tomllib
    from pathlib import Path

    import gtpe

    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / 'pyproject.toml').read_text())
    assert pyproject['project']['version'] == gtpe.__version__
    assert importlib.metadata.version('gtpe') == gtpe.__version__
