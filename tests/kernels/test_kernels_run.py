"""The Triton kernel tests must run wherever triton is installed, not skip for an import-order reason."""

import importlib.util

import pytest

from conftest import TRITON_SKIP


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_triton_kernels_importable_for_tests():
    assert TRITON_SKIP is None, TRITON_SKIP
