"""Native kernels, compiled on this machine on first use and loaded with ctypes.

``decode.c`` runs a whole decode step (1..8 rows) through every block in one
call, with weights in float32, bf16, Q8_0, Q4_0 or Q4_1 (see its header for why). It is built with the system C compiler
(``$CC``, else ``cc``) for this CPU (``-march=native``) into the cache folder, once
per source, compiler and CPU; a second process finds it there. Without a
compiler, or with ``LMSTUDIO_LITE_NATIVE=0``, nothing is built and the model
decodes through PyTorch alone: ``decode_library()`` returns None and
``status()`` says why.

torch is imported first on purpose: the kernel's OpenMP calls then bind to the
libgomp torch already loaded, so both share one thread pool.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import threading
from pathlib import Path

import torch  # noqa: F401  (loads torch's libgomp before the kernel's)

from ..atomic import write_atomic
from ..paths import cache_dir

DISABLE_ENV = "LMSTUDIO_LITE_NATIVE"
# Where the built library is kept, when not under the app's home: it depends only on the source,
# the compiler and the CPU, so homes on one machine can share one build (a build is 6 s on 2 cores).
DIR_ENV = "LMSTUDIO_LITE_NATIVE_DIR"
SOURCE = Path(__file__).with_name("decode.c")
PLAIN_C = "-DLML_PLAIN_C"  # a define that turns every intrinsic off (what ARM builds anyway)
# decode.c's matrix formats (T_*)
FORMATS = {"f32": 0, "bf16": 1, "q8_0": 2, "q4_0": 3, "q4_1": 4}
Q8_0_ROUNDED = 5  # decode.c's T_Q8_0R: Q8_0 blocks on int8 activations (a 4-bit model's head)
# -ffp-contract=off: GCC otherwise fuses a plain C ``a * b + c`` into one FMA where the loop it sits in
# allows, and a loop over 8 rows is not unrolled like one over 1, so a row's sums came out 1 ulp apart
# alone and in a batch (the plain build's Q8_0 rows on an AMD EPYC, -march=native = znver3). Intrinsics
# say where they fuse; no step measured slower (bench/kernel_ab.py --model, 1 and 8 rows, 1.01x).
FLAGS = ["-O3", "-march=native", "-ffp-contract=off", "-fopenmp", "-shared", "-fPIC"]
if platform.machine().lower() in ("x86_64", "amd64"):
    # GCC vectorizes the plain loops (float32 GEMV, attention) 256 bits wide on AVX-512 CPUs unless
    # asked: 512 made a float32 SmolLM2 step 1.06x faster at one thread (bench/kernel_ab.py --gguf)
    FLAGS.append("-mprefer-vector-width=512")

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_status = "not built yet"


class BuildError(RuntimeError):
    pass


def _cpu_signature() -> str:
    """What -march=native depends on: a cache shared between machines must not mix CPUs."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            lines = [l for l in f if l.startswith(("model name", "flags", "Features"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.processor() or platform.machine()


def build(source: Path, out_dir: Path, compiler: str | None = None, timeout: float = 120.0,
          defines: tuple[str, ...] = ()) -> Path:
    """Compile ``source`` into a shared library under ``out_dir`` (reused when already there).

    Raises BuildError with the compiler's own message when it cannot be built."""
    cc = compiler or os.environ.get("CC") or "cc"
    exe = shutil.which(cc)
    if exe is None:
        raise BuildError(f"no C compiler found (looked for {cc!r}; set CC to use another)")
    try:
        version = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise BuildError(f"the C compiler {exe} does not run: {e}") from None
    # the headers beside the source are part of it (decode.c includes gemv.h)
    texts = [source.read_text()] + [h.read_text() for h in sorted(source.parent.glob("*.h"))]
    key = hashlib.sha256("\0".join([*texts, exe, version, " ".join(FLAGS + list(defines)), _cpu_signature()])
                         .encode()).hexdigest()[:16]
    target = out_dir / f"{source.stem}-{key}.so"
    if target.exists():
        return target
    out_dir.mkdir(parents=True, exist_ok=True)

    def compile_to(tmp: Path):
        proc = subprocess.run([exe, *FLAGS, *defines, "-o", str(tmp), str(source), "-lm"], capture_output=True,
                              text=True, timeout=timeout)
        if proc.returncode != 0:
            raise BuildError(f"{exe} could not compile {source.name}: {(proc.stderr or proc.stdout).strip()[-800:]}")

    try:  # atomic: a process building beside us never loads half a file
        return write_atomic(target, compile_to)
    except subprocess.TimeoutExpired:
        raise BuildError(f"{exe} took more than {timeout:.0f} s to compile {source.name}") from None


