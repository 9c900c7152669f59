// dpt-live viewer: connects to the server that served this page, plays its FLAME motion on a
// VRM avatar (serve --avatar, a dropped .vrm or ?avatar=URL; three.js + @pixiv/three-vrm through
// avatar_map.js, the VMC bridge's mapping), a FLAME mesh (when the server has --flame) or a
// procedural proxy head, and shows a HUD.
// Test hook: window.dptViewer (stats and a few debug calls; docs/CLIENTS.md).
import { Connection } from './connection.js';
import { Playout } from './playout.js';
import { Hud } from './hud.js';
import { MicStreamer } from './mic.js';
import { ProxyRenderer } from './proxy.js';
import { FlameRenderer, parseFlameAsset, softwareRenderer } from './flame.js';
import { perspective, lookAt } from './math.js';
import { AvatarMapper } from './avatar_map.js';

const params = new URLSearchParams(location.search);
const token = params.get('token') || '';
const session = params.get('session') || '';
const delayMs = params.get('delay');  // a fixed jitter-buffer delay (ms); default: adaptive
const blendParam = params.get('blend') || 'auto';  // where FLAME blendshapes are summed: auto|gpu|cpu
const aaParam = params.get('aa');  // multisampling: 1 on, 0 off; default: on unless WebGL is software-rasterised

const stats = {
  connected: false, state: 'starting', mode: 'proxy', framesReceived: 0, lastSeq: -1, dropped: 0,
  renderCount: 0, framesRendered: 0, underruns: 0, resets: 0, degraded: 0, latencyMs: NaN, jitterMs: NaN, bufferMs: NaN,
  fps: 0, style: null, styles: [], session: null, source: null, micActive: false, micSamples: 0,
  errors: [], lastMessage: null, hello: null, connects: 0, antialias: null,
};

// A software rasteriser (SwiftShader, llvmpipe: no GPU) resolves 4x multisampling on the CPU, the
// same cores the server and this page's JavaScript need: measured in headless Chromium at 320x240,
// its GPU process went from 1.07 to 0.69 of a core without it, and frames reached the page's
// JavaScript 7 ms sooner (p50). Such a renderer gets aliased edges instead; ?aa=1 forces them smooth.
function wantAntialias() {
  if (aaParam === '0' || aaParam === '1') return aaParam === '1';
  const probe = document.createElement('canvas').getContext('webgl2');
  if (!probe) return true;
  const software = softwareRenderer(probe);
  const lose = probe.getExtension('WEBGL_lose_context');
  if (lose) lose.loseContext();
  return !software;
}
const antialias = wantAntialias();
const canvas = document.getElementById('view');
const gl = canvas.getContext('webgl2', { antialias, preserveDrawingBuffer: false });
stats.antialias = gl ? !!gl.getContextAttributes().antialias : null;
const hud = new Hud(document, { onStyle: (name) => conn.send({ type: 'style', name }), onMic: toggleMic });
const playout = new Playout({ delay: delayMs === null ? null : Number(delayMs) / 1000 });
let renderer = null;
let proxy = null;
let flameAssetPath = null;
let mapper = new AvatarMapper(null);
let vrmView = null;  // VrmView (vrm.js, loaded on demand) once an avatar was loaded
let lastVrmT = null;
const viewSelect = document.getElementById('view-select');
const vrmCanvas = document.getElementById('vrm');
const recent = [];  // [recvPerf - audioTime, recvWall - emitTime] over the last 5 s

function note(text, kind = 'info') {
  hud.message(text, kind);
  if (kind === 'error') stats.errors = stats.errors.slice(-19).concat([text]);
}

function withToken(path) {
  const url = new URL(path, location.href);
  if (token && url.origin === location.origin) url.searchParams.set('token', token);
  return url.href;
}

function showCanvas(mode) {
  canvas.hidden = mode === 'vrm';
  vrmCanvas.hidden = mode !== 'vrm';
  if (viewSelect) {
    for (const opt of viewSelect.options) {
      opt.disabled = (opt.value === 'flame' && !flameAssetPath) || (opt.value === 'vrm' && !vrmView);
    }
    viewSelect.value = mode;
  }
}

