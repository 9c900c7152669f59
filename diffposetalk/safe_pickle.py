"""Allow-list unpickling for files that come from elsewhere.

Reference checkpoints (``torch.save``), FLAME ``.pkl`` files and HDTF_TFHP lmdb values are
pickles. A plain unpickle runs whatever the file names, so every loader in dpt-live goes through
:func:`load` with an explicit allow-list of globals; anything else raises
:class:`UnsafePickleError` naming the file and the refused global.
"""

from __future__ import annotations

import argparse
import collections
import io
import pathlib
import pickle
import warnings
import zipfile
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle asked for a global that is not on the allow-list."""


class CheckpointError(ValueError):
    """A file could not be read as the checkpoint/model it claims to be."""


def _numpy_reconstruct():
    # numpy moved its core module in 2.0; pickles name either location.
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray
    return multiarray._reconstruct


# Globals that only build plain data. Keyed by (module, name).
PLAIN_DATA: dict[tuple[str, str], Any] = {
    ("builtins", "dict"): dict,
    ("builtins", "list"): list,
    ("builtins", "tuple"): tuple,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "bytearray"): bytearray,
    ("builtins", "slice"): slice,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct(),
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct(),
    ("numpy.core.multiarray", "scalar"): None,  # filled below
    ("numpy._core.multiarray", "scalar"): None,
    ("_codecs", "encode"): None,  # protocol-2 pickles of bytes use codecs.encode
}


def _fill_plain_data() -> None:
    import codecs

    try:
        from numpy._core import multiarray
    except ImportError:
        from numpy.core import multiarray
    for key in (("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar")):
        PLAIN_DATA[key] = multiarray.scalar
    PLAIN_DATA[("_codecs", "encode")] = codecs.encode


_fill_plain_data()

# Reference checkpoints also hold an argparse.Namespace of training options with pathlib paths.
ARGS_AND_PATHS: dict[tuple[str, str], Any] = {
    ("argparse", "Namespace"): argparse.Namespace,
    ("pathlib", "PosixPath"): pathlib.PurePosixPath,
    ("pathlib", "WindowsPath"): pathlib.PureWindowsPath,
    ("pathlib", "Path"): pathlib.PurePath,
    ("pathlib", "PurePosixPath"): pathlib.PurePosixPath,
    ("pathlib", "PureWindowsPath"): pathlib.PureWindowsPath,
}


class _AllowListUnpickler(pickle.Unpickler):
    def __init__(self, file, allowed: Mapping[tuple[str, str], Any], source: str,
                 persistent_load: Callable[[Any], Any] | None = None, encoding: str = "ASCII"):
        super().__init__(file, encoding=encoding)  # py2 pickles (FLAME 2020) need latin1
        self._allowed = allowed
        self._source = source
        if persistent_load is not None:
            self.persistent_load = persistent_load

    def find_class(self, module: str, name: str) -> Any:
        key = (module, name)
        if key in self._allowed and self._allowed[key] is not None:
            return self._allowed[key]
        raise UnsafePickleError(
            f"{self._source}: refused to load global '{module}.{name}' "
            "(not on the allow-list; the file may contain code that would run on load)"
        )


def loads(data: bytes, source: str, allowed: Mapping[tuple[str, str], Any] = PLAIN_DATA) -> Any:
    """Unpickle bytes allowing only ``allowed`` globals. ``source`` names the origin in errors."""
    return _AllowListUnpickler(io.BytesIO(data), allowed, source).load()


def load(path: str | pathlib.Path, allowed: Mapping[tuple[str, str], Any] = PLAIN_DATA,
         encoding: str = "ASCII") -> Any:
    """Unpickle a plain pickle file allowing only ``allowed`` globals."""
    path = pathlib.Path(path)
    with open(path, "rb") as f:
        return _AllowListUnpickler(f, allowed, str(path), encoding=encoding).load()


# --- torch.save files ---------------------------------------------------------------------------

def _torch_globals() -> dict[tuple[str, str], Any]:
    import torch
    import torch._utils

    table = {
        ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
        ("torch", "Size"): torch.Size,
    }
    for dtype_name in ("Float", "Double", "Half", "BFloat16", "Long", "Int", "Short", "Char",
                       "Byte", "Bool"):
        table[("torch", f"{dtype_name}Storage")] = getattr(torch, f"{dtype_name}Storage")
    table[("torch", "float32")] = torch.float32
    return table


def load_torch_checkpoint(path: str | pathlib.Path) -> Any:
    """Read a ``torch.save`` file (zip format) with an allow-list: tensors, dicts, lists,
    argparse.Namespace and pathlib paths. Refuses anything else naming the file and global."""
    import torch

    path = pathlib.Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"{path}: not a torch.save zip archive (legacy or corrupt checkpoint); "
            "re-save it with a current PyTorch or check the download")
    allowed = {**PLAIN_DATA, **ARGS_AND_PATHS, **_torch_globals()}
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkl_names = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pkl_names) != 1:
            raise CheckpointError(f"{path}: expected one data.pkl in the archive, found {pkl_names}")
        prefix = pkl_names[0][: -len("data.pkl")]

        storages: dict[str, Any] = {}

        def persistent_load(saved_id):
            # ('storage', storage_type, key, location, numel)
            if not (isinstance(saved_id, tuple) and saved_id and saved_id[0] == "storage"):
                raise UnsafePickleError(f"{path}: unexpected persistent id {saved_id!r}")
            storage_type, key = saved_id[1], saved_id[2]
            if key in storages:  # views share one storage
                return storages[key]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # TypedStorage deprecation: still what unpickling needs
                dtype = storage_type.dtype
            member = f"{prefix}data/{key}"
            try:
                raw = zf.read(member)
            except KeyError as exc:
                raise CheckpointError(f"{path}: missing tensor data '{member}'") from exc
            storage = torch.UntypedStorage.from_buffer(raw, byte_order="little", dtype=torch.uint8) \
                if raw else torch.UntypedStorage(0)
            storages[key] = torch.storage.TypedStorage(wrap_storage=storage, dtype=dtype, _internal=True)
            return storages[key]

        with zf.open(pkl_names[0]) as f:
            try:
                return _AllowListUnpickler(f, allowed, str(path), persistent_load).load()
            except UnsafePickleError:
                raise
            except Exception as exc:  # truncated or corrupt pickle stream
                raise CheckpointError(f"{path}: corrupt checkpoint ({type(exc).__name__}: {exc})") from exc
