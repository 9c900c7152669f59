"""A small VRM 1.0 avatar made in code (binary glTF + VRMC_vrm): a head on a neck with a
humanoid rig (hips, spine, chest, neck, head) and morph targets bound to the VRM expressions
aa ih ou ee oh blink blinkLeft blinkRight. The tests and the docs screenshot use it; real avatars
cannot be downloaded or committed."""

from __future__ import annotations

import json
import struct

import numpy as np

EXPRESSIONS = ("aa", "ih", "ou", "ee", "oh", "blink", "blinkLeft", "blinkRight")
SKIN, MOUTH, EYE = (0.93, 0.78, 0.68), (0.45, 0.12, 0.14), (0.12, 0.12, 0.16)


def _sphere(rows: int, cols: int, radii) -> tuple[np.ndarray, np.ndarray]:
    verts = []
    for i in range(rows + 1):
        th = np.pi * i / rows
        for j in range(cols + 1):
            ph = 2 * np.pi * j / cols
            verts.append([np.sin(th) * np.sin(ph), np.cos(th), np.sin(th) * np.cos(ph)])
    d = np.array(verts)
    faces = []
    for i in range(rows):
        for j in range(cols):
            a, b = i * (cols + 1) + j, (i + 1) * (cols + 1) + j
            faces += [[a, b, b + 1], [a, b + 1, a + 1]]
    return d * radii, np.array(faces)


def head_mesh(rows: int = 32, cols: int = 40):
    """Positions, normals, colours, faces and one morph target (position deltas) per expression.
    The face looks along +z (VRM 1.0)."""
    pos, faces = _sphere(rows, cols, np.array([0.08, 0.1, 0.09]))
    x, y, z = pos.T
    front = np.clip(z / 0.09, 0, 1)
    mouth = np.exp(-((y + 0.04) ** 2) / 2e-4 - x ** 2 / 1.2e-3) * front
    eyes = {side: np.exp(-((y - 0.02) ** 2) / 1e-4 - (x - 0.03 * side) ** 2 / 1.5e-4) * front for side in (1, -1)}
    colours = np.tile(SKIN, (len(pos), 1))
    colours[mouth > 0.45] = MOUTH
    for w in eyes.values():
        colours[w > 0.45] = EYE
    lower = np.tanh((-(y + 0.04)) / 0.006).clip(0, 1) * mouth
    upper = np.tanh(((y + 0.04)) / 0.006).clip(0, 1) * mouth
    zero = np.zeros_like(pos)

    def delta(dx=0.0, dy=0.0, dz=0.0, w=None):
        d = zero.copy()
        d[:, 0], d[:, 1], d[:, 2] = dx * (w if w is not None else 1), dy * (w if w is not None else 1), dz * (w if w is not None else 1)
        return d

    targets = {
        "aa": delta(dy=-0.022, w=lower) + delta(dy=0.004, w=upper),
        "ih": delta(dx=0.012 * np.sign(x), w=mouth) + delta(dy=-0.006, w=lower),
        "ou": delta(dx=-0.4 * x, dz=0.012, w=mouth),
        "ee": delta(dx=0.008 * np.sign(x), w=mouth) + delta(dy=-0.012, w=lower),
        "oh": delta(dx=-0.25 * x, dy=-0.016, dz=0.006, w=mouth),
    }
    lid = {side: delta(dy=-0.01, dz=0.003, w=w) for side, w in eyes.items()}
    targets["blinkLeft"] = lid[1]  # the avatar's left (+x)
    targets["blinkRight"] = lid[-1]
    targets["blink"] = lid[1] + lid[-1]
    normals = pos / np.linalg.norm(pos, axis=1, keepdims=True)
    return pos, normals, colours, faces, [targets[name] for name in EXPRESSIONS]


