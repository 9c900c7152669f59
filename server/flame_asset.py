"""The browser viewer's FLAME asset (`/flame.bin`): a compact, self-describing binary of what the
page needs to skin one identity with linear blend skinning — nothing the server must keep secret
beyond the FLAME licence itself, and never written to the repository (built at server start-up).

Layout (little-endian; docs/CLIENTS.md has the same table):

    header   "<8sIIIIII"  magic b"DPTFLAME", version (1), n_sections, V, F, J, K (expression dims)
    table    n_sections x "<8sIIIIII": name (ASCII, NUL-padded), dtype code, byte offset,
             byte length, dim0, dim1, dim2 (unused dims = 1)
    data     each section starts on a 16-byte boundary (typed-array views need alignment)

    dtype codes: 1 float32, 2 float16, 3 uint32, 4 int32

    section   dtype    shape       content
    verts     float32  (V, 3)      template with the session's identity applied (v_template + S·shape)
    faces     uint32   (F, 3)      triangle vertex indices
    expdirs   float16  (K, V, 3)   expression blendshapes, component-major (one texture row block each)
    posedirs  float16  (P, V, 3)   pose correctives, P = 9·(J-1), feature p = (joint-1)·9 + row·3 + col
                                    of (R_joint - I), as in diffposetalk.flame.Flame
    weights   float32  (V, J)      LBS skinning weights
    joints    float32  (J, 3)      rest joints of the shaped template (J_regressor · verts)
    jexpdirs  float32  (K, J, 3)   rest-joint offset per expression coefficient (J_regressor · expdirs)
    parents   int32    (J,)        kinematic tree, root = -1, parents before children

Vertex v for expression e (K) and per-joint rotations R (J, 3x3, global, neck, jaw, eyes):
    rest   = verts[v] + Σ_k e_k expdirs[k, v] + Σ_p f_p posedirs[p, v],  f = flatten(R[1:] - I)
    J      = joints + Σ_k e_k jexpdirs[k]
    posed  = Σ_j weights[v, j] (G_j · (rest - J_j) + T_j)    (G, T: world rotation/translation
                                                              of joint j down the tree)
"""

from __future__ import annotations

import struct

import numpy as np

MAGIC = b"DPTFLAME"
VERSION = 1
HEADER = struct.Struct("<8sIIIIII")
SECTION = struct.Struct("<8sIIIIII")
ALIGN = 16
DTYPES = {1: np.dtype("<f4"), 2: np.dtype("<f2"), 3: np.dtype("<u4"), 4: np.dtype("<i4")}
_CODES = {dt: code for code, dt in DTYPES.items()}
# Dimensions each known section really has (the table pads shapes to 3 with 1s).
NDIM = {"verts": 2, "faces": 2, "expdirs": 3, "posedirs": 3, "weights": 2, "joints": 2,
        "jexpdirs": 3, "parents": 1}


class FlameAssetError(ValueError):
    """An asset that does not parse, or inputs that cannot make one."""


def _arrays_from(flame, shape: np.ndarray, n_exp: int):
    """v_shaped (V,3), expdirs (V,3,K), posedirs (V,3,P), weights (V,J), joints (J,3),
    jexpdirs (K,J,3), parents (J,), faces (F,3) from FlameData or a Flame module."""
    from diffposetalk.flame import Flame

    if not isinstance(flame, Flame):  # diffposetalk.flame.FlameData: Flame regresses the joints for us
        try:
            flame = Flame(flame, n_shape=shape.shape[0], n_exp=n_exp)
        except ValueError as exc:
            raise FlameAssetError(str(exc)) from exc
    # Flame's buffers already hold shape+exp dirs and regressed joints.
    n_shape, k = int(flame.n_shape), int(flame.n_exp)
    if shape.shape[0] != n_shape:
        raise FlameAssetError(f"shape has {shape.shape[0]} coefficients, this Flame takes {n_shape}")
    if n_exp != k:
        raise FlameAssetError(f"n_exp={n_exp}, this Flame was built with {k}")
    dirs = flame.shapedirs.detach().cpu().double().numpy()
    v_shaped = flame.v_template.detach().cpu().double().numpy() + dirs[..., :n_shape] @ shape
    expdirs = dirs[..., n_shape:]
    j_dirs = flame.j_shapedirs.detach().cpu().double().numpy()          # (J, 3, n_shape + K)
    joints = flame.j_template.detach().cpu().double().numpy() + j_dirs[..., :n_shape] @ shape
    jexpdirs = np.transpose(j_dirs[..., n_shape:], (2, 0, 1))
    n_verts = v_shaped.shape[0]
    posedirs = flame.posedirs.detach().cpu().numpy().T.reshape(n_verts, 3, -1)
    return (v_shaped, expdirs, posedirs, flame.weights.detach().cpu().numpy(), joints, jexpdirs,
            np.asarray(flame.parents), flame.faces.detach().cpu().numpy())


