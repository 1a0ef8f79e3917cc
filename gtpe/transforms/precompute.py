"""Run PE transforms over a whole dataset in batches, with an optional disk cache.

:func:`precompute` collates chunks of ``batch_size`` graphs into one block-diagonal
:class:`~torch_geometric.data.Batch` (only the attributes the transforms read, listed by
their ``batch_keys``, when all of them declare it; otherwise PyG's full collate), applies
the batch-capable gtpe transforms to the whole chunk at once (they bucket the graphs by
size internally), runs any other transform graph by graph, and splits the results back
into new :class:`~torch_geometric.data.Data` objects by slicing the batched tensors
directly (much faster than ``Batch.to_data_list``; node- and pair-level outputs are views
of one fresh tensor per chunk, like ``InMemoryDataset.get``).  Chunks of small graphs
(<= 256 nodes) on CPU run on one intra-op thread: their work is a stream of small
kernels, which 2 OpenMP threads on busy cores made 5-10x slower.

Cache (``cache_dir``): one file ``<cache_dir>/pe-<key>.pt`` per (dataset, transforms); the
key hashes the data (every graph's attribute names, dtypes, shapes and tensor bytes), every
transform's qualified class name and full parameter state (not its ``repr``) and the library
versions.  Transforms whose state cannot be fingerprinted (functions, lambdas, RNG objects,
...) are computed without the cache, with one warning.  Entries are checksummed and written
atomically; an unwritable cache folder gives a warning, not an error.  The exact design is in
:func:`precompute`'s docstring.
"""
from __future__ import annotations

import copy
import hashlib
import io
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch_geometric.data import Batch, Data
from torch_geometric.transforms import Compose

from gtpe._atomic import STALE_SECONDS, atomic_write, remove_stale_temporaries
from gtpe._progress import progress_bar
from gtpe.transforms._fingerprint import (
    Unfingerprintable,
    describe_transform,
    fingerprint_problem,
    transform_encoding,
)
from gtpe.transforms._fingerprint import transform_fingerprint  # noqa: F401 (public here)
from gtpe.transforms._sparse import single_thread
from gtpe.transforms._validate import check_edge_index, check_int

_MAGIC = b'GTPE-PE-CACHE v1\n'
_KEY_VERSION = 2          # of the cache-key scheme (v1: repr of the transforms)
_SKIP = ('batch', 'ptr')


# ----------------------------------------------------------------------------- transforms
def _flatten(transforms) -> list[Callable]:
    if transforms is None:
        return []
    if isinstance(transforms, Compose):
        out = []
        for t in transforms.transforms:
            out.extend(_flatten(t))
        return out
    if isinstance(transforms, (list, tuple)):
        out = []
        for t in transforms:
            out.extend(_flatten(t))
        return out
    if not callable(transforms):
        raise ValueError(f"precompute: transform {transforms!r} is not callable")
    return [transforms]


def _supports_batch(t) -> bool:
    flag = getattr(t, 'supports_batch', None)
    if flag is not None:
        return bool(flag)
    try:  # PE-A's transforms: batch-capable by contract
        from gtpe.transforms.lap import AddLapPE
        if isinstance(t, AddLapPE):
            return True
    except ImportError:  # pragma: no cover
        pass
    try:
        from gtpe.transforms.maglap import AddMagLapPE
        if isinstance(t, AddMagLapPE):
            return True
    except ImportError:  # pragma: no cover
        pass
    return False


def transforms_repr(transforms) -> str:
    """Readable description of the transforms (a list, a Compose or one transform), for
    messages; not the cache key (a ``repr`` may omit parameters: see :func:`cache_key`)."""
    return '[' + ', '.join(repr(t) for t in _flatten(transforms)) + ']'


