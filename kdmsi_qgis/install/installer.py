"""Install, repair and remove the plugin's packages: the one code path behind the Dependencies
page and `python -m kdmsi_qgis.install`.

An install is four steps, each in QGIS's own Python:

1. *resolve*: `pip install --dry-run --report` with a constraints file that pins numpy, GDAL
   and PyQt to the versions QGIS has, and the plugin's folder on `PYTHONPATH` so what it holds
   counts as installed. A wheel that needs another numpy fails here, before any download.
2. *fetch*: `pip install --no-deps --target <staging>` of exactly the resolved list, so pip
   never looks at, upgrades or removes anything of QGIS's.
3. *check*: the staged packages are imported in a fresh interpreter.
4. *move in*: `folder.merge` (Install) or `folder.replace` (Repair), all or nothing.

Cancel or failure at any step deletes the staging folder: the plugin's folder is as it was.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from . import folder
from .catalog import PACKAGES, PROTECTED, Package, normalise
from .environment import Environment, check_imports, choose_build, detect_gpu, probe, torch_index
from .location import pip_log
from .pip_run import InstallError, PipSteps, run_pip

Progress = Callable[[float, str], None]


@dataclass
class Request:
    """What to install where, and from which sources.

    Attributes:
        python: QGIS's interpreter (`kdmsi_qgis.deps.qgis_python()` inside QGIS).
        deps: the plugin's package folder (`location.deps_dir(profile)`).
        build: 'auto', 'cpu' or 'cuda' (torch build).
        find_links: folders (or pages) of wheels pip may take packages from.
        no_index: only `find_links`, never an index (offline machines).
        torch_index: overrides the PyTorch index chosen for `build`.
        isolated: ignore pip's configuration files and environment variables.
        proxy: `http://user:password@host:port`, from QGIS's network settings.
        packages: the catalogue (tests pass their own).
        include_optional: install optional packages too.
    """

    python: str
    deps: Path
    build: str = "auto"
    find_links: Sequence[str] = ()
    no_index: bool = False
    torch_index: Optional[str] = None
    isolated: bool = False
    proxy: Optional[str] = None
    packages: Sequence[Package] = PACKAGES
    include_optional: bool = True

    @property
    def log_file(self) -> Path:
        return pip_log(self.deps)


@dataclass
class Outcome:
    """What an action did: `installed` as `name==version`, `message` one line for the user."""

    action: str
    message: str
    installed: List[str] = field(default_factory=list)
    imports: Dict[str, dict] = field(default_factory=dict)


def _quiet(fraction: float, message: str) -> None:
    pass


def _part(progress: Progress, low: float, high: float) -> Progress:
    return lambda fraction, message: progress(low + (high - low) * fraction, message)


def pip_options(request: Request) -> List[str]:
    """Source options shared by the resolve and fetch steps."""
    options = ["--disable-pip-version-check", "--no-input"]
    if request.isolated:
        options.append("--isolated")
    if request.no_index:
        options.append("--no-index")
    for link in request.find_links:
        options += ["--find-links", str(link)]
    if not request.no_index:
        build, _ = choose_build(request.build, detect_gpu() if request.build == "auto" else None)
        index = request.torch_index or torch_index(build)
        if index:
            options += ["--extra-index-url", index]
    return options


def constraints_text(environment: Environment) -> str:
    """Pins for QGIS's compiled packages; numpy < 2 when QGIS has no numpy at all."""
    pins = [f"{name}=={version}" for name, version in environment.protected().items()]
    if "numpy" not in environment.protected():
        pins.append("numpy<2")
    return "\n".join(pins) + "\n"


def pip_env(request: Request, paths: Sequence[Path] = ()) -> Dict[str, str]:
    """pip's environment: `paths` in front of PYTHONPATH; the proxy as PIP_PROXY, so that its
    password never shows in the log, the diagnostics or the process list."""
    env = dict(os.environ)
    existing = env.get("PYTHONPATH")
    env["PYTHONPATH"] = os.pathsep.join([str(p) for p in paths] + ([existing] if existing else []))
    env["PIP_NO_INPUT"] = "1"
    if request.proxy:
        env["PIP_PROXY"] = request.proxy
    return env


