"""Runs inside the python tool's child process, before the model's code: sets resource limits and installs an
audit hook (PEP 578) that refuses process creation, signals to other processes, sockets, foreign-function
calls, raising limits, and writes outside the working directory.

Usage: python -I sandbox_child.py LIMITS_JSON SNIPPET. Only the standard library is imported here, so the
child starts fast; the model's code then runs as `__main__`.
"""

import json
import os
import resource
import runpy
import sys

_DENIED = frozenset(
    {
        "os.fork",
        "os.forkpty",
        "os.system",
        "os.exec",
        "os.posix_spawn",
        "os.spawn",
        "os.startfile",
        "subprocess.Popen",
        "pty.spawn",
        "os.symlink",
        "os.link",
        "os.setuid",
        "resource.setrlimit",
        "resource.prlimit",
        "sys.addaudithook",
        "ctypes.call_function",
        "ctypes.cdata",
        "ctypes.dlsym",
        "ctypes.dlsym/handle",
        "ctypes.addressof",
        "os.mkfifo",
        "os.mknod",
        "os.setxattr",
        "os.removexattr",
    }
)
_SOCKETS = frozenset(
    {"socket.__new__", "socket.connect", "socket.bind", "socket.getaddrinfo", "socket.sendto"}
)
_PATH_EVENTS = {  # event -> positions of its path arguments that must stay inside the working directory
    "os.remove": (0,),
    "os.rmdir": (0,),
    "os.mkdir": (0,),
    "os.rename": (0, 1),
    "os.chmod": (0,),
    "os.chown": (0,),
    "os.truncate": (0,),
    "os.utime": (0,),
    "shutil.rmtree": (0,),
    "shutil.copyfile": (1,),
    "shutil.move": (1,),
}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _limits(spec: dict) -> None:
    for name, value in spec.items():
        resource.setrlimit(getattr(resource, name), (value, value))


def _hook(workdir: str, block_network: bool):
    root = os.path.join(os.path.abspath(workdir), "")
    me = os.getpid()

    def inside(path: object) -> bool:
        if isinstance(path, int):  # an already-open descriptor
            return True
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        return isinstance(path, str) and os.path.join(os.path.abspath(path), "").startswith(root)

    def hook(event: str, args: tuple) -> None:
        if event in _DENIED or (block_network and event in _SOCKETS):
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "ctypes.dlopen" and args and args[0] is not None:  # None: the interpreter itself
            raise PermissionError(f"sandbox: loading the shared library {args[0]!r} is not allowed")
        if event in ("os.kill", "os.killpg") and args and args[0] not in (me, 0):
            raise PermissionError(f"sandbox: {event} of another process is not allowed")
        if event == "open" and len(args) >= 3:
            path, mode, flags = args[0], args[1] or "", args[2] or 0
            writes = any(c in str(mode) for c in "wax+") or bool(flags & _WRITE_FLAGS)
            if writes and not inside(path):
                raise PermissionError(f"sandbox: writing {path!r} outside the working directory")
        for i in _PATH_EVENTS.get(event, ()):
            if i < len(args) and not inside(args[i]):
                raise PermissionError(f"sandbox: {event} on {args[i]!r} outside the working directory")

    return hook


def main() -> None:
    spec = json.loads(sys.argv[1])
    snippet = sys.argv[2]
    _limits(spec["rlimits"])
    sys.addaudithook(_hook(os.getcwd(), spec["block_network"]))
    sys.argv = [snippet]
    runpy.run_path(snippet, run_name="__main__")


if __name__ == "__main__":
    main()
