// FLAME mesh in the browser: parses /flame.bin (layout: clients/flame_asset.py, docs/CLIENTS.md)
// and skins it on the GPU. Blendshapes (expression + pose correctives) live in one RGB16F texture,
// summed in the vertex shader (or in JS on software WebGL); the 5 joint transforms are computed
// here per frame (cheap) and blended per vertex by the LBS weights. The same vertex shader can be run with transform
// feedback (debugSkin) so tests compare its vertices with engines.flame.Flame.
import { compile, buffer, attribute, SHADED_FS, SKIN } from './gl.js';
import { rodrigues, mul3, mul3v, affine, halfToFloat } from './math.js';

const MAGIC = 'DPTFLAME';
const DTYPES = { 1: Float32Array, 2: Uint16Array, 3: Uint32Array, 4: Int32Array };
const N_JOINTS = 5;       // global, neck, jaw, eye_left, eye_right
const MAX_COMPONENTS = 128;  // uCoef holds 32 vec4
const IDENTITY3 = rodrigues(0, 0, 0);  // the neck: DiffPoseTalk has no neck pose

export function parseFlameAsset(buf) {
  if (buf.byteLength < 32) throw new Error(`FLAME asset is ${buf.byteLength} bytes, shorter than its header`);
  const dv = new DataView(buf);
  const magic = String.fromCharCode(...new Uint8Array(buf, 0, 8));
  if (magic !== MAGIC) throw new Error(`not a FLAME asset (magic ${JSON.stringify(magic)})`);
  const u32 = (o) => dv.getUint32(o, true);
  const version = u32(8);
  if (version !== 1) throw new Error(`FLAME asset version ${version}, this viewer reads 1`);
  const a = { V: u32(16), F: u32(20), J: u32(24), K: u32(28) };
  const nSections = u32(12);
  for (let i = 0; i < nSections; i++) {
    const o = 32 + i * 32;
    const name = String.fromCharCode(...new Uint8Array(buf, o, 8)).replace(/\0+$/, '');
    const Type = DTYPES[u32(o + 8)];
    const offset = u32(o + 12), nbytes = u32(o + 16);
    if (!Type || offset % 16 || offset + nbytes > buf.byteLength) throw new Error(`FLAME asset section ${name} is malformed`);
    a[name] = new Type(buf, offset, nbytes / Type.BYTES_PER_ELEMENT);
  }
  for (const key of ['verts', 'faces', 'expdirs', 'posedirs', 'weights', 'joints', 'jexpdirs', 'parents']) {
    if (!a[key]) throw new Error(`FLAME asset has no '${key}' section`);
  }
  if (a.J !== N_JOINTS) throw new Error(`FLAME asset has ${a.J} joints, the viewer expects ${N_JOINTS}`);
  a.P = a.posedirs.length / (a.V * 3);
  if (a.K + a.P > MAX_COMPONENTS) throw new Error(`FLAME asset has ${a.K + a.P} blendshapes, at most ${MAX_COMPONENTS}`);
  return a;
}

const VS = `#version 300 es
precision highp float;
precision highp int;
precision highp sampler2D;
layout(location = 0) in vec3 aPos;
layout(location = 1) in vec3 aNormal;
layout(location = 2) in vec4 aW;    // weights of joints 0..3
layout(location = 3) in float aW4;  // weight of joint 4
uniform sampler2D uDirs;            // (component, vertex) -> xyz offset, component-major
uniform int uV, uTexW, uNComp;
uniform vec4 uCoef[${MAX_COMPONENTS / 4}];
uniform mat4 uSkin[${N_JOINTS}];
uniform mat4 uView, uProj;
out vec3 vPos;        // skinned model-space position (transform feedback reads this)
out vec3 vViewPos;
out vec3 vViewNormal;
void main() {
  vec3 p = aPos;
  for (int c = 0; c < uNComp; ++c) {
    float w = uCoef[c >> 2][c & 3];
    if (w != 0.0) {
      int i = c * uV + gl_VertexID;
      p += w * texelFetch(uDirs, ivec2(i % uTexW, i / uTexW), 0).rgb;
    }
  }
  mat4 M = aW.x * uSkin[0] + aW.y * uSkin[1] + aW.z * uSkin[2] + aW.w * uSkin[3] + aW4 * uSkin[4];
  vec4 world = M * vec4(p, 1.0);
  vPos = world.xyz;
  vec4 view = uView * world;
  vViewPos = view.xyz;
  // Rest normals turned by the skinning rotation (blendshape normal changes are small).
  vViewNormal = mat3(uView) * (mat3(M) * aNormal);
  gl_Position = uProj * view;
}`;

