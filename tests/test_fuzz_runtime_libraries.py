"""Fuzzing the runtime libraries: libssmpose_ort (ONNX Runtime) and libssmpose_ov (OpenVINO), with the CPU kernels.

tests/fuzz_cases.py generates seeded single-node graphs with bad (and valid edge-case) inputs; every case must end
in an error naming the op and the problem, or in the reference's result (see that module). Here they run:

- under AddressSanitizer + UBSan: a sanitizer build of the kernel library, the ORT library and the OpenVINO
  extension (CMake option SSMPOSE_SANITIZE, built by the `sanitizer_build` fixture into build-sanitize/ (outside build/, where the kernel loaders look), reused
  while the sources are unchanged), loaded into a Python subprocess with libasan preloaded. The subprocess must
  exit 0 with no sanitizer report; a crash, a sanitizer report or a hang names the case that was running.
- in process, against the libraries found as in production (a normal build), for the same cases.

CI (`-m "not slow"`): per runtime, seed 17, under the sanitizers, in one process: the regression cases, 300 cases of
SelectiveScan / DeformAggregate, then 75 cases of the newer ops (SelectiveScan2D, LayerNorm, AddLayerNorm,
MultiKernelDepthwiseConv, VSSBlockTail, in turn); in process, 200 + 50 cases of seed 18. (The newer ops get fewer cases than the
first two: they add a quarter to a third to the time. Each generator is checked to produce every mutation of its op.)
`-m slow`: 3000 cases per runtime and seed (seeds 1 and 2) of the first two ops, then 1200 of the newer ones.
SSMPOSE_FUZZ_CASES / SSMPOSE_FUZZ_NEW_CASES / SSMPOSE_FUZZ_SEED override the CI numbers. Without a compiler, cmake
or libasan the sanitizer tests skip, unless SSMPOSE_REQUIRE_KERNELS=1.
docs/reliability.md describes all of it.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fuzz_cases

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
CI_CASES = int(os.environ.get("SSMPOSE_FUZZ_CASES", "300"))
CI_NEW_CASES = int(os.environ.get("SSMPOSE_FUZZ_NEW_CASES", "75"))
CI_SEED = int(os.environ.get("SSMPOSE_FUZZ_SEED", "17"))
SLOW_CASES = 3000
SLOW_NEW_CASES = 1200
OLD_OPS = ("SelectiveScan", "DeformAggregate")
NEW_OPS = fuzz_cases.NEW_OPS
REQUIRED = os.environ.get("SSMPOSE_REQUIRE_KERNELS") == "1"
# Sanitizer reports, as printed by ASan / UBSan / LeakSanitizer.
SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "runtime error:", "ERROR: LeakSanitizer", "AddressSanitizer:DEADLYSIGNAL",
                     "SUMMARY: AddressSanitizer", "SUMMARY: UndefinedBehaviorSanitizer")


def _skip_or_fail(reason):
    if REQUIRED:
        pytest.fail(f"SSMPOSE_REQUIRE_KERNELS=1 but {reason}")
    pytest.skip(reason)


# ------------------------------------------------------------------------------------------------
# The sanitizer build


def _sources_digest() -> str:
    """Hash of everything the sanitizer build compiles (so a cached build is rebuilt when any of it changes)."""
    h = hashlib.sha256()
    files = [REPO / "CMakeLists.txt"] + sorted(
        p for sub in ("kernels", "onnxruntime", "openvino") for p in (REPO / "custom_ops/csrc" / sub).rglob("*")
        if p.is_file() and "cuda" not in p.parts)
    files.append(REPO / "custom_ops/csrc/CMakeLists.txt")
    for p in files:
        h.update(str(p.relative_to(REPO)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def _libasan():
    cxx = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")
    if cxx is None:
        return None, None
    out = subprocess.run([cxx, "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    std = subprocess.run([cxx, "-print-file-name=libstdc++.so.6"], capture_output=True, text=True).stdout.strip()
    if not out or not Path(out).is_file():
        return cxx, None
    return cxx, (str(Path(out).resolve()), str(Path(std).resolve()) if std and Path(std).is_file() else None)


@pytest.fixture(scope="session")
def sanitizer_build():
    """build-sanitize/lib with the sanitized libssmpose_kernels, libssmpose_ort and (when OpenVINO's CMake config
    is found) libssmpose_ov; the environment that runs Python on them."""
    cmake = shutil.which("cmake")
    if cmake is None:
        _skip_or_fail("cmake is not installed: no sanitizer build")
    cxx, preload = _libasan()
    if cxx is None:
        _skip_or_fail("no C++ compiler: no sanitizer build")
    if preload is None:
        _skip_or_fail(f"{cxx} has no libasan (install libasan / gcc's sanitizer runtime)")
    build = Path(os.environ.get("SSMPOSE_SANITIZE_BUILD_DIR", REPO / "build-sanitize"))
    stamp = build / "ssmpose_sources.sha256"
    digest = _sources_digest()
    lib = build / "lib"
    if not (stamp.is_file() and stamp.read_text() == digest and (lib / "libssmpose_ort.so").is_file()):
        defines = ["-DSSMPOSE_SANITIZE=ON", "-DSSMPOSE_WITH_CUDA=OFF", "-DCMAKE_BUILD_TYPE=Release",
                   f"-DCMAKE_CXX_COMPILER={cxx}"]
        try:
            import openvino
            defines.append(f"-DOpenVINO_DIR={Path(openvino.__file__).parent / 'cmake'}")
        except ImportError:
            pass
        for cmd in ([cmake, "-S", str(REPO), "-B", str(build), *defines],
                    [cmake, "--build", str(build), "-j", str(max(2, os.cpu_count() or 2))]):
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                pytest.fail(f"sanitizer build failed: {' '.join(cmd)}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
        stamp.write_text(digest)
    env = dict(os.environ)
    env.update(
        SSMPOSE_KERNELS_DIR=str(lib),
        # Python is not sanitized: the runtime must come first. libstdc++ is preloaded with it so that ASan's
        # __cxa_throw interceptor resolves (OpenVINO throws through it; without, ASan aborts with a CHECK).
        LD_PRELOAD=" ".join(p for p in preload if p),
        # detect_leaks=0: CPython and the runtimes keep memory until exit. allocator_may_return_null=1: an
        # allocation too large for ASan returns NULL (std::bad_alloc) as malloc would, instead of a report.
        ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=0:allocator_may_return_null=1:"
                     "verify_asan_link_order=0:detect_odr_violation=0",
        UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1",
        # oneTBB (OpenVINO's threading) dlopens tbbbind with RTLD_DEEPBIND, which ASan refuses; this makes it not.
        TBB_ENABLE_SANITIZERS="1",
        PYTHONPATH=os.pathsep.join([str(TESTS)] + [p for p in sys.path if p]),
        SSMPOSE_NUM_THREADS="2",
    )
    return {"lib": lib, "env": env, "has_ov": (lib / "libssmpose_ov.so").is_file()}


def _run_fuzz(env, runtime, seed, count, timeout, extra=(), new_count=0):
    """Runs tests/fuzz_cases.py in a subprocess: `count` cases of SelectiveScan / DeformAggregate, then `new_count`
    of the newer ops; returns (summary, failures, problem) where problem describes a crash, a sanitizer report or
    a hang."""
    cmd = [sys.executable, str(TESTS / "fuzz_cases.py"), "--runtime", runtime, "--seed", str(seed), "--count",
           str(count), "--ops", ",".join(OLD_OPS), "--extra", f"{','.join(NEW_OPS)}:{new_count}", *extra]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        stdout, stderr, rc = proc.stdout, proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        stdout = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        stderr = exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        rc = "timeout"
    records = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    summary = next((r["summary"] for r in records if "summary" in r), None)
    failures = [r for r in records if r.get("ok") is False]
    started = [r for r in records if "start" in r]
    done = {r["result"] for r in records if "result" in r}
    running = next((r["describe"] for r in reversed(started) if r["start"] not in done), None)
    problem = None
    report = [m for m in SANITIZER_MARKERS if m in stderr]
    if rc == "timeout" or summary is None or report or (rc != 0 and not failures):
        problem = (f"{runtime} fuzz process: exit {rc}, sanitizer report {report or 'none'}; case running: "
                   f"{running}\nstderr (end):\n{stderr[-6000:]}")
    return summary, failures, problem


def _check(summary, failures, problem, count):
    assert problem is None, problem
    assert not failures, "\n".join(f"{f['result']}: {f['problem']}\n    {f['describe']}" for f in failures[:20])
    assert summary["cases"] >= count


# ------------------------------------------------------------------------------------------------
# Under the sanitizers


def test_sanitizer_is_live(sanitizer_build):
    """The harness sees a real out-of-bounds access: a kernel given a too-short output buffer (through ctypes,
    bypassing every adapter check) must produce an AddressSanitizer report in the subprocess."""
    code = (
        "import ctypes, os\n"
        "lib = ctypes.CDLL(os.path.join(os.environ['SSMPOSE_KERNELS_DIR'], 'libssmpose_kernels.so'))\n"
        "class S(ctypes.Structure):\n"
        "    _fields_ = [(n, ctypes.c_int64) for n in ('b', 'g', 'd', 'n', 'l')] + "
        "[('sp', ctypes.c_int32), ('dt', ctypes.c_int32)]\n"
        "s = S(1, 1, 4, 1, 8, 1, 0)\n"
        "libc = ctypes.CDLL(None)\n"
        "libc.malloc.restype = ctypes.c_void_p\n"
        "buf = lambda n: ctypes.c_void_p(libc.malloc(4 * n))  # malloc: ASan's, with redzones\n"
        "u, dl, A, B, C, y = buf(32), buf(32), buf(4), buf(8), buf(8), buf(31)  # y needs 32\n"
        "for p, n in ((u, 32), (dl, 32), (A, 4), (B, 8), (C, 8)): ctypes.memset(p, 0, 4 * n)\n"
        "lib.ssm_selective_scan_fwd_cpu(ctypes.byref(s), u, dl, A, B, C, None, None, y, 1)\n"
        "print('no report')\n")
    proc = subprocess.run([sys.executable, "-c", code], env=sanitizer_build["env"], capture_output=True, text=True,
                          timeout=120)
    assert "ERROR: AddressSanitizer" in proc.stderr and proc.returncode != 0, proc.stderr[-3000:]


@pytest.mark.parametrize("runtime", ["ort", "ov"])
def test_fuzz_under_sanitizers(sanitizer_build, runtime):
    if runtime == "ov":
        pytest.importorskip("openvino")
        if not sanitizer_build["has_ov"]:
            _skip_or_fail("the sanitizer build has no libssmpose_ov (OpenVINO's CMake config not found)")
    else:
        pytest.importorskip("onnxruntime")
    _check(*_run_fuzz(sanitizer_build["env"], runtime, CI_SEED, CI_CASES, timeout=300, new_count=CI_NEW_CASES),
           CI_CASES + CI_NEW_CASES)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("runtime", ["ort", "ov"])
def test_fuzz_under_sanitizers_long(sanitizer_build, runtime, seed):
    if runtime == "ov":
        pytest.importorskip("openvino")
        if not sanitizer_build["has_ov"]:
            _skip_or_fail("the sanitizer build has no libssmpose_ov")
    _check(*_run_fuzz(sanitizer_build["env"], runtime, seed, SLOW_CASES, timeout=1800, new_count=SLOW_NEW_CASES),
           SLOW_CASES + SLOW_NEW_CASES)


# ------------------------------------------------------------------------------------------------
# In process, against the normal build (the libraries found as in production)


def _runner(runtime):
    if runtime == "ort":
        pytest.importorskip("onnxruntime")
        from ssmpose.custom_ops import ort_library
        if ort_library.ort_library_path() is None:
            _skip_or_fail(f"libssmpose_ort.so unavailable: {ort_library.unavailable_reason()}")
        return fuzz_cases.OrtRunner()
    pytest.importorskip("openvino")
    from ssmpose.custom_ops import openvino_library
    if openvino_library.openvino_library_path() is None:
        _skip_or_fail(f"libssmpose_ov.so unavailable: {openvino_library.unavailable_reason()}")
    return fuzz_cases.OvRunner()


@pytest.mark.parametrize("runtime", ["ort", "ov"])
def test_regression_cases_in_process(runtime):
    runner = _runner(runtime)
    for case in fuzz_cases.regression_cases():
        outcome, payload = runner(case)
        assert fuzz_cases.judge(case, outcome, payload) is None, (case.describe(), outcome, payload)


@pytest.mark.parametrize("runtime", ["ort", "ov"])
def test_fuzz_in_process(runtime):
    """Another seed than the sanitizer run's, so that each CI run covers more cases."""
    runner = _runner(runtime)
    problems = []
    for case in fuzz_cases.make_cases(CI_SEED + 1, 200, OLD_OPS) + fuzz_cases.make_cases(CI_SEED + 1, 50, NEW_OPS):
        if fuzz_cases.known_crash(case, runtime):
            continue  # it would end this process; the subprocess runs above report it
        problem = fuzz_cases.judge(case, *runner(case))
        if problem:
            problems.append(f"{case.id}: {problem}\n    {case.describe()}")
    assert not problems, "\n".join(problems[:20])


