// Procedural proxy head, used when the server has no FLAME model: skull, hinged jaw (pose jaw_x),
// mouth cavity, nose, eyes that blink (lids squash the eyeball) and follow gaze, a static neck;
// the whole head turns with the global rotation. Units are metres, FLAME-like proportions.
import { compile, buffer, attribute, SHADED_FS, SKIN } from './gl.js';
import { rodrigues, mul3, affine, mat4mul } from './math.js';

const VS = `#version 300 es
precision highp float;
layout(location = 0) in vec3 aPos;
layout(location = 1) in vec3 aNormal;
uniform mat4 uModel, uView, uProj;
out vec3 vViewPos;
out vec3 vViewNormal;
void main() {
  vec4 view = uView * uModel * vec4(aPos, 1.0);
  vViewPos = view.xyz;
  vViewNormal = mat3(uView) * mat3(uModel) * aNormal;
  gl_Position = uProj * view;
}`;

// Ellipsoid with radii r centred at c; keep(y) may clamp points (flat cut) — rows x cols grid.
function ellipsoid(r, c = [0, 0, 0], { rows = 24, cols = 32, yMin = -Infinity, yMax = Infinity } = {}) {
  const pos = [], nrm = [], idx = [];
  for (let i = 0; i <= rows; i++) {
    const th = Math.PI * i / rows;
    for (let j = 0; j <= cols; j++) {
      const ph = 2 * Math.PI * j / cols;
      const d = [Math.sin(th) * Math.sin(ph), Math.cos(th), Math.sin(th) * Math.cos(ph)];
      let y = r[1] * d[1];
      let n = [d[0] / r[0], d[1] / r[1], d[2] / r[2]];
      if (y < yMin || y > yMax) { y = Math.min(Math.max(y, yMin), yMax); n = [0, y <= yMin ? -1 : 1, 0]; }
      const l = Math.hypot(...n);
      pos.push(c[0] + r[0] * d[0], c[1] + y, c[2] + r[2] * d[2]);
      nrm.push(n[0] / l, n[1] / l, n[2] / l);
    }
  }
  for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) {
    const a = i * (cols + 1) + j, b = a + cols + 1;
    idx.push(a, b, a + 1, a + 1, b, b + 1);
  }
  return { pos: new Float32Array(pos), nrm: new Float32Array(nrm), idx: new Uint16Array(idx) };
}

function cylinder(radius, y0, y1, c = [0, 0, 0], segs = 32) {
  const pos = [], nrm = [], idx = [];
  for (let j = 0; j <= segs; j++) {
    const ph = 2 * Math.PI * j / segs, x = Math.sin(ph), z = Math.cos(ph);
    pos.push(c[0] + radius * x, y0, c[2] + radius * z, c[0] + radius * x, y1, c[2] + radius * z);
    nrm.push(x, 0, z, x, 0, z);
  }
  for (let j = 0; j < segs; j++) { const a = 2 * j; idx.push(a, a + 2, a + 1, a + 1, a + 2, a + 3); }
  return { pos: new Float32Array(pos), nrm: new Float32Array(nrm), idx: new Uint16Array(idx) };
}

const HINGE = [0, -0.005, -0.035];     // jaw pivot (in front of the ears)
const PIVOT = [0, -0.075, -0.02];      // head rotation pivot (top of the neck)
const EYES = [[0.03, 0.024, 0.071], [-0.03, 0.024, 0.071]];  // left (+x = avatar's left), right
const EYE_R = 0.0125;
const NECK = affine(rodrigues(0, 0, 0), [0, 0, 0]);  // the neck does not move

