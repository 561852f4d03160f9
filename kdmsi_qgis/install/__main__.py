"""`python -m kdmsi_qgis.install`: the Dependencies page without QGIS, for administrators.

Run it with QGIS's own Python, from the folder that holds the plugin folder (the profile's
`python/plugins`), e.g. `cd <profile>/python/plugins && python3 -m kdmsi_qgis.install --check`.

Exit status: 0 done (or, for --check, everything required is there); 1 something required is
missing or an install failed; 2 bad options; 130 interrupted (the folder is left as it was).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

from . import location
from .environment import ProbeError, choose_build, detect_gpu, is_python, probe
from .installer import Request, install, remove
from .pip_run import InstallCancelled, InstallError
from .report import diagnostics, ready, rows, table


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, no usage dump
        self.exit(2, f"{self.prog}: {message}\n")


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m kdmsi_qgis.install", description=__doc__.split("\n\n")[0])
    action = p.add_mutually_exclusive_group(required=True)
    for flag, text in (
        ("--check", "list what is there and what is missing"),
        ("--install", "install what is missing"),
        ("--repair", "reinstall every package the plugin installs"),
        ("--remove", "delete the plugin's package folder"),
        ("--diagnostics", "print the text of the page's Copy diagnostics"),
    ):
        action.add_argument(flag, action="store_true", help=text)
    p.add_argument("--profile", type=Path, help="QGIS profile folder (default: the 'default' "
                   "profile, or QGIS_CUSTOM_CONFIG_PATH's)")  # fmt: skip
    p.add_argument("--python", default=sys.executable, help="QGIS's Python (default: this one)")
    p.add_argument("--build", choices=("auto", "cpu", "cuda"), default="auto",
                   help="torch build; auto: CUDA when nvidia-smi lists a GPU")  # fmt: skip
    p.add_argument("--find-links", action="append", default=[], metavar="DIR",
                   help="a folder of wheels to install from (repeatable)")  # fmt: skip
    p.add_argument("--no-index", action="store_true", help="use only --find-links folders")
    p.add_argument("--torch-index", help="index URL for torch and torchvision")
    p.add_argument("--proxy", help="http://[user:password@]host:port")
    p.add_argument("--isolated", action="store_true", help="ignore pip's configuration files")
    p.add_argument("--required-only", action="store_true", help="skip optional packages")
    return p


def _request(args: argparse.Namespace) -> Request:
    python = Path(args.python)
    if not python.is_file():
        raise ValueError(f"--python {python} is not a file; give QGIS's Python interpreter")
    if not is_python(str(python)):
        raise ValueError(
            f"--python {python} is not a Python interpreter (it did not run a line of Python); "
            "give QGIS's Python, e.g. /usr/bin/python3 or the python3.exe next to qgis-bin.exe"
        )
    for link in args.find_links:
        if "://" not in link and not Path(link).is_dir():
            raise ValueError(f"--find-links {link} is not a folder; give a folder of wheels")
    if args.no_index and not args.find_links:
        raise ValueError("--no-index needs --find-links: a folder of wheels to install from")
    profile = args.profile or location.default_profiles_root() / "default"
    if profile.exists() and not profile.is_dir():
        raise ValueError(f"--profile {profile} is a file; give a QGIS profile folder")
    return Request(
        python=str(python),
        deps=location.deps_dir(profile),
        build=args.build,
        find_links=list(args.find_links),
        no_index=args.no_index,
        torch_index=args.torch_index,
        isolated=args.isolated,
        proxy=args.proxy,
        include_optional=not args.required_only,
    )


def _progress(fraction: float, message: str) -> None:
    print(f"[{100 * fraction:3.0f}%] {message}", file=sys.stderr, flush=True)


def main(argv: Optional[List[str]] = None) -> int:
    args = parser().parse_args(argv)
    try:
        request = _request(args)
    except ValueError as exc:
        print(f"python -m kdmsi_qgis.install: {exc}", file=sys.stderr)
        return 2
    try:
        if args.check or args.diagnostics:
            gpu = detect_gpu()
            try:
                environment = probe(request.python, [request.deps])
            except ProbeError as exc:
                if args.check:
                    raise InstallError(str(exc)) from exc
                environment, problem = None, str(exc)
            if args.diagnostics:
                print(diagnostics(environment, request.deps, gpu, request.log_file,
                                  problem="" if environment else problem))  # fmt: skip
                return 0
            found = rows(environment, request.deps)
            print(f"Python {environment.version} ({request.python}); packages in {request.deps}")
            print(table(found))
            build, why = choose_build(request.build, gpu)
            print(f"torch build to install: {build} ({why})")
            return 0 if ready(found) else 1
        if args.remove:
            print(remove(request).message)
            return 0
        outcome = install(request, _progress, on_line=lambda line: None, repair=args.repair)
        print(outcome.message)
        return 0
    except InstallError as exc:
        print(f"python -m kdmsi_qgis.install: {exc}", file=sys.stderr)
        return 1
    except (InstallCancelled, KeyboardInterrupt):
        print("python -m kdmsi_qgis.install: interrupted; the folder is as it was", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
