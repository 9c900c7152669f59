"""FLAME loading (chumpy/scipy pickles without chumpy/scipy, refusal of code) and LBS."""

from __future__ import annotations

import argparse
import codecs
import contextlib
import dataclasses
import os
import pickle
import pickletools
import struct
import subprocess
import sys
import types

import numpy as np
import pytest
import torch

from diffposetalk.errors import UserError
from diffposetalk.flame import Flame, FlameData, axis_angle_to_matrix, load_flame, save_flame_npz
from diffposetalk.safe_pickle import CheckpointError, UnsafePickleError
from dpt_live.commands import flame as flame_command

V, F = 30, 40
JAW = 2
NO_JAW = np.arange(10)  # vertices given zero jaw weight


# --- a tiny synthetic FLAME ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def model() -> dict[str, np.ndarray]:
    """Arrays under the FLAME pickle's keys, float64 like the real file."""
    rng = np.random.default_rng(0)
    weights = rng.random((V, 5)) * (rng.random((V, 5)) > 0.3)
    weights[:, 0] += 0.05  # every row has some weight
    weights[NO_JAW, JAW] = 0.0
    weights[10:, JAW] += 0.2
    weights /= weights.sum(1, keepdims=True)
    j_regressor = rng.random((5, V)) * (rng.random((5, V)) > 0.6)
    j_regressor[:, 0] += 0.1
    j_regressor /= j_regressor.sum(1, keepdims=True)
    return {
        "v_template": rng.normal(size=(V, 3)) * 0.1,
        "shapedirs": rng.normal(size=(V, 3, 400)) * 0.01,
        "posedirs": rng.normal(size=(V, 3, 36)) * 0.01,
        "J_regressor": j_regressor,
        "weights": weights,
        # Root's parent is 2**32-1 in FLAME 2020 (uint32 -1).
        "kintree_table": np.array([[4294967295, 0, 1, 1, 1], [0, 1, 2, 3, 4]], dtype=np.int64),
        "f": rng.integers(0, V, size=(F, 3)).astype(np.uint32),
        "bs_style": "lbs", "bs_type": "lrotmin",
    }


class FakeCh:
    """Pickles like chumpy.ch.Ch: instance __dict__ without its weak caches, array under 'x'."""

    def __init__(self, x):
        self.__dict__.update(x=x, _dirty_vars=set(), _itr=None, _depends_on_deps={},
                             _make_dense=False, _make_sparse=False)


class FakeCSC:
    """Pickles like scipy's csc_matrix: its __dict__ of CSC arrays and shape."""

    def __init__(self, dense):
        cols = [np.nonzero(dense[:, j])[0] for j in range(dense.shape[1])]
        self.__dict__.update(
            _shape=dense.shape, maxprint=50, format="csc",
            indices=np.concatenate(cols).astype(np.int32),
            indptr=np.concatenate([[0], np.cumsum([len(c) for c in cols])]).astype(np.int32),
            data=np.concatenate([dense[c, j] for j, c in enumerate(cols)]))


@contextlib.contextmanager
def pretend_modules(classes: dict[str, type]):
    """Let pickle find each class at 'module.Name' only while dumping."""
    added = []
    try:
        for dotted, cls in classes.items():
            module, name = dotted.rsplit(".", 1)
            cls.__module__, cls.__qualname__, cls.__name__ = module, name, name
            parts = module.split(".")
            for i in range(1, len(parts) + 1):
                mod_name = ".".join(parts[:i])
                if mod_name not in sys.modules:
                    sys.modules[mod_name] = types.ModuleType(mod_name)
                    added.append(mod_name)
            setattr(sys.modules[module], name, cls)
        yield
    finally:
        for mod_name in added:
            del sys.modules[mod_name]


