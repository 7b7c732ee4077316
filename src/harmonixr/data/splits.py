"""Train/validation/test splits that never put one work (group) on two sides.

The groups are the cache's units (``data.groups``: joined by name, hash and melody). Every
split file records the grouping rule it was made under (``groups``: :data:`~harmonixr.data.
groups.GROUPING`); a file from an older rule (none recorded) is still read, and its units are
then not compared with today's (:func:`check_manifest`, :func:`compare_manifests`)."""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from harmonixr._files import atomic_json
from harmonixr.data.groups import GROUPING
from harmonixr.midi.corpora import UnionFind

SIDES = ("train", "val", "test")
MODES = ("group", "unseen-composer")


class Labelled(Protocol):
    path: str
    composer: str
    group: str


def _counts(n: int, fractions: tuple[float, float, float]) -> tuple[int, int]:
    """(n_val, n_test) for n units; at least one each once there are three units."""
    n_val, n_test = round(n * fractions[1]), round(n * fractions[2])
    if n >= 3:
        n_val, n_test = max(1, n_val), max(1, n_test)
    while n_val + n_test >= n and (n_val or n_test):
        if n_val >= n_test:
            n_val -= 1
        else:
            n_test -= 1
    return n_val, n_test


def _hash_joined_groups(pieces: Sequence[Labelled]) -> dict[str, str]:
    """group → the name of its unit, where groups holding byte-identical files (same sha256,
    e.g. one upload under two titles) are joined, so a file never sits on two sides."""
    parent: dict[str, str] = {}

    def find(a: str) -> str:
        parent.setdefault(a, a)
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    first: dict[str, str] = {}
    for p in pieces:
        find(p.group)
        sha = getattr(p, "sha256", None)
        if sha:
            other = first.setdefault(sha, p.group)
            ra, rb = find(other), find(p.group)
            if ra != rb:
                lo, hi = sorted((ra, rb))
                parent[hi] = lo
    return {g: find(g) for g in parent}


def make_split(
    pieces: Sequence[Labelled],
    mode: str = "group",
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int = 0,
) -> dict[str, list[int]]:
    """Indices of ``pieces`` per side.

    ``group``: per composer, its works are shuffled and dealt 80/10/10 (so each side has every
    composer with enough works). ``unseen-composer``: whole composers are dealt instead, so
    validation and test composers never appear in training.
    """
    if mode not in MODES:
        raise ValueError(f"split mode must be one of {MODES}, got {mode!r}")
    if len(fractions) != 3 or abs(sum(fractions) - 1.0) > 1e-6 or min(fractions) < 0:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1: {fractions}")
    rng = np.random.default_rng(seed)
    side_of: dict[str, str] = {}
    unit = _hash_joined_groups(pieces)
    if mode == "group":
        groups_by_composer: dict[str, list[str]] = defaultdict(list)
        owner: dict[str, str] = {}
        for p in pieces:
            g = unit[p.group]
            if g not in owner:
                owner[g] = p.composer
                groups_by_composer[p.composer].append(g)
        for composer in sorted(groups_by_composer):
            groups = sorted(groups_by_composer[composer])
            rng.shuffle(groups)
            n_val, n_test = _counts(len(groups), fractions)
            for i, g in enumerate(groups):
                side_of[g] = "val" if i < n_val else "test" if i < n_val + n_test else "train"
        key = [unit[p.group] for p in pieces]
    else:
        composers = sorted({p.composer for p in pieces})
        rng.shuffle(composers)
        n_val, n_test = _counts(len(composers), fractions)
        for i, c in enumerate(composers):
            side_of[c] = "val" if i < n_val else "test" if i < n_val + n_test else "train"
        key = [p.composer for p in pieces]
    out: dict[str, list[int]] = {s: [] for s in SIDES}
    for i, k in enumerate(key):
        out[side_of[k]].append(i)
    return out


def save_split(
    path: str | Path, pieces: Sequence[Labelled], split: dict[str, list[int]], **info: Any
) -> None:
    data = {"groups": GROUPING, **info, **{s: [pieces[i].path for i in split[s]] for s in SIDES}}
    atomic_json(path, data, indent=1)


def load_split(path: str | Path, pieces: Sequence[Labelled]) -> dict[str, list[int]]:
    """Indices of ``pieces`` per side from a saved ``split.json`` (matched by path)."""
    data = read_split(path)
    index = {p.path: i for i, p in enumerate(pieces)}
    out = {}
    for s in SIDES:
        # entries are paths, or {"path", "sha256", "group"} in a split manifest
        data[s] = [e["path"] if isinstance(e, dict) else e for e in data[s]]
        missing = [p for p in data[s] if p not in index]
        if missing:
            raise ValueError(
                f"{path}: {len(missing)} pieces are no longer in the cache, e.g. {missing[0]}"
            )
        out[s] = [index[p] for p in data[s]]
    return out


