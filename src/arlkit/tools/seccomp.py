"""A seccomp filter (classic BPF, as bwrap's `--seccomp FD` takes it) refusing syscalls that model-written
code has no business making: debugging and reading other processes, kernel keyrings, BPF, perf, mounts,
namespaces, kernel modules. Each returns EPERM; every other syscall is allowed.

Built by hand rather than with libseccomp so that arlkit needs no compiled dependency; x86_64 only (the
numbers are per architecture). Elsewhere `program()` is None and the sandbox runs without it.
"""

from __future__ import annotations

import errno
import platform
import struct

__all__ = ["DENIED", "program"]

# x86_64 syscall numbers (arch/x86/entry/syscalls/syscall_64.tbl)
DENIED = {
    "ptrace": 101,
    "pivot_root": 155,
    "mount": 165,
    "umount2": 166,
    "swapon": 167,
    "swapoff": 168,
    "reboot": 169,
    "init_module": 175,
    "delete_module": 176,
    "kexec_load": 246,
    "add_key": 248,
    "request_key": 249,
    "keyctl": 250,
    "unshare": 272,
    "perf_event_open": 298,
    "open_by_handle_at": 304,
    "setns": 308,
    "process_vm_readv": 310,
    "process_vm_writev": 311,
    "finit_module": 313,
    "kexec_file_load": 320,
    "bpf": 321,
    "userfaultfd": 323,
    "io_uring_setup": 425,
    "fsopen": 430,
    "fsmount": 432,
    "move_mount": 429,
    "open_tree": 428,
}
_AUDIT_ARCH_X86_64 = 0xC000003E
_X32_BIT = 0x40000000
# classic BPF opcodes and seccomp return values (linux/filter.h, linux/seccomp.h)
_LD_W_ABS, _JEQ_K, _JGE_K, _RET_K = 0x20, 0x15, 0x35, 0x06
_ALLOW, _KILL_PROCESS, _ERRNO = 0x7FFF0000, 0x80000000, 0x00050000


def _insn(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def program() -> bytes | None:
    """The filter as bytes (struct sock_filter[]), or None off x86_64."""
    if platform.machine() != "x86_64":
        return None
    numbers = sorted(DENIED.values())
    out = [
        _insn(_LD_W_ABS, 0, 0, 4),  # seccomp_data.arch
        _insn(_JEQ_K, 1, 0, _AUDIT_ARCH_X86_64),
        _insn(_RET_K, 0, 0, _KILL_PROCESS),  # another ABI (i386): numbers differ, refuse outright
        _insn(_LD_W_ABS, 0, 0, 0),  # seccomp_data.nr
        _insn(_JGE_K, 0, 1, _X32_BIT),
        _insn(_RET_K, 0, 0, _KILL_PROCESS),  # the x32 ABI would alias every number below
    ]
    for i, nr in enumerate(numbers):  # jump to the EPERM return, which follows the last test and the allow
        out.append(_insn(_JEQ_K, len(numbers) - i, 0, nr))
    out += [_insn(_RET_K, 0, 0, _ALLOW), _insn(_RET_K, 0, 0, _ERRNO | errno.EPERM)]
    return b"".join(out)
