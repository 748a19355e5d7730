"""Building the compiled layers (kernels/fused_layers.c, used by fused_layers.py) with the
system's C compiler, once per machine, into a cache folder.

No torch import here: the command line starts the build before it imports torch, so a first
build (about 0.6 s) runs while torch loads instead of after.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from mnist_core import settings

SOURCE = Path(__file__).parent / "kernels" / "fused_layers.c"
COMPILE_TIMEOUT_S = 60
STALE_DAYS = 30
_lock = threading.Lock()
_built: dict[str, object] = {}  # "path" or "error", once a build was tried in this process


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def compile_flags() -> list[str]:
    """-O3 and OpenMP; AVX2 and FMA where this CPU has them (x86-64-v3), so one cached build
    never lands on a CPU that cannot run it: the flags are part of the cached file's name."""
    flags = ["-O3", "-fPIC", "-shared", "-fopenmp", "-fno-strict-aliasing"]
    if platform.machine() in ("x86_64", "AMD64") and {"avx2", "fma", "bmi2"} <= cpu_flags():
        flags.append("-march=x86-64-v3")
    return flags


def cache_folder() -> Path:
    """Where compiled kernels are kept: $MNIST_KERNEL_CACHE, else the user's cache folder."""
    return settings.kernel_cache()


def compiler() -> str | None:
    return shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc") or shutil.which("clang")


def build(folder: Path) -> Path:
    """Compile the kernel into `folder` unless a build of this source with these flags is
    there; the file is written under a temporary name and renamed, so processes building at
    once never load a half-written file. Raises RuntimeError with the compiler's message."""
    cc = compiler()
    if cc is None:
        raise RuntimeError("no C compiler (cc, gcc or clang) on this machine")
    flags = compile_flags()
    source = SOURCE.read_bytes()
    digest = hashlib.sha256(source + " ".join([cc, *flags, platform.machine()]).encode()).hexdigest()[:16]
    target = folder / f"fused_layers-{digest}.so"
    if target.exists():
        return target
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)  # the user's own: a planted library would run here
    handle, partial = tempfile.mkstemp(dir=folder, suffix=".so.partial")
    os.close(handle)
    try:
        done = subprocess.run([cc, *flags, "-o", partial, str(SOURCE)], capture_output=True, text=True,
                              timeout=COMPILE_TIMEOUT_S)
        if done.returncode != 0:
            raise RuntimeError(f"the C compiler failed: {done.stderr.strip()[-300:]}")
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    forget_old_builds(folder, keep=target)
    return target


def forget_old_builds(folder: Path, keep: Path, days: float = STALE_DAYS) -> None:
    """Delete builds of earlier sources not used for `days` (each source version leaves one
    small file; another checkout still using one rebuilds it in half a second), and as old
    partial files (a process that exited mid-build leaves its compiler's output unrenamed)."""
    cutoff = time.time() - days * 86400
    for old in [*folder.glob("fused_layers-*.so"), *folder.glob("*.so.partial")]:
        try:
            if old != keep and max(old.stat().st_mtime, old.stat().st_atime) < cutoff:
                old.unlink()
        except OSError:
            pass  # gone already, or not ours to delete


def library_path() -> Path:
    """The built kernel's file, building it the first time in this process (later callers, on
    any thread, wait for that build and get its result). Raises RuntimeError when it cannot be
    built, or is turned off (MNIST_FUSED_KERNEL=0); a cache folder that cannot be written gives
    way to a private temporary one."""
    with _lock:
        if not _built and not settings.fused_kernel_enabled():
            _built["error"] = RuntimeError("MNIST_FUSED_KERNEL=0")
        if not _built:
            try:
                try:
                    _built["path"] = build(cache_folder())
                except OSError:
                    _built["path"] = build(Path(tempfile.mkdtemp(prefix="mnist-kernels-")))
            except (RuntimeError, OSError, subprocess.SubprocessError) as error:
                _built["error"] = RuntimeError(str(error))
        if "error" in _built:
            raise _built["error"]  # type: ignore[misc]
        return _built["path"]  # type: ignore[return-value]


def start() -> threading.Thread:
    """Build on a thread now; `library_path` later waits for it (and raises what went wrong,
    which fused_layers.status() then says)."""

    def build_quietly() -> None:
        try:
            library_path()
        except RuntimeError:
            pass

    thread = threading.Thread(target=build_quietly, name="kernel-build", daemon=True)
    thread.start()
    return thread