// source: a URL or the bytes of a dropped file.
async function useVrm(source, label) {
  try {
    const { VrmView } = await import('./vrm.js');
    vrmView = vrmView || new VrmView(vrmCanvas, { antialias });
    const info = await vrmView.load(source);
    stats.mode = 'vrm';
    stats.vrm = { name: info.name, expressions: info.expressions, source: label };
    hud.mode(`VRM ${info.name} (${info.expressions.length} expressions, ${mapper.measured ? 'measured map' : 'default map'})`);
    showCanvas('vrm');
  } catch (e) {
    note(`avatar ${label}: ${e.message}`, 'error');
  }
}

function useView(mode) {
  if (mode === 'vrm' && vrmView) { stats.mode = 'vrm'; showCanvas('vrm'); return; }
  if (mode === 'flame' && flameAssetPath) { stats.mode = 'flame'; renderer = flameRenderer; showCanvas('flame'); return; }
  useProxy();
}

function useProxy() {
  if (!gl) return;
  proxy = proxy || new ProxyRenderer(gl);
  renderer = proxy;
  stats.mode = 'proxy';
  hud.mode('proxy head');
  showCanvas('proxy');
}
let flameRenderer = null;

async function useFlame(path) {
  if (path === flameAssetPath && stats.mode === 'flame') return;
  flameAssetPath = path;
  try {
    const url = new URL(path, location.href);
    if (token) url.searchParams.set('token', token);
    const r = await fetch(url, { headers: token ? { Authorization: `Bearer ${token}` } : {} });
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    const asset = parseFlameAsset(await r.arrayBuffer());
    const blend = blendParam === 'gpu' || blendParam === 'cpu' ? blendParam : (softwareRenderer(gl) ? 'cpu' : 'gpu');
    renderer = flameRenderer = new FlameRenderer(gl, asset, blend);
    if (stats.mode === 'vrm') { showCanvas('vrm'); return; }  // an avatar stays in front; the mesh is an option
    stats.mode = 'flame';
    showCanvas('flame');
    stats.flame = { vertices: asset.V, faces: asset.F, components: asset.K + asset.P, blend };
    hud.mode(`FLAME ${asset.V} vertices (blendshapes on ${blend.toUpperCase()})`);
  } catch (e) {
    note(`FLAME model unavailable (${e.message}); showing the proxy head`, 'error');
    flameAssetPath = null;
    useProxy();
  }
}

const conn = new Connection({
  token, session, handlers: {
    onStatus(state, detail) {
      stats.state = state; stats.stateDetail = detail || ''; stats.connected = state === 'connected';
      hud.state(state, detail);
    },
    onHello(hello) {
      stats.hello = hello; stats.session = hello.session; stats.source = hello.source; stats.connects = conn.connects;
      stats.styles = hello.styles || []; stats.style = hello.style;
      hud.styles(stats.styles, hello.style);
      playout.clear();
      mapper = new AvatarMapper(hello.avatar_map);
      stats.avatarMap = mapper.measured ? 'measured' : 'default';
      const avatar = params.get('avatar') || hello.avatar;
      if (avatar && !(stats.vrm && stats.vrm.source === avatar)) useVrm(withToken(avatar), avatar);
      if (!gl) return;
      const asset = hello.template && hello.template.flame_asset;
      if (asset) useFlame(asset); else if (stats.mode !== 'vrm') useProxy();
      if (mic && mic.active) mic.announce();
    },
    onFrame(f, recvWall) {
      const now = performance.now() / 1000;
      stats.framesReceived++;
      if (stats.lastSeq >= 0 && f.seq > stats.lastSeq + 1 + f.dropped && !f.reset) {
        stats.dropped += f.seq - stats.lastSeq - 1 - f.dropped;  // a gap the server did not report
      }
      stats.dropped += f.dropped;
      stats.lastSeq = f.seq;
      if (f.reset) stats.resets++;
      if (f.degraded) stats.degraded++;  // the server shed work for it under overload
      const v = new Float32Array(61);
      v.set(f.exp, 0); v.set(f.pose, 50);
      if (f.eyes) { v.set(f.eyes, 56); v[60] = 1; }
      playout.push(f.audioTime, v, now, f.reset);
      mapper.observe(f.exp, f.pose, f.reset);
      recent.push([now, now - f.audioTime, recvWall - f.emitTime]);
      while (recent.length && recent[0][0] < now - 5) recent.shift();
    },
    onMessage(msg) {
      stats.lastMessage = msg;
      if (msg.type === 'state') {
        if ('style' in msg) { stats.style = msg.style; hud.style(msg.style); }
        if ('source' in msg) stats.source = msg.source;
        note(`server: ${Object.entries(msg).filter(([k]) => k !== 'type').map(([k, v]) => `${k}=${JSON.stringify(v)}`).join(' ')}`);
      } else if (msg.type === 'error') {
        note(`server: ${msg.message}`, 'error');
      } else if (msg.type === 'dropped') {
        stats.dropped = Math.max(stats.dropped, msg.total);
      }
    },
  },
});

