"""The one flag vocabulary of every ``crossmat`` subcommand, and its deprecated spellings.

``--output-dir`` names a folder the command writes, ``--output`` a single file, ``--formula-column`` the
formula column and ``--target`` a target column. Old spellings (``--out``, ``--column``, a folder given as
``--output``) still parse through :class:`FlagParser`: hidden from ``--help``, they print a one-line
``DeprecationWarning`` notice to stderr and are rewritten to the new flag before parsing.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["FlagParser", "rewrite_deprecated"]


def rewrite_deprecated(args: Sequence[str], deprecated: Mapping[str, str], prog: str = "crossmat") -> list[str]:
    """``args`` with each deprecated flag (``--out x`` or ``--out=x``) replaced by its new spelling; one notice
    per flag on stderr. Arguments after ``--`` are left alone."""
    out: list[str] = []
    warned: set[str] = set()
    rest = False
    for arg in args:
        if rest or not arg.startswith("--"):
            rest = rest or arg == "--"
            out.append(arg)
            continue
        flag, eq, value = arg.partition("=")
        new = deprecated.get(flag)
        if new is None:
            out.append(arg)
            continue
        if flag not in warned:
            print(f"{prog}: DeprecationWarning: {flag} is deprecated; use {new}", file=sys.stderr)
            warned.add(flag)
        out.append(f"{new}={value}" if eq else new)
    return out


class FlagParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` that accepts hidden deprecated spellings: ``deprecated={"--out": "--output-dir"}``.
    Subparsers made by :meth:`add_subparsers` are ``FlagParser`` too: each takes its parent's spellings plus its
    own ``deprecated``."""

    def __init__(self, *args: Any, deprecated: Mapping[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.deprecated = dict(deprecated or {})

    def rewrite(self, args: Sequence[str], inherited: Mapping[str, str] | None = None) -> list[str]:
        """``args`` with the deprecated flags replaced: this parser's (plus ``inherited`` ones) before a
        subcommand, the subcommand's own and this parser's after its name."""
        mapping = {**(inherited or {}), **self.deprecated}
        sub = next((a for a in self._actions if isinstance(a, argparse._SubParsersAction)), None)
        if sub is not None:
            for i, arg in enumerate(args):
                if arg in sub.choices:
                    child = sub.choices[arg]
                    tail = (child.rewrite(args[i + 1 :], mapping) if isinstance(child, FlagParser)
                            else rewrite_deprecated(args[i + 1 :], mapping, self.prog))
                    return [*rewrite_deprecated(args[:i], mapping, self.prog), arg, *tail]
        return rewrite_deprecated(args, mapping, self.prog) if mapping else list(args)

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:
        return super().parse_known_args(self.rewrite(list(sys.argv[1:] if args is None else args)), namespace)
