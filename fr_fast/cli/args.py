"""Command-line options generated from a dataclass, and the one-line error contract of every command.

Each field of an options dataclass (:class:`fr_fast.config.train_config.TrainConfig`, ``EvalOptions``, ...) becomes
``--name-with-dashes VALUE`` / ``--name-with-dashes=VALUE`` / ``name_with_dashes=VALUE`` (every command spells
options with dashes; the underscore spelling ``--name_with_dashes`` is accepted as an alias); a bool field
becomes ``--name`` / ``--no-name`` (``--name=false`` also works); a list field takes one or more values
(``--lr-milestones 10 20`` or ``--lr-milestones=[10,20]``). Precedence is one rule: when a field is given
more than once, in any of these forms, the last one on the command line wins (and command-line values
override the preset's). The help line of a field is the ``help``
entry of its metadata (see :func:`fr_fast.config.fields.knob`), followed by its type and default, so a
field's description is written once, next to the field. Values are parsed and type-checked by
:mod:`fr_fast.config.train_config` (YAML scalars, ``8/255`` fractions, ``null``).

User errors (bad values, missing files, unreadable checkpoints) end with one line on stderr and exit
status 2; ``--debug`` (or ``FR_FAST_DEBUG=1``) shows the traceback instead.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import re
import signal
import sys
import typing
from typing import Any, Callable, Union

import yaml

from fr_fast.config.fields import config_from_dict, parse_overrides
from fr_fast.training.interrupt import Interrupted

# Exceptions that mean "the user asked for something that cannot be done" (their messages name the
# problem); anything else is a bug in fr_fast and keeps its traceback.
USER_ERRORS = (ValueError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError,
               ImportError)
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_BOOL_TEXT = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False,
              "0": False}


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line on stderr (exit status 2)."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=34, width=110)


def make_parser(prog: str, description: str, usage: str | None = None) -> Parser:
    """A :class:`Parser` with ``--debug`` (tracebacks for errors) already added."""
    parser = Parser(prog=prog, description=description, usage=usage, formatter_class=_HelpFormatter,
                    allow_abbrev=False)
    parser.add_argument("--debug", action="store_true", help="show the full traceback of errors")
    return parser


def add_option(parser: argparse.ArgumentParser | Any, name: str, **kwargs: Any) -> None:
    """A hand-made option spelled ``--name-with-dashes``, with ``--name_with_dashes`` as a hidden alias."""
    parser.add_argument(f"--{name}", **kwargs)
    if "_" in name or "-" in name:
        hidden = {**kwargs, "help": argparse.SUPPRESS}
        hidden.pop("metavar", None)
        parser.add_argument(f"--{name.replace('-', '_')}", **hidden,
                            dest=kwargs.get("dest", name.replace("-", "_").lstrip("_")))


def type_name(tp: Any) -> str:
    """Readable name of a field type: ``int``, ``float | None``, ``list[int]``, ``dict``."""
    origin = typing.get_origin(tp)
    if origin is Union or type(tp).__name__ == "UnionType":
        return " | ".join("None" if a is type(None) else type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list[{type_name(typing.get_args(tp)[0])}]"
    if origin is dict:
        return "dict"
    return getattr(tp, "__name__", str(tp))


def field_help(cls: type) -> dict[str, str]:
    """{field name: its one-line description} of an options dataclass; TypeError if one has none."""
    missing = [f.name for f in dataclasses.fields(cls) if not f.metadata.get("help")]
    if missing:
        raise TypeError(f"{cls.__name__} fields without a help text: {', '.join(missing)} "
                        "(declare them with fr_fast.config.fields.knob(default, help))")
    return {f.name: f.metadata["help"] for f in dataclasses.fields(cls)}


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else None


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _list_item(tp: Any) -> Any:
    """The item type of ``list[T]`` or ``list[T] | None``; None for other types."""
    if typing.get_origin(tp) is list:
        return typing.get_args(tp)[0]
    lists = [a for a in typing.get_args(tp) if typing.get_origin(a) is list]
    return typing.get_args(lists[0])[0] if lists else None


class _BoolAction(argparse.Action):
    """``--name`` -> true, ``--no-name`` -> false, ``--name=VALUE`` -> VALUE read as a bool."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, "false" if option_string.startswith("--no-") else "true")


