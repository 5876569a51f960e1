"""Per-call latency of the python tool's sandboxes on a trivial call (`print(1)`), all in one run.

    .venv/bin/python benchmarks/sandbox_overhead.py [--calls 40]

Variants, interleaved call by call so machine load hits each alike:
- unsafe:  isolation="unsafe", the audit hook alone (the old fallback);
- unshare: the previous default on a root host, `unshare --user --net --pid` with the child as nobody,
           rebuilt here from the old tool's command line (it is no longer in arlkit);
- bwrap:   isolation="bwrap", the sandbox now in force (with its per-call cgroup where writable).
Prints the median and p95 wall-clock seconds per call.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from arlkit.tools.base import ToolResult
from arlkit.tools.cgroup import writable_controllers
from arlkit.tools.python import _CHILD, PythonTool

_UNSHARE = ["unshare", "--user", "--map-root-user", "--net", "--pid", "--fork", "--kill-child"]


class _UnshareTool(PythonTool):
    """The old namespace sandbox: same child script and limits, started under unshare instead of bwrap."""

    def __call__(self, code: str) -> ToolResult:
        workdir = tempfile.mkdtemp(prefix="arlkit-bench-")
        try:
            Path(workdir, "main.py").write_text(code)
            command = [*_UNSHARE, sys.executable, "-I", "-B", _CHILD, *self._command(workdir)[-2:]]
            return self._run(command, workdir)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=40)
    args = parser.parse_args()
    logging.getLogger("arlkit.tools.python").setLevel(logging.ERROR)  # unsafe's per-call warning, known here
    tools = {
        "unsafe": PythonTool(isolation="unsafe"),
        "unshare": _UnshareTool(isolation="unsafe"),  # unsafe only picks the child's limits; unshare wraps it
        "bwrap": PythonTool(isolation="bwrap"),
    }
    times: dict[str, list[float]] = {name: [] for name in tools}
    for _ in range(args.calls):
        for name, tool in tools.items():
            start = time.perf_counter()
            result = tool(code="print(1)")
            times[name].append(time.perf_counter() - start)
            assert result.text == "1\n", (name, result)
    print(f"{args.calls} calls of print(1); cgroups: {','.join(writable_controllers()) or 'none'}")
    print(f"{'sandbox':<8} {'median ms':>10} {'p95 ms':>8}")
    for name, ts in times.items():
        p95 = statistics.quantiles(ts, n=20)[-1]
        print(f"{name:<8} {1000 * statistics.median(ts):>10.1f} {1000 * p95:>8.1f}")


if __name__ == "__main__":
    main()
