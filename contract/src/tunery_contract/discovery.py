"""Finding installed packs through the ``tunery.verticals`` entry-point group.

A pack that fails to import or fails its checks is reported and skipped; the others load.
Tests register packs temporarily with :func:`registered` instead of installing them.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib.metadata import entry_points

from tunery_contract.types import CONTRACT_VERSION, PackError, VerticalPack

ENTRY_POINT_GROUP = "tunery.verticals"
log = logging.getLogger(__name__)

_extra: dict[str, VerticalPack] = {}
_generation = 0


def generation() -> int:
    """Changes whenever :func:`registered` adds or removes a pack, so a cached discovery knows
    it is stale (the installed distributions themselves change only with a restart)."""
    return _generation


@dataclass
class Discovery:
    packs: dict[str, VerticalPack] = field(default_factory=dict)
    #: entry-point name -> why it was not loaded
    failures: dict[str, str] = field(default_factory=dict)

    def get(self, pack_id: str) -> VerticalPack:
        """The loaded pack ``pack_id``; PackError naming the loaded ones (and why it failed, if it did)."""
        if pack_id in self.packs:
            return self.packs[pack_id]
        if pack_id in self.failures:
            raise PackError(f"vertical {pack_id!r} is installed but failed to load: {self.failures[pack_id]}")
        available = ", ".join(sorted(self.packs)) or "none"
        raise PackError(f"no vertical {pack_id!r} is installed (available: {available})")


def discover() -> Discovery:
    found = Discovery()
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            loaded = ep.load()
            pack = loaded() if callable(loaded) and not isinstance(loaded, VerticalPack) else loaded
        except Exception as exc:  # a broken pack must not take the platform down
            found.failures[ep.name] = f"import failed: {type(exc).__name__}: {exc}"
            log.error("vertical pack %s failed to import: %s", ep.name, exc)
            continue
        _admit(found, ep.name, pack)
    for name, pack in _extra.items():
        _admit(found, name, pack)
    return found


def _admit(found: Discovery, name: str, pack: object) -> None:
    if not isinstance(pack, VerticalPack):
        found.failures[name] = f"entry point gives {type(pack).__name__}, not a VerticalPack"
        return
    problems = pack.problems() + _compatibility_problems(pack)
    problems += [f"config_defaults: {p}" for p in pack.config_problems(dict(pack.config_defaults))]
    if problems:
        found.failures[name] = "; ".join(problems)
        log.error("vertical pack %s is invalid and was skipped: %s", name, found.failures[name])
        return
    if pack.id in found.packs:
        found.failures[name] = f"pack id {pack.id!r} is already provided by another distribution"
        return
    found.packs[pack.id] = pack


def _compatibility_problems(pack: VerticalPack) -> list[str]:
    try:
        from packaging.specifiers import InvalidSpecifier, SpecifierSet
    except ImportError:  # packaging ships with pip/setuptools; without it, skip the check
        return []
    try:
        ok = CONTRACT_VERSION in SpecifierSet(pack.requires_contract)
    except InvalidSpecifier:
        return [f"requires_contract {pack.requires_contract!r} is not a version specifier"]
    if not ok:
        return [f"needs contract {pack.requires_contract}, platform provides {CONTRACT_VERSION}"]
    return []


@contextlib.contextmanager
def registered(pack: VerticalPack, name: str | None = None) -> Iterator[VerticalPack]:
    """Make ``pack`` discoverable for the duration of the block (tests, in-tree dummy packs)."""
    global _generation
    key = name or pack.id
    _extra[key] = pack
    _generation += 1
    try:
        yield pack
    finally:
        _extra.pop(key, None)
        _generation += 1
