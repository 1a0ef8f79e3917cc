"""SMILES -> OGB molecular graph (the features of ``ogb.utils.smiles2graph``).

Node features (9 per atom, indices into ``ogb.utils.features.allowable_features``): atomic number,
chirality tag, total degree, formal charge, total number of Hs, radical electrons, hybridisation,
is-aromatic, is-in-ring. Edge features (3 per bond): bond type, bond stereo, is-conjugated. Every bond
gives two directed edges ``(i, j), (j, i)`` in RDKit bond order, exactly as OGB (Hu et al., "Open Graph
Benchmark", NeurIPS 2020) and LRGB (Dwivedi et al., NeurIPS 2022 D&B) build ogbg-molhiv and Peptides.

:func:`mol_graph_arrays` is a faster re-implementation of ``smiles2graph`` (dictionary look-ups instead
of ``list.index`` on strings; the tables come from ogb itself, so the semantics are shared); the tests
compare it with ``ogb.utils.smiles2graph``.

Fallback: RDKit >= 2025.03 rejects 7 hypervalent Al/B/Ge complexes of HIV.csv (rows 137, 987, 12882,
18293, 30784, 30785, 35728) that older RDKit versions - and therefore OGB - accepted. When the strict
parse fails, the SMILES is parsed with ``sanitize=False``, the implicit valences are computed
non-strictly, and every sanitisation step except the valence check (``SANITIZE_PROPERTIES``) is run.
For those 7 rows this reproduces the features of RDKit 2024.03.6 exactly
(fixture ``tests/data/molhiv_rdkit2024_rows.json``).

This module imports neither torch nor any gtpe module that does (``featurize_smiles`` uses the
stdlib-only :mod:`gtpe._progress`), so worker processes start quickly.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

__all__ = ['featurize_chunk', 'mol_from_smiles', 'mol_graph_arrays', 'smiles2graph']

_RDKIT_READY = False


def _rdkit():
    global _RDKIT_READY
    from rdkit import Chem, RDLogger
    if not _RDKIT_READY:
        RDLogger.DisableLog('rdApp.*')  # the fallback rows print valence errors otherwise
        _RDKIT_READY = True
    return Chem


def mol_from_smiles(smiles: str):
    """Parse ``smiles`` as ``Chem.MolFromSmiles`` does; on failure use the lenient fallback.

    Returns ``(mol, used_fallback)``. Raises ``ValueError`` if even the fallback cannot parse it.
    """
    Chem = _rdkit()
    mol = Chem.MolFromSmiles(smiles)
    if mol is not None:
        return mol, False
    mol = Chem.MolFromSmiles(smiles, sanitize=False)
    if mol is None:
        raise ValueError(f'RDKit cannot parse SMILES {smiles!r}, not even without sanitisation')
    mol.UpdatePropertyCache(strict=False)
    flags = Chem.SanitizeFlags.SANITIZE_ALL ^ Chem.SanitizeFlags.SANITIZE_PROPERTIES
    failed = Chem.SanitizeMol(mol, flags, catchErrors=True)
    if failed != Chem.SanitizeFlags.SANITIZE_NONE:
        raise ValueError(f'RDKit cannot sanitise SMILES {smiles!r} (failed step: {failed})')
    return mol, True


class _Tables:
    """Look-up tables built from ``ogb.utils.features.allowable_features`` (shared semantics)."""

    def __init__(self) -> None:
        from ogb.utils.features import allowable_features as F
        self.F = F

        def table(key):
            values = F[key]
            return {v: i for i, v in enumerate(values) if v != 'misc'}, len(values) - 1

        self.atomic, self.atomic_misc = table('possible_atomic_num_list')
        self.degree, self.degree_misc = table('possible_degree_list')
        self.charge, self.charge_misc = table('possible_formal_charge_list')
        self.numh, self.numh_misc = table('possible_numH_list')
        self.rad, self.rad_misc = table('possible_number_radical_e_list')
        # enum -> index caches; filled on first sight with OGB's own rule (str() + list look-up)
        self.chiral: dict = {}
        self.hybrid: dict = {}
        self.btype: dict = {}
        self.stereo: dict = {}

    def _safe(self, cache: dict, key: str, value) -> int:
        out = cache.get(value)
        if out is None:
            values = self.F[key]
            name = str(value)
            out = values.index(name) if name in values else len(values) - 1
            cache[value] = out
        return out

    def stereo_index(self, value) -> int:
        out = self.stereo.get(value)
        if out is None:  # OGB uses list.index here (no 'misc'): an unknown stereo is an error there too
            out = self.F['possible_bond_stereo_list'].index(str(value))
            self.stereo[value] = out
        return out


_TABLES: _Tables | None = None


def _tables() -> _Tables:
    global _TABLES
    if _TABLES is None:
        _TABLES = _Tables()
    return _TABLES


def mol_graph_arrays(mol) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(x [N,9], edge_index [2,E], edge_attr [E,3])`` int64 arrays of an RDKit molecule, as OGB."""
    T = _tables()
    atomic, atomic_misc = T.atomic, T.atomic_misc
    degree, degree_misc = T.degree, T.degree_misc
    charge, charge_misc = T.charge, T.charge_misc
    numh, numh_misc = T.numh, T.numh_misc
    rad, rad_misc = T.rad, T.rad_misc
    chiral, hybrid = T.chiral, T.hybrid
    feats: list[int] = []
    # GetAtomWithIdx/GetBondWithIdx: RDKit's GetAtoms()/GetBonds() sequences iterate in Python
    # (several calls per item), which costs more than the features themselves.
    get_atom, get_bond = mol.GetAtomWithIdx, mol.GetBondWithIdx
    for i in range(mol.GetNumAtoms()):
        a = get_atom(i)
        tag = a.GetChiralTag()
        c = chiral.get(tag)
        if c is None:
            c = T._safe(chiral, 'possible_chirality_list', tag)
        hyb = a.GetHybridization()
        h = hybrid.get(hyb)
        if h is None:
            h = T._safe(hybrid, 'possible_hybridization_list', hyb)
        feats += (
            atomic.get(a.GetAtomicNum(), atomic_misc),
            c,
            degree.get(a.GetTotalDegree(), degree_misc),
            charge.get(a.GetFormalCharge(), charge_misc),
            numh.get(a.GetTotalNumHs(), numh_misc),
            rad.get(a.GetNumRadicalElectrons(), rad_misc),
            h,
            1 if a.GetIsAromatic() else 0,
            1 if a.IsInRing() else 0,
        )
    x = np.array(feats, dtype=np.int64).reshape(-1, 9)

    btype = T.btype
    ends: list[int] = []
    bfeats: list[int] = []
    for k in range(mol.GetNumBonds()):
        b = get_bond(k)
        bt = b.GetBondType()
        t = btype.get(bt)
        if t is None:
            t = T._safe(btype, 'possible_bond_type_list', bt)
        st = b.GetStereo()
        s = T.stereo.get(st)
        if s is None:
            s = T.stereo_index(st)
        conj = 1 if b.GetIsConjugated() else 0
        ends += (b.GetBeginAtomIdx(), b.GetEndAtomIdx())
        bfeats += (t, s, conj)
    if ends:
        pairs = np.array(ends, dtype=np.int64).reshape(-1, 2)     # [B, 2] (begin, end)
        # directed edges (i, j), (j, i) per bond, interleaved as in smiles2graph
        edge_index = np.stack([pairs.reshape(-1), pairs[:, ::-1].reshape(-1)])  # [2, 2B]
        edge_attr = np.repeat(np.array(bfeats, dtype=np.int64).reshape(-1, 3), 2, axis=0)
    else:
        edge_index = np.empty((2, 0), dtype=np.int64)
        edge_attr = np.empty((0, 3), dtype=np.int64)
    return x, edge_index, edge_attr