def explain_pip_failure(
    lines: Sequence[str], environment: Environment, where: str, request_offline: bool = False
) -> str:
    """One line from pip's output: a numpy refusal, a missing wheel, or pip's own error."""
    numpy = environment.version_of("numpy") or "1.x"
    major = numpy.split(".")[0]
    for line in lines:
        needs = re.match(r"^\s*(\S+) (\S+) depends on (numpy\S*)", line)
        if needs and "2" in needs.group(3):
            name, version, spec = needs.groups()
            return (
                f"refused: {name} {version} needs {spec}, but QGIS runs numpy {numpy} and its "
                f"GDAL and PyQt are built against it; nothing was installed. Use a release of "
                f"{name} built for numpy {major}.x"
            )
    for line in lines:
        missing = re.search(r"No matching distribution found for (\S+)", line)
        if missing and request_offline:
            return (
                f"{missing.group(1)} is not in {where}; put its wheel there, or allow "
                "downloads from the package index"
            )
        if missing:
            return (
                f"{missing.group(1)} was not found on {where}; check the internet connection "
                "or the proxy (QGIS: Settings > Options > Network)"
            )
    for i, line in enumerate(lines):
        conflict = re.search(r"Cannot install (.+?) because", line)
        if conflict:  # the causes follow "The conflict is caused by:", up to a blank line
            causes = []
            for cause in lines[i + 1 :]:
                if causes and not cause.strip():
                    break
                if cause.strip() and not cause.strip().startswith("The conflict is"):
                    causes.append(cause.strip())
            return (
                f"{conflict.group(1)} cannot be installed from {where}: no release there fits "
                f"({'; '.join(causes)[:300]}); check pip's configuration and the sources"
            )
    errors = [line.strip() for line in lines if line.strip().startswith("ERROR")]
    last = errors[-1] if errors else (lines[-1].strip() if lines else "pip printed nothing")
    return f"pip failed: {last[:300]} (the full log is in the QGIS log panel)"


def _sources(request: Request) -> str:
    if request.no_index:
        return "the wheel folder " + ", ".join(map(str, request.find_links))
    links = ", ".join(map(str, request.find_links))
    return "the package index" + (f" or {links}" if links else "")


def resolve(
    request: Request,
    options: Sequence[str],
    environment: Environment,
    wanted: Sequence[Package],
    paths: Sequence[Path],
    progress: Progress,
    cancelled: Callable[[], bool],
    on_line: Callable[[str], None],
    scratch: Path,
) -> List[str]:
    """`name==version` of every distribution pip would add for `wanted`; refuses protected ones."""
    constraints = scratch / "constraints.txt"
    constraints.write_text(constraints_text(environment), encoding="utf-8")
    report = scratch / "report.json"
    steps = PipSteps(None)

    def line(text: str) -> None:
        on_line(text)
        if steps.feed(text):
            progress(steps.fraction, f"resolving: {steps.message}")

    arguments = ["install", "--dry-run", "--report", str(report), "-c", str(constraints)]
    arguments += [*options, *(p.spec for p in wanted)]
    status, lines = run_pip(
        environment.python, arguments, pip_env(request, paths), line, cancelled, request.log_file
    )
    if status != 0 or not report.is_file():
        raise InstallError(
            explain_pip_failure(lines, environment, _sources(request), request.no_index)
        )
    plan = json.loads(report.read_text(encoding="utf-8")).get("install", [])
    pins = [f"{item['metadata']['name']}=={item['metadata']['version']}" for item in plan]
    touched = sorted({normalise(p.split("==")[0]) for p in pins} & set(PROTECTED))
    if touched:
        raise InstallError(
            f"refused: installing would replace QGIS's own {', '.join(touched)}; nothing was "
            "installed"
        )
    return pins