let mic = null;
async function toggleMic() {
  try {
    if (mic && mic.active) { await mic.stop(); return; }
    mic = mic || new MicStreamer(conn, (active) => { stats.micActive = active; hud.mic(active); });
    await mic.start();
    note(`microphone streaming at ${mic.ctx.sampleRate} Hz`);
  } catch (e) {
    note(`microphone: ${e.message}`, 'error');
    hud.mic(false);
  }
}

function percentile(xs, q) {
  if (!xs.length) return NaN;
  const s = xs.slice().sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * s.length))];
}

let lastFpsT = performance.now(), fpsCount = 0, lastHudT = 0;
const scratch = new Float32Array(61);

// Draw the frame for time nowMs: playout sample -> renderer -> canvas.
function render(nowMs) {
  const w = Math.round(canvas.clientWidth * devicePixelRatio), h = Math.round(canvas.clientHeight * devicePixelRatio);
  if (w > 0 && h > 0 && (canvas.width !== w || canvas.height !== h)) { canvas.width = w; canvas.height = h; }
  const t0 = performance.now();
  const { values, past } = playout.sample(nowMs / 1000, scratch);
  if (values) {
    renderer.setFrame(values.subarray(0, 50), values.subarray(50, 56), values[60] > 0.5 ? values.subarray(56, 60) : null);
    stats.framesRendered++;
    if (past > 0.04) stats.underruns++;
  }
  const t1 = performance.now();
  const { center, radius } = renderer.bounds;
  const fov = 0.5, dist = radius / Math.sin(fov / 2) * 1.25;
  const view = lookAt([center[0], center[1] + radius * 0.05, center[2] + dist], center);
  const proj = perspective(fov, canvas.width / Math.max(1, canvas.height), dist * 0.1, dist * 10);
  gl.viewport(0, 0, canvas.width, canvas.height);
  gl.clearColor(0.11, 0.12, 0.15, 1);
  gl.clear(gl.COLOR_BUFFER_BIT | gl.DEPTH_BUFFER_BIT);
  gl.enable(gl.DEPTH_TEST);
  renderer.draw(view, proj);
  stats.renderCount++;
  // CPU cost per rendered frame (exponential average): playout + joint transforms, and the GL calls
  // (command submission; the GPU works asynchronously).
  stats.updateMs = stats.updateMs === undefined ? t1 - t0 : 0.95 * stats.updateMs + 0.05 * (t1 - t0);
  const t2 = performance.now();
  stats.drawMs = stats.drawMs === undefined ? t2 - t1 : 0.95 * stats.drawMs + 0.05 * (t2 - t1);
}

// The VRM avatar for time nowMs: playout sample -> AvatarMapper -> expressions and bones -> three.js.
function renderVrm(nowMs) {
  const now = nowMs / 1000;
  const { values, past } = playout.sample(now, scratch);
  const dt = lastVrmT === null ? 1 / 60 : Math.max(1e-4, now - lastVrmT);
  lastVrmT = now;
  const stale = !values || past > 0.5;
  const c = mapper.controls(values ? values.subarray(0, 50) : null, values ? values.subarray(50, 56) : null,
    values && values[60] > 0.5 ? values.subarray(56, 60) : null, now, stale, dt);
  vrmView.apply(c);
  vrmView.render(dt);
  stats.expressions = c.expressions;
  stats.vrmAudioTime = playout.base === null ? null : now - playout.base - playout.delay;  // what is shown
  stats.renderCount++;
  if (values) { stats.framesRendered++; if (past > 0.04) stats.underruns++; }
}

