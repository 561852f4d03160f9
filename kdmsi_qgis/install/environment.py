"""What QGIS's Python has, asked of that interpreter in a subprocess (nothing is imported here).

Asking a subprocess keeps torch out of the QGIS process until the analyst runs a model, and
gives the same answer headless and inside QGIS. Both snippets prepend the plugin's folder to
`sys.path` exactly as `kdmsi_qgis.deps.add_plugin_paths` does, so they see what the plugin sees.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from .catalog import PACKAGES, PROTECTED, Package

_PROBE = """
import json, platform, sys
import importlib.metadata as md
args = json.loads(sys.argv[1])
sys.path[0:0] = args["paths"]
out = {"python": sys.version.split()[0], "version": list(sys.version_info[:2]),
       "executable": sys.executable, "platform": platform.platform(), "dists": {}}
for name in args["names"]:
    try:
        dist = md.distribution(name)
    except md.PackageNotFoundError:
        continue
    out["dists"][name] = {"version": dist.version, "location": str(dist.locate_file("")),
                          "requires": list(dist.requires or [])}
print(json.dumps(out))
"""

_IMPORTS = """
import importlib, json, sys
args = json.loads(sys.argv[1])
sys.path[0:0] = args["paths"]
out = {}
for name in args["modules"]:
    try:
        module = importlib.import_module(name)
        out[name] = {"ok": True, "version": str(getattr(module, "__version__", "")),
                     "file": str(getattr(module, "__file__", ""))}
    except BaseException as exc:
        out[name] = {"ok": False, "error": (type(exc).__name__ + ": " + str(exc))[:300]}
torch = sys.modules.get("torch")
if torch is not None:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else ""
    out["torch_build"] = {"cuda": torch.version.cuda or "", "gpu": gpu}
print(json.dumps(out))
"""


class ProbeError(RuntimeError):
    """QGIS's Python could not be asked (missing, crashed, or printed no answer)."""


@dataclass
class Environment:
    """QGIS's Python as seen by the plugin: interpreter, versions and where each package is."""

    python: str
    version: str
    platform: str
    dists: Dict[str, dict] = field(default_factory=dict)

    def version_of(self, dist: str) -> Optional[str]:
        found = self.dists.get(dist)
        return found["version"] if found else None

    def location_of(self, dist: str) -> Optional[str]:
        found = self.dists.get(dist)
        return found["location"] if found else None

    def missing(self, packages: Sequence[Package] = PACKAGES) -> List[Package]:
        return [p for p in packages if p.dist not in self.dists]

    def protected(self) -> Dict[str, str]:
        """{distribution: version} of QGIS's own compiled packages that are present."""
        return {name: self.dists[name]["version"] for name in PROTECTED if name in self.dists}

    def torch_build(self) -> str:
        """'CPU', 'CUDA' or 'MPS' from torch's metadata, without importing it; '' if absent."""
        found = self.dists.get("torch")
        if not found:
            return ""
        if "+cpu" in found["version"]:
            return "CPU"
        if "+cu" in found["version"] or any(r.startswith("nvidia-") for r in found["requires"]):
            return "CUDA"
        return "MPS" if sys.platform == "darwin" else "CPU"


def _run_code(python: str, code: str, *args: str, timeout: float) -> subprocess.CompletedProcess:
    """``python -c code args...``, its output captured, no console window."""
    return subprocess.run(
        [python, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        **hidden_window(),
    )


def _run_snippet(python: str, code: str, args: dict, timeout: float) -> dict:
    try:
        done = _run_code(python, code, json.dumps(args), timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ProbeError(f"could not run QGIS's Python ({python}): {exc}") from exc
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ProbeError(f"QGIS's Python ({python}) failed: {tail[0]}")
    return json.loads(lines[-1])


def is_python(path: str, timeout: float = 30) -> bool:
    """Whether ``path`` runs a line of Python (``-c``) and says so."""
    try:
        done = _run_code(path, "print('kdmsi-python')", timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0 and done.stdout.strip() == "kdmsi-python"


def probe(
    python: str,
    paths: Sequence[Path] = (),
    packages: Sequence[Package] = PACKAGES,
    timeout: float = 60,
) -> Environment:
    """Versions and locations of `packages`, QGIS's protected packages and pip, in `python`
    with `paths` in front of its `sys.path`."""
    names = [p.dist for p in packages] + list(PROTECTED) + ["pip"]
    args = {"paths": [str(p) for p in paths], "names": names}
    answer = _run_snippet(python, _PROBE, args, timeout)
    return Environment(python, answer["python"], answer["platform"], answer["dists"])


def check_imports(
    python: str, paths: Sequence[Path], modules: Sequence[str], timeout: float = 300
) -> dict:
    """Import each module in a fresh `python` with `paths` first on `sys.path`.

    Returns {module: {"ok", "version" | "error"}} and, when torch imported,
    "torch_build": {"cuda": CUDA version or "", "gpu": name or ""}.
    """
    args = {"paths": [str(p) for p in paths], "modules": list(modules)}
    return _run_snippet(python, _IMPORTS, args, timeout)


def hidden_window() -> dict:
    """Popen arguments that keep a console window from flashing up on Windows."""
    if os.name == "nt":
        return {"creationflags": 0x08000000}  # CREATE_NO_WINDOW
    return {}


def detect_gpu(timeout: float = 10) -> Optional[str]:
    """'NVIDIA GeForce RTX 3060 (driver 550.54)' when `nvidia-smi` lists a GPU, else None.

    The NVIDIA driver installs `nvidia-smi` with itself (Linux and Windows), so a GPU that
    `nvidia-smi` lists is one a CUDA build of torch can use; no torch import is needed.
    """
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        done = subprocess.run(
            [smi, "--query-gpu=name,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=timeout,
            **hidden_window(),
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    first = done.stdout.strip().splitlines()[:1]
    if done.returncode != 0 or not first or "," not in first[0]:
        return None
    name, driver = (part.strip() for part in first[0].split(",", 1))
    return f"{name} (driver {driver})"


# PyPI's Linux torch wheel is the CUDA build (several GB); its Windows wheel is the CPU build;
# macOS has only one build (CPU + Apple GPU). The PyTorch index serves the other builds.
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
CUDA_INDEX = "https://download.pytorch.org/whl/cu128"


def choose_build(requested: str, gpu: Optional[str]) -> Tuple[str, str]:
    """('cpu' | 'cuda', why) for `requested` in 'auto' | 'cpu' | 'cuda'."""
    if requested in ("cpu", "cuda"):
        return requested, "chosen by you"
    if requested != "auto":
        raise ValueError(f"build must be auto, cpu or cuda, not {requested!r}")
    if sys.platform == "darwin":
        return "cpu", "macOS: torch has one build (CPU and Apple GPU)"
    if gpu:
        return "cuda", f"nvidia-smi lists {gpu}"
    return "cpu", "no NVIDIA GPU found (nvidia-smi absent or lists none)"


def torch_index(build: str) -> Optional[str]:
    """Extra index for torch and torchvision of `build` on this OS; None: PyPI's is right."""
    if sys.platform == "darwin":
        return None
    if build == "cpu":
        return CPU_INDEX
    return CUDA_INDEX if sys.platform == "win32" else None
