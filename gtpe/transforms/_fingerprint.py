"""Fingerprints of transforms for :func:`gtpe.precompute`'s cache key: a transform's qualified
class name and its full parameter state (``vars`` and ``__slots__``, recursively), never its
``repr`` (PyG's ``AddRandomWalkPE(20)`` and ``(8)`` both print ``AddRandomWalkPE()``).  State
that has no deterministic value (functions, lambdas, C objects such as RNGs, locks, files)
makes a transform unfingerprintable.  The rules are listed in :func:`gtpe.precompute`'s
docstring.
"""
from __future__ import annotations

import functools
import hashlib
import os
import types
from collections import OrderedDict
from pathlib import PurePath
from typing import Any

import torch
from torch import Tensor

__all__ = ['describe_transform', 'fingerprint_problem', 'transform_encoding',
           'transform_fingerprint', 'Unfingerprintable']


class Unfingerprintable(Exception):
    """Raised inside :func:`_encode` with the reason (which attribute, what it holds)."""


_SCALARS = (type(None), bool, int, float, complex, str, bytes)
_MAX_DEPTH = 64


def _qualname(cls: type) -> str:
    return f'{cls.__module__}.{cls.__qualname__}'


def _stateless_bases() -> tuple[type, ...]:
    import typing
    return (object, typing.Generic)


def _native(cls: type) -> bool:
    """True for a class implemented in C (its instances keep state outside Python attributes:
    ``random.Random``'s base, ``torch.Generator``, numpy's generators, locks, files,
    ``functools.partial``): its own namespace holds C-level method/member descriptors."""
    if cls in _stateless_bases():
        return False
    slots = cls.__dict__.get('__slots__', ())
    slots = (slots,) if isinstance(slots, str) else tuple(slots)
    for name, v in cls.__dict__.items():
        if isinstance(v, (types.MethodDescriptorType, types.WrapperDescriptorType,
                          types.ClassMethodDescriptorType)):
            return True
        if isinstance(v, types.BuiltinFunctionType) and name == '__new__':
            return True
        if isinstance(v, types.GetSetDescriptorType) and name not in ('__dict__', '__weakref__'):
            return True
        if isinstance(v, types.MemberDescriptorType) and name not in slots:
            return True
    return False


def _slot_values(obj: Any) -> list[tuple[str, Any]]:
    out = []
    for cls in type(obj).__mro__:
        slots = cls.__dict__.get('__slots__', ())
        for name in (slots,) if isinstance(slots, str) else slots:
            if name in ('__dict__', '__weakref__'):
                continue
            attr = f'_{cls.__name__.lstrip("_")}{name}' if name.startswith('__') and \
                not name.endswith('__') else name
            out.append((f'{cls.__qualname__}.{name}', getattr(obj, attr, _UNSET)))
    return out


_UNSET = object()
_CALLABLES = (types.FunctionType, types.MethodType, types.BuiltinFunctionType,
              types.BuiltinMethodType, types.MethodDescriptorType, types.WrapperDescriptorType,
              types.MethodWrapperType, functools.partial)


def _function_kind(f: Any) -> str:
    """'a lambda defined at file.py:12', 'a function (mod.name)', ..."""
    code = getattr(f, '__code__', None)
    if getattr(f, '__name__', '') == '<lambda>' and code is not None:
        return f'a lambda defined at {os.path.basename(code.co_filename)}:{code.co_firstlineno}'
    if isinstance(f, functools.partial):
        return 'a functools.partial'
    name = getattr(f, '__qualname__', None) or repr(f)
    return f"a function ({getattr(f, '__module__', None) or '?'}.{name})"