function vertexNormals(verts, faces, V) {
  const n = new Float32Array(V * 3);
  for (let f = 0; f < faces.length; f += 3) {
    const a = faces[f] * 3, b = faces[f + 1] * 3, c = faces[f + 2] * 3;
    const ux = verts[b] - verts[a], uy = verts[b + 1] - verts[a + 1], uz = verts[b + 2] - verts[a + 2];
    const vx = verts[c] - verts[a], vy = verts[c + 1] - verts[a + 1], vz = verts[c + 2] - verts[a + 2];
    const nx = uy * vz - uz * vy, ny = uz * vx - ux * vz, nz = ux * vy - uy * vx;  // area-weighted
    for (const i of [a, b, c]) { n[i] += nx; n[i + 1] += ny; n[i + 2] += nz; }
  }
  for (let i = 0; i < V * 3; i += 3) {
    const l = Math.hypot(n[i], n[i + 1], n[i + 2]) || 1;
    n[i] /= l; n[i + 1] /= l; n[i + 2] /= l;
  }
  return n;
}

// Software WebGL (no GPU) runs vertex shaders on the CPU, where 86 texture reads per vertex
// halve the frame rate; there the blendshape sum is done in JS instead (measured: docs/CLIENTS.md).
export function softwareRenderer(gl) {
  const ext = gl.getExtension('WEBGL_debug_renderer_info');
  const name = ext ? gl.getParameter(ext.UNMASKED_RENDERER_WEBGL) : gl.getParameter(gl.RENDERER);
  return /swiftshader|llvmpipe|softpipe|software|basic render/i.test(String(name));
}

export class FlameRenderer {
  // blend: 'gpu' (vertex shader sums the blendshapes) or 'cpu' (JS sums them, the shader skins).
  constructor(gl, asset, blend = 'gpu') {
    this.gl = gl;
    this.a = asset;
    this.blend = blend;
    const { V, K, P } = asset;
    this.prog = compile(gl, VS, SHADED_FS, ['vPos']);
    this.vao = gl.createVertexArray();
    gl.bindVertexArray(this.vao);
    this.posBuffer = buffer(gl, gl.ARRAY_BUFFER, asset.verts, blend === 'cpu' ? gl.DYNAMIC_DRAW : gl.STATIC_DRAW);
    attribute(gl, 0, this.posBuffer, 3);
    attribute(gl, 1, buffer(gl, gl.ARRAY_BUFFER, vertexNormals(asset.verts, asset.faces, V)), 3);
    const w4 = new Float32Array(V * 4), w1 = new Float32Array(V);
    for (let v = 0; v < V; v++) {
      for (let j = 0; j < 4; j++) w4[v * 4 + j] = asset.weights[v * N_JOINTS + j];
      w1[v] = asset.weights[v * N_JOINTS + 4];
    }
    attribute(gl, 2, buffer(gl, gl.ARRAY_BUFFER, w4), 4);
    attribute(gl, 3, buffer(gl, gl.ARRAY_BUFFER, w1), 1);
    this.indexBuffer = buffer(gl, gl.ELEMENT_ARRAY_BUFFER, asset.faces);
    gl.bindVertexArray(null);

    // Blendshape texture: (K + P) * V texels of RGB half floats, wrapped into rows of texW.
    const total = (K + P) * V;
    this.texW = Math.min(4096, gl.getParameter(gl.MAX_TEXTURE_SIZE));
    const texH = Math.ceil(total / this.texW);
    if (texH > gl.getParameter(gl.MAX_TEXTURE_SIZE)) throw new Error('FLAME blendshapes do not fit a texture');
    const data = new Uint16Array(this.texW * texH * 3);
    data.set(asset.expdirs, 0);
    data.set(asset.posedirs, K * V * 3);
    this.tex = gl.createTexture();
    gl.bindTexture(gl.TEXTURE_2D, this.tex);
    gl.pixelStorei(gl.UNPACK_ALIGNMENT, 1);
    gl.texImage2D(gl.TEXTURE_2D, 0, gl.RGB16F, this.texW, texH, 0, gl.RGB, gl.HALF_FLOAT, data);
    for (const p of [gl.TEXTURE_MIN_FILTER, gl.TEXTURE_MAG_FILTER]) gl.texParameteri(gl.TEXTURE_2D, p, gl.NEAREST);

    if (blend === 'cpu') {  // float32 copies, component-major like the texture
      this.dirs = new Float32Array((K + P) * V * 3);
      const lut = new Float32Array(65536);
      for (let h = 0; h < 65536; h++) lut[h] = halfToFloat(h);
      for (let i = 0; i < K * V * 3; i++) this.dirs[i] = lut[asset.expdirs[i]];
      for (let i = 0; i < P * V * 3; i++) this.dirs[K * V * 3 + i] = lut[asset.posedirs[i]];
      this.rest = new Float32Array(V * 3);
    }
    this.coef = new Float32Array(MAX_COMPONENTS);
    this.skin = new Float32Array(16 * N_JOINTS);
    this.nComp = K + P;
    this.bounds = this._bounds();
    this.setFrame(new Float32Array(K), new Float32Array(6), null);
  }

