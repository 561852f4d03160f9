"""The plugin's package folder changes all at once or not at all.

pip writes into a staging folder beside the package folder (same file system, so moves are
renames). Only once the staged packages import does `merge` move them in: each package being
replaced is first moved aside, and any failure moves everything back. `replace` swaps a whole
new folder in (Repair); `remove` renames the folder away before deleting it. A lock file keeps
two installers (the Dependencies page and `python -m kdmsi_qgis.install`) from mixing.
"""

from __future__ import annotations

import contextlib
import csv
import os
import shutil
import time
from pathlib import Path
from typing import Iterable, Iterator, List, Set

from .catalog import dist_of_folder_entry, normalise
from .pip_run import InstallError


@contextlib.contextmanager
def locked(deps: Path) -> Iterator[None]:
    """Hold `<deps>.lock` for the block; a lock left by a process that died is taken over."""
    deps.parent.mkdir(parents=True, exist_ok=True)
    lock = deps.with_name(deps.name + ".lock")
    for _ in range(2):
        try:
            handle = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            if _owner_alive(lock):
                raise InstallError(
                    f"another install into {deps} is running (lock {lock}); wait for it to "
                    "finish, or delete the lock file if no install is running"
                ) from None
            lock.unlink(missing_ok=True)
    else:
        raise InstallError(f"could not take the lock {lock}; delete it and try again")
    os.write(handle, str(os.getpid()).encode())
    os.close(handle)
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # the plugin's own folder, when it holds nothing
            deps.parent.rmdir()


def _owner_alive(lock: Path) -> bool:
    try:
        pid = int(lock.read_text().strip() or 0)
    except (OSError, ValueError):
        return False
    if pid <= 0 or pid == os.getpid():
        return False
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process there: go by age
        return time.time() - lock.stat().st_mtime < 6 * 3600
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by another user
    return True


def staging_dir(deps: Path, purpose: str) -> Path:
    """A fresh empty folder beside `deps` for pip to write into; stale ones are cleared."""
    for stale in deps.parent.glob(f".{deps.name}.*-*"):
        shutil.rmtree(stale, ignore_errors=True)
    folder = deps.with_name(f".{deps.name}.{purpose}-{os.getpid()}")
    folder.mkdir(parents=True)
    return folder


def dists_in(folder: Path) -> Set[str]:
    """Normalised names of the distributions installed in `folder`."""
    if not folder.is_dir():
        return set()
    return {d for d in (dist_of_folder_entry(e.name) for e in folder.iterdir()) if d}


def _entries_of(folder: Path, dist: str) -> List[str]:
    """Top-level names in `folder` that belong to installed distribution `dist` (from RECORD)."""
    names: List[str] = []
    for info in folder.glob("*.dist-info"):
        if dist_of_folder_entry(info.name) != normalise(dist):
            continue
        names.append(info.name)
        record = info / "RECORD"
        if record.is_file():
            with open(record, newline="", encoding="utf-8") as handle:
                for row in csv.reader(handle):
                    if row and not row[0].startswith(".."):
                        names.append(Path(row[0]).parts[0])
    return sorted(set(names))


def merge(staging: Path, deps: Path) -> List[str]:
    """Move every package of `staging` into `deps`, replacing older copies; all or nothing.

    Returns the top-level names moved in. `staging` is removed afterwards.
    """
    deps.mkdir(parents=True, exist_ok=True)
    aside = deps.with_name(f".{deps.name}.aside-{os.getpid()}")
    aside.mkdir()
    moved_aside: List[str] = []
    moved_in: List[str] = []
    try:
        for dist in sorted(dists_in(staging)):
            for name in _entries_of(deps, dist):
                if (deps / name).exists() and name not in moved_aside:
                    os.replace(deps / name, aside / name)
                    moved_aside.append(name)
        for entry in sorted(staging.iterdir()):
            target = deps / entry.name
            if target.exists():  # shared folders such as bin/: leave ours, keep theirs aside
                os.replace(target, aside / entry.name)
                moved_aside.append(entry.name)
            os.replace(entry, target)
            moved_in.append(entry.name)
    except OSError as exc:
        _move_back(deps, aside, moved_in, moved_aside)
        raise InstallError(
            f"could not move the new packages into {deps} ({exc}); it is unchanged. "
            "Close other programs using it (or restart QGIS) and try again"
        ) from exc
    shutil.rmtree(aside, ignore_errors=True)
    shutil.rmtree(staging, ignore_errors=True)
    return moved_in


def _move_back(deps: Path, aside: Path, moved_in: Iterable[str], moved_aside: Iterable[str]):
    for name in moved_in:
        with contextlib.suppress(OSError):
            path = deps / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    for name in moved_aside:
        with contextlib.suppress(OSError):
            os.replace(aside / name, deps / name)
    shutil.rmtree(aside, ignore_errors=True)


def replace(staging: Path, deps: Path) -> None:
    """Swap `staging` in as the whole of `deps` (the old folder is deleted after the swap)."""
    old = deps.with_name(f".{deps.name}.old-{os.getpid()}")
    if deps.exists():
        _rename_away(deps, old)
    try:
        os.replace(staging, deps)
    except OSError as exc:
        if old.exists():
            os.replace(old, deps)
        raise InstallError(f"could not put the new folder in place at {deps}: {exc}") from exc
    shutil.rmtree(old, ignore_errors=True)


def remove(deps: Path) -> bool:
    """Delete `deps`; False when there was nothing to delete."""
    if not deps.exists():
        return False
    old = deps.with_name(f".{deps.name}.removed-{os.getpid()}")
    _rename_away(deps, old)
    shutil.rmtree(old, ignore_errors=True)
    return True


def _rename_away(deps: Path, to: Path) -> None:
    try:
        os.replace(deps, to)
    except OSError as exc:
        raise InstallError(
            f"{deps} is in use ({exc}); restart QGIS and press the button again before "
            "running a model"
        ) from exc