def add_dataclass_options(parser: argparse.ArgumentParser, cls: type, title: str, *,
                          skip: tuple[str, ...] = (), defaults: dict[str, Any] | None = None) -> list[str]:
    """Add one option per field of dataclass ``cls`` under a help section ``title``; returns their names.

    The help shows ``--n-examples``; ``--n_examples`` works too (a hidden alias). ``defaults`` replaces the
    field defaults shown in the help (e.g. a preset's values, for a command that starts from a preset).
    """
    helps = field_help(cls)
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(title)
    names = []
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        tp, dest = hints[f.name], f"_field_{f.name}"
        spellings = list(dict.fromkeys([f.name.replace("_", "-"), f.name]))
        shown = defaults[f.name] if defaults is not None and f.name in defaults else _default(f)
        text = f"{helps[f.name]} [{type_name(tp)}, default: {_show(shown)}]".replace("%", "%%")
        if tp is bool:
            for i, spelling in enumerate(spellings):  # the first spelling shown, the other hidden
                group.add_argument(f"--{spelling}", f"--no-{spelling}", action=_BoolAction, dest=dest,
                                   default=argparse.SUPPRESS, help=text if i == 0 else argparse.SUPPRESS)
        else:
            metavar = type_name(tp).replace(" | None", "").replace(" | ", "|").upper()
            kwargs: dict[str, Any] = {"dest": dest, "default": argparse.SUPPRESS, "metavar": metavar}
            item = _list_item(tp)
            if item is not None:
                kwargs.update(nargs="+", metavar=type_name(item).upper())
            elif f.metadata.get("bare") is not None:
                kwargs.update(nargs="?", const=None)
            group.add_argument(f"--{spellings[0]}", help=text, **kwargs)
            for hidden in spellings[1:]:
                group.add_argument(f"--{hidden}", help=argparse.SUPPRESS, **kwargs)
        names.append(f.name)
    return names


def _takes_value(parser: argparse.ArgumentParser, token: str) -> bool:
    """Whether option ``token`` (``--name``, no ``=VALUE``) must consume the next argument as its value."""
    action = parser._option_string_actions.get(token)  # argparse has no public lookup
    return action is not None and action.nargs is None


def _fields_as_options(parser: argparse.ArgumentParser, argv: list[str], cls: type) -> list[str]:
    """Rewrite each ``field=value`` argument into ``--field=value``, so all spellings share one precedence
    rule (the last one wins) and an option with an optional or list value (a bare ``--resume``,
    ``--lr-milestones 10 20``) never swallows it. The value of an option that needs one is left alone."""
    fields = {f.name for f in dataclasses.fields(cls)}
    out: list[str] = []
    for i, token in enumerate(argv):
        if token == "--":
            return out + argv[i:]
        key, sep, _ = token.partition("=")
        previous = out[-1] if out else ""
        if (sep and not token.startswith("-") and key.replace("-", "_") in fields
                and not (previous.startswith("-") and "=" not in previous and _takes_value(parser, previous))):
            token = f"--{token}"
        out.append(token)
    return out


def _expand_bool_values(argv: list[str], cls: type) -> list[str]:
    """Rewrite ``--flag=VALUE`` of bool fields into ``--flag`` / ``--no-flag`` (argparse flags take no value)."""
    hints = typing.get_type_hints(cls)
    out = []
    for token in argv:
        name, sep, value = token.partition("=")
        key = name[2:].replace("-", "_") if name.startswith("--") else None
        if sep and key in hints and hints[key] is bool:
            if value.strip().lower() not in _BOOL_TEXT:
                raise ValueError(f"{name} expects true or false, got {value!r}")
            token = name if _BOOL_TEXT[value.strip().lower()] else f"--no-{name[2:]}"
        out.append(token)
    return out


