"""What a local `clave_pip_source` holds, so that tasks/install.yml reinstalls clave only when it changed.

    python3 clave-source-state.py SOURCE STATE_FILE

Prints one JSON object. A SOURCE that is not a path on this host is a pip requirement ("clave==0.1.0"):
{"local": false}; pip itself knows whether it is satisfied. A wheel or a source directory:
{"local": true, "kind": "wheel"|"directory", "state": "<sha256>", "installed": "<STATE_FILE's text or ''>"}.
The state of a directory is the SHA-256 over its files' paths and contents, leaving out what builds write
into it (build/, dist/, *.egg-info, caches, .git): the same tree gives the same state, any edit a new one.
Standard library only: it runs with the host's Python before the virtualenv exists.
"""

import hashlib
import json
import os
import sys

SKIP_DIRS = {".git", "build", "dist", "__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache", ".tox", ".venv",
             ".eggs", "node_modules"}


def tree_state(root):
    digest = hashlib.sha256()
    for directory, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info"))
        for name in sorted(files):
            if name.endswith((".pyc", ".pyo")):
                continue
            path = os.path.join(directory, name)
            rel = os.path.relpath(path, root)
            digest.update(rel.encode() + b"\0")
            with open(path, "rb") as f:
                digest.update(hashlib.sha256(f.read()).digest())
    return digest.hexdigest()


def file_state(path):
    with open(path, "rb") as f:
        return hashlib.sha256(os.path.basename(path).encode() + b"\0" + f.read()).hexdigest()


def main(source, state_file):
    if os.path.isdir(source):
        kind, state = "directory", tree_state(source)
    elif os.path.isfile(source) and source.endswith(".whl"):
        kind, state = "wheel", file_state(source)
    else:
        print(json.dumps({"local": False}))
        return
    try:
        with open(state_file) as f:
            installed = f.read().strip()
    except OSError:
        installed = ""
    print(json.dumps({"local": True, "kind": kind, "state": state, "installed": installed}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
