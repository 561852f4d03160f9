"""`python -m kdmsi.demo`: its refusals (the chain itself is `make demo`, minutes of training)."""

from __future__ import annotations

import pytest

from kdmsi.demo import DEMO_MARKER, check_demo_arguments, main


def test_demo_refuses_a_folder_with_other_files(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(SystemExit) as stop:
        main(["--out", str(out)])
    assert stop.value.code == 2
    assert "holds other files" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize("scenes", ["0", "999"])
def test_demo_refuses_a_scene_count_out_of_range(tmp_path, capsys, scenes):
    with pytest.raises(SystemExit) as stop:
        main(["--out", str(tmp_path / "demo"), "--scenes", scenes])
    assert stop.value.code == 2
    assert "--scenes must be 1..998" in capsys.readouterr().err
    assert not (tmp_path / "demo").exists()


def test_demo_refuses_a_negative_seed(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--out", str(tmp_path / "demo"), "--seed", "-1"])
    assert stop.value.code == 2
    assert "--seed must be 0 or more" in capsys.readouterr().err
    assert not (tmp_path / "demo").exists()


def test_demo_replaces_only_an_earlier_demo(tmp_path):
    check_demo_arguments(tmp_path / "new", 12, 1)  # absent
    empty = tmp_path / "empty"
    empty.mkdir()
    check_demo_arguments(empty, 12, 1)
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / DEMO_MARKER).write_text("")
    (earlier / "kd.kdmsi").write_bytes(b"")
    check_demo_arguments(earlier, 12, 1)
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="is a file"):
        check_demo_arguments(tmp_path / "file", 12, 1)
