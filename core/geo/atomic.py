"""Atomic output files and folders: nothing half-written is ever left where an output belongs.

`atomic_output` hands the writer a temporary path next to the target and moves the finished
file (and its sidecars: .aux.xml, shapefile parts, GeoPackage -wal/-shm) into place only when
the block succeeds, so an interrupted run never leaves a half-written output behind.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from ..types import PathLike

log = logging.getLogger(__name__)


# Files that travel with a main file, named by what follows the main file's stem.
_SIDECARS: dict[str, tuple[str, ...]] = {
    ".shp": (".shx", ".dbf", ".prj", ".cpg", ".qix", ".sbn", ".sbx", ".qpj", ".shp.xml"),
    ".tif": (".tif.aux.xml", ".tif.ovr", ".tif.msk"),
    ".tiff": (".tiff.aux.xml", ".tiff.ovr", ".tiff.msk"),
    ".gpkg": (".gpkg-wal", ".gpkg-shm", ".gpkg-journal"),
}


class OutputNotWritableError(PermissionError):
    """The output folder cannot be written to."""


def sidecar_suffixes(path: PathLike) -> tuple[str, ...]:
    """Suffixes (after the stem) of the files that belong with ``path``, its own included."""
    suffix = Path(path).suffix
    return (suffix, *_SIDECARS.get(suffix.lower(), ()))


def check_output_target(path: PathLike, overwrite: bool) -> Path:
    """Check that ``path`` may be written; return its folder.

    Raises:
        FileExistsError: the target exists and ``overwrite`` is False.
        IsADirectoryError: the target is a folder.
        FileNotFoundError: the folder does not exist.
        OutputNotWritableError: the folder is not writable.
    """
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    if target.is_dir():
        raise IsADirectoryError(f"output {target} is a folder: give a file name instead")
    if target.exists() and not overwrite:
        raise FileExistsError(
            f"output {target} already exists: choose another name or pass --overwrite "
            "(overwrite=True) to replace it"
        )
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(
            f"output {target}: {folder} is a file, not a folder: choose a path inside a folder"
        )
    if not folder.is_dir():
        raise FileNotFoundError(f"output folder {folder} does not exist: create it first")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputNotWritableError(
            f"output folder {folder} is not writable: choose another folder or fix its permissions"
        )
    return folder


def temp_prefix(name: str) -> str:
    """``.<name>.tmp-<pid>-`` (``name``: a file's stem, a folder's name): temporary names carry
    the writing process's id, so a later run can tell a killed run's leftovers from the files
    of a live writer."""
    return f".{name}.tmp-{os.getpid()}-"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists (another user's) or cannot tell: keep its files
    return True


def remove_stale_temps(name: str, folder: Path) -> list[Path]:
    """Remove the temporary files (or folders) of the output ``name`` (a file's stem, a
    folder's name) in ``folder`` left by runs that were killed
    (SIGKILL, power loss) and name them in a warning; return what was removed.

    Only names of the form ``.<stem>.tmp-<pid>-*`` whose process no longer exists are removed;
    older names without a process id are only named.
    """
    removed, unknown = [], []
    for path in folder.glob(f".{glob_escape(name)}.tmp-*"):
        rest = path.name[len(f".{name}.tmp-") :]
        pid = rest.split("-", 1)[0]
        if not (pid.isdigit() and "-" in rest):
            unknown.append(path)
            continue
        if int(pid) == os.getpid() or _process_alive(int(pid)):
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            _remove_quietly(path)
        removed.append(path)
    if removed:
        log.warning(
            "removed %d temporary file(s) left by an interrupted run: %s",
            len(removed),
            ", ".join(p.name for p in removed),
        )
    if unknown:
        log.warning(
            "%s: temporary file(s) of an earlier run; delete them if no kdmsi run is writing to %s",
            ", ".join(p.name for p in unknown),
            folder,
        )
    return removed


def glob_escape(text: str) -> str:
    """``text`` with glob's special characters taken literally."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


def _reserve_temp_path(target: Path, folder: Path) -> Path:
    """A fresh, unused temporary name ``.<stem>.tmp-<pid>-XXXX<suffix>`` in ``folder``.

    The file is created (which proves the folder is writable) and removed again, so the writer
    creates it from scratch (some drivers refuse to open an existing empty file).
    """
    remove_stale_temps(target.stem, folder)
    try:
        fd, name = tempfile.mkstemp(
            prefix=temp_prefix(target.stem), suffix=target.suffix, dir=str(folder)
        )
    except PermissionError as exc:
        raise OutputNotWritableError(
            f"cannot create a file in {folder}: choose another folder or fix its permissions"
        ) from exc
    os.close(fd)
    os.remove(name)
    return Path(name)


def _remove_quietly(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:  # e.g. still open on Windows: do not hide the original error
        log.warning("could not remove temporary file %s: %s", path, exc)


def _move_into_place(temp: Path, target: Path) -> None:
    """Move ``temp`` and its sidecars onto ``target``; stale sidecars of the target go."""
    temp_stem = temp.parent / temp.stem
    target_stem = target.parent / target.stem
    suffixes = sidecar_suffixes(target)
    for suffix in suffixes[1:]:
        produced = Path(f"{temp_stem}{suffix}")
        destination = Path(f"{target_stem}{suffix}")
        if produced.exists():
            if suffix.endswith(("-wal", "-shm", "-journal")):
                log.warning("%s still exists after the writer closed; moving it along", produced)
            os.replace(produced, destination)
        else:
            _remove_quietly(destination)
    os.replace(temp, target)


def _remove_temp(temp: Path) -> None:
    temp_stem = temp.parent / temp.stem
    for suffix in sidecar_suffixes(temp):
        _remove_quietly(Path(f"{temp_stem}{suffix}"))


@contextlib.contextmanager
def atomic_output(path: PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Write ``path`` atomically: yield a temporary path to write, then move it into place.

    The temporary file lives in the target's folder (so the final `os.replace` is atomic) and
    keeps the extension, e.g. ``out.tif`` -> ``.out.tmp-k3j2.tif``, so drivers chosen from the
    extension still work. Sidecars written next to it (``.tif.aux.xml``, the shapefile's
    ``.dbf``/``.shx``/``.prj``, a GeoPackage's ``-wal``/``-shm`` when a writer left them) are
    moved with it. On any exception (including `Cancelled` and KeyboardInterrupt) the temporary
    file(s) are deleted and the exception re-raised; the target is left untouched. Close the
    writer (GDAL dataset, fiona collection) inside the block: an open file cannot be moved or
    deleted on Windows.

    Args:
        path: the final output path.
        overwrite: replace an existing target; when False an existing target is refused.

    Raises:
        FileExistsError, FileNotFoundError, IsADirectoryError, OutputNotWritableError: from the
        up-front checks (see `check_output_target`), before anything is written.
    """
    target = Path(path)
    folder = check_output_target(target, overwrite)
    temp = _reserve_temp_path(target, folder)
    try:
        yield temp
        if not temp.exists():
            raise FileNotFoundError(f"nothing was written to {target} (temporary file {temp})")
        check_output_target(target, overwrite)  # may have appeared meanwhile
        _move_into_place(temp, target)
    except OSError as exc:
        _remove_temp(temp)
        if str(temp) not in str(exc):
            raise
        # the writer only knew the temporary name: name the output the user asked for
        raise type(exc)(str(exc).replace(str(temp), str(target))) from exc
    except BaseException:
        _remove_temp(temp)
        raise
    log.debug("wrote %s", target)


@contextlib.contextmanager
def atomic_folder(path: PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Write the folder ``path`` atomically: yield an empty temporary folder beside it, then
    rename it into place when the block succeeds.

    An existing ``path`` is refused unless ``overwrite``; then it is moved aside, the new folder
    renamed into place and the old one deleted, so at no time does ``path`` hold a mix of old
    and new files. On any exception the temporary folder is deleted and ``path`` is untouched.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is False.
        FileNotFoundError, OutputNotWritableError: the parent folder is missing or read-only.
    """
    target = Path(path)
    parent = target.parent if str(target.parent) else Path(".")
    check_folder_target(target, overwrite)
    try:
        remove_stale_temps(target.name, parent)
        temp = Path(tempfile.mkdtemp(prefix=temp_prefix(target.name), dir=str(parent)))
        os.chmod(temp, 0o755)  # mkdtemp makes it private (0700); an output folder is not
    except PermissionError as exc:
        raise OutputNotWritableError(
            f"cannot create a folder in {parent}: choose another folder or fix its permissions"
        ) from exc
    try:
        yield temp
        check_folder_target(target, overwrite)
        old = None
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=str(parent)))
            os.replace(target, old / target.name)
        os.replace(temp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    log.debug("wrote folder %s", target)


def check_folder_target(path: PathLike, overwrite: bool) -> Path:
    """Check that the folder ``path`` may be (re)written; return its parent folder.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is False.
        NotADirectoryError: ``path`` is a file.
        FileNotFoundError: the parent folder does not exist.
        OutputNotWritableError: the parent folder is not writable.
    """
    target = Path(path)
    parent = target.parent if str(target.parent) else Path(".")
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(f"output {target} is a file: give a folder name instead")
    if target.exists() and not overwrite:
        raise FileExistsError(
            f"output folder {target} already exists: choose another name or pass --overwrite "
            "(overwrite=True) to replace it"
        )
    if not parent.is_dir():
        raise FileNotFoundError(f"output folder {parent} does not exist: create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputNotWritableError(
            f"output folder {parent} is not writable: choose another folder or fix its permissions"
        )
    return parent
