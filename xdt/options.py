"""Command-line flags declared on option dataclasses. A field made with `option(...)` is one flag of the command that
takes the dataclass: its help, type, choices and form live in the field's metadata, `add_options` turns the fields
into argparse arguments and `options_from` reads the parsed values back into the dataclass. A new option is one
field. (SLURM resources have their own field helper in xdt.config, since they are config keys too.)
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any


def option(default: Any = dataclasses.MISSING, help: str = "", *, flag: str | None = None,
           positional: bool = False, required: bool = False, type: Callable | None = None, choices: Sequence[str] | None = None,
           metavar: str | None = None, switch: bool = False, repeat: bool = False):
    """A dataclass field that is a flag. `flag`: its name (default `--field-name`); `type`: parses the text (int
    and float by argparse; any other parser, which raises XdtError, by `options_from`); `switch`: a flag without a
    value that sets the opposite of the default (`--overwrite`, `--no-progress`); `repeat`: a flag given once per
    value, collected into a list; `required`: argparse refuses the command without it."""
    meta = {"help": help, "flag": flag, "positional": positional, "required": required, "type": type, "choices": choices,
            "metavar": metavar, "switch": switch, "repeat": repeat}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def flag_fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if "help" in f.metadata]


def add_options(parser: argparse.ArgumentParser, cls: type) -> None:
    """One argument per `option` field of `cls`, in field order; the value lands on the field's name."""
    for f in flag_fields(cls):
        m = f.metadata
        default = f.default if f.default is not dataclasses.MISSING else None
        kw: dict[str, Any] = {"help": m["help"]}
        if m["positional"]:
            parser.add_argument(f.name, **kw)
            continue
        if m["switch"]:
            kw["action"] = "store_false" if default else "store_true"
        else:
            kw.update(type=m["type"] if m["type"] in (int, float) else None, choices=m["choices"],
                      metavar=m["metavar"], default=default, action="append" if m["repeat"] else "store")
            if m["required"]:
                kw["required"] = True
        parser.add_argument(m["flag"] or "--" + f.name.replace("_", "-"), dest=f.name, **kw)


def options_from(cls: type, args: argparse.Namespace, **given: Any):
    """The dataclass from parsed arguments, each text a field's own parser reads (its XdtError is the command's one
    error line) parsed here; a repeatable flag never given: its default list. `given` wins."""
    values = {}
    for f in flag_fields(cls):
        value, parse = getattr(args, f.name), f.metadata["type"]
        if isinstance(value, str) and parse not in (None, int, float):
            value = parse(value)
        if value is None and f.metadata["repeat"] and f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        values[f.name] = value
    return cls(**{**values, **given})