# ----------------------------------------------------------------------------- fingerprint
def fingerprint(data_list: Sequence[Data]) -> str:
    """sha256 over every graph's attribute names, dtypes, shapes and bytes (order-sensitive)."""
    h = hashlib.sha256()
    h.update(f'n={len(data_list)};'.encode())
    keys = sorted({k for d in data_list for k in d.keys()})
    h.update(repr(keys).encode())
    for key in keys:
        tensors, shapes, others = [], [], []
        for i, d in enumerate(data_list):
            v = d[key] if key in d else None
            if isinstance(v, Tensor):
                v = v.detach()
                shapes.append((i, str(v.dtype), tuple(v.shape)))
                tensors.append(v.reshape(-1).cpu().view(torch.uint8) if v.numel() else
                               torch.empty(0, dtype=torch.uint8))
            else:
                others.append((i, repr(v)))
        h.update(f'{key}:{shapes!r}:{others!r}'.encode())
        if tensors:
            h.update(torch.cat(tensors).numpy().tobytes())
    h.update(repr([d.num_nodes for d in data_list]).encode())
    return h.hexdigest()


def cache_key(data_list: Sequence[Data], transforms) -> str | None:
    """The cache key of ``transforms`` over ``data_list`` (see :func:`precompute`), ``None``
    when a transform's state cannot be fingerprinted."""
    import gtpe
    encodings, packages = [], set()
    for t in _flatten(transforms):
        try:
            enc, pk = transform_encoding(t)
        except Unfingerprintable:
            return None
        encodings.append(enc)
        packages |= pk
    versions = tuple(sorted((p, str(getattr(sys.modules.get(p), '__version__', '')))
                            for p in packages))
    key = ('gtpe-pe-cache-key', _KEY_VERSION, fingerprint(data_list), tuple(encodings),
           str(getattr(gtpe, '__version__', '?')), versions)
    return hashlib.sha256(repr(key).encode()).hexdigest()


# ----------------------------------------------------------------------------- splitting
def _cat_dim(data: Data, key: str, value: Tensor) -> int | None:
    d = data.__cat_dim__(key, value)
    if d is not None and d < 0:
        d = value.dim() + d
    return d


def split_batch(batch: Batch, originals: Sequence[Data],
                original_values: dict[str, Any] | None = None) -> list[Data]:
    """Split a (transformed) Batch of ``originals`` into new Data objects, slicing each tensor
    once (``torch.split``) instead of ``Batch.to_data_list``.  Attributes whose tensor object
    is unchanged since collation are taken from ``originals``; changed/new ones are split by
    the Batch's ``_slice_dict``/``_inc_dict`` (node-level tensors also by ``ptr``)."""
    G = len(originals)
    ptr = batch.ptr.cpu() if getattr(batch, 'ptr', None) is not None else None
    if ptr is None:
        from gtpe.transforms._validate import batch_ptr
        ptr = batch_ptr(batch, 'precompute')
    node_counts = (ptr[1:] - ptr[:-1]).tolist()
    N = int(ptr[-1])
    original_values = original_values or {}
    per_key: dict[str, list[Any]] = {}
    for key in batch.keys():
        if key in _SKIP:
            continue
        value = batch[key]
        if key in original_values and original_values[key] is value:
            continue  # untouched: reuse the input's per-graph values
        if not isinstance(value, Tensor):
            if isinstance(value, (list, tuple)) and len(value) == G:
                per_key[key] = list(value)
                continue
            raise ValueError(f"precompute: cannot split non-tensor attribute {key!r}")
        cat_dim = _cat_dim(batch, key, value)
        slices = batch._slice_dict.get(key)
        dim = 0 if cat_dim is None else cat_dim
        if slices is not None and int(slices[-1]) == value.size(dim) and slices.numel() == G + 1:
            sizes = (slices[1:] - slices[:-1]).tolist()
            inc = batch._inc_dict.get(key)
            if inc is not None and isinstance(inc, Tensor) and bool((inc != 0).any()):
                rep = torch.repeat_interleave(inc.to(value.device), slices[1:] - slices[:-1]
                                              ).to(value.device)
                shape = [1] * value.dim()
                shape[dim] = -1
                value = value - rep.view(shape).to(value.dtype)
        elif cat_dim == 0 and value.size(0) == N:
            sizes = node_counts
        else:
            raise ValueError(f"precompute: cannot split attribute {key!r} of shape "
                             f"{tuple(value.shape)} back into graphs")
        parts = torch.split(value, sizes, dim=dim)
        if cat_dim is None:
            parts = [p.squeeze(0) for p in parts]
        # dim-0 parts are contiguous views of the fresh (transform-made) batched tensor, as
        # PyG's InMemoryDataset.get returns; other dims would give strided views: copy those
        per_key[key] = list(parts) if dim == 0 else [p.contiguous() for p in parts]
    removed = [k for k in original_values if k not in batch.keys() and k not in _SKIP]
    out = []
    for g, src in enumerate(originals):
        d = copy.copy(src)
        for k in removed:
            if k in d:
                del d[k]
        _store_many(d._store, per_key, g)
        out.append(d)
    return out