def load(path: Path) -> ctypes.CDLL:
    """A built library with its functions' argument types declared."""
    lib = ctypes.CDLL(str(path))
    p, i64, f32, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_int
    lib.lml_decode.argtypes = [p, p, f32, i64, p, p, p, p, p, p, i64, i64, p, p, p, i32]
    lib.lml_decode.restype = None
    lib.lml_scratch_floats.argtypes = [p, i64, i64, i32]
    lib.lml_scratch_floats.restype = i64
    lib.lml_linear.argtypes = [i64, p, p, i64, i64, i64, p, p, p, i32]
    lib.lml_linear.restype = None
    lib.lml_linear_scratch_floats.argtypes = [i64, i64, i64, i32]
    lib.lml_linear_scratch_floats.restype = i64
    lib.lml_linear_x16.argtypes = [i64, p, p, i64, i64, i64, p, p, p, i32]
    lib.lml_linear_x16.restype = None
    lib.lml_linear_x16_scratch_floats.argtypes = [i64, i64]
    lib.lml_linear_x16_scratch_floats.restype = i64
    lib.lml_unpack_x16.argtypes = [i64, p, i64, i64, p]
    lib.lml_unpack_x16.restype = None
    lib.lml_x16.argtypes = []
    lib.lml_x16.restype = i32
    lib.lml_pack_x16.argtypes = [i64, p, i64, i64, p]
    lib.lml_pack_x16.restype = i64
    lib.lml_dequantize.argtypes = [i64, p, i64, i64, p, i32]
    lib.lml_dequantize.restype = None
    lib.lml_simd_level.argtypes = []
    lib.lml_simd_level.restype = i32
    # entries newer than some builds bench/kernel_ab.py compares (an older revision lacks them)
    for name, argtypes, restype in (("lml_round_fp16", [p, p, p, i64], None),
                                    ("lml_unpack_x16_rows", [i64, p, i64, i64, p, i64, p], None),
                                    ("lml_attend", [p, i64, i64, i64, i64, i64, p, p, i64, i64, p, p, i32], None),
                                    ("lml_attend_scratch_floats", [i64, i64, i64, i64, i32], i64)):
        if hasattr(lib, name):
            getattr(lib, name).argtypes, getattr(lib, name).restype = argtypes, restype
    return lib


def build_dir() -> Path:
    """Where ``decode_library`` builds: ``$LMSTUDIO_LITE_NATIVE_DIR``, else ``cache_dir()/native``."""
    return Path(os.environ[DIR_ENV]) if os.environ.get(DIR_ENV) else cache_dir() / "native"


def decode_library() -> ctypes.CDLL | None:
    """The decode kernel, built on first call; None when it cannot be (see ``status()``)."""
    global _lib, _status
    with _lock:
        if _lib is not None or _status != "not built yet":
            return _lib
        if os.environ.get(DISABLE_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
            _status = f"off ({DISABLE_ENV}={os.environ[DISABLE_ENV]})"
            return None
        try:
            _lib = load(build(SOURCE, build_dir()))
            _status = "on"
        except (BuildError, OSError, AttributeError) as e:
            _status = f"off ({e})"
        return _lib


def status() -> str:
    """``on``, ``off (why)`` or ``not built yet``: for the status line and bug reports."""
    return _status