# ------------------------------------------------------------------------------------------------
# The generator itself


# The newer ops' CI sample is too small to hold each of their ~15-25 mutations: their generators are checked on 400.
@pytest.mark.parametrize("ops,count", [(OLD_OPS, CI_CASES), (NEW_OPS, 400)], ids=["old_ops", "new_ops"])
def test_cases_are_reproducible_and_varied(ops, count):
    a = fuzz_cases.make_cases(3, 60, ops)
    b = fuzz_cases.make_cases(3, 60, ops)
    assert [c.describe() for c in a] == [c.describe() for c in b]
    cases = fuzz_cases.make_cases(17, count, ops)
    assert {c.op for c in cases} == set(ops)
    for op in ops:
        mutations = {m for c in cases if c.op == op for m in c.mutations}
        expected = set(fuzz_cases.MUTATIONS[op]) - {"declared"}
        assert expected <= mutations, f"{op}: never generated in {count} cases: {sorted(expected - mutations)}"
        # every graph imports the ssmpose domain at the op's version (5 for DeformAggregate's epilogues, 6 for
        # SelectiveScan2D's dt_projection)
        assert all(c.model().opset_import[1].version == c.version for c in cases if c.op == op)
        later = {"DeformAggregate": {fuzz_cases.DEFORM_EPILOGUE_VERSION},
                 "SelectiveScan2D": {fuzz_cases.DT_PROJECTION_VERSION}}.get(op, set())
        assert {c.version for c in cases if c.op == op} == {fuzz_cases.OP_VERSIONS[op]} | later
    assert sum(c.valid for c in cases) >= count // 5 and sum(not c.valid for c in cases) >= count // 2
    # nothing big: every fed tensor is small, however huge its declared dimensions
    assert max(v.nbytes for c in cases for v in c.feeds.values()) < 64 << 20