  _bounds() {
    const v = this.a.verts;
    const lo = [Infinity, Infinity, Infinity], hi = [-Infinity, -Infinity, -Infinity];
    for (let i = 0; i < v.length; i += 3) for (let k = 0; k < 3; k++) {
      lo[k] = Math.min(lo[k], v[i + k]); hi[k] = Math.max(hi[k], v[i + k]);
    }
    const center = lo.map((l, k) => (l + hi[k]) / 2);
    return { center, radius: Math.max(1e-6, Math.hypot(hi[0] - lo[0], hi[1] - lo[1], hi[2] - lo[2]) / 2) };
  }

  // exp (K), pose (6: global axis-angle, jaw axis-angle), eyes (blink_l, blink_r, gaze_yaw,
  // gaze_pitch) or null. FLAME has no eyelids: blinks are not shown; gaze turns the eyeballs.
  setFrame(exp, pose, eyes) {
    const { K, P, joints, jexpdirs, parents } = this.a;
    const J = [];
    for (let j = 0; j < N_JOINTS; j++) {
      const p = [joints[j * 3], joints[j * 3 + 1], joints[j * 3 + 2]];
      for (let k = 0; k < K; k++) {
        const e = exp[k] || 0;
        if (e) for (let c = 0; c < 3; c++) p[c] += e * jexpdirs[(k * N_JOINTS + j) * 3 + c];
      }
      J.push(p);
    }
    const yaw = eyes ? eyes[2] : 0, pitch = eyes ? eyes[3] : 0;
    // + yaw turns towards the avatar's left (about +y); + pitch looks up (about -x).
    const R = [rodrigues(pose[0], pose[1], pose[2]), IDENTITY3, rodrigues(pose[3], pose[4], pose[5]),
               rodrigues(-pitch, yaw, 0), rodrigues(-pitch, yaw, 0)];
    const G = [R[0]], T = [J[0]];
    for (let j = 1; j < N_JOINTS; j++) {
      const p = parents[j];
      const rel = [J[j][0] - J[p][0], J[j][1] - J[p][1], J[j][2] - J[p][2]];
      const r = mul3v(G[p], rel);
      T.push([r[0] + T[p][0], r[1] + T[p][1], r[2] + T[p][2]]);
      G.push(mul3(G[p], R[j]));
    }
    for (let j = 0; j < N_JOINTS; j++) {
      const gj = mul3v(G[j], J[j]);
      affine(G[j], [T[j][0] - gj[0], T[j][1] - gj[1], T[j][2] - gj[2]], this.skin.subarray(j * 16, j * 16 + 16));
    }
    this.coef.fill(0);
    for (let k = 0; k < K; k++) this.coef[k] = exp[k] || 0;
    // Pose correctives: (R_j - I) of joints 1.., row-major, as engines.flame.Flame.
    for (let j = 1; j < N_JOINTS && (j - 1) * 9 < P; j++) {
      for (let i = 0; i < 9; i++) this.coef[K + (j - 1) * 9 + i] = R[j][i] - (i % 4 === 0 ? 1 : 0);
    }
    if (this.blend === 'cpu') this._blendOnCpu();
  }

