# Sourced by the bench scripts with REPO set: picks the python (PY) and sets PYTHONPATH.
# The project venv if there is one, else a python with torch plus the repo on PYTHONPATH. A GPU
# machine without network gets missing packages from wheels carried in .whl/, e.g.
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
#     -d .whl webdataset braceexpand pycocotools
if [ -x "$REPO/.venv/bin/python" ] && "$REPO/.venv/bin/python" -c "import torch" 2>/dev/null; then
  PY="$REPO/.venv/bin/python"
else
  PY="$(command -v python3 || command -v python)"
  if ! "$PY" -c "import torch, torchvision" 2>/dev/null; then
    echo "no python with torch found: install the project first (pip install -e '.[dev]')"
    exit 1
  fi
  if [ ! -d /tmp/segloc-site ] && compgen -G "$REPO/.whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/segloc-site \
      "$REPO"/.whl/*.whl
  fi
  [ -d /tmp/segloc-site ] && export PYTHONPATH="/tmp/segloc-site${PYTHONPATH:+:$PYTHONPATH}"
  for pair in webdataset:webdataset pycocotools:pycocotools cv2:opencv-python-headless \
              click:click yaml:pyyaml tqdm:tqdm pytest:pytest; do
    mod="${pair%%:*}" pkg="${pair#*:}"
    "$PY" -c "import $mod" 2>/dev/null || "$PY" -m pip install -q "$pkg" \
      || echo "missing python module $mod (pip package $pkg)"
  done
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