function frame() {
  requestAnimationFrame(frame);
  const nowMs = performance.now();
  if (stats.mode === 'vrm' && vrmView) renderVrm(nowMs);
  else if (!gl || !renderer) return;
  else render(nowMs);
  fpsCount++;
  if (nowMs - lastFpsT >= 1000) { stats.fps = fpsCount * 1000 / (nowMs - lastFpsT); fpsCount = 0; lastFpsT = nowMs; hud.fps(stats.fps); }
  if (nowMs - lastHudT > 250) {
    lastHudT = nowMs;
    const lag = recent.map((r) => r[1]), net = recent.map((r) => r[2]);
    stats.latencyMs = percentile(net, 0.5) * 1000;
    stats.jitterMs = lag.length ? (percentile(lag, 0.95) - Math.min(...lag)) * 1000 : NaN;
    stats.bufferMs = playout.base === null ? NaN : playout.buffered(nowMs / 1000) * 1000;
    stats.resets = playout.resets;
    stats.micSamples = mic ? mic.sent : 0;
    hud.latency(stats.latencyMs, stats.jitterMs, stats.bufferMs, playout.delay * 1000, playout.fixed);
    hud.frames(stats.framesReceived, stats.lastSeq, stats.dropped, stats.degraded);
  }
}

window.dptViewer = Object.assign(stats, {
  // Skinned FLAME vertices for the given coefficients (transform feedback through the live
  // vertex shader). Tests compare them with engines.flame.Flame.
  debugSkin(exp, pose, eyes = null) {
    if (stats.mode !== 'flame') throw new Error('not in FLAME mode');
    renderer.setFrame(Float32Array.from(exp), Float32Array.from(pose), eyes && Float32Array.from(eyes));
    return Array.from(renderer.debugSkin());
  },
  // Mean and spread of the canvas right after a render (tests: not blank, changes over time).
  pixelStats() {
    if (!gl) return null;
    if (renderer) render(performance.now());
    const w = canvas.width, h = canvas.height, px = new Uint8Array(w * h * 4);
    gl.readPixels(0, 0, w, h, gl.RGBA, gl.UNSIGNED_BYTE, px);
    let sum = 0, sum2 = 0, n = 0;
    for (let i = 0; i < px.length; i += 16) { const y = (px[i] + px[i + 1] + px[i + 2]) / 3; sum += y; sum2 += y * y; n++; }
    const mean = sum / n;
    return { width: w, height: h, mean, std: Math.sqrt(Math.max(0, sum2 / n - mean * mean)) };
  },
  sendControl(obj) { return conn.send(obj); },
  // VRM: load an avatar (URL), the weights its expression manager holds, and the mouth the
  // mapping gives for a frame (a fresh mapper: the served map, rest = the fitted rest).
  loadAvatar(url) { return useVrm(withToken(url), url); },
  vrmExpressions() { return vrmView ? vrmView.expressionValues() : null; },
  avatarMouth(exp, pose) { return new AvatarMapper(stats.hello && stats.hello.avatar_map).mouth(exp, pose); },
  useView,
  sendRaw(text) { if (conn.ws) conn.ws.send(text); },  // tests: what a broken client would send
  toggleMic,
  playout,
});

if (!gl) {
  stats.mode = 'none';
  note('this browser has no WebGL2: the viewer cannot render', 'error');
} else {
  useProxy();
}
hud.mic(false, !!(navigator.mediaDevices && window.AudioContext));
if (viewSelect) viewSelect.addEventListener('change', () => useView(viewSelect.value));
// Drop a .vrm anywhere on the page to see it animated.
document.addEventListener('dragover', (e) => e.preventDefault());
document.addEventListener('drop', async (e) => {
  e.preventDefault();
  const file = e.dataTransfer && e.dataTransfer.files[0];
  if (file) useVrm(await file.arrayBuffer(), file.name);
});
conn.start();
requestAnimationFrame(frame);