def _digest(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def _encode(obj: Any, path: str, stack: list[int], packages: set[str]) -> Any:
    """Canonical, deterministic encoding (nested tuples of str/int) of ``obj``'s value; raises
    :class:`Unfingerprintable` for state that has none (functions, C objects, ...)."""
    import enum

    import numpy as np

    if len(stack) > _MAX_DEPTH:
        raise Unfingerprintable(f'{path} is nested more than {_MAX_DEPTH} levels deep')
    if isinstance(obj, enum.Enum):
        return ('enum', _qualname(type(obj)), obj.name)
    t = type(obj)
    if t in _SCALARS:
        if t is float:
            return ('float', obj.hex())
        if t is complex:
            return ('complex', obj.real.hex(), obj.imag.hex())
        if t is bytes:
            return ('bytes', _digest(obj))
        return (t.__name__, obj)
    if isinstance(obj, Tensor):
        if obj.layout != torch.strided or obj.is_quantized or obj.device.type == 'meta':
            raise Unfingerprintable(f'{path} is a {obj.layout} tensor on {obj.device}')
        v = obj.detach().resolve_conj().resolve_neg().cpu().contiguous().reshape(-1)
        raw = v.view(torch.uint8).numpy().tobytes() if v.numel() else b''
        return ('tensor', _qualname(t), str(obj.dtype), tuple(obj.shape), _digest(raw))
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            raise Unfingerprintable(f'{path} is a numpy array of dtype object')
        return ('ndarray', repr(obj.dtype), obj.shape, _digest(np.ascontiguousarray(obj).tobytes()))
    if isinstance(obj, np.generic):
        if obj.dtype.hasobject:
            raise Unfingerprintable(f'{path} is a numpy object scalar')
        return ('npscalar', repr(obj.dtype), _digest(obj.tobytes()))
    if isinstance(obj, (np.dtype, torch.dtype, torch.device, torch.layout, torch.memory_format)):
        return ('dtype', _qualname(t), str(obj))
    if isinstance(obj, type):
        return ('class', _qualname(obj))
    if isinstance(obj, (range, slice)):
        return (t.__name__, obj.start, obj.stop, obj.step)
    if isinstance(obj, PurePath):
        return ('path', _qualname(t), str(obj))
    if isinstance(obj, _CALLABLES):
        raise Unfingerprintable(f'{path} is {_function_kind(obj)}: its behaviour is code, '
                                 f'not parameters')
    if isinstance(obj, types.ModuleType):
        raise Unfingerprintable(f'{path} is a module ({obj.__name__})')
    if id(obj) in stack:                             # a cycle: refer to the enclosing level
        return ('ref', len(stack) - stack.index(id(obj)))
    stack.append(id(obj))
    try:
        return _encode_container(obj, path, stack, packages)
    finally:
        stack.pop()


def _encode_container(obj: Any, path: str, stack: list[int], packages: set[str]) -> Any:
    t = type(obj)
    if t in (list, tuple, torch.Size):
        return (t.__name__, tuple(_encode(v, f'{path}[{i}]', stack, packages)
                                  for i, v in enumerate(obj)))
    if t in (dict, OrderedDict):
        items = [(_encode(k, f'{path} key', stack, packages),
                  _encode(v, f'{path}[{k!r}]', stack, packages)) for k, v in obj.items()]
        return ('dict', tuple(sorted(items, key=repr)))
    if t in (set, frozenset):
        return ('set', tuple(sorted((_encode(v, f'{path} element', stack, packages)
                                     for v in obj), key=repr)))
    # any other object: its class and its attributes (vars and __slots__), recursively
    for cls in t.__mro__:
        if _native(cls) and not (isinstance(obj, (list, tuple, dict, set, frozenset)) and
                                 cls in (list, tuple, dict, set, frozenset, OrderedDict)):
            raise Unfingerprintable(f'{path} is a {_qualname(t)} object, whose state '
                                     f'({_qualname(cls)}) is not held in Python attributes')
    packages.add(t.__module__.partition('.')[0])
    content: Any = ()
    if isinstance(obj, (list, tuple)):
        content = _encode(list(obj), path, stack, packages)
    elif isinstance(obj, (dict, set, frozenset)):
        base = dict if isinstance(obj, dict) else set
        content = _encode(base(obj), path, stack, packages)
    attrs = getattr(obj, '__dict__', None)
    state = []
    if isinstance(attrs, dict):
        for k in sorted(attrs, key=repr):
            state.append((repr(k), _encode(attrs[k], f'{path}.{k}', stack, packages)))
    for name, v in _slot_values(obj):
        state.append((name, ('unset',) if v is _UNSET else
                      _encode(v, f'{path}.{name.rpartition(".")[2]}', stack, packages)))
    return ('object', _qualname(t), content, tuple(state))


def transform_encoding(t: Any) -> tuple[Any, set[str]]:
    packages: set[str] = set()
    if isinstance(t, _CALLABLES):
        raise Unfingerprintable(f'it is {_function_kind(t)}: its behaviour is code, not '
                                 f'parameters')
    return _encode(t, type(t).__name__, [], packages), packages


def fingerprint_problem(t: Any) -> str | None:
    """Why ``t`` cannot be fingerprinted (``None``: it can)."""
    try:
        transform_encoding(t)
    except Unfingerprintable as e:
        return str(e)
    return None


def transform_fingerprint(t: Any) -> str | None:
    """sha256 (hex) of a transform's qualified class name and full parameter state (see
    :func:`precompute`), or ``None`` when that state cannot be fingerprinted."""
    try:
        enc, _ = transform_encoding(t)
    except Unfingerprintable:
        return None
    return _digest(repr(enc).encode())


def describe_transform(t: Any) -> str:
    """``module.QualName`` of a transform's class, or of the function itself."""
    if isinstance(t, _CALLABLES) and hasattr(t, '__qualname__'):
        return f"{getattr(t, '__module__', None) or '?'}.{t.__qualname__}"
    return _qualname(type(t))
