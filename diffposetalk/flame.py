"""FLAME face model: loading (without running pickled code) and batched linear blend skinning.

This is the one place in dpt-live that reads FLAME files and turns coefficients into vertices.

FLAME 2020 ``generic_model.pkl`` is a Python 2 pickle whose arrays are chumpy ``Ch`` objects and
whose ``J_regressor`` is a scipy ``csc_matrix``; FLAME 2023 Open holds plain numpy arrays. Neither
chumpy nor scipy is needed here: the allow-list unpickler maps their classes to small stand-ins
that keep only the stored numbers. A ``.npz`` with the same keys is accepted too.
"""

from __future__ import annotations

import dataclasses
import pathlib
import zipfile
from typing import Any

import numpy as np

from diffposetalk import safe_pickle
from diffposetalk.safe_pickle import CheckpointError, UnsafePickleError

# FLAME's shapedirs hold 300 identity components, then the expression components.
SHAPE_COMPONENTS = 300
# Joint order of FLAME's kinematic tree.
JOINT_NAMES = ("global", "neck", "jaw", "eye_left", "eye_right")


# --- loading ------------------------------------------------------------------------------------

class _ChumpyArray:
    """Stand-in for ``chumpy.ch.Ch``. Chumpy pickles an instance's ``__dict__`` (minus its weak
    caches) and keeps the array under ``'x'``; everything else there is bookkeeping."""

    __slots__ = ("value",)

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict) or "x" not in state:
            raise ValueError("chumpy Ch object without its 'x' array")
        self.value = state["x"]


class _SparseCSC:
    """Stand-in for scipy's ``csc_matrix``: rebuilt densely from the pickled CSC arrays."""

    __slots__ = ("value",)

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise ValueError("csc_matrix state is not a dict")
        try:
            data = np.asarray(_unwrap(state["data"]), dtype=np.float64)
            indices = np.asarray(_unwrap(state["indices"]), dtype=np.int64)
            indptr = np.asarray(_unwrap(state["indptr"]), dtype=np.int64)
            shape = state["_shape"] if "_shape" in state else state["shape"]
            n_rows, n_cols = (int(n) for n in shape)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"csc_matrix state is incomplete ({exc})") from exc
        nnz = data.shape[0] if data.ndim == 1 else -1
        if (indptr.shape != (n_cols + 1,) or indices.shape != (nnz,) or indptr[0] != 0
                or indptr[-1] != nnz or np.any(np.diff(indptr) < 0)
                or (nnz and (indices.min() < 0 or indices.max() >= n_rows))):
            raise ValueError("csc_matrix arrays are inconsistent")
        dense = np.zeros((n_rows, n_cols), dtype=np.float64)
        cols = np.repeat(np.arange(n_cols), np.diff(indptr))
        np.add.at(dense, (indices, cols), data)  # duplicate entries add up, as in scipy
        self.value = dense


_STAND_INS = (_ChumpyArray, _SparseCSC)
# Python 2 `object`, needed only as the base argument of copy_reg._reconstructor; a marker, so a
# pickle cannot call or subclass the real one.
_OBJECT_BASE = object()


def _unwrap(obj: Any) -> Any:
    while isinstance(obj, _STAND_INS):
        obj = obj.value
    return obj


def _flame_globals(source: str) -> dict[tuple[str, str], Any]:
    """Allow-list for FLAME pickles: plain data, Python 2 spellings of it, and the stand-ins."""

    def reconstructor(cls, base, state):
        # Protocol 0/1 pickles of new-style objects call copy_reg._reconstructor(cls, object, None).
        # Only our stand-ins may be built this way.
        if cls not in _STAND_INS or base is not _OBJECT_BASE or state is not None:
            raise UnsafePickleError(
                f"{source}: refused copy_reg._reconstructor({cls!r}, {base!r}, ...) "
                "(only chumpy Ch and scipy csc_matrix are rebuilt)")
        return cls.__new__(cls)

    allowed = dict(safe_pickle.PLAIN_DATA)
    # A Python 2 pickle names builtins `__builtin__`; the unpickler's own renaming happens in the
    # find_class that the allow-list replaces, so the old names are listed here.
    allowed.update({("__builtin__", name): value for (module, name), value in safe_pickle.PLAIN_DATA.items()
                    if module == "builtins"})
    allowed.update({
        ("chumpy.ch", "Ch"): _ChumpyArray,
        ("scipy.sparse.csc", "csc_matrix"): _SparseCSC,    # scipy < 1.8
        ("scipy.sparse._csc", "csc_matrix"): _SparseCSC,   # scipy >= 1.8
        ("copy_reg", "_reconstructor"): reconstructor,
        ("copyreg", "_reconstructor"): reconstructor,
        ("__builtin__", "object"): _OBJECT_BASE,
        ("builtins", "object"): _OBJECT_BASE,
    })
    return allowed


