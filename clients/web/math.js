// Small linear-algebra helpers. mat3: row-major Float64Array(9) (CPU side, matches engines/flame.py);
// mat4: column-major Float32Array(16) (what gl.uniformMatrix4fv takes with transpose=false).

// Rodrigues: axis-angle (x, y, z) -> row-major 3x3, with the same small-angle series as
// engines.flame.axis_angle_to_matrix so the browser and the Python reference agree.
export function rodrigues(x, y, z) {
  const t2 = x * x + y * y + z * z;
  let a, b;
  if (t2 < 1e-6) { a = 1 - t2 / 6; b = 0.5 - t2 / 24; }
  else { const t = Math.sqrt(t2); const hs = Math.sin(t / 2); a = Math.sin(t) / t; b = 2 * hs * hs / t2; }
  // R = I + a K + b K^2, K = skew(x, y, z)
  const K = [0, -z, y, z, 0, -x, -y, x, 0];
  const K2 = mul3(K, K);
  const R = new Float64Array(9);
  for (let i = 0; i < 9; i++) R[i] = (i % 4 === 0 ? 1 : 0) + a * K[i] + b * K2[i];
  return R;
}

export function mul3(A, B) {
  const C = new Float64Array(9);
  for (let r = 0; r < 3; r++) for (let c = 0; c < 3; c++)
    C[r * 3 + c] = A[r * 3] * B[c] + A[r * 3 + 1] * B[3 + c] + A[r * 3 + 2] * B[6 + c];
  return C;
}

export function mul3v(A, v) {
  return [A[0] * v[0] + A[1] * v[1] + A[2] * v[2], A[3] * v[0] + A[4] * v[1] + A[5] * v[2],
          A[6] * v[0] + A[7] * v[1] + A[8] * v[2]];
}

// Rigid transform x -> R x + t as a column-major mat4.
export function affine(R, t, out = new Float32Array(16)) {
  out[0] = R[0]; out[1] = R[3]; out[2] = R[6]; out[3] = 0;
  out[4] = R[1]; out[5] = R[4]; out[6] = R[7]; out[7] = 0;
  out[8] = R[2]; out[9] = R[5]; out[10] = R[8]; out[11] = 0;
  out[12] = t[0]; out[13] = t[1]; out[14] = t[2]; out[15] = 1;
  return out;
}

export function mat4mul(A, B) {
  const C = new Float32Array(16);
  for (let c = 0; c < 4; c++) for (let r = 0; r < 4; r++) {
    let s = 0;
    for (let k = 0; k < 4; k++) s += A[k * 4 + r] * B[c * 4 + k];
    C[c * 4 + r] = s;
  }
  return C;
}

export function perspective(fovY, aspect, near, far) {
  const f = 1 / Math.tan(fovY / 2), nf = 1 / (near - far);
  const m = new Float32Array(16);
  m[0] = f / aspect; m[5] = f; m[10] = (far + near) * nf; m[11] = -1; m[14] = 2 * far * near * nf;
  return m;
}

// Camera at `eye` looking at `target`, +y up.
export function lookAt(eye, target) {
  let zx = eye[0] - target[0], zy = eye[1] - target[1], zz = eye[2] - target[2];
  const zl = Math.hypot(zx, zy, zz); zx /= zl; zy /= zl; zz /= zl;
  let xx = zz, xy = 0, xz = -zx;  // up (0,1,0) x z
  const xl = Math.hypot(xx, xy, xz) || 1; xx /= xl; xy /= xl; xz /= xl;
  const yx = zy * xz - zz * xy, yy = zz * xx - zx * xz, yz = zx * xy - zy * xx;
  const m = new Float32Array(16);
  m[0] = xx; m[4] = xy; m[8] = xz; m[12] = -(xx * eye[0] + xy * eye[1] + xz * eye[2]);
  m[1] = yx; m[5] = yy; m[9] = yz; m[13] = -(yx * eye[0] + yy * eye[1] + yz * eye[2]);
  m[2] = zx; m[6] = zy; m[10] = zz; m[14] = -(zx * eye[0] + zy * eye[1] + zz * eye[2]);
  m[15] = 1;
  return m;
}

// Half-precision bits -> number (asset inspection; the GPU reads fp16 directly).
export function halfToFloat(h) {
  const s = h & 0x8000 ? -1 : 1, e = (h >> 10) & 0x1f, f = h & 0x3ff;
  if (e === 0) return s * f * 2 ** -24;
  if (e === 31) return f ? NaN : s * Infinity;
  return s * (1 + f / 1024) * 2 ** (e - 15);
}
