"""How the extension is built and linked: it must be safe to load next to torch."""
import shutil
import subprocess
import sys

import pytest

import moba


def test_extension_exports_only_its_entry_point():
    # Anything else exported (libmoba, a statically linked C++ runtime) could be interposed by
    # the copies torch loads; python/CMakeLists.txt explains the crash this prevents.
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("nm (binutils) is not installed")
    listing = subprocess.run([nm, "-D", "--defined-only", moba._C.__file__],
                             check=True, capture_output=True, text=True).stdout
    exported = sorted(line.split()[-1] for line in listing.splitlines() if line.strip())
    assert exported == ["PyInit__C"]


def test_import_after_torch_and_use_iostreams():
    # The crash seen on the GPU image: torch first, then anything in _C that formats numbers.
    code = ("import torch, moba; info = moba.build_info(); assert info.startswith('moba '), info;"
            " assert {b['name'] for b in moba.backends()} >= {'cpu', 'reference'}")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr[-2000:]}"
