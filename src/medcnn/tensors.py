"""Arrays into tensors and back, also where torch's NumPy bridge is missing.

torch 2.2.2 is the newest torch for 3D Slicer's macOS build (x86_64). It was built against
NumPy 1, and 3D Slicer 5.10 ships NumPy 2: there ``torch.from_numpy`` and ``Tensor.numpy``
raise "Numpy is not available". A click needs neither: an array becomes a tensor through the
buffer protocol (``torch.frombuffer``, sharing the array's memory as ``from_numpy`` does), and a
tensor's bytes are copied into a new array from their address (one copy, as small as the blocks
a click computes on: warm clicks take 1-2 % longer, ``benchmarks/numpy_bridge.py``). Where the
bridge works, it is used as it is.
"""

from __future__ import annotations

import ctypes
from functools import cache

import numpy as np
import torch

_DTYPES: dict[np.dtype, torch.dtype] = {
    np.dtype(np.float32): torch.float32,
    np.dtype(np.float64): torch.float64,
    np.dtype(np.int64): torch.int64,
    np.dtype(np.int32): torch.int32,
    np.dtype(np.uint8): torch.uint8,
    np.dtype(np.bool_): torch.bool,
}
_ARRAY_DTYPES: dict[torch.dtype, np.dtype] = {value: key for key, value in _DTYPES.items()}


@cache
def numpy_bridge() -> bool:
    """Whether this torch can share memory with this NumPy."""
    try:
        torch.from_numpy(np.zeros(1, dtype=np.float32)).numpy()
    except RuntimeError:
        return False
    return True


def to_tensor(array: np.ndarray) -> torch.Tensor:
    """``torch.from_numpy``: the array's values as a CPU tensor of the same type and shape,
    sharing its memory (a read-only array's values are copied first, as torch writes in place)."""
    array = np.ascontiguousarray(array)
    if numpy_bridge():
        return torch.from_numpy(array)
    dtype = _DTYPES[array.dtype]
    if array.size == 0:
        return torch.empty(array.shape, dtype=dtype)
    if not array.flags.writeable:
        array = array.copy()
    return torch.frombuffer(array, dtype=dtype).reshape(array.shape)


def to_array(tensor: torch.Tensor) -> np.ndarray:
    """``Tensor.numpy``: a CPU tensor's values as an array (detached from autograd)."""
    tensor = tensor.detach()
    if numpy_bridge():
        return tensor.numpy()
    tensor = tensor.contiguous()
    dtype = _ARRAY_DTYPES[tensor.dtype]
    if tensor.numel() == 0:
        return np.empty(tuple(tensor.shape), dtype=dtype)
    memory = (ctypes.c_char * (tensor.numel() * tensor.element_size())).from_address(
        tensor.data_ptr()
    )
    return np.frombuffer(memoryview(memory), dtype=dtype).reshape(tuple(tensor.shape)).copy()
