"""py-spy sampling of the sidecar and the enclave during a full-load run; self time per function.

`py-spy record --format raw` writes collapsed stacks ("frame;frame;…;leaf COUNT", loadable by speedscope
or inferno/flamegraph.pl). A sample's self time belongs to its leaf frame; idle threads (waiting in
epoll) are not sampled, so shares are of the time the process was running Python or C code it called.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

_FRAME = re.compile(r"^(?P<name>.*?) \((?P<file>[^():]+)(?::\d+)?\)$")


def py_spy() -> str | None:
    candidate = Path(sys.executable).parent / "py-spy"
    if candidate.exists():
        return str(candidate)
    return shutil.which("py-spy")


def start(pid: int, seconds: float, out: Path, rate: int = 200) -> subprocess.Popen[bytes]:
    binary = py_spy()
    if binary is None:
        raise RuntimeError("py-spy is not installed (pip install py-spy)")
    return subprocess.Popen(
        [binary, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))), "--rate", str(rate),
         "--format", "raw", "--output", str(out), "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )


def _short(path: str) -> str:
    for marker in ("/site-packages/", "/lib/python3."):
        if marker in path:
            tail = path.split(marker, 1)[1]
            return tail.split("/", 1)[1] if marker == "/lib/python3." and "/" in tail else tail
    for marker in ("/sidecar/", "/enclave/"):
        if marker in path:
            return marker.strip("/") + "/" + path.split(marker, 1)[1]
    return path


# With uvloop (or asyncio's C parts) the event loop runs in C below `Runner.run`: samples whose innermost
# Python frame is Runner.run are the loop's own work (socket reads and writes, callback dispatch).
_EVENT_LOOP = ("Runner.run", "asyncio/runners.py")


def _key(frame: str) -> tuple[str, str]:
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame.strip(), ""
    key = (match.group("name"), _short(match.group("file")))
    if key == _EVENT_LOOP:
        return "event loop in C (uvloop/asyncio: socket I/O, callbacks)", "asyncio/runners.py"
    return key


def summarize(raw: Path, top: int = 10) -> dict[str, Any]:
    self_time: Counter[tuple[str, str]] = Counter()
    inclusive: Counter[tuple[str, str]] = Counter()
    by_file: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += count
        leaf = _key(frames[-1])
        self_time[leaf] += count
        by_file[leaf[1] or leaf[0]] += count
        for key in {_key(f) for f in frames}:
            inclusive[key] += count

    def rows(counter: Counter[tuple[str, str]]) -> list[dict[str, Any]]:
        return [{"function": name, "file": file, "samples": n, "share": n / total if total else 0.0}
                for (name, file), n in counter.most_common(top)]

    return {
        "samples": total,
        "self": rows(self_time),
        "inclusive": rows(inclusive),
        "by_file": [{"file": f, "samples": n, "share": n / total if total else 0.0} for f, n in by_file.most_common(top)],
    }