class Py2Pickler(pickle._Pickler):
    """Writes str/bytes as Python 2 `str` opcodes, as Python 2's pickle wrote FLAME 2020 (numpy's
    raw array data included); py3 protocols 0-2 otherwise already use py2 module names."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj):
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        if self.proto == 0:
            self.write(pickle.STRING + b"'" + codecs.escape_encode(data)[0] + b"'\n")
        elif len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str
    dispatch[str] = save_py2_str

    def save_global(self, obj, name=None):
        module = getattr(obj, "__module__", None) or ""
        if module.startswith("numpy._core."):  # numpy < 2 (so every Python 2 file) said numpy.core
            old = module.replace("numpy._core.", "numpy.core.", 1)
            self.write(pickle.GLOBAL + f"{old}\n{obj.__name__}\n".encode())
            self.memoize(obj)
        else:
            super().save_global(obj, name)


def write_flame2020(path, model, protocol=2):
    """chumpy arrays + scipy.sparse.csc.csc_matrix, Python 2 style pickle."""
    obj = dict(model)
    for key in ("v_template", "shapedirs", "posedirs", "weights"):
        obj[key] = FakeCh(model[key])
    obj["J_regressor"] = FakeCSC(model["J_regressor"])
    with pretend_modules({"chumpy.ch.Ch": FakeCh, "scipy.sparse.csc.csc_matrix": FakeCSC}):
        with open(path, "wb") as f:
            Py2Pickler(f, protocol=protocol).dump(obj)
    assert "chumpy" not in sys.modules and "scipy" not in sys.modules  # loading must not need them


def write_flame2023(path, model):
    """Plain numpy arrays (Python 3 pickle), J_regressor as a current-scipy csc_matrix."""
    obj = dict(model, J_regressor=FakeCSC(model["J_regressor"]))
    with pretend_modules({"scipy.sparse._csc.csc_matrix": FakeCSC}):
        with open(path, "wb") as f:
            pickle.dump(obj, f, protocol=4)


@pytest.fixture(scope="module")
def files(model, tmp_path_factory):
    d = tmp_path_factory.mktemp("flame")
    paths = {"2020": d / "generic_model.pkl", "2020-proto0": d / "generic_model_p0.pkl",
             "2023": d / "flame2023_Open.pkl", "npz": d / "flame.npz"}
    write_flame2020(paths["2020"], model)
    write_flame2020(paths["2020-proto0"], model, protocol=0)
    write_flame2023(paths["2023"], model)
    np.savez(paths["npz"], **{k: v for k, v in model.items() if isinstance(v, np.ndarray)})
    return paths


@pytest.fixture(scope="module")
def data(files) -> FlameData:
    return load_flame(files["2020"])


# --- loading ------------------------------------------------------------------------------------

def test_python2_pickle_really_uses_chumpy_and_scipy_globals(files):
    raw = files["2020"].read_bytes()
    assert b"chumpy.ch\nCh" in raw and b"scipy.sparse.csc\ncsc_matrix" in raw
    assert b"numpy.core.multiarray\n_reconstruct" in raw and b"__builtin__\nset" in raw
    opcodes = {op.name for op, _, _ in pickletools.genops(raw)}
    assert b"numpy._core" not in raw and not opcodes & {"BINUNICODE", "SHORT_BINUNICODE", "BINBYTES"}
    assert b"copy_reg\n_reconstructor" in files["2020-proto0"].read_bytes()


@pytest.mark.parametrize("kind", ["2020", "2020-proto0", "2023", "npz"])
def test_all_formats_load_to_the_same_arrays(files, model, kind):
    d = load_flame(files[kind])
    np.testing.assert_allclose(d.v_template, model["v_template"], rtol=1e-6)
    np.testing.assert_allclose(d.shapedirs, model["shapedirs"], rtol=1e-6)
    np.testing.assert_allclose(d.posedirs, model["posedirs"], rtol=1e-6)
    np.testing.assert_allclose(d.j_regressor, model["J_regressor"], rtol=1e-6)
    np.testing.assert_allclose(d.weights, model["weights"], rtol=1e-6)
    np.testing.assert_array_equal(d.faces, model["f"])
    np.testing.assert_array_equal(d.parents, [-1, 0, 1, 1, 1])
    assert d.v_template.dtype == np.float32 and d.faces.dtype == np.int64 and d.parents.dtype == np.int64
    assert "chumpy" not in sys.modules and "scipy" not in sys.modules


def test_save_flame_npz_round_trips(data, tmp_path):
    save_flame_npz(data, tmp_path / "m.npz")
    again = load_flame(tmp_path / "m.npz")
    for field in dataclasses.fields(FlameData):
        np.testing.assert_array_equal(getattr(again, field.name), getattr(data, field.name))


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_malicious_pickle_is_refused_without_running(tmp_path, model):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(dict(model, weights=Evil(marker)), protocol=2))
    with pytest.raises(UnsafePickleError) as info:
        load_flame(path)
    assert str(path) in str(info.value) and "system" in str(info.value)
    assert not marker.exists()


def test_reconstructor_builds_only_stand_ins(tmp_path):
    # copy_reg._reconstructor(collections.OrderedDict, object, None): every global is allowed,
    # but the reconstructor must refuse a class that is not a chumpy/scipy stand-in.
    path = tmp_path / "recon.pkl"
    path.write_bytes(b"ccopy_reg\n_reconstructor\n(ccollections\nOrderedDict\nc__builtin__\nobject\nNtR.")
    with pytest.raises(UnsafePickleError, match="_reconstructor"):
        load_flame(path)


def test_other_chumpy_classes_are_refused(tmp_path):
    path = tmp_path / "ops.pkl"
    path.write_bytes(b"\x80\x02cchumpy.ch_ops\nadd\n)\x81.")
    with pytest.raises(UnsafePickleError, match="chumpy.ch_ops.add"):
        load_flame(path)


def test_missing_key_names_file_and_key(tmp_path, model):
    path = tmp_path / "nokey.pkl"
    path.write_bytes(pickle.dumps({k: v for k, v in model.items() if k != "weights"}))
    with pytest.raises(CheckpointError) as info:
        load_flame(path)
    assert str(path) in str(info.value) and "'weights'" in str(info.value)


def test_wrong_shape_names_key(tmp_path, model):
    path = tmp_path / "shape.npz"
    np.savez(path, **dict({k: v for k, v in model.items() if isinstance(v, np.ndarray)},
                          posedirs=np.zeros((V, 3, 27))))
    with pytest.raises(CheckpointError, match="posedirs"):
        load_flame(path)


def test_broken_sparse_state_is_a_checkpoint_error(tmp_path, model):
    bad = FakeCSC(model["J_regressor"])
    bad.indptr = bad.indptr[:-1]
    with pretend_modules({"scipy.sparse._csc.csc_matrix": FakeCSC}):
        blob = pickle.dumps(dict(model, J_regressor=bad))
    path = tmp_path / "badcsc.pkl"
    path.write_bytes(blob)
    with pytest.raises(CheckpointError, match="csc_matrix"):
        load_flame(path)


# --- LBS ----------------------------------------------------------------------------------------

def rodrigues_np(r):
    """Rotation matrix as the exponential of skew(r), by power series (independent of Rodrigues)."""
    k = np.array([[0, -r[2], r[1]], [r[2], 0, -r[0]], [-r[1], r[0], 0]])
    out, term = np.eye(3), np.eye(3)
    for n in range(1, 30):
        term = term @ k / n
        out = out + term
    return out


def lbs_reference(d: FlameData, shape, exp, full_pose):
    """Per-vertex float64 FLAME for one frame: full_pose (5, 3) in FLAME joint order."""
    dirs = np.concatenate([d.shapedirs[..., :len(shape)], d.shapedirs[..., 300:300 + len(exp)]], -1)
    v = d.v_template + dirs.astype(np.float64) @ np.concatenate([shape, exp])
    joints = d.j_regressor.astype(np.float64) @ v
    rots = [rodrigues_np(p) for p in full_pose]
    feature = np.concatenate([(r - np.eye(3)).ravel() for r in rots[1:]])
    v = v + d.posedirs.astype(np.float64) @ feature
    world = []
    for j, p in enumerate(d.parents):
        local = np.eye(4)
        local[:3, :3] = rots[j]
        local[:3, 3] = joints[j] - (joints[p] if p >= 0 else 0)
        world.append(local if p < 0 else world[p] @ local)
    out = np.zeros_like(v)
    for i in range(len(v)):
        blended = np.zeros((4, 4))
        for j in range(len(world)):
            rest = np.eye(4)
            rest[:3, 3] = -joints[j]
            blended += d.weights[i, j] * (world[j] @ rest)
        out[i] = (blended @ np.append(v[i], 1.0))[:3]
    return out


def t(x):
    return torch.as_tensor(np.asarray(x), dtype=torch.float32)


@pytest.fixture(scope="module")
def flame(data):
    return Flame(data)


def test_zero_everything_gives_template(flame, data):
    verts = flame(torch.zeros(2, 100), torch.zeros(2, 50), torch.zeros(2, 6))
    assert verts.shape == (2, V, 3) and verts.dtype == torch.float32
    np.testing.assert_allclose(verts.numpy(), np.broadcast_to(data.v_template, (2, V, 3)), atol=1e-7)


def test_blendshapes_are_linear(flame, data):
    rng = np.random.default_rng(1)
    s1, s2 = rng.normal(size=(2, 100))
    e1, e2 = rng.normal(size=(2, 50))
    zero_pose = torch.zeros(1, 6)

    def offset(s, e):
        return flame(t(s[None]), t(e[None]), zero_pose)[0].numpy() - data.v_template

    np.testing.assert_allclose(offset(s1 + 2 * s2, e1 - e2),
                               offset(s1, e1) + 2 * offset(s2, np.zeros(50)) - offset(0 * s1, e2),
                               atol=1e-5)
    # Expression uses components 300..349, not 100..149.
    np.testing.assert_allclose(offset(np.zeros(100), e1), data.shapedirs[..., 300:350] @ e1, atol=1e-5)


def test_global_rotation_turns_the_head_about_the_root(flame, data):
    verts = flame(torch.zeros(100), torch.zeros(1, 50), t([[0, np.pi / 2, 0, 0, 0, 0]]))[0].numpy()
    rot_y = np.array([[0.0, 0, 1], [0, 1, 0], [-1, 0, 0]])  # 90 degrees about +y
    root = data.j_regressor[0] @ data.v_template
    np.testing.assert_allclose(verts, (data.v_template - root) @ rot_y.T + root, atol=1e-6)


def test_jaw_moves_only_jaw_weighted_vertices(data):
    # Pose correctives would move every vertex; confine them to the jaw region for this check.
    posedirs = data.posedirs.copy()
    posedirs[NO_JAW] = 0
    jaw_only = Flame(dataclasses.replace(data, posedirs=posedirs))
    verts = jaw_only(torch.zeros(100), torch.zeros(1, 50), t([[0, 0, 0, 0.3, 0, 0]]))[0].numpy()
    moved = np.linalg.norm(verts - data.v_template, axis=1)
    np.testing.assert_allclose(moved[NO_JAW], 0, atol=1e-7)
    assert np.all(moved[10:] > 1e-4)


def test_lbs_matches_per_vertex_reference(flame, data):
    rng = np.random.default_rng(2)
    batch = 3
    shape, exp = rng.normal(size=(batch, 100)), rng.normal(size=(batch, 50))
    pose, neck, eyes = (rng.normal(size=(batch, n)) * 0.5 for n in (6, 3, 6))
    verts = flame(t(shape), t(exp), t(pose), t(neck), t(eyes)).numpy()
    joints = flame.joints(t(shape), t(exp), t(pose), t(neck), t(eyes)).numpy()
    for b in range(batch):
        full = np.stack([pose[b, :3], neck[b], pose[b, 3:], eyes[b, :3], eyes[b, 3:]])
        np.testing.assert_allclose(verts[b], lbs_reference(data, shape[b], exp[b], full), atol=1e-5)
    # Posed root joint sits at its rest position.
    rest_root = data.j_regressor[0] @ (data.v_template + data.shapedirs[..., :100] @ shape[0]
                                       + data.shapedirs[..., 300:350] @ exp[0])
    np.testing.assert_allclose(joints[0, 0], rest_root, atol=1e-5)


def test_gradients_flow_at_zero_and_nonzero_pose(flame):
    for value in (0.0, 0.4):
        pose = torch.full((2, 6), value, requires_grad=True)
        exp = torch.zeros(2, 50, requires_grad=True)
        shape = torch.zeros(2, 100, requires_grad=True)
        flame(shape, exp, pose).square().sum().backward()
        for x in (pose, exp, shape):
            assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_rodrigues_is_exact_and_smooth():
    r = torch.tensor([[0.0, 0.0, 0.0], [1e-5, -2e-5, 3e-6], [0.3, -1.2, 0.7], [0.0, np.pi, 0.0]],
                     dtype=torch.float64, requires_grad=True)
    mats = axis_angle_to_matrix(r).detach().numpy()
    for rv, m in zip(r.detach().numpy(), mats):
        np.testing.assert_allclose(m, rodrigues_np(rv), atol=1e-12)
    assert torch.autograd.gradcheck(axis_angle_to_matrix, (r,))


def test_bad_input_shapes_raise(flame):
    with pytest.raises(ValueError, match="exp"):
        flame(torch.zeros(1, 100), torch.zeros(1, 49), torch.zeros(1, 6))
    with pytest.raises(ValueError, match="pose"):
        flame(torch.zeros(1, 100), torch.zeros(1, 50), torch.zeros(1, 3))


def test_flame_buffers_stay_out_of_state_dict(flame):
    assert flame.state_dict() == {}


# --- CLI ----------------------------------------------------------------------------------------

def run_cli(argv):
    parser = argparse.ArgumentParser()
    flame_command.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.mark.parametrize("per_frame_shape", [True, False])
def test_flame_verts_command(files, flame, tmp_path, per_frame_shape):
    rng = np.random.default_rng(3)
    frames = 7
    exp, pose = rng.normal(size=(frames, 50)), rng.normal(size=(frames, 6)) * 0.3
    shape = rng.normal(size=(frames, 100) if per_frame_shape else (100,))
    coef, out = tmp_path / "coef.npz", tmp_path / "out" / "verts.npy"
    np.savez(coef, exp=exp, pose=pose, shape=shape)
    assert run_cli(["flame-verts", "--flame", str(files["2020"]), "--coef", str(coef),
                    "-o", str(out), "--batch", "3"]) == 0
    verts = np.load(out)
    assert verts.shape == (frames, V, 3) and verts.dtype == np.float32
    expected = flame(t(shape), t(exp), t(pose)).numpy()
    np.testing.assert_allclose(verts, expected, atol=1e-6)


def test_flame_verts_reports_missing_coefficients(files, tmp_path):
    coef = tmp_path / "coef.npz"
    np.savez(coef, exp=np.zeros((2, 50)), shape=np.zeros(100))
    with pytest.raises(UserError, match="'pose'"):
        run_cli(["flame-verts", "--flame", str(files["npz"]), "--coef", str(coef),
                 "-o", str(tmp_path / "v.npy")])


def test_cli_registration_is_light_and_command_runs_fresh(files, tmp_path):
    # A fresh interpreter: registering must not import torch; the command must work without
    # anything having touched diffposetalk.flame.Flame first.
    coef, out = tmp_path / "coef.npz", tmp_path / "v.npy"
    np.savez(coef, exp=np.zeros((2, 50)), pose=np.zeros((2, 6)), shape=np.zeros(100))
    script = (
        "import argparse, sys; import dpt_live.commands.flame as m\n"
        "p = argparse.ArgumentParser(); m.register(p.add_subparsers())\n"
        "assert 'torch' not in sys.modules\n"
        f"a = p.parse_args(['flame-verts', '--flame', {str(files['2023'])!r}, '--coef', {str(coef)!r},"
        f" '-o', {str(out)!r}])\n"
        "sys.exit(a.func(a))\n")
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert np.load(out).shape == (2, V, 3)