def _store_many(store, per_key: dict[str, list[Any]], g: int) -> None:
    """``store[k] = per_key[k][g]`` for every key, bypassing ``BaseStorage.__setitem__``'s
    slow cache lookup (an AttributeError per call) while keeping its semantics."""
    mapping = store._mapping
    cached = store.__dict__.get('_cached_attr')
    for k, vals in per_key.items():
        v = vals[g]
        if cached:
            for c in cached.values():
                c.discard(k)
        if v is None:
            mapping.pop(k, None)
        else:
            mapping[k] = v


# ----------------------------------------------------------------------------- collate
def _light_batch(items: list[Data], keys: set[str]) -> Batch | None:
    """A :class:`Batch` of ``items`` holding only ``edge_index`` and ``keys`` (what the
    transforms read), built with a few ``torch.cat`` instead of PyG's per-attribute,
    per-graph collate.  ``None`` (use the full collate) when an attribute is missing from
    some graphs, is not a tensor, or the Data class customises ``__inc__``/``__cat_dim__``."""
    if not items:
        return None
    cls = items[0].__class__
    if any(d.__class__ is not cls for d in items) or \
            cls.__inc__ is not Data.__inc__ or cls.__cat_dim__ is not Data.__cat_dim__:
        return None
    stores = [d._store._mapping for d in items]
    num_nodes = [d.num_nodes for d in items]
    if any(n is None for n in num_nodes):
        return None
    counts = torch.tensor(num_nodes, dtype=torch.long)
    G = len(items)
    ptr = torch.zeros(G + 1, dtype=torch.long)
    ptr[1:] = counts.cumsum(0)
    batch = Batch(_base_cls=cls)
    slice_dict: dict[str, Tensor] = {}
    inc_dict: dict[str, Tensor] = {}
    for key in sorted(set(keys) | {'edge_index'}):
        present = [key in m for m in stores]
        if not any(present):
            continue
        if not all(present):
            return None
        if 'batch' in key:                               # Data.__inc__: max + 1
            return None
        vals = [m[key] for m in stores]
        if not all(type(v) is Tensor for v in vals):        # no EdgeIndex/nested/sparse
            return None
        cat_dim = _cat_dim(items[0], key, vals[0])
        if cat_dim is None or len({v.dim() for v in vals}) != 1:
            return None
        sizes = torch.tensor([v.size(cat_dim) for v in vals], dtype=torch.long)
        value = torch.cat(vals, dim=cat_dim)
        inc = torch.zeros(G, dtype=torch.long)
        if 'index' in key or key == 'face':          # Data.__inc__: node-id attributes
            inc = ptr[:-1].clone()
            shape = [1] * value.dim()
            shape[cat_dim] = -1
            value = value + torch.repeat_interleave(inc, sizes).to(value.device).view(shape)
        sl = torch.zeros(G + 1, dtype=torch.long)
        sl[1:] = sizes.cumsum(0)
        batch[key] = value
        slice_dict[key] = sl
        inc_dict[key] = inc
    device = batch['edge_index'].device if 'edge_index' in batch else torch.device('cpu')
    batch.batch = torch.repeat_interleave(torch.arange(G), counts).to(device)
    batch.ptr = ptr.to(device)
    batch.num_nodes = int(ptr[-1])
    batch._num_graphs = G
    batch._slice_dict = slice_dict
    batch._inc_dict = inc_dict
    return batch