def build_flame_asset(flame, shape, n_exp: int = 50) -> bytes:
    """Pack ``flame`` (diffposetalk.flame.FlameData or diffposetalk.flame.Flame) with identity ``shape``
    (n_shape floats, 100 for DiffPoseTalk) into the `/flame.bin` layout above."""
    shape = np.asarray(shape, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(shape)):
        raise FlameAssetError("shape holds NaN or infinite values")
    v_shaped, expdirs, posedirs, weights, joints, jexpdirs, parents, faces = _arrays_from(flame, shape, n_exp)
    n_verts, n_joints = v_shaped.shape[0], parents.shape[0]
    # float16 tops out at 65504; FLAME offsets are millimetres, so overflow means a broken model.
    for name, arr in (("expression", expdirs), ("pose corrective", posedirs)):
        if arr.size and np.abs(arr).max() > 6.0e4:
            raise FlameAssetError(f"{name} blendshapes exceed the float16 range")
    sections = [
        ("verts", v_shaped.astype("<f4")),
        ("faces", faces.astype("<u4")),
        ("expdirs", np.ascontiguousarray(np.transpose(expdirs, (2, 0, 1))).astype("<f2")),
        ("posedirs", np.ascontiguousarray(np.transpose(posedirs, (2, 0, 1))).astype("<f2")),
        ("weights", np.asarray(weights).astype("<f4")),
        ("joints", joints.astype("<f4")),
        ("jexpdirs", jexpdirs.astype("<f4")),
        ("parents", parents.astype("<i4")),
    ]
    table_end = HEADER.size + SECTION.size * len(sections)
    offset = -(-table_end // ALIGN) * ALIGN
    table, blobs = [], []
    for name, arr in sections:
        dims = list(arr.shape) + [1] * (3 - arr.ndim)
        table.append(SECTION.pack(name.encode("ascii"), _CODES[arr.dtype], offset, arr.nbytes, *dims))
        padded = -(-arr.nbytes // ALIGN) * ALIGN
        blobs.append(arr.tobytes() + b"\0" * (padded - arr.nbytes))
        offset += padded
    header = HEADER.pack(MAGIC, VERSION, len(sections), n_verts, faces.shape[0], n_joints,
                         expdirs.shape[2])
    head = header + b"".join(table)
    return head + b"\0" * (-(-table_end // ALIGN) * ALIGN - len(head)) + b"".join(blobs)


def parse_flame_asset(blob: bytes) -> dict[str, np.ndarray | int]:
    """Read an asset back (tests, tools): section name -> array, plus V, F, J, K."""
    if len(blob) < HEADER.size:
        raise FlameAssetError(f"FLAME asset is {len(blob)} bytes, shorter than its header")
    magic, version, n_sections, n_verts, n_faces, n_joints, n_exp = HEADER.unpack_from(blob)
    if magic != MAGIC:
        raise FlameAssetError(f"not a FLAME asset (magic {magic!r})")
    if version != VERSION:
        raise FlameAssetError(f"FLAME asset version {version}, this reader knows {VERSION}")
    if HEADER.size + n_sections * SECTION.size > len(blob):
        raise FlameAssetError("FLAME asset section table runs past the end")
    out: dict[str, np.ndarray | int] = {"V": n_verts, "F": n_faces, "J": n_joints, "K": n_exp}
    for i in range(n_sections):
        raw_name, code, off, nbytes, *dims = SECTION.unpack_from(blob, HEADER.size + i * SECTION.size)
        name = raw_name.rstrip(b"\0").decode("ascii", "replace")
        if code not in DTYPES:
            raise FlameAssetError(f"section {name}: unknown dtype code {code}")
        dtype = DTYPES[code]
        if off % ALIGN or off + nbytes > len(blob) or nbytes != int(np.prod(dims)) * dtype.itemsize:
            raise FlameAssetError(f"section {name}: offset/length/shape do not fit the file")
        ndim = NDIM.get(name, 3)
        out[name] = np.frombuffer(blob, dtype=dtype, count=nbytes // dtype.itemsize,
                                  offset=off).reshape(dims[:ndim] if ndim < 3 else dims)
    return out