  _blendOnCpu() {
    const n = this.a.V * 3, rest = this.rest, dirs = this.dirs;
    rest.set(this.a.verts);
    for (let c = 0; c < this.nComp; c++) {
      const w = this.coef[c];
      if (w === 0) continue;
      const off = c * n;
      for (let i = 0; i < n; i++) rest[i] += w * dirs[off + i];
    }
    const gl = this.gl;
    gl.bindBuffer(gl.ARRAY_BUFFER, this.posBuffer);
    gl.bufferSubData(gl.ARRAY_BUFFER, 0, rest);
  }

  _bind(view, proj) {
    const gl = this.gl, u = this.prog.uniforms;
    gl.useProgram(this.prog.program);
    gl.activeTexture(gl.TEXTURE0);
    gl.bindTexture(gl.TEXTURE_2D, this.tex);
    gl.uniform1i(u.uDirs, 0);
    gl.uniform1i(u.uV, this.a.V);
    gl.uniform1i(u.uTexW, this.texW);
    gl.uniform1i(u.uNComp, this.blend === 'cpu' ? 0 : this.nComp);
    gl.uniform4fv(u.uCoef, this.coef);
    gl.uniformMatrix4fv(u.uSkin, false, this.skin);
    gl.uniformMatrix4fv(u.uView, false, view);
    gl.uniformMatrix4fv(u.uProj, false, proj);
    gl.uniform3fv(u.uColor, SKIN);
    gl.bindVertexArray(this.vao);
  }

  draw(view, proj) {
    const gl = this.gl;
    this._bind(view, proj);
    gl.drawElements(gl.TRIANGLES, this.a.faces.length, gl.UNSIGNED_INT, 0);
    gl.bindVertexArray(null);
  }

  // Skinned vertices (V*3 floats) for the current frame, read back by transform feedback.
  debugSkin() {
    const gl = this.gl, n = this.a.V * 3;
    const out = gl.createBuffer();
    gl.bindBuffer(gl.TRANSFORM_FEEDBACK_BUFFER, out);
    gl.bufferData(gl.TRANSFORM_FEEDBACK_BUFFER, n * 4, gl.STREAM_READ);
    const tf = gl.createTransformFeedback();
    const ident = new Float32Array([1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1]);
    this._bind(ident, ident);
    gl.bindTransformFeedback(gl.TRANSFORM_FEEDBACK, tf);
    gl.bindBufferBase(gl.TRANSFORM_FEEDBACK_BUFFER, 0, out);
    gl.enable(gl.RASTERIZER_DISCARD);
    gl.beginTransformFeedback(gl.POINTS);
    gl.drawArrays(gl.POINTS, 0, this.a.V);  // non-indexed: gl_VertexID = vertex number
    gl.endTransformFeedback();
    gl.disable(gl.RASTERIZER_DISCARD);
    gl.bindTransformFeedback(gl.TRANSFORM_FEEDBACK, null);
    gl.bindBufferBase(gl.TRANSFORM_FEEDBACK_BUFFER, 0, null);
    const result = new Float32Array(n);
    gl.bindBuffer(gl.TRANSFORM_FEEDBACK_BUFFER, out);
    gl.getBufferSubData(gl.TRANSFORM_FEEDBACK_BUFFER, 0, result);
    gl.bindBuffer(gl.TRANSFORM_FEEDBACK_BUFFER, null);
    gl.deleteBuffer(out);
    gl.deleteTransformFeedback(tf);
    gl.bindVertexArray(null);
    return result;
  }
}
