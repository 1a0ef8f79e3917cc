"""gtpe._atomic: atomic replacement, no temporaries left, usual permissions, stale cleanup."""
import os
import time

import pytest

from gtpe._atomic import TEMP_PREFIX, atomic_write, remove_stale_temporaries


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
    old, fresh = tmp_path / '.gtpe-a.pt.x1.tmp', tmp_path / '.gtpe-b.pt.x2.tmp'
    keep = tmp_path / 'c.tmp'
    for p in (old, fresh, keep):
        p.write_bytes(b'')
    hour_ago = time.time() - 3600
    os.utime(old, (hour_ago, hour_ago))
    assert remove_stale_temporaries(tmp_path, older_than=600) == 1
    assert not old.exists() and fresh.exists() and keep.exists()
    assert remove_stale_temporaries(tmp_path) == 1
    assert not fresh.exists() and keep.exists()


def test_temporaries_carry_gtpe_prefix(tmp_path):
    seen = []

    def write(f):
        seen.extend(os.listdir(tmp_path))
        f.write(b'x')
    atomic_write(tmp_path / 'model.pt', write)
    assert seen[0].startswith(TEMP_PREFIX + 'model.pt.') and seen[0].endswith('.tmp')
    assert TEMP_PREFIX == '.gtpe-'


def test_users_temporary_files_survive_every_cleanup(tmp_path):
    # a user's own dot-tmp files (even old ones, even shaped like the old '.<name>.<rand>.tmp')
    users = [tmp_path / n for n in ('.notes.tmp', '.a.pt.x1y2z3ab.tmp', '.gtpe.tmp',
                                    '.gtpe-notes', 'gtpe-x.tmp')]
    for p in users:
        p.write_text('mine')
        os.utime(p, (1, 1))
    ours = tmp_path / '.gtpe-results.json.k1ll3d.tmp'
    ours.write_text('half')
    os.utime(ours, (1, 1))
    assert remove_stale_temporaries(tmp_path) == 1          # what --out does (no margin)
    assert remove_stale_temporaries(tmp_path, older_than=3600) == 0    # what the caches do
    assert not ours.exists()
    assert all(p.read_text() == 'mine' for p in users)