# ----------------------------------------------------------------------------- compute
def _check_collated_edges(batch: Batch, items: list[Data], offset: int) -> None:
    """Every graph's ``edge_index`` holds integer ids in ``[0, its num_nodes)``.  Checked on
    the collated Batch (vectorised) before the transforms see it: collated, an id past a
    graph's end is a node of the next graph.  The error names the graph's dataset index."""
    for i, d in enumerate(items):          # dtype/shape per graph: a collated bool or float
        ei = d._store._mapping.get('edge_index')   # edge_index may have been cast
        if ei is not None and (not isinstance(ei, Tensor) or ei.is_floating_point() or
                               ei.is_complex() or ei.dtype == torch.bool or ei.dim() != 2 or
                               ei.size(0) != 2):
            check_edge_index(d, f'precompute: graph {offset + i}')
    ei = batch['edge_index'] if 'edge_index' in batch else None
    slices = batch._slice_dict.get('edge_index')
    if ei is None or slices is None or not ei.numel():
        return
    ptr = batch.ptr.to(ei.device)
    counts = (slices[1:] - slices[:-1]).to(ei.device)
    g = torch.repeat_interleave(torch.arange(counts.numel(), device=ei.device), counts)
    local = ei - ptr[g]
    if bool(((local < 0) | (local >= (ptr[1:] - ptr[:-1])[g])).any()):
        for i, d in enumerate(items):
            check_edge_index(d, f'precompute: graph {offset + i}')


def _apply(chunk: list[Data], transforms: list[Callable], offset: int = 0) -> list[Data]:
    """Apply ``transforms`` to one chunk (graphs ``offset, offset + 1, ...`` of the dataset):
    batch-capable ones on a collated Batch."""
    items: list[Data] = list(chunk)
    i = 0
    while i < len(transforms):
        t = transforms[i]
        if _supports_batch(t):
            group = []
            while i < len(transforms) and _supports_batch(transforms[i]):
                group.append(transforms[i])
                i += 1
            keys = [getattr(tt, 'batch_keys', None) for tt in group]
            batch = None
            if all(k is not None for k in keys):
                batch = _light_batch(items, {k for ks in keys for k in ks if k})
            if batch is None:
                batch = Batch.from_data_list(items)
            _check_collated_edges(batch, items, offset)
            before = {k: batch[k] for k in batch.keys()}
            ptr = batch.ptr
            small = ptr.device.type == 'cpu' and (ptr.numel() < 2 or
                                                  int((ptr[1:] - ptr[:-1]).max()) <= 256)
            with single_thread(small):
                for tt in group:
                    batch = tt(batch)
                items = split_batch(batch, items, before)
        else:
            items = [t(copy.copy(d)) for d in items]
            i += 1
    return items


def _compute(data_list: list[Data], transforms: list[Callable], batch_size: int,
             progress: bool) -> list[Data]:
    out: list[Data] = []
    with progress_bar(total=len(data_list), desc='precompute', unit='graph',
                      enabled=progress) as bar:
        for s in range(0, len(data_list), batch_size):
            chunk = data_list[s:s + batch_size]
            out.extend(_apply(chunk, transforms, offset=s))
            bar.update(len(chunk))
    return out


def _added_bytes(data_list: Sequence[Data], outputs: Sequence[Data]) -> int:
    """Bytes (``numel * element_size``) of the tensors in ``outputs`` that the transforms added
    or changed, i.e. that are not the very tensor object of the input graph, over all graphs."""
    total = 0
    for src, out in zip(data_list, outputs):
        before = src._store._mapping
        for k, v in out._store._mapping.items():
            if isinstance(v, Tensor) and before.get(k) is not v:
                total += v.numel() * v.element_size()
    return total


def _stored_cost(payload: dict[str, Any]) -> tuple[float | None, int | None]:
    """``(seconds, bytes)`` kept with a cache entry; ``None`` for an entry written without them."""
    cost = payload.get('cost')
    if not isinstance(cost, dict):
        return None, None
    seconds, nbytes = cost.get('seconds'), cost.get('bytes')
    return (float(seconds) if isinstance(seconds, (int, float)) else None,
            int(nbytes) if isinstance(nbytes, int) else None)


