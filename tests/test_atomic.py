"""gtpe._atomic: atomic replacement, no temporaries left, usual permissions, stale cleanup."""
import os
import time

import pytest

from gtpe._atomic import atomic_write, remove_stale_temporaries


def test_replaces_atomically_and_leaves_no_temporary(tmp_path):
    path = tmp_path / 'f.bin'
    atomic_write(path, lambda f: f.write(b'one'))
    atomic_write(path, lambda f: f.write(b'two'))
    assert path.read_bytes() == b'two'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['f.bin']


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / 'f.txt'
    atomic_write(path, lambda f: f.write('old'), binary=False)

    def broken(f):
        f.write('half')
        raise RuntimeError('disk full')
    with pytest.raises(RuntimeError):
        atomic_write(path, broken, binary=False)
    assert path.read_text() == 'old'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['f.txt']


@pytest.mark.parametrize('umask', [0o022, 0o077])
def test_permissions_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_write(tmp_path / 'f', lambda f: f.write(b'x'))
    finally:
        os.umask(old)
    assert (tmp_path / 'f').stat().st_mode & 0o777 == 0o666 & ~umask


def test_remove_stale_temporaries_respects_age(tmp_path):
    old, fresh, keep = tmp_path / '.a.pt.x1.tmp', tmp_path / '.b.pt.x2.tmp', tmp_path / 'c.tmp'
    for p in (old, fresh, keep):
        p.write_bytes(b'')
    hour_ago = time.time() - 3600
    os.utime(old, (hour_ago, hour_ago))
    assert remove_stale_temporaries(tmp_path, older_than=600) == 1
    assert not old.exists() and fresh.exists() and keep.exists()
    assert remove_stale_temporaries(tmp_path) == 1
    assert not fresh.exists() and keep.exists()
