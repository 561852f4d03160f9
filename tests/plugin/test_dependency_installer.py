"""The plugin's dependency installer (`kdmsi_qgis.install`) with real pip, offline.

pip runs in a real interpreter against a local folder of small hand-made wheels
(`--no-index --find-links`, `--isolated` so the machine's pip configuration is not read):
install into a fresh profile folder, import check, repair, remove, refusal of a wheel that
needs the other numpy major (2.x on QGIS 3.22's numpy 1.x, 1.x on 3.40's numpy 2.x), cancel
and failure leaving the folder as it was. One test installs the real torch CPU wheel when one
lies on this machine (skipped otherwise).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO
from wheel_helpers import make_wheel

from kdmsi_qgis.install import folder
from kdmsi_qgis.install.catalog import PACKAGES, Package
from kdmsi_qgis.install.environment import check_imports, choose_build, probe, torch_index
from kdmsi_qgis.install.installer import (
    Request,
    constraints_text,
    install,
    pip_env,
    pip_options,
    remove,
)
from kdmsi_qgis.install.pip_run import InstallCancelled, InstallError, PipSteps

APP = Package("kfake-app", "kfake_app", "kfake-app==2.0", "the test")
NEEDS_OTHER_NUMPY = Package("kfake-np", "kfake_np", "kfake-np", "the test")
QGIS_NUMPY_MAJOR = int(__import__("numpy").__version__.split(".")[0])
OTHER_NUMPY = "numpy>=2" if QGIS_NUMPY_MAJOR < 2 else "numpy<2"
"""What QGIS's numpy is not: 1.x on QGIS 3.22 (Debian 12), 2.x on 3.40 and 3.44 (Debian 13)."""
BROKEN = Package("kfake-broken", "kfake_broken", "kfake-broken", "the test")


