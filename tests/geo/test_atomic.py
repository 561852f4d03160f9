"""Tests for kdmsi.geo.atomic: atomic outputs, refusal to overwrite, cleanup on errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kdmsi.geo import atomic
from kdmsi.geo.atomic import OutputNotWritableError, atomic_output
from kdmsi.progress import Cancelled, check_cancel, report


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_success_moves_temp_into_place(tmp_path):
    target = tmp_path / "out.tif"
    with atomic_output(target, overwrite=False) as temp:
        assert temp.parent == tmp_path
        assert temp.suffix == ".tif"
        assert temp.name.startswith(".out.tmp-")
        assert not temp.exists()
        temp.write_bytes(b"data")
    assert target.read_bytes() == b"data"
    assert _listing(tmp_path) == ["out.tif"]


@pytest.mark.parametrize("error", [RuntimeError("boom"), Cancelled("stop"), KeyboardInterrupt()])
def test_exception_leaves_no_partial_file(tmp_path, error):
    target = tmp_path / "out.gpkg"
    with pytest.raises(type(error)):
        with atomic_output(target, overwrite=False) as temp:
            temp.write_bytes(b"partial")
            Path(f"{temp}-wal").write_bytes(b"wal")
            raise error
    assert _listing(tmp_path) == []


def test_exception_keeps_existing_target(tmp_path):
    target = tmp_path / "out.tif"
    target.write_bytes(b"old")
    with pytest.raises(ValueError):
        with atomic_output(target, overwrite=True) as temp:
            temp.write_bytes(b"new")
            raise ValueError("fail")
    assert target.read_bytes() == b"old"
    assert _listing(tmp_path) == ["out.tif"]


def test_refuses_to_overwrite(tmp_path):
    target = tmp_path / "out.tif"
    target.write_bytes(b"old")
    with pytest.raises(FileExistsError, match="--overwrite"):
        with atomic_output(target, overwrite=False):
            pytest.fail("must not get here")
    assert target.read_bytes() == b"old"


def test_overwrite_replaces(tmp_path):
    target = tmp_path / "out.tif"
    target.write_bytes(b"old")
    with atomic_output(target, overwrite=True) as temp:
        temp.write_bytes(b"new")
    assert target.read_bytes() == b"new"


def test_sidecars_move_and_stale_ones_go(tmp_path):
    target = tmp_path / "out.shp"
    for ext in (".shp", ".dbf", ".cpg"):
        (tmp_path / f"out{ext}").write_bytes(b"old")
    (tmp_path / "out.tif").write_bytes(b"unrelated")
    with atomic_output(target, overwrite=True) as temp:
        stem = temp.parent / temp.stem
        for ext in (".shp", ".shx", ".dbf", ".prj"):
            Path(f"{stem}{ext}").write_bytes(ext.encode())
    assert _listing(tmp_path) == ["out.dbf", "out.prj", "out.shp", "out.shx", "out.tif"]
    assert (tmp_path / "out.dbf").read_bytes() == b".dbf"
    assert (tmp_path / "out.tif").read_bytes() == b"unrelated"


def test_tif_aux_xml_moves_along(tmp_path):
    target = tmp_path / "prob.tif"
    with atomic_output(target) as temp:
        temp.write_bytes(b"tif")
        Path(f"{temp}.aux.xml").write_text("<x/>")
    assert _listing(tmp_path) == ["prob.tif", "prob.tif.aux.xml"]


def test_nothing_written_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing was written"):
        with atomic_output(tmp_path / "out.tif"):
            pass
    assert _listing(tmp_path) == []


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        with atomic_output(tmp_path / "nope" / "out.tif"):
            pass


def test_target_is_a_folder(tmp_path):
    with pytest.raises(IsADirectoryError):
        with atomic_output(tmp_path, overwrite=True):
            pass


def test_unwritable_folder_checked_up_front(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic.os, "access", lambda *_: False)
    with pytest.raises(OutputNotWritableError, match="not writable") as info:
        with atomic_output(tmp_path / "out.tif"):
            pytest.fail("must not get here")
    assert isinstance(info.value, PermissionError)


def test_unwritable_folder_detected_by_probe(tmp_path, monkeypatch):
    def refuse(*_args, **_kwargs):
        raise PermissionError("denied")

    monkeypatch.setattr(atomic.tempfile, "mkstemp", refuse)
    with pytest.raises(OutputNotWritableError, match="cannot create a file"):
        with atomic_output(tmp_path / "out.tif"):
            pytest.fail("must not get here")


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores folder permissions")
def test_readonly_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(PermissionError):
            with atomic_output(folder / "out.tif"):
                pass
    finally:
        folder.chmod(0o700)


def test_check_cancel_and_report():
    check_cancel(None)
    check_cancel(lambda: False)
    with pytest.raises(Cancelled):
        check_cancel(lambda: True)
    seen = []
    report(lambda f, m: seen.append((f, m)), 1.5, "x")
    report(None, 0.5, "ignored")
    assert seen == [(1.0, "x")]


def test_atomic_folder_replaces_a_folder_whole_or_not_at_all(tmp_path):
    from kdmsi.geo.atomic import atomic_folder

    target = tmp_path / "report"
    with atomic_folder(target) as tmp:
        (tmp / "a.txt").write_text("old")
        assert not target.exists()
    assert (target / "a.txt").read_text() == "old" and oct(target.stat().st_mode)[-3:] == "755"
    with pytest.raises(FileExistsError, match="--overwrite"):
        with atomic_folder(target):
            pass
    with pytest.raises(Cancelled):
        with atomic_folder(target, overwrite=True) as tmp:
            (tmp / "b.txt").write_text("new")
            check_cancel(lambda: True)
    assert sorted(p.name for p in target.iterdir()) == ["a.txt"]
    with atomic_folder(target, overwrite=True) as tmp:
        (tmp / "b.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]  # no temporary left
    with pytest.raises(NotADirectoryError):
        with atomic_folder(target / "b.txt", overwrite=True):
            pass
