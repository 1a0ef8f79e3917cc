"""The offline mirror (``$GTPE_MIRROR``): which files each dataset needs, their sha256 sums (from the
mirror's SOURCE.md files) and readers that turn any I/O or format problem into a
:class:`DatasetError` naming the file."""
from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import os
import zlib
from pathlib import Path

from .errors import DatasetError

__all__ = [
    'MIRROR_ENV',
    'MIRROR_FILES',
    'mirror_paths',
    'mirror_root',
    'read_gzip_csv',
    'read_gzip_json',
    'read_gzip_lines',
    'read_json',
    'sha256_file',
]

MIRROR_ENV = 'GTPE_MIRROR'

# dataset -> {path relative to the mirror root: sha256 of the file as staged}
MIRROR_FILES: dict[str, dict[str, str]] = {
    'zinc': {
        'zinc_subset/zinc_subset.json.gz':
            '16a39e1515bc82a424da2dbd7d09c8b08f5be3fed91dcdb84a22e202b1957bc3',
    },
    'ogbg-molhiv': {
        'ogbg_molhiv/HIV.csv.gz':
            '4d062251b5acbf0d3a73f864884e346590119a6034521db6c5e79e5b54add429',
        'ogbg_molhiv/scaffold_split.json':
            '646f7936c105420cc144611594a104042c86ed8c81529a0062afcdeb5bad8447',
    },
    'peptides-func': {
        'peptides_func/peptide_multi_class_dataset.csv.gz':
            'e314f7dfb1ac46ef83fe5f5aa4fe502ad4527da633b64e6b997cb0c452511de3',
        'peptides_func/splits_random_stratified_peptide.json':
            'a1201449fbc2ef40b3dcb0ed6c69f7b3158ba6c0fef2c34d3cc9892c69c6cf32',
    },
    'cora': {
        'planetoid/Cora.tar.gz':
            'ad6fd773bb9eb52fc9b2dcc11700a3ef4d9548d9f4b57ba9e47d4948f8053e16',
    },
    'citeseer': {
        'planetoid/CiteSeer.tar.gz':
            '7f34d406cd08aee0593b7c7c0da6b617e2e3b5ab3277cc6c955b459a073bb212',
    },
}


def mirror_root() -> Path | None:
    """The mirror folder named by ``$GTPE_MIRROR`` (relative paths resolve against the current
    directory), or ``None`` when the variable is unset or empty."""
    value = os.environ.get(MIRROR_ENV, '').strip()
    if not value:
        return None
    path = Path(value).expanduser().resolve()
    if not path.is_dir():
        raise DatasetError(f'{MIRROR_ENV}={value!r} is not a folder ({path} does not exist)')
    return path


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    try:
        with open(path, 'rb') as f:
            for block in iter(lambda: f.read(chunk), b''):
                h.update(block)
    except OSError as e:
        raise DatasetError(f'cannot read {path}: {e}') from e
    return h.hexdigest()


def mirror_paths(name: str, root: Path, verify: bool = True) -> dict[str, tuple[Path, str]]:
    """``{relative path: (absolute path, sha256)}`` of the mirror files of dataset ``name``.

    Raises :class:`DatasetError` if a file is missing, or (``verify``) if its sha256 differs from
    the staged file's, which means it is corrupt, truncated or a different version.
    """
    out = {}
    for rel, expected in MIRROR_FILES[name].items():
        path = root / rel
        if not path.is_file():
            raise DatasetError(f'mirror file missing for {name!r}: {path} '
                               f'(expected the layout of the staged mirror, see datasets/README.md)')
        digest = sha256_file(path)
        if verify and digest != expected:
            raise DatasetError(f'mirror file {path} is corrupt or not the staged version: '
                               f'sha256 {digest[:16]}..., expected {expected[:16]}...')
        out[rel] = (path, digest)
    return out


def _read_gzip_bytes(path: Path) -> bytes:
    try:
        with gzip.open(path, 'rb') as f:
            return f.read()
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError
        raise DatasetError(f'cannot read mirror file {path}: not a valid gzip file ({e})') from e


def _decode(path: Path, raw: bytes) -> str:
    try:
        return raw.decode('utf-8')
    except UnicodeDecodeError as e:
        raise DatasetError(f'cannot read mirror file {path}: not UTF-8 text ({e})') from e


def _parse_json(path: Path, text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DatasetError(f'cannot read mirror file {path}: invalid JSON ({e})') from e


def read_gzip_json(path: Path):
    return _parse_json(path, _decode(path, _read_gzip_bytes(path)))


def read_json(path: Path):
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise DatasetError(f'cannot read mirror file {path}: {e}') from e
    return _parse_json(path, _decode(path, raw))


def read_gzip_lines(path: Path) -> list[str]:
    return _decode(path, _read_gzip_bytes(path)).splitlines()


def read_gzip_csv(path: Path, columns: list[str]) -> list[dict]:
    """Rows of a gzipped CSV with a header holding at least ``columns``."""
    text = _decode(path, _read_gzip_bytes(path))
    try:
        reader = csv.DictReader(io.StringIO(text, newline=''))
        header = reader.fieldnames or []
        missing = [c for c in columns if c not in header]
        if missing:
            raise DatasetError(f'cannot read mirror file {path}: columns {missing} missing '
                               f'from the header {header}')
        return list(reader)
    except csv.Error as e:
        raise DatasetError(f'cannot read mirror file {path}: invalid CSV ({e})') from e


def require(cond: bool, path: Path, what: str) -> None:
    """Raise :class:`DatasetError` naming ``path`` unless ``cond`` holds (format checks)."""
    if not cond:
        raise DatasetError(f'mirror file {path} has unexpected content: {what}')
