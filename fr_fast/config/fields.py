"""Dataclass fields from text: the ``knob`` field helper, numbers and ``8/255`` fractions, YAML values checked
against field types, ``--key=value`` overrides and unknown names with close-match hints.

Generic over the dataclass (``cls``): :mod:`fr_fast.config.train_config` uses it for :class:`TrainConfig`, the CLI for the
option dataclasses of ``eval`` and ``analyze``.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import field
from typing import Any, Union

import yaml


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.safe_load`` that refuses a mapping naming one key twice (YAML keeps the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in one mapping; keep one", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _UniqueKeyLoader.construct_mapping)


def load_yaml(stream: Any) -> Any:
    """``yaml.safe_load`` refusing duplicate keys (``yaml.YAMLError``)."""
    return yaml.load(stream, Loader=_UniqueKeyLoader)


def in_interval(value: float, interval: str) -> bool:
    """Whether ``value`` lies in an interval written like "(0, 1]" (finite values only)."""
    low, high = (float(b) for b in interval[1:-1].split(","))
    if not math.isfinite(value):
        return False
    above = value >= low if interval[0] == "[" else value > low
    below = value <= high if interval[-1] == "]" else value < high
    return above and below


def check_ranges(obj: Any, ranges: dict[str, str]) -> None:
    """ValueError naming the first field of ``obj`` outside its interval in ``ranges`` (None is always valid;
    list fields: every item)."""
    for name, interval in ranges.items():
        value = getattr(obj, name)
        for item in (value if isinstance(value, list) else [value]):
            if item is not None and not in_interval(item, interval):
                raise ValueError(f"{name} must be in {interval}, got {value}")


def knob(default: Any, help: str, *, bare: Any = None) -> Any:
    """A config field with its one-line ``help`` (shown by ``fr-fast train --help``) next to its default.

    A list or dict default is copied per instance; ``bare`` is the value a bare ``--name`` (no value) gives
    a non-bool field (bool fields: true).
    """
    metadata = {"help": help, "bare": bare}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


_FRACTION = re.compile(r"^\s*([0-9.eE+-]+)\s*/\s*([0-9.eE+-]+)\s*$")


def parse_number(text: str) -> float:
    """``"0.3"``, ``"5e-4"`` or a fraction such as ``"8/255"`` -> float; ValueError otherwise.

    Only ASCII digits make numbers (Python's ``float`` would also read "٣" or "1_0").
    """
    if text.isascii() and "_" not in text:  # float() also reads "٣" and "1_0"
        try:
            return float(text)
        except ValueError:
            pass
    match = _FRACTION.match(text)
    if match:
        try:
            return float(match.group(1)) / float(match.group(2))
        except (ValueError, ZeroDivisionError):
            pass
    raise ValueError(f"not a number or fraction: {text!r}")


def coerce(name: str, value: Any, tp: Any) -> Any:
    """Return ``value`` checked (and, for int->float or "8/255"->float, converted) against type ``tp``."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        errors = []
        for arg in typing.get_args(tp):
            try:
                return coerce(name, value, arg)
            except ValueError as exc:
                errors.append(exc)
        raise _type_error(name, tp, value)
    if tp is type(None):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        raise _type_error(name, tp, value)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise _type_error(name, tp, value)
        (item_tp,) = typing.get_args(tp)
        return [coerce(name, v, item_tp) for v in value]
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise _type_error(name, tp, value)
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _type_error(name, tp, value)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _type_error(name, tp, value)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # "5e-4" (YAML 1.1 reads it as a string) or "8/255"
            try:
                return parse_number(value)
            except ValueError:
                pass
        raise _type_error(name, tp, value)
    if tp is str:
        if isinstance(value, str):
            return value
        raise _type_error(name, tp, value)
    raise TypeError(f"unsupported field type {tp!r} for {name}")  # a bug in the dataclass, not user input


def _type_error(name: str, tp: Any, value: Any) -> ValueError:
    shown = getattr(tp, "__name__", None) if typing.get_origin(tp) is None else None
    return ValueError(f"config field {name!r} expects {shown or tp}, got {value!r} ({type(value).__name__})")


def field_types(cls: type) -> dict[str, Any]:
    """{field name: type} of the dataclass ``cls``."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def unknown_field(name: str, where: str, cls: type) -> ValueError:
    close = difflib.get_close_matches(name, list(field_types(cls)), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return ValueError(f"unknown config field {name!r} in {where}{hint}")


def parse_overrides(overrides: list[str], cls: type) -> dict[str, Any]:
    """Turn ``["--lr=0.05", "fr=frwa", "--compile", "--no-wa"]`` into
    ``{"lr": 0.05, "fr": "frwa", "compile": True, "wa": False}`` (fields of the dataclass ``cls``)."""
    types_ = field_types(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for item in overrides:
        text = item[2:] if item.startswith("--") else item
        key, sep, raw = text.partition("=")
        key = key.strip().replace("-", "_")
        if not sep and key not in types_ and key.startswith("no_") and types_.get(key[3:]) is bool:
            values[key[3:]] = False
            continue
        if key not in types_:
            raise unknown_field(key, f"override {item!r}", cls)
        if not sep:
            if types_[key] is bool:
                values[key] = True
                continue
            bare = fields[key].metadata.get("bare")
            if bare is not None:
                values[key] = bare
                continue
            raise ValueError(f"override {item!r} needs a value: --{key.replace('_', '-')}=VALUE")
        try:
            parsed = load_yaml(raw) if raw.strip() else None
        except yaml.constructor.ConstructorError as exc:  # e.g. a key given twice
            raise ValueError(f"cannot read the value of {key!r} in {item!r}: {exc.problem}") from None
        except yaml.YAMLError:
            raise ValueError(f"cannot parse the value of {key!r} in {item!r} (YAML syntax, e.g. [10, 20])") from None
        # Keep strings that YAML would turn into something else where the field wants a string
        # (e.g. out_dir=2024 or data_dir=~).
        if types_[key] in (str, Union[str, None]) and parsed is not None and not isinstance(parsed, str):
            parsed = raw
        values[key] = parsed
    return values


def config_from_dict(values: dict[str, Any], cls: type, where: str = "config") -> Any:
    """Type-check a raw mapping and build the dataclass ``cls``; unknown keys -> ValueError."""
    types_ = field_types(cls)
    kwargs = {}
    for key, value in values.items():
        if key not in types_:
            raise unknown_field(key, where, cls)
        kwargs[key] = coerce(key, value, types_[key])
    return cls(**kwargs)
