"""The CMake project configures, builds and installs without a C/C++ compiler (nothing compiled), with a warning.

`pip install .` runs exactly this configure step through scikit-build-core, so a machine without a compiler
can install the package and run it on the reference operators. Configure only (plus a no-op build and
install), so it takes a few seconds.
"""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CMAKE = shutil.which("cmake")

pytestmark = [
    pytest.mark.skipif(CMAKE is None, reason="cmake is not on PATH"),
    pytest.mark.skipif(not (REPO / "CMakeLists.txt").is_file(), reason="no CMakeLists.txt (not a source checkout)"),
]

COMPILER_ENV = ("CC", "CXX", "CUDACXX", "CUDAHOSTCXX", "FC", "CUDA_PATH", "CUDA_HOME", "CMAKE_GENERATOR",
                "CMAKE_TOOLCHAIN_FILE", "CMAKE_CXX_COMPILER_LAUNCHER", "CMAKE_C_COMPILER_LAUNCHER")


def _no_compiler_env(tmp_path: Path) -> dict:
    """An environment whose PATH holds only cmake and a build tool, and whose CC/CXX/CUDACXX point nowhere
    (CMake also searches /usr/bin etc. on its own, so the variables are what hides the system compilers)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("cmake", "ninja", "make"):
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    env = {k: v for k, v in os.environ.items() if k not in COMPILER_ENV}
    env["PATH"] = str(bin_dir)
    env["CC"] = "/nonexistent/cc"
    env["CXX"] = "/nonexistent/c++"
    env["CUDACXX"] = "/nonexistent/nvcc"
    env["CMAKE_GENERATOR"] = _generator()
    return env


def _generator() -> str:
    if shutil.which("ninja"):
        return "Ninja"
    if shutil.which("make"):
        return "Unix Makefiles"
    pytest.skip("neither ninja nor make is on PATH")


def _run(args, env, cwd):
    proc = subprocess.run([CMAKE, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120)
    # CMake wraps warning text across lines: compare with whitespace collapsed.
    return proc, " ".join((proc.stdout + proc.stderr).split())


def _configure_build_install(tmp_path: Path, env: dict, *defines: str) -> str:
    build, prefix = tmp_path / "build", tmp_path / "prefix"
    proc, out = _run(["-S", str(REPO), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release", *defines], env, tmp_path)
    assert proc.returncode == 0, f"configure failed:\n{proc.stdout}\n{proc.stderr}"
    proc, _ = _run(["--build", str(build)], env, tmp_path)
    assert proc.returncode == 0, f"build failed:\n{proc.stdout}\n{proc.stderr}"
    proc, _ = _run(["--install", str(build), "--prefix", str(prefix)], env, tmp_path)
    assert proc.returncode == 0, f"install failed:\n{proc.stdout}\n{proc.stderr}"
    installed = [p for p in prefix.rglob("*") if p.is_file()] if prefix.exists() else []
    assert installed == [], f"nothing compiled should be installed, got {installed}"
    return out


def test_configure_without_compiler(tmp_path):
    out = _configure_build_install(tmp_path, _no_compiler_env(tmp_path))
    assert "CMake Warning" in out
    assert "ssmpose: no C++ compiler was found" in out
    assert "the compiled kernels are NOT built" in out
    assert "reference operators" in out


def test_build_kernels_off(tmp_path):
    # Forced off: the compilers are not even looked for (works with or without them on the machine).
    env = {k: v for k, v in os.environ.items() if k != "CMAKE_TOOLCHAIN_FILE"}
    env["CMAKE_GENERATOR"] = _generator()
    out = _configure_build_install(tmp_path, env, "-DSSMPOSE_BUILD_KERNELS=OFF")
    assert "ssmpose: SSMPOSE_BUILD_KERNELS is OFF" in out
    assert "the compiled kernels are NOT built" in out
    assert "Looking for a CXX compiler" not in out
    assert "The CXX compiler identification" not in out