def smiles2graph(smiles: str) -> dict:
    """Drop-in for ``ogb.utils.smiles2graph`` (same dict keys and arrays) with the lenient fallback."""
    mol, _ = mol_from_smiles(smiles)
    x, edge_index, edge_attr = mol_graph_arrays(mol)
    return {'edge_index': edge_index, 'edge_feat': edge_attr, 'node_feat': x,
            'num_nodes': len(x)}


def featurize_chunk(job: tuple[int, Sequence[str]]):
    """Featurise a chunk of SMILES into compact concatenated arrays (worker function).

    Returns ``(start, x [sum N, 9] int8, edge_index [2, sum E] int16|int32 (local ids),
    edge_attr [sum E, 3] int8, num_nodes [G] int64, num_edges [G] int64, fallback_rows list[int])``.
    """
    start, smiles_list = job
    xs, eis, eas, nn, ne, fallback = [], [], [], [], [], []
    for k, s in enumerate(smiles_list):
        mol, used = mol_from_smiles(s)
        if used:
            fallback.append(start + k)
        x, ei, ea = mol_graph_arrays(mol)
        xs.append(x)
        eis.append(ei)
        eas.append(ea)
        nn.append(x.shape[0])
        ne.append(ei.shape[1])
    x = np.concatenate(xs).astype(np.int8) if xs else np.empty((0, 9), np.int8)
    ei = np.concatenate(eis, axis=1) if eis else np.empty((2, 0), np.int64)
    ei = ei.astype(np.int16 if ei.size == 0 or ei.max() < 2**15 else np.int32)
    ea = np.concatenate(eas).astype(np.int8) if eas else np.empty((0, 3), np.int8)
    return (start, x, ei, ea, np.array(nn, dtype=np.int64), np.array(ne, dtype=np.int64),
            fallback)