# ----------------------------------------------------------------------------- cache
def _pack(data_list: list[Data], outputs: list[Data], key: str,
          cost: dict[str, Any] | None = None) -> dict[str, Any]:
    attrs: dict[str, Any] = {}
    G = len(outputs)
    keys = sorted({k for d in outputs for k in d.keys()})
    for k in keys:
        vals = [d[k] if k in d else None for d in outputs]
        if all(k in src and src[k] is v for src, v in zip(data_list, vals)):
            attrs[k] = {'kind': 'input'}
            continue
        if all(isinstance(v, Tensor) for v in vals) and G > 0:
            cat_dim = _cat_dim(outputs[0], k, vals[0])
            if cat_dim is None:
                shapes = {tuple(v.shape) for v in vals}
                if len(shapes) == 1:
                    attrs[k] = {'kind': 'stack', 'value': torch.stack([v.cpu() for v in vals])}
                    continue
            else:
                rest = {tuple(v.shape[:cat_dim]) + tuple(v.shape[cat_dim + 1:]) for v in vals}
                if len(rest) == 1 and len({v.dtype for v in vals}) == 1:
                    attrs[k] = {'kind': 'cat', 'dim': cat_dim,
                                'sizes': torch.tensor([v.size(cat_dim) for v in vals]),
                                'value': torch.cat([v.cpu() for v in vals], dim=cat_dim)}
                    continue
            attrs[k] = {'kind': 'list', 'value': [v.cpu() for v in vals]}
        else:
            attrs[k] = {'kind': 'list', 'value': vals}
    payload: dict[str, Any] = {'key': key, 'num_graphs': G, 'attrs': attrs}
    if cost is not None:
        payload['cost'] = cost
    return payload


def _unpack(payload: dict[str, Any], data_list: list[Data], key: str) -> list[Data]:
    if payload.get('key') != key or payload.get('num_graphs') != len(data_list):
        raise ValueError('cache entry does not match')
    per_key: dict[str, list[Any]] = {}
    inputs = []
    for k, a in payload['attrs'].items():
        kind = a['kind']
        if kind == 'input':
            inputs.append(k)
        elif kind == 'cat':
            sizes = a['sizes'].tolist()
            if len(sizes) != len(data_list) or sum(sizes) != a['value'].size(a['dim']):
                raise ValueError('cache entry has inconsistent sizes')
            per_key[k] = [p.clone() for p in torch.split(a['value'], sizes, dim=a['dim'])]
        elif kind == 'stack':
            per_key[k] = list(a['value'].unbind(0))
        elif kind == 'list':
            per_key[k] = list(a['value'])
        else:
            raise ValueError(f'unknown cache entry kind {kind!r}')
        if k in per_key and len(per_key[k]) != len(data_list):
            raise ValueError('cache entry has the wrong number of graphs')
    keep = set(inputs) | set(per_key)
    out = []
    for g, src in enumerate(data_list):
        d = copy.copy(src)
        store = d._store
        for k in list(store.keys()):
            if k not in keep:
                del store[k]
        for k, vals in per_key.items():
            store[k] = vals[g]
        out.append(d)
    return out


def _read_entry(path: str) -> dict[str, Any] | None:
    try:
        with open(path, 'rb') as f:
            blob = f.read()
    except OSError:
        return None
    if not blob.startswith(_MAGIC):
        return None
    rest = blob[len(_MAGIC):]
    digest, sep, payload = rest.partition(b'\n')
    if not sep or hashlib.sha256(payload).hexdigest().encode() != digest:
        return None
    try:
        return torch.load(io.BytesIO(payload), map_location='cpu', weights_only=True)
    except Exception:
        return None