export class ProxyRenderer {
  constructor(gl) {
    this.gl = gl;
    this.prog = compile(gl, VS, SHADED_FS);
    const part = (geo, color) => {
      const vao = gl.createVertexArray();
      gl.bindVertexArray(vao);
      attribute(gl, 0, buffer(gl, gl.ARRAY_BUFFER, geo.pos), 3);
      attribute(gl, 1, buffer(gl, gl.ARRAY_BUFFER, geo.nrm), 3);
      buffer(gl, gl.ELEMENT_ARRAY_BUFFER, geo.idx);
      gl.bindVertexArray(null);
      return { vao, count: geo.idx.length, color };
    };
    this.parts = {
      skull: part(ellipsoid([0.076, 0.098, 0.088], [0, 0.03, 0], { yMin: -0.05 }), SKIN),
      cavity: part(ellipsoid([0.034, 0.022, 0.03], [0, -0.02, 0.045]), [0.35, 0.08, 0.1]),
      jaw: part(ellipsoid([0.066, 0.055, 0.078], [0, -0.02, 0.0], { yMax: 0.0 }), SKIN),
      nose: part(ellipsoid([0.012, 0.022, 0.016], [0, 0.0, 0.087]), [0.82, 0.6, 0.5]),
      eyeWhite: part(ellipsoid([EYE_R, EYE_R, EYE_R], [0, 0, 0], { rows: 12, cols: 16 }), [0.95, 0.95, 0.92]),
      pupil: part(ellipsoid([0.0055, 0.0055, 0.003], [0, 0, EYE_R * 0.93], { rows: 8, cols: 12 }), [0.08, 0.1, 0.15]),
      neck: part(cylinder(0.042, -0.25, -0.06, [0, 0, -0.02]), [0.76, 0.58, 0.49]),
    };
    this.bounds = { center: [0, 0.005, 0.01], radius: 0.14 };
    this.setFrame(new Float32Array(50), new Float32Array(6), null);
  }

  setFrame(exp, pose, eyes) {
    const about = (R, pivot) => {  // rotate about a pivot point: x -> R (x - p) + p
      const t = [0, 1, 2].map((i) => pivot[i] - (R[i * 3] * pivot[0] + R[i * 3 + 1] * pivot[1] + R[i * 3 + 2] * pivot[2]));
      return affine(R, t);
    };
    const head = about(rodrigues(pose[0], pose[1], pose[2]), PIVOT);
    // Jaw opens with jaw_x, a little extra for the SynthTalk lip-opening coefficient exp[0].
    const open = Math.max(-0.05, Math.min(0.5, pose[3] + 0.02 * Math.max(0, exp[0] || 0)));
    const jaw = mat4mul(head, about(rodrigues(open, pose[4], pose[5]), HINGE));
    // Rounding/spreading (exp[2]/exp[3] in SynthTalk) narrows/widens the mouth cavity a little.
    const width = Math.max(0.7, Math.min(1.3, 1 + 0.12 * ((exp[3] || 0) - (exp[2] || 0))));
    const cavity = mat4mul(head, new Float32Array([width, 0, 0, 0, 0, 1 + 2 * Math.max(0, open), 0, 0, 0, 0, 1, 0,
      0, -0.02 * (2 * Math.max(0, open)), 0, 1]));
    const m = { skull: head, jaw, cavity, nose: head, neck: NECK };
    const gaze = rodrigues(eyes ? -eyes[3] : 0, eyes ? eyes[2] : 0, 0);
    this.eyes = EYES.map((c, i) => {
      const lid = eyes ? Math.min(1, Math.max(0, eyes[i])) : 0;
      const squash = new Float64Array([1, 0, 0, 0, 1 - 0.92 * lid, 0, 0, 0, 1]);
      return mat4mul(head, affine(mul3(squash, gaze), c));
    });
    this.models = m;
  }

  draw(view, proj) {
    const gl = this.gl, u = this.prog.uniforms;
    gl.useProgram(this.prog.program);
    gl.uniformMatrix4fv(u.uView, false, view);
    gl.uniformMatrix4fv(u.uProj, false, proj);
    const drawPart = (p, model) => {
      gl.uniformMatrix4fv(u.uModel, false, model);
      gl.uniform3fv(u.uColor, p.color);
      gl.bindVertexArray(p.vao);
      gl.drawElements(gl.TRIANGLES, p.count, gl.UNSIGNED_SHORT, 0);
    };
    for (const name of ['neck', 'skull', 'cavity', 'jaw', 'nose']) drawPart(this.parts[name], this.models[name]);
    for (const e of this.eyes) { drawPart(this.parts.eyeWhite, e); drawPart(this.parts.pupil, e); }
    gl.bindVertexArray(null);
  }
}