@pytest.fixture(scope="module")
def wheels(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("wheels")
    make_wheel(folder, "kfake-core", "1.0")
    make_wheel(folder, "kfake-app", "2.0", ["kfake-core>=1.0", "numpy>=1.20"], "import kfake_core")
    make_wheel(folder, "kfake-np", "1.0", [OTHER_NUMPY])
    make_wheel(folder, "kfake-broken", "1.0", code="raise ImportError('built for another Python')")
    return folder


def request(tmp_path: Path, wheels: Path, *packages: Package) -> Request:
    deps = tmp_path / "profile" / "kdmsi_qgis" / "python3.11"
    return Request(sys.executable, deps, find_links=[str(wheels)], no_index=True, isolated=True,
                   packages=packages or (APP,))  # fmt: skip


def snapshot(path: Path) -> tuple:
    return tuple(sorted(str(p.relative_to(path)) for p in path.rglob("*"))) if path.exists() else ()


def leftovers(deps: Path) -> list:
    """Staging folders, lock files: anything of an install beside the package folder."""
    if not deps.parent.exists():
        return []
    return sorted(p.name for p in deps.parent.iterdir() if p.name.startswith(".") or
                  p.name.endswith(".lock"))  # fmt: skip


def test_install_into_a_fresh_profile_folder(tmp_path, wheels):
    req = request(tmp_path, wheels)
    steps = []
    outcome = install(req, progress=lambda fraction, message: steps.append(fraction))
    assert outcome.installed == ["kfake-app==2.0", "kfake-core==1.0"]
    assert outcome.imports["kfake_app"] == {**outcome.imports["kfake_app"], "ok": True}
    assert sorted(folder.dists_in(req.deps)) == ["kfake-app", "kfake-core"]
    assert not (req.deps / "numpy").exists()  # QGIS's numpy satisfied the requirement
    assert steps == sorted(steps) and steps[-1] == 1.0
    assert "kfake_core" in req.log_file.read_text() and leftovers(req.deps) == []
    # what the plugin sees with its path edit: the packages, from the plugin's folder
    answer = check_imports(sys.executable, [req.deps], ["kfake_app", "kfake_core"])
    assert answer["kfake_app"]["ok"] and str(req.deps) in answer["kfake_app"]["file"]
    environment = probe(sys.executable, [req.deps], (APP,))
    assert environment.version_of("kfake-app") == "2.0" and not environment.missing((APP,))
    assert install(req).message.startswith("nothing to install")


def test_repair_reinstalls_a_damaged_folder_and_remove_deletes_it(tmp_path, wheels):
    req = request(tmp_path, wheels)
    install(req)
    shutil.rmtree(req.deps / "kfake_core")  # damaged by hand; its metadata is still there
    assert not check_imports(sys.executable, [req.deps], ["kfake_app"])["kfake_app"]["ok"]
    outcome = install(req, repair=True)
    assert outcome.message.startswith("reinstalled") and outcome.imports["kfake_app"]["ok"]
    assert check_imports(sys.executable, [req.deps], ["kfake_app"])["kfake_app"]["ok"]
    assert leftovers(req.deps) == []
    assert remove(req).message.startswith("removed") and not req.deps.exists()
    assert remove(req).message.startswith("nothing to remove")


def test_a_wheel_that_needs_another_numpy_is_refused(tmp_path, wheels):
    req = request(tmp_path, wheels)
    install(req)
    before = snapshot(req.deps)
    import numpy

    with pytest.raises(InstallError) as info:
        install(request(tmp_path, wheels, NEEDS_OTHER_NUMPY))
    message = str(info.value)
    assert message.startswith(f"refused: kfake-np 1.0 needs {OTHER_NUMPY}")
    assert f"QGIS runs numpy {numpy.__version__}" in message and "\n" not in message
    assert message.endswith(f"built for numpy {QGIS_NUMPY_MAJOR}.x")
    assert snapshot(req.deps) == before and leftovers(req.deps) == []


def test_a_package_that_does_not_import_is_not_moved_in(tmp_path, wheels):
    req = request(tmp_path, wheels)
    install(req)
    before = snapshot(req.deps)
    with pytest.raises(InstallError, match="do not import in QGIS's Python .*kfake_broken"):
        install(request(tmp_path, wheels, BROKEN))
    assert snapshot(req.deps) == before and leftovers(req.deps) == []


def test_a_missing_wheel_names_the_folder(tmp_path, wheels):
    missing = Package("kfake-absent", "kfake_absent", "kfake-absent", "the test")
    with pytest.raises(
        InstallError, match="kfake-absent is not in the wheel folder .*; put its wheel there"
    ):
        install(request(tmp_path, wheels, missing))
    deps = tmp_path / "profile" / "kdmsi_qgis" / "python3.11"
    assert not deps.exists() and leftovers(deps) == []  # only pip's log, for diagnostics


@pytest.mark.parametrize("phase", ["resolving", "fetching"])
def test_cancel_leaves_the_folder_as_it_was(tmp_path, wheels, phase):
    req = request(tmp_path, wheels)
    install(request(tmp_path, wheels, Package("kfake-core", "kfake_core", "kfake-core", "")))
    before = snapshot(req.deps)
    asked = []

    def progress(fraction: float, message: str) -> None:
        if message.startswith(phase):
            asked.append(message)

    with pytest.raises(InstallCancelled):
        install(req, progress=progress, cancelled=lambda: bool(asked))
    assert asked and snapshot(req.deps) == before and leftovers(req.deps) == []
    assert "kfake-app" not in folder.dists_in(req.deps)


def test_merge_moves_everything_back_when_a_move_fails(tmp_path, wheels, monkeypatch):
    req = request(tmp_path, wheels)
    install(req)
    before = snapshot(req.deps)
    staging = folder.staging_dir(req.deps, "test")
    for name in ("kfake_app", "kfake_app-2.0.dist-info", "zz_new"):
        (staging / name).mkdir()
    (staging / "kfake_app-2.0.dist-info" / "RECORD").write_text("kfake_app/__init__.py,,\n")
    real = os.replace
    calls = []

    def flaky(source, target):
        calls.append(target)
        if Path(target).name == "zz_new":
            raise PermissionError("in use")
        return real(source, target)

    monkeypatch.setattr(folder.os, "replace", flaky)
    with pytest.raises(InstallError, match="it is unchanged"):
        folder.merge(staging, req.deps)
    monkeypatch.undo()
    assert len(calls) > 2 and snapshot(req.deps) == before


def test_constraints_pin_what_qgis_has():
    environment = probe(sys.executable, [], PACKAGES)
    pins = constraints_text(environment).split()
    import numpy

    assert f"numpy=={numpy.__version__}" in pins
    from osgeo import gdal

    assert f"gdal=={gdal.__version__}" in pins
    environment.dists.pop("numpy")
    assert "numpy<2" in constraints_text(environment).split()


def test_build_choice_and_index(monkeypatch):
    monkeypatch.setattr(sys, "platform", "linux")
    assert choose_build("auto", "NVIDIA RTX A2000 (driver 550.54)")[0] == "cuda"
    assert choose_build("auto", None) == (
        "cpu",
        "no NVIDIA GPU found (nvidia-smi absent or lists none)",
    )
    assert choose_build("cuda", None)[0] == "cuda"
    assert torch_index("cpu").endswith("/whl/cpu") and torch_index("cuda") is None
    monkeypatch.setattr(sys, "platform", "win32")
    assert "/whl/cu" in torch_index("cuda")
    monkeypatch.setattr(sys, "platform", "darwin")
    assert choose_build("auto", None)[0] == "cpu" and torch_index("cpu") is None
    with pytest.raises(ValueError, match="auto, cpu or cuda"):
        choose_build("rocm", None)


def test_the_proxy_goes_to_pip_by_environment_only(tmp_path, wheels):
    req = request(tmp_path, wheels)
    req.proxy = "http://analyst:secret@proxy.example:3128"
    assert not any("secret" in option for option in pip_options(req))
    assert pip_env(req)["PIP_PROXY"] == req.proxy
    install(req)  # offline: pip never needs the proxy, and never logs it
    assert "secret" not in req.log_file.read_text()


def test_pip_lines_become_progress():
    steps = PipSteps(2)
    assert steps.feed("Processing /w/kfake_app-2.0-py3-none-any.whl")
    assert steps.message == "fetching kfake_app-2.0-py3-none-any.whl (1 of 2)"
    assert steps.feed("  Downloading torch-2.13.0-cp311.whl (190.4 MB)")
    assert steps.message.startswith("downloading torch") and steps.fraction == 0.4
    assert not steps.feed("Requirement already satisfied: numpy")
    assert steps.feed("Installing collected packages: a, b") and steps.fraction == 0.85
    assert steps.feed("Successfully installed a-1 b-2") and steps.fraction == 1.0


def _headless(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "kdmsi_qgis.install", *args], env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def test_headless_check_and_bad_options(tmp_path):
    done = _headless("--check", "--profile", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "torch " in done.stdout and "missing" not in done.stdout.split("torch build")[0]
    for args, words in (
        (["--install", "--no-index"], "--no-index needs --find-links"),
        (["--install", "--find-links", str(tmp_path / "nope")], "is not a folder"),
        (["--check", "--python", str(tmp_path / "python")], "is not a file"),
        (["--check", "--python", "/bin/false"], "/bin/false is not a Python interpreter"),
        (["--check", "--install"], "not allowed with argument"),
    ):
        done = _headless(*args, "--profile", str(tmp_path))
        assert done.returncode == 2 and words in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    assert not (tmp_path / "kdmsi_qgis").exists()


def _python_without_torch() -> str:
    python = "/usr/bin/python3"
    if not Path(python).is_file():
        pytest.skip("no system Python to stand for a QGIS Python without torch")
    code = "import importlib.util as u, sys; sys.exit(bool(u.find_spec('torch')) or "
    code += "not u.find_spec('pip'))"
    if subprocess.run([python, "-c", code]).returncode != 0:
        pytest.skip(f"{python} has torch already, or no pip")
    return python


def test_headless_check_lists_what_a_bare_qgis_python_lacks(tmp_path):
    done = _headless("--check", "--profile", str(tmp_path), "--python", _python_without_torch())
    assert done.returncode == 1
    lines = {line.split()[0]: line for line in done.stdout.splitlines()[2:9]}
    assert "missing" in lines["torch"] and "missing" in lines["torchvision"]


# where this machine keeps wheels (the torch CPU wheel among them); another list: set the variable
WHEEL_FOLDERS = "/opt/wheels:/opt/pypi/files:/opt/pypi-more/files"
LOCAL_WHEELS = [Path(p) for p in os.environ.get("KDMSI_LOCAL_WHEELS", WHEEL_FOLDERS).split(":")]


def test_the_real_torch_cpu_wheel_installs_and_imports(tmp_path):
    python = _python_without_torch()
    if not any(list(p.glob("torch-2.13.0*.whl")) for p in LOCAL_WHEELS if p.is_dir()):
        pytest.skip("no torch 2.13.0 wheel on this machine (KDMSI_LOCAL_WHEELS)")
    req = Request(python, tmp_path / "profile" / "kdmsi_qgis" / "python3.11", no_index=True,
                  isolated=True, find_links=[str(p) for p in LOCAL_WHEELS if p.is_dir()],
                  packages=PACKAGES[:1])  # fmt: skip
    outcome = install(req)
    assert any(pin.startswith("torch==2.13.0") for pin in outcome.installed)
    assert not any(pin.split("==")[0] in ("numpy", "gdal") for pin in outcome.installed)
    assert outcome.imports["torch"]["ok"] and outcome.imports["torch_build"]["cuda"] == ""
    assert probe(python, [req.deps], PACKAGES).torch_build() == "CPU"
