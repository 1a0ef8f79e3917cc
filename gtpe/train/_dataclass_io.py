"""Strict conversion between plain YAML data (dicts, lists, scalars) and config dataclasses.

Used by :mod:`gtpe.train.config`. Every error is a :class:`ConfigError` whose message starts with
the full dotted key path, e.g. ``model.chanels: unknown key (did you mean 'channels'?)``.
"""
from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from typing import Any, Literal, Union

__all__ = ['ConfigError', 'from_dict', 'set_path', 'to_dict']

_MISSING = dataclasses.MISSING
_FLOAT_RE = re.compile(r'^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$|^[+-]?(inf|nan)$', re.IGNORECASE)


class ConfigError(ValueError):
    """An invalid experiment configuration (one clear message with the key path)."""


def _join(path: str, key: Any) -> str:
    return f'{path}.{key}' if path else str(key)


def _describe(value: Any) -> str:
    if value is None:
        return 'null'
    if isinstance(value, dict):
        return 'a mapping'
    if isinstance(value, (list, tuple)):
        return 'a list'
    return f'{type(value).__name__} {value!r}'


def _suggest(key: Any, choices: typing.Iterable[str], list_all: bool = False) -> str:
    choices = list(choices)
    match = difflib.get_close_matches(str(key), choices, n=1, cutoff=0.6)
    if match:
        return f" (did you mean '{match[0]}'?)"
    if list_all and choices:
        return f" (known: {', '.join(choices)})"
    return ''


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return 'null'
    if isinstance(tp, type):
        if dataclasses.is_dataclass(tp):
            return 'a mapping'
        return tp.__name__
    return str(tp).replace('typing.', '')


def from_dict(cls: type, data: Any, path: str = '') -> Any:
    """Build dataclass ``cls`` from the mapping ``data``, checking keys and value types."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f'{path or "config"}: expected a mapping, got {_describe(data)}')
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            where = _join(path, key)
            raise ConfigError(f'{where}: unknown key{_suggest(key, fields, list_all=True)}')
        kwargs[key] = _convert(hints.get(key, Any), value, _join(path, key))
    for name, f in fields.items():
        if name not in kwargs and f.default is _MISSING and f.default_factory is _MISSING:
            raise ConfigError(f'{_join(path, name)}: missing required key')
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:  # validation in __post_init__
        msg, name = str(exc), cls.__name__
        where = path or 'config'
        if msg.startswith(f'{name}.'):  # 'GPSModelConfig.local must be ...' -> 'model.local ...'
            raise ConfigError(f'{where}{msg[len(name):]}') from None
        if msg.startswith(f'{name}: '):
            msg = msg[len(name) + 2:]
        raise ConfigError(f'{where}: {msg}') from None


def _convert(tp: Any, value: Any, path: str) -> Any:
    """Check/convert ``value`` against the type hint ``tp``."""
    if tp is Any or tp is object:
        return value
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)

    if origin is Union or (hasattr(types, 'UnionType') and origin is types.UnionType):
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f'{path}: must not be null')
        members = [a for a in args if a is not type(None)]
        # Try the plain scalar types first so that 'full' is accepted for str|Module.
        errors = []
        for member in members:
            try:
                return _convert(member, value, path)
            except ConfigError as exc:
                errors.append(exc)
        if len(errors) == 1:
            raise errors[0]
        names = ' or '.join(_type_name(m) for m in members)
        raise ConfigError(f'{path}: expected {names}, got {_describe(value)}')

    if origin is Literal:
        if any(type(a) is type(value) and a == value for a in args):
            return value
        choices = ', '.join(repr(a) if a is not None else 'null' for a in args)
        hint = _suggest(value, [a for a in args if isinstance(a, str)]) if isinstance(value, str) else ''
        raise ConfigError(f'{path}: expected one of {choices}, got {_describe(value)}{hint}')

    if value is None:
        raise ConfigError(f'{path}: must not be null (expected {_type_name(tp)})')

    if origin in (list, tuple, typing.Sequence) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f'{path}: expected a list, got {_describe(value)}')
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(args) != len(value):
                raise ConfigError(f'{path}: expected a list of {len(args)} items, got {len(value)}')
            return tuple(_convert(a, v, f'{path}[{i}]') for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        out = [_convert(item, v, f'{path}[{i}]') for i, v in enumerate(value)]
        return tuple(out) if (origin is tuple or tp is tuple) else out

    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f'{path}: expected a mapping, got {_describe(value)}')
        vt = args[1] if len(args) == 2 else Any
        return {k: _convert(vt, v, _join(path, k)) for k, v in value.items()}

    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if value is True:  # `rwse: true` = the sub-config with its defaults
            value = {}
        return from_dict(tp, value, path)

    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f'{path}: expected true or false, got {_describe(value)}')
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f'{path}: expected an integer, got {_describe(value)}')
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        # PyYAML (YAML 1.1) reads ``1e-3`` as a string: accept float literals.
        if isinstance(value, str) and _FLOAT_RE.match(value.strip()):
            return float(value)
        raise ConfigError(f'{path}: expected a number, got {_describe(value)}')
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f'{path}: expected a string, got {_describe(value)}')
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise ConfigError(f'{path}: expected {_type_name(tp)}, got {_describe(value)}')
    return value  # unknown typing construct: accept as is


def to_dict(obj: Any) -> Any:
    """Dataclass -> plain data that :func:`from_dict` reads back (tuples become lists)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        # fields marked omit_if_default (gtpe.models.config.OMIT_IF_DEFAULT) are left out at
        # their default, so configs saved before they existed keep their identity
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                if f.init and not (f.metadata.get('omit_if_default')
                                   and getattr(obj, f.name) == f.default)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return repr(obj)  # e.g. a module instance given in code: not serialisable


def set_path(data: dict, key: str, value: Any) -> None:
    """Set ``data[a][b][c] = value`` for ``key='a.b.c'``, creating (or replacing null) mappings."""
    parts = key.split('.')
    if not key or any(not p for p in parts):
        raise ConfigError(f"--set {key}=...: invalid key path {key!r}")
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            where = '.'.join(parts[:i + 1])
            raise ConfigError(f'--set {key}: {where} is {_describe(child)}, not a mapping')
        node = child
    node[parts[-1]] = value