@dataclasses.dataclass(frozen=True, eq=False)
class FlameData:
    """A FLAME model as plain arrays. V vertices, J joints, K blendshape components."""

    v_template: np.ndarray   # (V, 3) float32
    shapedirs: np.ndarray    # (V, 3, K) float32: identity 0..299, expression 300..
    posedirs: np.ndarray     # (V, 3, 9*(J-1)) float32: correctives from (R - I) of joints 1..J-1
    j_regressor: np.ndarray  # (J, V) float32, dense
    weights: np.ndarray      # (V, J) float32 skinning weights
    parents: np.ndarray      # (J,) int64, root = -1, parents precede children
    faces: np.ndarray        # (F, 3) int64

    @property
    def n_vertices(self) -> int:
        return self.v_template.shape[0]

    @property
    def n_joints(self) -> int:
        return self.parents.shape[0]


def _read_pickle(path: pathlib.Path) -> Any:
    try:
        # latin1: a Python 2 `str` holds numpy's raw bytes, which numpy re-encodes; harmless for
        # py3 pickles.
        return safe_pickle.load(path, _flame_globals(str(path)), encoding="latin1")
    except UnsafePickleError:
        raise
    except Exception as exc:  # truncated stream, malformed stand-in state, ...
        raise CheckpointError(
            f"{path}: not a readable FLAME pickle ({type(exc).__name__}: {exc})") from exc