def _save_chunk(folder, res) -> None:
    import os
    import tempfile
    fd, tmp = tempfile.mkstemp(prefix='.chunk', suffix='.npz', dir=folder)
    try:
        with os.fdopen(fd, 'wb') as f:
            np.savez(f, start=res[0], x=res[1], ei=res[2], ea=res[3], nn=res[4], ne=res[5],
                     fallback=np.array(res[6], dtype=np.int64))
        os.replace(tmp, os.path.join(folder, f'chunk_{res[0]:08d}_{len(res[4])}.npz'))
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _load_chunk(path):
    try:
        with np.load(path) as z:
            return (int(z['start']), z['x'], z['ei'], z['ea'], z['nn'], z['ne'],
                    z['fallback'].tolist())
    except Exception:  # noqa: BLE001 - an unreadable chunk is simply recomputed
        return None


def featurize_smiles(smiles: Sequence[str], *, num_workers: int | None = None,
                     chunk_size: int = 256, progress: bool = True,
                     desc: str = 'SMILES -> graphs', resume_dir=None):
    """Featurise many SMILES (optionally with a process pool). Returns concatenated int64 arrays
    ``(x [sum N, 9], edge_index [2, sum E] local ids, edge_attr [sum E, 3], num_nodes [G],
    num_edges [G], fallback_rows)`` in input order.

    ``num_workers``: processes (default ``$GTPE_NUM_WORKERS`` or ``os.cpu_count()``; 1 = serial).
    ``resume_dir``: finished chunks are saved there, so an interrupted run continues where it
    stopped (the caller must use a folder specific to the SMILES list and RDKit version).
    ``progress``: a bar on a terminal, a plain line at least every ``$GTPE_PROGRESS_INTERVAL``
    seconds elsewhere (:func:`gtpe._progress.progress_bar`); it counts the molecules still to do and
    names those done before (``<desc> (N done before)``).
    """
    import os

    from gtpe._progress import progress_bar

    n = len(smiles)
    jobs = [(i, list(smiles[i:i + chunk_size])) for i in range(0, n, chunk_size)]
    if num_workers is None:
        env = os.environ.get('GTPE_NUM_WORKERS', '').strip()
        num_workers = int(env) if env else (os.cpu_count() or 1)
    results = []
    if resume_dir is not None:
        os.makedirs(resume_dir, exist_ok=True)
        todo = []
        for job in jobs:
            path = os.path.join(resume_dir, f'chunk_{job[0]:08d}_{len(job[1])}.npz')
            res = _load_chunk(path) if os.path.exists(path) else None
            if res is None or len(res[4]) != len(job[1]):
                todo.append(job)
            else:
                results.append(res)
        jobs = todo
    resumed = sum(len(r[4]) for r in results)
    if resumed:
        desc = f'{desc} ({resumed} done before)'
    bar = progress_bar(total=n - resumed, desc=desc, unit='mol', enabled=progress, mininterval=0.5)

    def done(res):
        results.append(res)
        if resume_dir is not None:
            _save_chunk(resume_dir, res)
        bar.update(len(res[4]))

    try:
        if num_workers > 1 and len(jobs) > 1:
            import multiprocessing as mp
            methods = mp.get_all_start_methods()
            ctx = mp.get_context('fork' if 'fork' in methods else None)
            with ctx.Pool(min(num_workers, len(jobs))) as pool:
                for res in pool.imap_unordered(featurize_chunk, jobs):
                    done(res)
        else:
            for job in jobs:
                done(featurize_chunk(job))
    finally:
        bar.close()
    results.sort(key=lambda r: r[0])
    return _concat_results(results)


def _concat_results(results: Iterable[tuple]):
    results = list(results)
    if not results:
        return (np.empty((0, 9), np.int64), np.empty((2, 0), np.int64), np.empty((0, 3), np.int64),
                np.empty(0, np.int64), np.empty(0, np.int64), [])
    x = np.concatenate([r[1] for r in results]).astype(np.int64)
    ei = np.concatenate([r[2].astype(np.int64) for r in results], axis=1)
    ea = np.concatenate([r[3] for r in results]).astype(np.int64)
    nn = np.concatenate([r[4] for r in results])
    ne = np.concatenate([r[5] for r in results])
    fallback = sorted(i for r in results for i in r[6])
    return x, ei, ea, nn, ne, fallback
