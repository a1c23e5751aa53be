"""The tricks there are and their names, without importing any of them: the built-in ones
(``hlb_plugins.BUILTINS``) and every ``hlb.tricks`` entry point of the installed distributions.

A trick's *name* is its config section and what its ``hlb_trick_info`` says; its *qualified
name* is ``DIST:NAME``, DIST being its distribution's normalised name (``hlb-mixup:mixup``) or
``builtin`` for hlb's own (``builtin:tta``). The name hlb knows a trick by (its *ref*: the
plugin's name, what ``cfg.tricks`` and run records list) is the bare name where that means
this trick, else the qualified one. Where two tricks share a name neither is dropped: the bare
name means the built-in one, or is an error between two distributions, and each command that
loads tricks says so on stderr in one line (once per process)."""

from __future__ import annotations

import importlib.metadata as md
import re
import sys
from dataclasses import dataclass
from typing import Iterable

from hlbcli.errors import UsageError
from hlbcli.config import unknown_key_message

ENTRY_POINT_GROUP = "hlb.tricks"
#: the DIST of ``DIST:NAME`` that names a built-in trick
BUILTIN = "builtin"


def builtin_tricks() -> dict[str, str]:
    """Built-in trick name -> module (the list lives with the tricks, in ``hlb_plugins``)."""
    from hlb_plugins import BUILTINS

    return dict(BUILTINS)


def third_party_entry_points() -> list[md.EntryPoint]:
    """Every ``hlb.tricks`` entry point of every installed distribution, shared names included."""
    return list(md.entry_points(group=ENTRY_POINT_GROUP))


def normalise(dist: str) -> str:
    """A distribution's name as PEP 503 normalises it: ``HLB_Mixup`` -> ``hlb-mixup``."""
    return re.sub(r"[-_.]+", "-", dist).lower()


@dataclass(frozen=True)
class Entry:
    """One trick there is: ``name`` (its section), ``dist`` (``builtin`` or a normalised
    distribution name), ``ref`` (what hlb calls it), ``origin`` (``built-in`` or ``DIST VERSION``)
    and ``target`` (the module of a built-in, the entry point of a third-party trick)."""

    name: str
    dist: str
    ref: str
    origin: str
    target: object

    @property
    def qualified(self) -> str:
        return f"{self.dist}:{self.name}"

    @property
    def builtin(self) -> bool:
        return self.dist == BUILTIN


def origin(ep: md.EntryPoint) -> tuple[str, str]:
    """(normalised distribution name, ``Name VERSION``) of an entry point."""
    dist = getattr(ep, "dist", None)
    if dist is None:
        return normalise(ep.value.split(":")[0].split(".")[0]), f"entry point {ep.value}"
    return normalise(dist.metadata["Name"]), f"{dist.metadata['Name']} {dist.version}"


@dataclass
class Catalog:
    """Every trick there is, by ref (built-ins first), and the names several of them share."""

    entries: dict[str, Entry]
    #: a name several tricks share -> those tricks (the built-in first)
    shared: dict[str, list[Entry]]

    def refs(self) -> list[str]:
        return list(self.entries)

    def lookup(self, word: str, flag: str = "") -> Entry:
        """The trick a bare or qualified name means; one line for an unknown name and for a
        bare name two distributions share."""
        where = f" in {flag}" if flag else ""
        if word in self.entries:
            return self.entries[word]
        dist, colon, name = word.rpartition(":")
        if colon and dist:
            for e in self.entries.values():
                if e.name == name and e.dist == normalise(dist):
                    return e
        elif word in self.shared:
            both = self.shared[word]
            raise UsageError(
                f"trick name '{word}'{where} is ambiguous: {_and(e.origin for e in both)} each have a trick '{word}'",
                f"write {_or(e.qualified for e in both)}",
            )
        raise UsageError(self.unknown(word, where), f"known tricks: {', '.join(self.entries)}")

    def unknown(self, word: str, where: str) -> str:
        """'unknown trick 'emaa' in --disable, did you mean 'ema'?' (the ``--set`` keys' difflib
        helper); without a close name, just the first part."""
        names = [*self.entries, *(e.qualified for e in self.entries.values() if e.qualified not in self.entries)]
        return unknown_key_message(word, [], f"trick '{word}'{where}", names)

    def refs_of(self, words: Iterable[str], flag: str, extra: Iterable[str] = ()) -> list[str]:
        """The refs of ``words`` (names in ``extra``, given plugins, stay as they are)."""
        given = set(extra)
        return [w if w in given else self.lookup(w, flag).ref for w in words]

    def name_of(self, ref: str) -> str:
        """A ref's bare name (its section); a given plugin's ref is its name."""
        e = self.entries.get(ref)
        return e.name if e is not None else ref

    def warnings(self) -> list[str]:
        out = []
        for name, both in self.shared.items():
            if both[0].builtin:
                others = both[1:]
                out.append(f"warning: trick name '{name}' is both built-in (hlbcli) and in {_and(e.origin for e in others)}: "
                           f"--enable {name} (and a preset's '{name}') trains the built-in one; write "
                           f"{_or(e.qualified for e in others)} for the other")
            else:
                out.append(f"warning: trick name '{name}' is in both {_and(e.origin for e in both)}: "
                           f"write {_or(e.qualified for e in both)} (a bare '{name}' is an error)")
        return out


def _and(words: Iterable[str]) -> str:
    w = list(words)
    return " and ".join([", ".join(w[:-1]), w[-1]]) if len(w) > 1 else "".join(w)


def _or(words: Iterable[str]) -> str:
    w = list(words)
    return " or ".join([", ".join(w[:-1]), w[-1]]) if len(w) > 1 else "".join(w)


#: the warnings said in this process (each once)
_said: set[str] = set()


def catalog(warn: bool = True) -> Catalog:
    """Every trick there is. With ``warn``, each shared name is said on stderr, once per process."""
    by_name: dict[str, list[Entry]] = {}
    for name, module in builtin_tricks().items():
        by_name.setdefault(name, []).append(Entry(name, BUILTIN, name, "built-in", module))
    seen = {(BUILTIN, n) for n in by_name}
    for ep in third_party_entry_points():
        dist, where = origin(ep)
        if (dist, ep.name) not in seen:  # one distribution on the path twice
            seen.add((dist, ep.name))
            by_name.setdefault(ep.name, []).append(Entry(ep.name, dist, ep.name, where, ep))
    entries: dict[str, Entry] = {}
    shared = {}
    for name, found in by_name.items():
        if len(found) > 1:
            # the bare name means the built-in (as it did before the other was installed)
            found = [found[0]] + [_qualified(e) for e in found[1:]] if found[0].builtin else [_qualified(e) for e in found]
            shared[name] = found
        entries.update((e.ref, e) for e in found)
    # built-ins first, then third-party tricks as their distributions come
    order = sorted(entries.values(), key=lambda e: not e.builtin)
    cat = Catalog({e.ref: e for e in order}, shared)
    if warn:
        for line in cat.warnings():
            if line not in _said:
                _said.add(line)
                print(line, file=sys.stderr, flush=True)
    return cat


def _qualified(e: Entry) -> Entry:
    return Entry(e.name, e.dist, e.qualified, e.origin, e.target)
