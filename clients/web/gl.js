// WebGL2 plumbing shared by the FLAME and proxy renderers.

export function compile(gl, vsSource, fsSource, feedbackVaryings = null) {
  const shader = (type, src) => {
    const s = gl.createShader(type);
    gl.shaderSource(s, src);
    gl.compileShader(s);
    if (!gl.getShaderParameter(s, gl.COMPILE_STATUS)) {
      throw new Error(`shader compile failed: ${gl.getShaderInfoLog(s)}`);
    }
    return s;
  };
  const p = gl.createProgram();
  gl.attachShader(p, shader(gl.VERTEX_SHADER, vsSource));
  gl.attachShader(p, shader(gl.FRAGMENT_SHADER, fsSource));
  if (feedbackVaryings) gl.transformFeedbackVaryings(p, feedbackVaryings, gl.SEPARATE_ATTRIBS);
  gl.linkProgram(p);
  if (!gl.getProgramParameter(p, gl.LINK_STATUS)) throw new Error(`program link failed: ${gl.getProgramInfoLog(p)}`);
  const uniforms = {};
  const n = gl.getProgramParameter(p, gl.ACTIVE_UNIFORMS);
  for (let i = 0; i < n; i++) {
    const info = gl.getActiveUniform(p, i);
    const name = info.name.replace(/\[0\]$/, '');
    uniforms[name] = gl.getUniformLocation(p, info.name);
  }
  return { program: p, uniforms };
}

export function buffer(gl, target, data, usage = gl.STATIC_DRAW) {
  const b = gl.createBuffer();
  gl.bindBuffer(target, b);
  gl.bufferData(target, data, usage);
  return b;
}

export function attribute(gl, location, buf, size, type = gl.FLOAT) {
  gl.bindBuffer(gl.ARRAY_BUFFER, buf);
  gl.enableVertexAttribArray(location);
  gl.vertexAttribPointer(location, size, type, false, 0, 0);
}

// Shared lighting: a key light from the upper front-left, a fill, a rim; view-space normal in.
const LIGHTING_GLSL = `
vec3 shade(vec3 n, vec3 viewPos, vec3 albedo) {
  vec3 v = normalize(-viewPos);
  if (dot(n, v) < 0.0) n = -n;
  vec3 key = normalize(vec3(-0.4, 0.5, 0.8));
  vec3 fill = normalize(vec3(0.6, -0.1, 0.6));
  float d = max(dot(n, key), 0.0) * 0.85 + max(dot(n, fill), 0.0) * 0.3;
  float spec = pow(max(dot(reflect(-key, n), v), 0.0), 24.0) * 0.15;
  float rim = pow(1.0 - max(dot(n, v), 0.0), 3.0) * 0.25;
  return albedo * (0.18 + d) + vec3(spec + rim);
}`;

// Skin albedo of both heads (FLAME mesh and proxy).
export const SKIN = [0.80, 0.62, 0.52];

// Fragment shader of both renderers: uColor lit by LIGHTING_GLSL, then display gamma. Their vertex
// shaders output vViewPos and vViewNormal.
export const SHADED_FS = `#version 300 es
precision highp float;
uniform vec3 uColor;
in vec3 vViewPos;
in vec3 vViewNormal;
out vec4 outColor;
${LIGHTING_GLSL}
void main() {
  vec3 c = shade(normalize(vViewNormal), vViewPos, uColor);
  outColor = vec4(pow(c, vec3(1.0 / 1.6)), 1.0);
}`;
