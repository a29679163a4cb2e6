"""Dataclass fields from text: the ``knob`` field helper, numbers and ``8/255`` fractions, YAML values checked
against field types, ``--key=value`` overrides and unknown names with close-match hints.

Generic over the dataclass (``cls``): :mod:`fr_fast.config.train_config` uses it for :class:`TrainConfig`, the CLI for the
option dataclasses of ``eval`` and ``analyze``.
"""
from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import field
from typing import Any, Union

import yaml


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
    """``"0.3"``, ``"5e-4"`` or a fraction such as ``"8/255"`` -> float; ValueError otherwise."""
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
            raise ValueError(f"override {item!r} needs a value: --{key}=VALUE")
        try:
            parsed = yaml.safe_load(raw) if raw.strip() else None
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