def build_vrm(name: str = "dpt-live test head") -> bytes:
    """The bytes of a .vrm (VRM 1.0, binary glTF)."""
    pos, normals, colours, faces, targets = head_mesh()
    blobs: list[bytes] = []
    accessors, views = [], []

    def add(array: np.ndarray, kind: str, component: int, target: int | None = None, minmax: bool = False) -> int:
        data = np.ascontiguousarray(array).tobytes()
        offset = sum(len(b) for b in blobs)
        blobs.append(data + b"\0" * (-len(data) % 4))
        view = {"buffer": 0, "byteOffset": offset, "byteLength": len(data)}
        if target is not None:
            view["target"] = target
        views.append(view)
        acc = {"bufferView": len(views) - 1, "componentType": component, "count": len(array), "type": kind}
        if minmax:
            acc["min"], acc["max"] = array.min(0).tolist(), array.max(0).tolist()
        accessors.append(acc)
        return len(accessors) - 1

    f32, u32 = 5126, 5125
    a_pos = add(pos.astype(np.float32), "VEC3", f32, 34962, minmax=True)
    a_nrm = add(normals.astype(np.float32), "VEC3", f32, 34962)
    a_col = add(colours.astype(np.float32), "VEC3", f32, 34962)
    a_idx = add(faces.reshape(-1).astype(np.uint32), "SCALAR", u32, 34963)
    a_targets = [add(t.astype(np.float32), "VEC3", f32, 34962, minmax=True) for t in targets]
    binary = b"".join(blobs)

    # The rig: hips > spine > chest > neck > head (> face mesh), and the limbs VRM requires
    # (bare nodes). VRM 1.0 faces +z, so the avatar's left is +x.
    nodes = [{"name": "hips", "translation": [0, 0.9, 0], "children": [1]},
             {"name": "spine", "translation": [0, 0.12, 0], "children": [2]},
             {"name": "chest", "translation": [0, 0.2, 0], "children": [3]},
             {"name": "neck", "translation": [0, 0.22, 0], "children": [4]},
             {"name": "head", "translation": [0, 0.08, 0], "children": [5]},
             {"name": "face", "mesh": 0, "translation": [0, 0.09, 0]}]
    bones = {"hips": 0, "spine": 1, "chest": 2, "neck": 3, "head": 4}

    def chain(parent: int, names, steps):
        for name, step in zip(names, steps):
            nodes.append({"name": name, "translation": step})
            nodes[parent].setdefault("children", []).append(len(nodes) - 1)
            bones[name] = parent = len(nodes) - 1

    for side, sx in (("left", 1), ("right", -1)):
        chain(0, [f"{side}UpperLeg", f"{side}LowerLeg", f"{side}Foot"], [[0.09 * sx, -0.05, 0], [0, -0.4, 0], [0, -0.4, 0]])
        chain(2, [f"{side}UpperArm", f"{side}LowerArm", f"{side}Hand"], [[0.16 * sx, 0.17, 0], [0.25 * sx, 0, 0], [0.24 * sx, 0, 0]])
    gltf = {
        "asset": {"version": "2.0", "generator": "dpt-live tests/vrm_builder.py"},
        "extensionsUsed": ["VRMC_vrm"],
        "scene": 0, "scenes": [{"nodes": [0]}], "nodes": nodes,
        "meshes": [{"name": "face", "weights": [0.0] * len(targets), "extras": {"targetNames": list(EXPRESSIONS)},
                    "primitives": [{"attributes": {"POSITION": a_pos, "NORMAL": a_nrm, "COLOR_0": a_col},
                                    "indices": a_idx, "material": 0,
                                    "targets": [{"POSITION": a} for a in a_targets]}]}],
        "materials": [{"name": "skin", "pbrMetallicRoughness": {"baseColorFactor": [1, 1, 1, 1], "metallicFactor": 0.0,
                                                               "roughnessFactor": 0.8}}],
        "accessors": accessors, "bufferViews": views, "buffers": [{"byteLength": len(binary)}],
        "extensions": {"VRMC_vrm": {
            "specVersion": "1.0",
            "meta": {"name": name, "version": "1", "authors": ["dpt-live tests"], "licenseUrl": "https://vrm.dev/licenses/1.0/",
                     "avatarPermission": "everyone", "commercialUsage": "personalNonProfit",
                     "creditNotation": "unnecessary", "allowRedistribution": True, "modification": "allowModification"},
            "humanoid": {"humanBones": {bone: {"node": i} for bone, i in bones.items()}},
            "expressions": {"preset": {
                name: {"morphTargetBinds": [{"node": 5, "index": i, "weight": 1.0}], "isBinary": False,
                       "overrideBlink": "none", "overrideLookAt": "none", "overrideMouth": "none"}
                for i, name in enumerate(EXPRESSIONS)}},
        }},
    }
    text = json.dumps(gltf, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 4)
    chunks = struct.pack("<II", len(text), 0x4E4F534A) + text + struct.pack("<II", len(binary), 0x004E4942) + binary
    return struct.pack("<III", 0x46546C67, 2, 12 + len(chunks)) + chunks