def test_make_cases_defaults_to_all_ops():
    cases = fuzz_cases.make_cases(5, 14)
    assert [c.op for c in cases[:7]] == list(fuzz_cases.ALL_OPS)
    assert fuzz_cases.make_cases(5, 12, NEW_OPS)[1].describe() == fuzz_cases.layer_norm_case(5, 1).describe()
    with pytest.raises(ValueError):
        fuzz_cases.make_cases(5, 2, ("Conv",))


def test_spec_model_matches_the_reference_on_finite_inputs():
    """deform_spec (used for NaN/Inf inputs, where custom_ops/reference.py differs from docs/ops.md) agrees with
    the reference wherever both are defined."""
    from ssmpose.custom_ops import reference as ref
    import torch

    checked = 0
    for case in fuzz_cases.make_cases(17, 400, ops=("DeformAggregate",)):
        if not case.valid or fuzz_cases._has_nonfinite(case) or case.feeds["value"].size == 0 or \
                case.feeds["offset_mask"].size == 0:
            continue
        value, om = case.feeds["value"], case.feeds["offset_mask"]
        want = ref.deform_aggregate_reference(torch.from_numpy(value.astype(np.float64)),
                                              torch.from_numpy(om.astype(np.float64)),
                                              *[case.attrs[k] for k in fuzz_cases.DEFORM_ATTRS]).numpy()
        np.testing.assert_allclose(fuzz_cases.deform_spec(value, om, case.attrs), want, rtol=1e-12, atol=1e-12)
        checked += 1
    assert checked >= 50
