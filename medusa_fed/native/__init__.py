"""Fused loops in C, compiled on first use: an optional accelerator, never a requirement.

:func:`library` compiles ``kernels.c`` with the system C compiler (``$CC``, else ``cc``) into a
per-user cache (``$MEDUSA_NATIVE_CACHE``, else ``$XDG_CACHE_HOME/medusa-fed/native``, else
``~/.cache/medusa-fed/native``), keyed by the source, the compiler's version and the machine, and
loads it with ctypes. Every kernel there has a torch twin that gives the same bits; callers use the
twin when :func:`library` returns None: no compiler, a failed build, or ``MEDUSA_NATIVE=0``. The
build writes a temporary file and renames it into place, so a killed or concurrent build never
leaves a half-written library. ctypes releases the GIL for the call, so threads overlap.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("kernels.c")
# IEEE arithmetic, bit for bit the torch twins: no fast-math, no fused multiply-add; traps off
# only lets the compiler if-convert (and so vectorise) the comparisons
FLAGS = ("-O3", "-std=c11", "-ffp-contract=off", "-fno-trapping-math", "-fPIC", "-shared")
# built for the CPU it runs on (the cache key holds the CPU's name and flags); tried first
NATIVE = ("-march=native",)
_P = ctypes.c_void_p
_I64 = ctypes.c_int64


def cache_dir() -> Path:
    """Where the compiled library is kept (see the module docstring)."""
    env = os.environ.get("MEDUSA_NATIVE_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "medusa-fed" / "native"


def enabled() -> bool:
    """False when ``MEDUSA_NATIVE`` is ``0`` (or ``false`` / ``no`` / ``off``)."""
    return os.environ.get("MEDUSA_NATIVE", "1").strip().lower() not in {"0", "false", "no", "off"}


def cpu_fingerprint() -> str:
    """The CPU's model name and feature flags (Linux), else what ``platform`` knows."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    keep = [ln for ln in info.splitlines() if ln.startswith(("model name", "flags", "Features"))]
    return "\n".join(dict.fromkeys(keep))


def _build(cc: str, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=out.name + ".", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        for extra in (NATIVE, ()):  # a compiler without -march=native builds the baseline
            try:
                subprocess.run(
                    [cc, *FLAGS, *extra, "-o", tmp, str(SOURCE), "-lm"],
                    check=True,
                    capture_output=True,
                    text=True,
                    timeout=120,
                )
                break
            except subprocess.CalledProcessError:
                if not extra:
                    raise
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@functools.cache
def library() -> ctypes.CDLL | None:
    """The compiled kernels, or None (logged once) where they cannot be had."""
    if not enabled():
        return None
    cc = shutil.which(os.environ.get("CC", "cc"))
    if cc is None:
        logger.info("native kernels: no C compiler (cc / $CC) found; using the torch kernels")
        return None
    try:
        version = subprocess.run(
            [cc, "--version"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
        key = "\0".join([version, platform.machine(), cpu_fingerprint(), *FLAGS, *NATIVE])
        tag = hashlib.sha256(SOURCE.read_bytes() + key.encode()).hexdigest()[:16]
        so = cache_dir() / f"kernels-{tag}.so"
        if not so.exists():
            logger.info("native kernels: compiling %s with %s into %s", SOURCE.name, cc, so)
            _build(cc, so)
        lib = ctypes.CDLL(str(so))
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", None) or exc
        logger.warning(
            "native kernels: build or load failed (%s); using the torch kernels",
            str(detail).strip().splitlines()[-1] if str(detail).strip() else type(exc).__name__,
        )
        return None
    lib.medusa_uniforms.argtypes = [ctypes.c_uint64, _I64, _I64, _P]
    lib.medusa_uniforms.restype = None
    lib.medusa_assign.argtypes = [
        ctypes.c_int32, ctypes.c_int32, _P, _P, _P, _P, _P, _P, _I64, _I64,
        ctypes.c_uint64, ctypes.c_int32, ctypes.c_int32, _P, _P,
    ]  # fmt: skip
    lib.medusa_assign.restype = ctypes.c_int
    for fn in ("medusa_count", "medusa_add_count", "medusa_add_changed"):
        getattr(lib, fn).restype = _I64
    lib.medusa_count.argtypes = [_P, _I64]
    lib.medusa_add_count.argtypes = [_P, _P, _I64]
    lib.medusa_add_changed.argtypes = [_P, _P, _I64]
    lib.medusa_count_finite.argtypes = [_P, _I64, _P]
    lib.medusa_count_finite.restype = None
    f32, i32 = ctypes.c_float, ctypes.c_int32
    lib.medusa_hist_high.argtypes = [_P, _I64, _P]
    lib.medusa_hist_low.argtypes = [_P, _I64, ctypes.c_uint32, _P]
    lib.medusa_ties_pass1.argtypes = [_P, _I64, i32, f32, _I64, _P, _P, _P, _P]
    lib.medusa_ties_pass2.argtypes = [_P, _I64, i32, f32, _I64, _P, _P, _P]
    lib.medusa_ties_final.argtypes = [_P, _P, _P, _P, _P, _I64, f32, _P]
    for fn in ("hist_high", "hist_low", "ties_pass1", "ties_pass2", "ties_final"):
        getattr(lib, "medusa_" + fn).restype = None
    return lib
