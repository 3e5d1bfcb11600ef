"""Job flags from config dataclasses: one source of truth.

A job's settings are a dataclass (`run(cfg)` takes it). Each field is a flag, `--batch-size` for
`batch_size`, typed and defaulted as the field is, with the field's trailing comment as its help;
a field holding another config dataclass (TrainConfig, ClusterSpec, ...) contributes that one's
fields as flags, with the job's default instance giving their defaults. `main(argv)` is
`run(parse(Cfg, argv, __doc__))`; jobs.pipeline builds the dataclasses directly.

Field metadata: "choices" and "nargs" go to argparse; "skip" (on a nested config field) names the
fields that are not flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import types
import typing
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

C = TypeVar("C")


@cache
def field_help(cls: type) -> dict[str, str]:
    """Each field's trailing comment in the source of `cls` and its bases, with the comment lines
    that continue it."""
    helps: dict[str, str] = {}
    for base in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(base):
            continue
        name = None
        try:
            source = inspect.getsource(base)
        except (OSError, TypeError):  # no source at hand: flags without help
            continue
        for line in source.splitlines():
            field = re.match(r"\s+(\w+): [^#]*?(?:#\s*(.*))?$", line)
            more = re.match(r"\s+#\s+(.*)$", line)
            if field:
                name = field.group(1)
                if field.group(2):
                    helps[name] = field.group(2).strip()
            elif more and name in helps:
                helps[name] += " " + more.group(1).strip()
            else:
                name = None
    return helps


def _unwrap(hint) -> Any:
    """X of `X | None` or `X`."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        (inner,) = [a for a in args if a is not type(None)]
        return inner
    return hint


def _flag_kwargs(hint, default, required: bool, metadata) -> dict:
    kind = _unwrap(hint)
    kw: dict = {k: metadata[k] for k in ("choices", "nargs") if k in metadata}
    origin = typing.get_origin(kind)
    if kind is bool:
        return {"action": argparse.BooleanOptionalAction if default else "store_true"}
    if origin in (list, tuple):
        args = typing.get_args(kind)
        nargs = len(args) if origin is tuple and Ellipsis not in args else ("+" if required else "*")
        return {"nargs": nargs, "type": args[0], **kw}  # metadata's nargs, if any, wins
    if kind not in (int, float, str, Path):
        raise TypeError(f"no flag for a field of type {hint}")
    return {"type": kind, **kw}


def add_flags(p: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type, default=None,
              skip: tuple[str, ...] = (), prefix: str = "") -> None:
    """The flags of dataclass `cls`, defaults from the instance `default` (else the fields')."""
    hints = typing.get_type_hints(cls)
    helps = field_help(cls)
    for f in dataclasses.fields(cls):
        if not f.init or f.name in skip:
            continue
        value = getattr(default, f.name) if default is not None else _field_default(f)
        if dataclasses.is_dataclass(hints[f.name]):
            doc = " ".join((hints[f.name].__dict__.get("__doc__") or "").split())
            doc = "" if doc.startswith(hints[f.name].__name__ + "(") else doc  # dataclass's own
            group = p.add_argument_group(f.name, doc and doc.split(". ")[0].rstrip(".") + ".")
            add_flags(group, hints[f.name], value, f.metadata.get("skip", ()), f"{prefix}{f.name}.")
            continue
        required = value is dataclasses.MISSING
        kw = _flag_kwargs(hints[f.name], value, required, f.metadata)
        if "action" not in kw and "choices" not in kw:
            kw["metavar"] = f.name.upper()
        p.add_argument("--" + f.name.replace("_", "-"), dest=prefix + f.name, required=required,
                       default=None if required else value, help=helps.get(f.name), **kw)


def _field_default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def from_flags(cls: type[C], values: dict, default: C | None = None, prefix: str = "") -> C:
    """The instance of `cls` the parsed `values` (dest -> value) describe; fields that are not
    flags keep their value in `default` (else the field's default)."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        key = prefix + f.name
        if not f.init:
            continue
        if dataclasses.is_dataclass(hints[f.name]):
            inner = getattr(default, f.name) if default is not None else _field_default(f)
            kwargs[f.name] = from_flags(hints[f.name], values,
                                        None if inner is dataclasses.MISSING else inner, key + ".")
        elif key in values:
            tuple_field = typing.get_origin(_unwrap(hints[f.name])) is tuple
            kwargs[f.name] = tuple(values[key]) if tuple_field and values[key] is not None \
                else values[key]
    return dataclasses.replace(default, **kwargs) if default is not None else cls(**kwargs)


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """The job's docstring as written, each flag's default after its help (where it has one and
    the help does not already say it)."""

    def _get_help_string(self, action):
        text, default = action.help or "", action.default
        if default not in (None, "", (), argparse.SUPPRESS) and "default" not in text \
                and not action.required:
            shown = " ".join(map(str, default)) if isinstance(default, (tuple, list)) else default
            text = f"{text} (default: {shown})".strip()
        return text.replace("%", "%%")  # argparse expands %(...)s in help texts


def parser(cls: type, doc: str | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc, formatter_class=_Formatter)
    add_flags(p, cls)
    return p


def parse(cls: type[C], argv: list[str] | None, doc: str | None) -> C:
    """argv -> an instance of `cls`; a value the dataclass refuses is a usage error (exit 2)."""
    p = parser(cls, doc)
    values = vars(p.parse_args(argv))
    try:
        return from_flags(cls, values)
    except (ValueError, TypeError) as e:
        p.error(str(e))