def override_strings(args: argparse.Namespace, names: list[str]) -> list[str]:
    """The given field options of ``args`` as ``--name=value`` strings for :func:`fr_fast.config.fields.parse_overrides`."""
    overrides = []
    for name in names:
        dest = f"_field_{name}"
        if not hasattr(args, dest):
            continue
        value = getattr(args, dest)
        if value is None:  # a bare optional-value option such as --resume
            overrides.append(f"--{name}")
        elif isinstance(value, list):  # nargs="+": one YAML list value, or several scalars
            text = value[0] if len(value) == 1 and value[0].lstrip().startswith("[") else \
                "[" + ", ".join(value) + "]"
            overrides.append(f"--{name}={text}")
        else:
            overrides.append(f"--{name}={value}")
        delattr(args, dest)
    return overrides


def parse_args(parser: argparse.ArgumentParser, cls: type, names: list[str], argv: list[str] | None,
               ) -> tuple[argparse.Namespace, list[str]]:
    """Parse ``argv`` (options and positionals in any order): (the namespace of the hand-made arguments,
    the field options given, as ``--name=value`` strings)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    argv = _expand_bool_values(_fields_as_options(parser, argv, cls), cls)
    args, unknown = parser.parse_known_intermixed_args(argv)
    options = [u for u in unknown if u.startswith("-")]
    if options:  # an unknown field: config's error names it and suggests close matches
        parse_overrides(options[:1], cls)
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    return args, override_strings(args, names)


def parse_options(parser: argparse.ArgumentParser, cls: type, names: list[str], argv: list[str] | None,
                  ) -> tuple[argparse.Namespace, Any]:
    """Parse ``argv`` and build ``cls`` from its field options (fields not given keep their defaults).

    Returns (the namespace of the remaining, hand-made arguments, the ``cls`` instance).
    """
    args, overrides = parse_args(parser, cls, names, argv)
    return args, config_from_dict(parse_overrides(overrides, cls), where="the command line", cls=cls)


def debug_requested(argv: list[str] | None) -> bool:
    """True when ``--debug`` is among the arguments or FR_FAST_DEBUG is set."""
    return "--debug" in (argv or []) or os.environ.get("FR_FAST_DEBUG", "") not in ("", "0")


def run_guarded(prog: str, argv: list[str] | None, body: Callable[[], int | None]) -> int:
    """Run a command's ``body``; a user error becomes one line on stderr and exit status 2 (unless --debug);
    an exception with an ``exit_code`` (TrainingDiverged, DiskFullError, Interrupted) one line and that status,
    another OSError (an I/O failure) one line and 1, Ctrl-C one line and 130."""
    try:
        return int(body() or 0)
    except BrokenPipeError:  # `fr-fast presets | head`: the reader left; nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except KeyboardInterrupt:  # outside a training loop (which stops after its step with Interrupted)
        if debug_requested(argv):
            raise
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not interrupt the goodbye
        print(f"{prog}: interrupted (Ctrl-C)", file=sys.stderr)
        return 130
    except USER_ERRORS as exc:
        if debug_requested(argv):
            raise
        print(f"{prog}: error: {error_text(exc)}", file=sys.stderr)
        return 2
    except yaml.YAMLError as exc:
        if debug_requested(argv):
            raise
        print(f"{prog}: error: invalid YAML: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except OverflowError as exc:  # e.g. an int field too large for torch; ours name the field
        if debug_requested(argv):
            raise
        print(f"{prog}: error: a number is too large: {error_text(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:  # outcomes that carry their own exit status: divergence (1), full disk (1), a signal (130/143)
        code = getattr(exc, "exit_code", 1 if isinstance(exc, OSError) else None)  # OSError: disk, I/O: a run failure
        if code is None or debug_requested(argv):
            raise
        print(f"{prog}: {'' if isinstance(exc, Interrupted) else 'error: '}{error_text(exc)}", file=sys.stderr)
        return int(code)


def error_text(exc: BaseException) -> str:
    """One line: the exception's message with line breaks folded and terminal escape codes removed."""
    text = " ".join(_ANSI.sub("", str(exc)).split()) or type(exc).__name__
    if isinstance(exc, ImportError) and "pip install" not in text:
        text += " (install the missing package)"
    return text