# ---------------------------------------------------------------- cross-validation folds


def _unit_hash(seed: int, salt: str, unit: str) -> float:
    """A number in [0, 1) fixed by the seed and the unit's name alone."""
    h = hashlib.sha256(f"{seed}\x00{salt}\x00{unit}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2.0**64


def fold_units(pieces: Sequence[Labelled], mode: str = "group") -> list[str]:
    """The unit each piece is dealt with: its leak-free group (``group``; byte-identical files
    joined) or, with ``unseen-composer``, its composer joined with every other composer that
    shares a group with it (one file labelled with two composers, a work key shared by
    mistake), so that no group is ever cut."""
    if mode not in MODES:
        raise ValueError(f"split mode must be one of {MODES}, got {mode!r}")
    unit = _hash_joined_groups(pieces)
    if mode == "group":
        return [unit[p.group] for p in pieces]
    uf = UnionFind()
    owner: dict[str, str] = {}
    for p in pieces:
        uf.find(p.composer)
        first = owner.setdefault(unit[p.group], p.composer)
        uf.union(first, p.composer)
    return [uf.find(p.composer) for p in pieces]


def fold_of(unit: str, folds: int, seed: int) -> int:
    """The fold of a unit: a hash of its name and the seed. Adding or dropping a file can move
    only the unit it belongs to, never another one."""
    return int(_unit_hash(seed, "fold", unit) * folds)


def fold_split(
    pieces: Sequence[Labelled],
    folds: int,
    fold: int,
    seed: int = 0,
    mode: str = "group",
    val_fraction: float = 0.1,
) -> dict[str, list[int]]:
    """Indices per side for fold ``fold`` of ``folds``: its units are the test side; of the
    other units, those whose second hash falls below ``val_fraction / (1 − 1/folds)`` are
    validation (about ``val_fraction`` of the corpus), the rest train. Every unit is a test
    unit in exactly one fold; validation never meets the fold's test side."""
    if folds < 2 or not 0 <= fold < folds:
        raise ValueError(f"fold must be in [0, {folds}) with at least 2 folds, got {fold}")
    if not 0.0 < val_fraction < 1.0 - 1.0 / folds:
        raise ValueError(f"val_fraction must be in (0, {1 - 1 / folds:.2f}), got {val_fraction}")
    units = fold_units(pieces, mode)
    cut = val_fraction / (1.0 - 1.0 / folds)
    out: dict[str, list[int]] = {s: [] for s in SIDES}
    side_of: dict[str, str] = {}
    for i, u in enumerate(units):
        if u not in side_of:
            if fold_of(u, folds, seed) == fold:
                side_of[u] = "test"
            else:
                # a fold's own draw: validation differs from fold to fold
                side_of[u] = "val" if _unit_hash(seed, f"val{fold}", u) < cut else "train"
        out[side_of[u]].append(i)
    return out


def split_manifest(
    pieces: Sequence[Any], split: dict[str, list[int]], **info: Any
) -> dict[str, Any]:
    """What fixes a split for good: per side, each piece's path, content hash and unit, and
    the grouping rule that made the units."""
    return {
        "groups": GROUPING,
        **info,
        **{
            s: [
                {
                    "path": pieces[i].path,
                    "sha256": getattr(pieces[i], "sha256", None),
                    "group": pieces[i].group,
                }
                for i in split[s]
            ]
            for s in SIDES
        },
    }


def read_split(path: str | Path) -> dict[str, Any]:
    """A saved ``split.json`` (its header and every side), checked to be one."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a readable split.json ({exc})") from None
    missing = [s for s in SIDES if not isinstance(data, dict) or not isinstance(data.get(s), list)]
    if missing:
        raise ValueError(f"{path}: not a split.json (no {', '.join(missing)} side)")
    return data


def side_groups(path: str | Path, side: str = "test") -> set[str]:
    """The groups (units) of one side of a split manifest; refused for an old split.json that
    recorded paths only."""
    entries = read_split(path)[side]
    groups = {e["group"] for e in entries if isinstance(e, dict) and e.get("group")}
    if entries and not groups:
        raise ValueError(f"{path}: no groups recorded (an old split.json)")
    return groups


def without_recurring(
    split: dict[str, list[int]], pieces: Sequence[Labelled]
) -> tuple[dict[str, list[int]], dict[str, list[str]]]:
    """``split`` without the validation and test pieces whose unit, by today's groups, also
    holds a piece of an earlier side (training before validation before test): music the model
    or its choices already saw, which a split made under an older grouping rule can hold. Returns
    the reduced split and the paths left out per side."""
    seen: set[str] = set()
    out: dict[str, list[int]] = {}
    left_out: dict[str, list[str]] = {}
    for s in SIDES:
        keep = [i for i in split[s] if pieces[i].group not in seen]
        left_out[s] = [pieces[i].path for i in split[s] if pieces[i].group in seen]
        out[s] = keep
        seen |= {pieces[i].group for i in split[s]}
    return out, left_out


def check_manifest(manifest: dict[str, Any], split: dict[str, list[int]], pieces, where: str):
    """Refuse when the cache no longer gives the recorded split: a piece changed content, unit
    or side, or pieces appeared or vanished. A split that recorded paths only (a training run's)
    is checked on paths and sides; one made under another grouping rule (see the module
    docstring) on paths, content and sides: its units came from that rule."""
    same_rule = manifest.get("groups") == GROUPING

    def entry(e: Any, side: str) -> tuple[str, tuple[Any, ...]]:
        if isinstance(e, dict):
            if not same_rule:
                return e["path"], (side, e.get("sha256"))
            return e["path"], (side, e.get("sha256"), e.get("group"))
        return e, (side,)

    recorded = dict(entry(e, s) for s in SIDES for e in manifest.get(s, []))
    now = {}
    for s in SIDES:
        for i in split[s]:
            full = (s, getattr(pieces[i], "sha256", None), pieces[i].group)
            now[pieces[i].path] = full[: len(recorded.get(pieces[i].path, full))]
    changed = [p for p in recorded if p in now and recorded[p] != now[p]]
    gone = [p for p in recorded if p not in now]
    new = [p for p in now if p not in recorded]
    if changed or gone or new:
        example = (changed or gone or new)[0]
        rule = (
            ""
            if same_rule
            else (
                f"; it was grouped by {manifest.get('groups') or 'an older rule'}, "
                f"today's groups are {GROUPING}"
            )
        )
        raise ValueError(
            f"{where}: the cache no longer matches the recorded split ({len(changed)} pieces "
            f"changed content, unit or side, {len(gone)} vanished, {len(new)} are new; e.g. "
            f"{example}{rule}). Evaluate with the cache the run was made from, or start a new run"
        )


def portable_manifest(manifest: dict[str, Any], root: str | Path) -> dict[str, Any]:
    """A split manifest whose paths are relative to ``root`` (a corpus folder), so that it can
    ship beside the weights and be checked on another machine."""
    base = Path(root).resolve()

    def rel(p: str) -> str:
        try:
            return Path(p).resolve().relative_to(base).as_posix()
        except ValueError as exc:
            raise ValueError(f"{p} is not under {base}") from exc

    out = {k: v for k, v in manifest.items() if k not in SIDES}
    for s in SIDES:
        out[s] = [
            {"path": rel(e["path"]), "sha256": e.get("sha256"), "group": e.get("group")}
            for e in manifest.get(s, [])
        ]
    return out


def compare_manifests(shipped: str | Path, rebuilt: str | Path) -> str:
    """Refuse a rebuilt split that differs from the shipped one: by content hash, every file
    must keep its side and group (paths may differ between machines). Files are counted as a
    multiset of (hash, side, group), so identical content on two sides cannot hide.

    A shipped split made under another grouping rule (``groups`` in its header) cannot come
    back: the rebuilt one replaces it, and the answer says how many files changed side or
    group. Otherwise the answer says the split came back."""
    from collections import Counter

    def sides(m: dict[str, Any], path: str | Path) -> Counter:
        entries = [(e.get("sha256"), s, e.get("group")) for s in SIDES for e in m[s]]
        if any(h is None for h, _, _ in entries):
            raise ValueError(f"{path}: a split manifest needs every file's sha256")
        return Counter(entries)

    old, now = read_split(shipped), read_split(rebuilt)
    a, b = sides(old, shipped), sides(now, rebuilt)
    if a == b:
        return f"{rebuilt}: the shipped split came back file for file"
    gone, new = a - b, b - a
    hashes = {h for h, _, _ in gone} & {h for h, _, _ in new}
    counts = (
        f"{len(hashes)} files changed side or group, {sum(gone.values()) - len(hashes)} are "
        f"missing, {sum(new.values()) - len(hashes)} are new"
    )
    if old.get("groups") != now.get("groups"):
        return (
            f"{rebuilt} replaces the shipped split {shipped}, grouped by "
            f"{old.get('groups') or 'an older rule'} (now {now.get('groups')}): {counts}"
        )
    raise ValueError(f"{rebuilt} differs from the shipped split {shipped}: {counts}")
