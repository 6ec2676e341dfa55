"""Arrays into tensors and back without torch's NumPy bridge, as on 3D Slicer's macOS build
(torch 2.2.2 beside NumPy 2): the same values, types and shapes as with the bridge."""

from __future__ import annotations

import gc
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from medcnn import tensors


@pytest.fixture(params=[True, False], ids=["bridge", "no bridge"])
def bridge(request, monkeypatch):
    monkeypatch.setattr(tensors, "numpy_bridge", lambda: request.param)
    return request.param


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64, np.int32, np.uint8, np.bool_])
def test_values_types_and_shapes_survive_the_round_trip(bridge, dtype):
    array = (np.arange(2 * 3 * 4) % 5).reshape(2, 3, 4).astype(dtype)
    tensor = tensors.to_tensor(array)
    assert tensor.dtype == tensors._DTYPES[np.dtype(dtype)] and tuple(tensor.shape) == (2, 3, 4)
    back = tensors.to_array(tensor * 1 if dtype != np.bool_ else tensor)
    assert back.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(back, array)


def test_views_strides_and_empty_arrays(bridge):
    array = np.arange(24, dtype=np.float32).reshape(4, 6)
    np.testing.assert_array_equal(tensors.to_tensor(array[:, ::2]).tolist(), array[:, ::2])
    transposed = torch.arange(24, dtype=torch.float32).reshape(4, 6).T[1:]
    np.testing.assert_array_equal(tensors.to_array(transposed), np.asarray(transposed.tolist()))
    assert tensors.to_tensor(np.zeros((0, 3), np.float32)).shape == (0, 3)
    assert tensors.to_array(torch.zeros(2, 0)).shape == (2, 0)


def test_arrays_made_without_the_bridge_are_the_callers_own(monkeypatch):
    monkeypatch.setattr(tensors, "numpy_bridge", lambda: False)
    tensor = torch.ones(3, requires_grad=True) * 2
    array = tensors.to_array(tensor)
    array[0] = 7.0  # writable, and not the tensor's memory
    assert tensor.tolist() == [2.0, 2.0, 2.0] and array.tolist() == [7.0, 2.0, 2.0]


def test_this_torch_has_the_bridge():
    assert tensors.numpy_bridge() is True  # the project's own environment: torch 2.13, NumPy 2


def test_without_the_bridge_a_tensor_shares_a_writable_arrays_memory(monkeypatch):
    """As ``torch.from_numpy`` does; a read-only array is copied rather than written through."""
    monkeypatch.setattr(tensors, "numpy_bridge", lambda: False)
    array = np.zeros(4, dtype=np.float32)
    tensors.to_tensor(array)[1] = 5.0
    assert array.tolist() == [0.0, 5.0, 0.0, 0.0]
    frozen = np.zeros(2, dtype=np.float32)
    frozen.flags.writeable = False
    tensors.to_tensor(frozen)[0] = 1.0
    assert frozen.tolist() == [0.0, 0.0]


def test_without_the_bridge_a_tensor_keeps_its_array_alive(monkeypatch):
    monkeypatch.setattr(tensors, "numpy_bridge", lambda: False)
    tensor = tensors.to_tensor(np.arange(100_000, dtype=np.float32))  # no other reference
    gc.collect()
    np.zeros(100_000, dtype=np.float32).fill(7.0)  # reuse of freed memory would show here
    assert tensor[:3].tolist() == [0.0, 1.0, 2.0] and float(tensor.double().sum()) == 4999950000.0


CLICK_PATH = Path(tensors.__file__).resolve().parent
BRIDGE_CALLS = re.compile(r"torch\.from_numpy\(|\.numpy\(\)|torch\.as_tensor\(")


def test_the_click_path_crosses_between_numpy_and_torch_only_here():
    """Every module a click runs goes through ``to_tensor`` and ``to_array``, so that a click
    runs where torch's NumPy bridge is missing (training runs in MedCNN's own environment)."""
    crossing = [
        f"{path.relative_to(CLICK_PATH)}:{number}"
        for path in sorted(CLICK_PATH.rglob("*.py"))
        if "training" not in path.parts and path != Path(tensors.__file__).resolve()
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if BRIDGE_CALLS.search(line)
    ]
    assert crossing == []