def fetch(
    request: Request,
    options: Sequence[str],
    environment: Environment,
    pins: Sequence[str],
    staging: Path,
    progress: Progress,
    cancelled: Callable[[], bool],
    on_line: Callable[[str], None],
    scratch: Path,
) -> None:
    """pip install exactly `pins`, without dependencies, into `staging`."""
    steps = PipSteps(len(pins))

    def line(text: str) -> None:
        on_line(text)
        if steps.feed(text):
            progress(steps.fraction, steps.message)

    arguments = ["install", "--no-deps", "--target", str(staging), "--no-compile"]
    arguments += ["-c", str(scratch / "constraints.txt"), *options, *pins]
    status, lines = run_pip(
        environment.python, arguments, pip_env(request), line, cancelled, request.log_file
    )
    if status != 0:
        raise InstallError(
            explain_pip_failure(lines, environment, _sources(request), request.no_index)
        )
    touched = sorted(folder.dists_in(staging) & set(PROTECTED))
    if touched:  # a wheel that vendors one under another name would still be caught here
        raise InstallError(f"refused: pip put QGIS's own {', '.join(touched)} into the folder")


def check(python: str, paths: Sequence[Path], packages: Sequence[Package]) -> Dict[str, dict]:
    """Import every package in a fresh interpreter; InstallError naming the first that fails."""
    answer = check_imports(python, paths, [p.module for p in packages])
    broken = [f"{p.module}: {answer[p.module]['error']}" for p in packages
              if not answer[p.module]["ok"]]  # fmt: skip
    if broken:
        raise InstallError(
            "the new packages do not import in QGIS's Python ("
            + "; ".join(broken)[:400]
            + "); nothing was changed"
        )
    return answer


def install(
    request: Request,
    progress: Progress = _quiet,
    cancelled: Callable[[], bool] = lambda: False,
    on_line: Callable[[str], None] = lambda line: None,
    repair: bool = False,
) -> Outcome:
    """Install what is missing (or, with `repair`, reinstall everything QGIS lacks) into
    `request.deps`, all or nothing. Raises InstallError or InstallCancelled."""
    action = "repair" if repair else "install"
    deps = Path(request.deps)
    with folder.locked(deps):
        request.log_file.write_text("", encoding="utf-8")
        progress(0.0, "asking QGIS's Python what it has")
        seen_with = [] if repair else [deps]
        environment = probe(request.python, seen_with, request.packages)
        if environment.version_of("pip") is None:
            raise InstallError(
                f"QGIS's Python ({request.python}) has no pip; install it first (Debian/Ubuntu: "
                "sudo apt install python3-pip; OSGeo4W: the python3-pip package)"
            )
        wanted = [p for p in environment.missing(request.packages)
                  if request.include_optional or not p.optional]  # fmt: skip
        if not wanted:
            return Outcome(action, "nothing to install: every package is there")
        options = pip_options(request)  # asks nvidia-smi once, for both pip runs
        staging = folder.staging_dir(deps, action)
        scratch = staging.with_name(staging.name + "-scratch")
        try:
            scratch.mkdir()
            pins = resolve(request, options, environment, wanted, seen_with,
                           _part(progress, 0.02, 0.3), cancelled, on_line, scratch)  # fmt: skip
            fetch(request, options, environment, pins, staging, _part(progress, 0.3, 0.85),
                  cancelled, on_line, scratch)  # fmt: skip
            progress(0.87, "checking that the new packages import")
            imports = check(request.python, [staging, *seen_with], wanted)
            progress(0.97, "moving the packages into place")
            folder.replace(staging, deps) if repair else folder.merge(staging, deps)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            shutil.rmtree(scratch, ignore_errors=True)
        progress(1.0, "done")
        done = "reinstalled" if repair else "installed"
        return Outcome(action, f"{done} into {deps}: {', '.join(pins)}", list(pins), imports)


def remove(request: Request) -> Outcome:
    """Delete the plugin's package folder (QGIS's own packages are not touched)."""
    deps = Path(request.deps)
    with folder.locked(deps):
        removed = folder.remove(deps)
    if not removed:
        return Outcome("remove", f"nothing to remove: {deps} does not exist")
    return Outcome("remove", f"removed {deps}; restart QGIS to unload packages already in use")