def _read_npz(path: pathlib.Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except Exception as exc:  # object arrays (would need pickle), corrupt archive
        raise CheckpointError(f"{path}: not a readable FLAME .npz ({type(exc).__name__}: {exc})") from exc


def _array(raw: dict, key: str, path: pathlib.Path, dtype, ndim: int) -> np.ndarray:
    if key not in raw:
        raise CheckpointError(f"{path}: FLAME model has no '{key}'")
    try:
        arr = np.asarray(_unwrap(raw[key]))
        if arr.dtype == object:
            raise TypeError("object array")
        arr = arr.astype(dtype)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: '{key}' is not a numeric array ({exc})") from exc
    if arr.ndim != ndim:
        raise CheckpointError(f"{path}: '{key}' has shape {arr.shape}, expected {ndim} dimensions")
    return arr


def _expect_shape(arr: np.ndarray, shape: tuple, key: str, path: pathlib.Path) -> None:
    if arr.shape != shape:
        raise CheckpointError(f"{path}: '{key}' has shape {arr.shape}, expected {shape}")


def _parents_from_kintree(kintree: np.ndarray, path: pathlib.Path) -> np.ndarray:
    """Row 1 holds joint ids, row 0 their parents' ids; the root's parent is -1 or 2**32-1."""
    if kintree.shape[0] != 2:
        raise CheckpointError(f"{path}: 'kintree_table' has shape {kintree.shape}, expected (2, J)")
    column_of = {int(joint_id): col for col, joint_id in enumerate(kintree[1])}
    parents = np.array([column_of.get(int(p), -1) for p in kintree[0]], dtype=np.int64)
    # LBS walks joints in order, so each parent must come before its children.
    if parents[0] != -1 or np.any(parents[1:] < 0) or np.any(parents[1:] >= np.arange(1, len(parents))):
        raise CheckpointError(f"{path}: 'kintree_table' is not a tree rooted at joint 0 "
                              f"with parents before children: {kintree.tolist()}")
    return parents


def load_flame(path: str | pathlib.Path) -> FlameData:
    """Read a FLAME model: 2020 ``.pkl`` (chumpy), 2023 Open ``.pkl`` or an ``.npz`` with the
    pickle's keys. Raises CheckpointError for missing keys or wrong shapes and UnsafePickleError
    for pickles that name anything besides arrays, chumpy Ch and scipy csc_matrix."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    raw = _read_npz(path) if zipfile.is_zipfile(path) else _read_pickle(path)
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: expected a dict of FLAME arrays, found {type(raw).__name__}")

    v_template = _array(raw, "v_template", path, np.float32, 2)
    n_verts = v_template.shape[0]
    _expect_shape(v_template, (n_verts, 3), "v_template", path)
    kintree = _array(raw, "kintree_table", path, np.int64, 2)
    parents = _parents_from_kintree(kintree, path)
    n_joints = len(parents)

    shapedirs = _array(raw, "shapedirs", path, np.float32, 3)
    _expect_shape(shapedirs, (n_verts, 3, shapedirs.shape[2]), "shapedirs", path)
    posedirs = _array(raw, "posedirs", path, np.float32, 3)
    _expect_shape(posedirs, (n_verts, 3, 9 * (n_joints - 1)), "posedirs", path)
    j_regressor = _array(raw, "J_regressor", path, np.float32, 2)
    _expect_shape(j_regressor, (n_joints, n_verts), "J_regressor", path)
    weights = _array(raw, "weights", path, np.float32, 2)
    _expect_shape(weights, (n_verts, n_joints), "weights", path)
    faces = _array(raw, "f", path, np.int64, 2)
    _expect_shape(faces, (faces.shape[0], 3), "f", path)
    if faces.size and (faces.min() < 0 or faces.max() >= n_verts):
        raise CheckpointError(f"{path}: 'f' indexes vertices outside 0..{n_verts - 1}")

    return FlameData(v_template=v_template, shapedirs=shapedirs, posedirs=posedirs,
                     j_regressor=j_regressor, weights=weights, parents=parents, faces=faces)


def save_flame_npz(data: FlameData, path: str | pathlib.Path) -> None:
    """Write ``data`` as an ``.npz`` that :func:`load_flame` reads (pickle-free, for clients)."""
    kintree = np.stack([data.parents, np.arange(data.n_joints)]).astype(np.int64)
    np.savez(path, v_template=data.v_template, shapedirs=data.shapedirs, posedirs=data.posedirs,
             J_regressor=data.j_regressor, weights=data.weights, kintree_table=kintree, f=data.faces)


# --- linear blend skinning ----------------------------------------------------------------------

def axis_angle_to_matrix(rvec):
    """Rodrigues: (..., 3) axis-angle -> (..., 3, 3) rotation. Exact and differentiable at zero
    angle (Taylor branch there instead of dividing by the angle)."""
    import torch

    theta2 = (rvec * rvec).sum(-1, keepdim=True)
    small = theta2 < 1e-6
    safe2 = torch.where(small, torch.ones_like(theta2), theta2)
    theta = safe2.sqrt()
    # R = I + a K + b K^2 with K = skew(rvec) (unnormalised), a = sin t / t, b = (1 - cos t) / t^2.
    a = torch.where(small, 1 - theta2 / 6, torch.sin(theta) / theta)
    half_sin = torch.sin(theta / 2)
    b = torch.where(small, 0.5 - theta2 / 24, 2 * half_sin * half_sin / safe2)  # avoids 1 - cos cancellation
    x, y, z = rvec.unbind(-1)
    zero = torch.zeros_like(x)
    k = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).unflatten(-1, (3, 3))
    eye = torch.eye(3, dtype=rvec.dtype, device=rvec.device)
    return eye + a.unsqueeze(-1) * k + b.unsqueeze(-1) * (k @ k)


def _define_flame():
    import torch

    class Flame(torch.nn.Module):
        """Batched FLAME: (shape, expression, pose) -> vertices, float32 on any device.

        ``pose`` is DiffPoseTalk's 6 numbers: global axis-angle then jaw axis-angle. Neck and eyes are
        zero unless ``neck_pose`` (B, 3) / ``eye_pose`` (B, 6: left then right) are given.
        """

        def __init__(self, data: FlameData, n_shape: int = 100, n_exp: int = 50):
            super().__init__()
            n_exp_available = data.shapedirs.shape[2] - SHAPE_COMPONENTS
            if not 0 <= n_shape <= min(SHAPE_COMPONENTS, data.shapedirs.shape[2]):
                raise ValueError(f"n_shape={n_shape} outside 0..{SHAPE_COMPONENTS}")
            if not 0 <= n_exp <= max(n_exp_available, 0):
                raise ValueError(f"n_exp={n_exp}: the model has {max(n_exp_available, 0)} "
                                 "expression components")
            if data.n_joints != len(JOINT_NAMES):
                raise ValueError(f"FLAME has {len(JOINT_NAMES)} joints, this model has {data.n_joints}")
            self.n_shape, self.n_exp = n_shape, n_exp
            self.parents = tuple(int(p) for p in data.parents)

            dirs = np.concatenate([data.shapedirs[..., :n_shape],
                                   data.shapedirs[..., SHAPE_COMPONENTS:SHAPE_COMPONENTS + n_exp]], -1)
            n_verts = data.n_vertices

            def buffer(name, array, dtype=torch.float32):
                # Not persistent: a model that contains Flame should not copy FLAME into its checkpoints.
                self.register_buffer(name, torch.as_tensor(np.ascontiguousarray(array), dtype=dtype),
                                     persistent=False)

            buffer("v_template", data.v_template)
            buffer("shapedirs", dirs)
            # (9*(J-1), V*3) so pose correctives are one matmul.
            buffer("posedirs", data.posedirs.reshape(n_verts * 3, -1).T)
            buffer("weights", data.weights)
            # Joints are linear in the blendshape coefficients: regress them once, here.
            j64 = data.j_regressor.astype(np.float64)
            buffer("j_template", j64 @ data.v_template.astype(np.float64))
            buffer("j_shapedirs", np.einsum("jv,vck->jck", j64, dirs.astype(np.float64)))
            buffer("faces", data.faces, dtype=torch.int64)

        def _coefficients(self, shape, exp, pose, neck_pose, eye_pose):
            dtype = self.v_template.dtype
            if exp.ndim != 2 or exp.shape[1] != self.n_exp:
                raise ValueError(f"exp must be (B, {self.n_exp}), got {tuple(exp.shape)}")
            batch = exp.shape[0]
            if shape.ndim == 1:
                shape = shape.unsqueeze(0)
            if shape.ndim != 2 or shape.shape[1] != self.n_shape or shape.shape[0] not in (1, batch):
                raise ValueError(f"shape must be ({batch}, {self.n_shape}) or ({self.n_shape},), "
                                 f"got {tuple(shape.shape)}")
            if pose.shape != (batch, 6):
                raise ValueError(f"pose must be ({batch}, 6), got {tuple(pose.shape)}")
            pose = pose.to(dtype)
            neck = pose.new_zeros(batch, 3) if neck_pose is None else neck_pose.to(dtype)
            eyes = pose.new_zeros(batch, 6) if eye_pose is None else eye_pose.to(dtype)
            if neck.shape != (batch, 3) or eyes.shape != (batch, 6):
                raise ValueError(f"neck_pose must be ({batch}, 3) and eye_pose ({batch}, 6)")
            betas = torch.cat([shape.to(dtype).expand(batch, -1), exp.to(dtype)], -1)
            # Order of JOINT_NAMES: global, neck, jaw, left eye, right eye.
            full_pose = torch.stack([pose[:, :3], neck, pose[:, 3:], eyes[:, :3], eyes[:, 3:]], 1)
            return betas, axis_angle_to_matrix(full_pose)

        def _chain(self, betas, rot):
            """World rotation (B,J,3,3) and translation (B,J,3) of each joint, and the rest joints."""
            joints = self.j_template + torch.einsum("jck,bk->bjc", self.j_shapedirs, betas)
            rots, trans = [rot[:, 0]], [joints[:, 0]]
            for i in range(1, len(self.parents)):
                p = self.parents[i]
                rel = (joints[:, i] - joints[:, p]).unsqueeze(-1)
                trans.append((rots[p] @ rel).squeeze(-1) + trans[p])
                rots.append(rots[p] @ rot[:, i])
            return torch.stack(rots, 1), torch.stack(trans, 1), joints

        def forward(self, shape, exp, pose, neck_pose=None, eye_pose=None):
            """shape (B, n_shape) or (n_shape,), exp (B, n_exp), pose (B, 6) -> vertices (B, V, 3)."""
            betas, rot = self._coefficients(shape, exp, pose, neck_pose, eye_pose)
            batch = betas.shape[0]
            v_shaped = self.v_template + torch.einsum("vck,bk->bvc", self.shapedirs, betas)
            eye = torch.eye(3, dtype=rot.dtype, device=rot.device)
            pose_feature = (rot[:, 1:] - eye).reshape(batch, -1)
            v_posed = v_shaped + (pose_feature @ self.posedirs).view(batch, -1, 3)

            world_rot, world_t, joints = self._chain(betas, rot)
            # Skinning transform of joint j maps a rest point x to R_j (x - j_rest) + t_j.
            skin_t = world_t - (world_rot @ joints.unsqueeze(-1)).squeeze(-1)
            per_joint = torch.cat([world_rot.flatten(2), skin_t], -1)             # (B, J, 12)
            per_vertex = torch.einsum("vj,bjk->bvk", self.weights, per_joint)      # (B, V, 12)
            rot_v = per_vertex[..., :9].unflatten(-1, (3, 3))
            return torch.einsum("bvij,bvj->bvi", rot_v, v_posed) + per_vertex[..., 9:]

        def joints(self, shape, exp, pose, neck_pose=None, eye_pose=None):
            """Posed joint positions (B, J, 3) in JOINT_NAMES order, without skinning any vertex."""
            betas, rot = self._coefficients(shape, exp, pose, neck_pose, eye_pose)
            return self._chain(betas, rot)[1]

    Flame.__qualname__ = "Flame"
    return Flame


_flame_class = None


def _flame():
    global _flame_class
    if _flame_class is None:
        _flame_class = _define_flame()
    return _flame_class


def __getattr__(name: str):
    # Flame subclasses torch.nn.Module; building it on first use keeps `import diffposetalk.flame`
    # (done by the CLI to register commands) free of the torch import.
    if name == "Flame":
        return _flame()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --- coefficient files -------------------------------------------------------------------------

def load_coefficients(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from diffposetalk.errors import UserError

    if not path.is_file():
        raise UserError(f"{path}: no such coefficient file")
    try:
        with np.load(path, allow_pickle=False) as npz:
            coef = {key: npz[key] for key in npz.files}
    except Exception as exc:
        raise UserError(f"{path}: not a readable .npz ({type(exc).__name__}: {exc})") from exc
    for key in ("exp", "pose", "shape"):
        if key not in coef:
            raise UserError(f"{path}: missing '{key}' (has {sorted(coef)})")
    try:
        exp, pose, shape = (np.asarray(coef[k], dtype=np.float32) for k in ("exp", "pose", "shape"))
    except ValueError as exc:
        raise UserError(f"{path}: coefficients are not numeric ({exc})") from exc
    if exp.ndim != 2:
        raise UserError(f"{path}: 'exp' must be (T, n_exp), got {exp.shape}")
    frames = exp.shape[0]
    if pose.shape != (frames, 6):
        raise UserError(f"{path}: 'pose' must be ({frames}, 6), got {pose.shape}")
    if not (shape.ndim == 1 or (shape.ndim == 2 and shape.shape[0] == frames)):
        raise UserError(f"{path}: 'shape' must be ({frames}, n_shape) or (n_shape,), got {shape.shape}")
    return shape, exp, pose