def _write_entry(path: str, payload: dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save(payload, buf)
    raw = buf.getvalue()

    def write(f) -> None:
        f.write(_MAGIC)
        f.write(hashlib.sha256(raw).hexdigest().encode() + b'\n')
        f.write(raw)

    remove_stale_temporaries(os.path.dirname(path) or '.', older_than=STALE_SECONDS)
    atomic_write(path, write)


def cache_path(cache_dir: str, key: str) -> str:
    return os.path.join(cache_dir, f'pe-{key[:40]}.pt')


# ----------------------------------------------------------------------------- public API
def _check_consistent_keys(data_list: list[Data], transforms: list[Callable]) -> None:
    """Every attribute that a batched transform reads (its ``batch_keys``, e.g. ``edge_weight``
    for RWSE/RRWP/LapPE) is on every graph or on none: a mix would weight some graphs and not
    others (or break the collate).  Per-graph transforms and attributes no transform reads may
    mix freely."""
    keys: set[str] = set()
    for t in transforms:
        keys |= {k for k in (getattr(t, 'batch_keys', None) or ()) if k}
    keys.discard('edge_index')
    G = len(data_list)
    for key in sorted(keys):
        missing = [i for i, d in enumerate(data_list) if key not in d]
        if 0 < len(missing) < G:
            shown = repr(missing[:10])[:-1] + (', ...]' if len(missing) > 10 else ']')
            raise ValueError(f"precompute: {len(missing)} of {G} graphs have no {key!r} "
                             f"(graph indices {shown}) while the others have one; give every "
                             f"graph a {key} (e.g. ones for unweighted edges) or remove it "
                             f"from all of them")


def _fill_stats(stats: dict[str, Any] | None, seconds: float | None, nbytes: int,
                num_graphs: int, cached: bool) -> None:
    if stats is not None:
        stats.update(seconds=seconds, bytes=nbytes, num_graphs=num_graphs, cached=cached)


def precompute(data_list: Sequence[Data],
               transforms: Callable | Sequence[Callable] | Compose | None,
               batch_size: int = 2048, cache_dir: str | os.PathLike | None = None,
               progress: bool = True, stats: dict[str, Any] | None = None) -> list[Data]:
    r"""Apply ``transforms`` to every graph of ``data_list``, many graphs at once.

    Args:
        data_list: the graphs (any sequence of :class:`Data`, e.g. a PyG dataset).  They are
            not modified.
        transforms: a transform, a list of transforms or a :class:`Compose`.  gtpe's PE
            transforms run on a block-diagonal Batch of ``batch_size`` graphs; any other
            callable runs graph by graph (on a shallow copy).
        batch_size: graphs per collated chunk.
        cache_dir: folder for the disk cache (created if needed); ``None`` disables it.
        progress: show progress on stderr (:func:`gtpe._progress.progress_bar`: a tqdm bar on
            a terminal, a plain line at least every ``$GTPE_PROGRESS_INTERVAL`` s, default 10,
            in a log).
        stats: a dict that, when given, is updated with the cost of the encodings:
            ``seconds`` (wall time the transforms took), ``bytes`` (``numel * element_size`` of
            every tensor attribute the transforms added or changed, summed over the graphs),
            ``num_graphs`` and ``cached``.  On a cache hit (``cached: True``) ``seconds`` and
            ``bytes`` are the numbers stored with the entry when it was computed, not the time
            the load took; an entry written without them (by an older gtpe) gives
            ``seconds: None`` and ``bytes`` counted from the loaded result.

    Returns:
        ``list[Data]``: new Data objects with the inputs' attributes plus the encodings, equal
        to ``[transforms(d) for d in data_list]``.

    Raises:
        ValueError: ``batch_size < 1``; a transform that is not callable; some graphs have
            ``edge_weight`` (or another attribute a transform lists in ``batch_keys``) and
            others not (the message gives the count and the graph indices); before gtpe's
            batched transforms, a graph's ``edge_index`` that is not an integer tensor or
            holds an id outside ``[0, num_nodes)`` (the message names the graph's index).

    **Cache key.**  The entry is ``<cache_dir>/pe-<key[:40]>.pt`` with ``key`` the sha256 of
    the ``repr`` of the tuple

    * ``'gtpe-pe-cache-key', 2`` (the scheme's version),
    * the data fingerprint: sha256 over every graph's attribute names, dtypes, shapes and
      tensor bytes (:func:`fingerprint`),
    * one canonical encoding per transform, in order, after flattening lists and
      :class:`Compose` (so ``Compose([a, b])`` and ``[a, b]`` share an entry, ``[b, a]`` does
      not),
    * ``gtpe.__version__`` and the ``__version__`` of the top-level package of every class in
      the transforms' state (e.g. ``torch_geometric``),

    where a transform's encoding is its qualified class name (``module.QualName``) and its full
    state, never its ``repr`` (PyG's ``AddRandomWalkPE(20)`` and ``(8)`` both print
    ``AddRandomWalkPE()``): every attribute of ``vars(t)`` and every ``__slots__`` value,
    sorted by name, recursively — nested transforms and other objects the same way; lists,
    tuples, dicts (sorted by key), sets (sorted); ``None``, ``bool``, ``int``, ``float``
    (exact, ``float.hex``), ``complex``, ``str``, ``bytes``; enums (class and member name);
    tensors and numpy arrays (type, dtype, shape and sha256 of their bytes); numpy scalars,
    dtypes, devices, classes (by qualified name), ranges, slices and paths.  Types are kept
    apart (``1``, ``1.0``, ``True`` and ``'1'`` differ); a reference cycle is encoded by its
    depth.  **Not cacheable**: a transform that is itself a function or lambda, or whose state
    holds one (or a bound method, ``functools.partial``, a module, a sparse tensor, an
    object-dtype array), or an object implemented in C whose state is not in Python
    attributes (``random.Random``, ``torch.Generator``, numpy generators, locks, open files).
    Then the result is computed without the cache (nothing read or written) and one
    ``UserWarning`` names the transform and the attribute.  A transform's code is not part of
    the key: after editing a transform's code (not its parameters) delete the folder.

    **Entries.**  A file holds a header line, the sha256 of the payload and the payload
    (``torch.save`` of plain tensors, loaded with ``weights_only=True``; it also keeps the
    ``seconds``, ``bytes`` and ``num_graphs`` of the computation, see ``stats``); it is
    written to a temporary ``.gtpe-pe-<...>.tmp`` in the same folder, fsynced and moved into
    place with :func:`os.replace`; gtpe's own temporaries older than an hour (left by killed
    writers) are removed, no other file.  An entry whose header, checksum or contents do not
    verify is ignored (one warning), recomputed and rewritten.  If the entry cannot be written
    (a read-only or invalid ``cache_dir``, a full disk) a warning says so and the computed
    result is returned.
    """
    batch_size = check_int(batch_size, 'batch_size', 'precompute')
    data_list = [d for d in data_list]
    tlist = _flatten(transforms)
    _check_consistent_keys(data_list, tlist)
    path = None
    key = None
    if cache_dir is not None:
        key = cache_key(data_list, tlist)
        if key is None:
            problems = [f'{describe_transform(t)} ({why})' for t in tlist
                        if (why := fingerprint_problem(t)) is not None]
            warnings.warn(f"precompute: cannot fingerprint the transform "
                          f"{'; '.join(problems)}; computing without the disk cache "
                          f"({os.fspath(cache_dir)}). To cache it, use a transform whose "
                          f"parameters are plain attributes (numbers, strings, tensors, "
                          f"nested transforms)", UserWarning, stacklevel=2)
        else:
            path = cache_path(os.fspath(cache_dir), key)
            if os.path.exists(path):
                payload = _read_entry(path)
                if payload is not None:
                    try:
                        outputs = _unpack(payload, data_list, key)
                    except Exception:
                        pass
                    else:
                        seconds, nbytes = _stored_cost(payload)
                        if nbytes is None:
                            nbytes = _added_bytes(data_list, outputs)
                        _fill_stats(stats, seconds, nbytes, len(data_list), True)
                        return outputs
                warnings.warn(f"precompute: cache entry {path} is unreadable or corrupt; "
                              f"recomputing it", stacklevel=2)
    start = time.perf_counter()
    outputs = _compute(data_list, tlist, batch_size, progress)
    seconds = time.perf_counter() - start
    nbytes = _added_bytes(data_list, outputs)
    _fill_stats(stats, seconds, nbytes, len(data_list), False)
    if path is not None:
        cost = {'seconds': seconds, 'bytes': nbytes, 'num_graphs': len(data_list)}
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            _write_entry(path, _pack(data_list, outputs, key, cost))
        except OSError as e:
            warnings.warn(f"precompute: could not write the cache entry {path} ({e}); "
                          f"returning the computed result without caching it", stacklevel=2)
    return outputs
