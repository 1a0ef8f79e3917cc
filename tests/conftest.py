"""Test-session defaults.

* ``GTPE_MIRROR``: the offline data mirror (``../shared/data`` beside the repository), unless set.
* ``GTPE_DATA_ROOT``: processed-data cache for the tests, outside the repository so that the
  tests never write into ``datasets/``. It persists in the system temp dir (override with
  ``GTPE_TEST_DATA_ROOT``) so that repeated local runs reuse the built datasets; a fresh CI machine
  builds each dataset once per session. Tests that exercise the cache itself use their own tmp roots.
"""
import os
import tempfile
from pathlib import Path

import pytest
import torch

_REPO = Path(__file__).resolve().parents[1]
_MIRROR = _REPO.parent / "shared" / "data"

if "GTPE_MIRROR" not in os.environ and _MIRROR.is_dir():
    os.environ["GTPE_MIRROR"] = str(_MIRROR)
elif "GTPE_MIRROR" in os.environ:
    os.environ["GTPE_MIRROR"] = str(Path(os.environ["GTPE_MIRROR"]).resolve())

os.environ["GTPE_DATA_ROOT"] = os.environ.get(
    "GTPE_TEST_DATA_ROOT", str(Path(tempfile.gettempdir()) / f"gtpe-test-data-{os.getuid()}")
)

# The models under test are small: one intra-op thread is faster than two on a 2-core machine
# (measured 10x on a busy one) and keeps torch from oversubscribing next to numpy/scipy pools.
torch.set_num_threads(1)


@pytest.fixture
def one_thread():
    """One torch thread during the test, restored afterwards (a test that runs ``gtpe ...
    --threads N`` in-process changes it). Modules that train use it for every test:
    ``pytestmark = pytest.mark.usefixtures('one_thread')``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
