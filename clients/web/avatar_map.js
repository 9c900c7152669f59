// FLAME motion -> VRM expressions and head rotation in the browser: the same mapping the VMC bridge
// runs (clients/vmc_map.py; the model's measured map arrives in the hello as `avatar_map`), with
// the same rest calibration, full blinks drawn at the display rate and eased generator resets.
// Pure arithmetic, no DOM: main.js feeds it, vrm.js applies its output.

const FEATURES = ['jaw', 'open', 'closure', 'round', 'spread', 'smile'];
const VOWELS = ['A', 'I', 'U', 'E', 'O'];
const VRM1 = { A: 'aa', I: 'ih', U: 'ou', E: 'ee', O: 'oh' };

// The defaults of clients/vmc_map.py DEFAULT_MAPPING that the viewer uses.
export const DEFAULTS = {
  fit: null, deadzone: 0.05, auto_neutral_s: 5.0, neutral_jaw_rad: 0.03, jaw_open_rad: 0.25, gains: {},
  head_rest: 'auto', head_rest_s: 8.0, head_gain: 1.0, neck_share: 0.4, calibrate_s: 0.0, reset_ease_ms: 200.0,
  blink: { shape: true, close_ms: 70, hold_ms: 40, open_ms: 130, threshold: 0.4, idle_min_s: 2.0, idle_max_s: 6.0 },
};

const clip01 = (x) => (x < 0 ? 0 : x > 1 ? 1 : x);
export const smoothstep = (x) => { const t = clip01(x); return t * t * (3 - 2 * t); };

// Resting value of a vector: an average over quiet frames (time constant tau), or with fixedS > 0
// the mean of the first fixedS seconds, then frozen.
export class RestCalibration {
  constructor(n, tau, fixedS = 0, initial = null) {
    this.tau = tau; this.fixedS = fixedS; this.value = initial ? Float64Array.from(initial) : null;
    this.seen = 0; this.total = new Float64Array(n); this.count = 0;
  }
  observe(x, quiet, dt = 0.04) {
    if (this.fixedS > 0) {
      if (this.seen < this.fixedS) {
        for (let i = 0; i < x.length; i++) this.total[i] += x[i];
        this.count++; this.seen += dt;
        this.value = this.total.map((v) => v / this.count);
      }
      return;
    }
    if (!quiet || this.tau <= 0) return;
    if (!this.value) { this.value = Float64Array.from(x); return; }
    const a = Math.min(1, dt / this.tau);
    for (let i = 0; i < x.length; i++) this.value[i] += a * (x[i] - this.value[i]);
  }
  remove(x) { return this.value ? Array.from(x, (v, i) => v - this.value[i]) : Array.from(x); }
}

// The model's fitted map (training/avatar_map.py): inputs x = (exp[0:K], jaw) relative to their
// calibrated rest -> features and vowel probabilities (FittedMouth in vmc_map.py).
export class FittedMouth {
  constructor(fit, tau, fixedS) {
    this.k = fit.inputs.exp; this.w = fit.weights;
    this.span = fit.full.map((f, i) => f - fit.rest[i]);
    this.xScale = fit.x_scale; this.vw = fit.vowel_weights; this.vb = fit.vowel_bias;
    this.rest = new RestCalibration(this.k + 1, tau, fixedS, fit.x_rest);
  }
  inputs(exp, pose) {
    const x = new Float64Array(this.k + 1);
    for (let i = 0; i < this.k && i < exp.length; i++) x[i] = exp[i];
    x[this.k] = pose[3];
    return x;
  }
  observe(exp, pose, quiet, dt) { this.rest.observe(this.inputs(exp, pose), quiet, dt); }
  controls(exp, pose) {
    const dx = this.rest.remove(this.inputs(exp, pose));
    const rel = this.w.map((row, j) => row.reduce((s, w, i) => s + w * dx[i], 0) / this.span[j]);
    const out = {};
    FEATURES.forEach((name, i) => { out[name] = clip01(rel[i]); });
    const z = this.vw.map((row, j) => row.reduce((s, w, i) => s + w * dx[i] / this.xScale[i], this.vb[j]));
    const zmax = Math.max(...z);
    const p2 = z.map((v) => Math.exp(2 * (v - zmax)));  // p^2: one clear shape, as vmc_map.py
    const sum = p2.reduce((a, b) => a + b, 0);
    out.openness = clip01(0.5 * (out.jaw + out.open));
    VOWELS.forEach((v, i) => { out[v] = out.openness * p2[i] / sum; });
    return out;
  }
}

// Lid closure drawn at the display rate: close, hold at 1, open; follows the stream's blinks and
// blinks by itself while none come (paused, no eyes).
export class BlinkShaper {
  constructor(cfg, random = Math.random) { this.cfg = cfg; this.random = random; this.start = null; this.above = false; this.nextIdle = null; }
  duration() { return (this.cfg.close_ms + this.cfg.hold_ms + this.cfg.open_ms) / 1000; }
  idle() { return this.cfg.idle_min_s + this.random() * (this.cfg.idle_max_s - this.cfg.idle_min_s); }
  trigger(now) {
    if (this.start === null || now - this.start >= this.duration()) this.start = now;
    this.nextIdle = now + this.duration() + this.idle();
  }
  value(now, lid) {
    if (this.nextIdle === null) this.nextIdle = now + this.idle();
    if (lid !== null) {
      const up = lid >= this.cfg.threshold;
      if (up && !this.above) this.trigger(now);
      this.above = up;
    } else if (now >= this.nextIdle) this.trigger(now);
    if (this.start === null) return 0;
    const s = now - this.start, c = this.cfg.close_ms / 1000, h = this.cfg.hold_ms / 1000, o = this.cfg.open_ms / 1000;
    if (s < 0 || s >= c + h + o) return 0;
    if (s < c) return c > 0 ? smoothstep(s / c) : 1;
    if (s < c + h) return 1;
    return o > 0 ? 1 - smoothstep((s - c - h) / o) : 0;
  }
}

export class AvatarMapper {
  constructor(served = null) {
    const m = { ...DEFAULTS, ...(served || {}) };
    m.blink = { ...DEFAULTS.blink, ...((served && served.blink) || {}) };
    this.m = m;
    this.fitted = m.fit ? new FittedMouth(m.fit, m.auto_neutral_s, m.calibrate_s) : null;
    this.headRest = m.head_rest === 'auto'
      ? new RestCalibration(3, m.head_rest_s, m.calibrate_s, m.fit ? m.fit.head_rest : null) : null;
    this.blink = new BlinkShaper(m.blink);
    this.resetPending = false; this.ease = null; this.last = null; this.relaxed = null;
  }
  get measured() { return this.fitted !== null; }
  // One network frame: the rest calibration learns from it; reset = the server restarted its generator.
  observe(exp, pose, reset = false) {
    const quiet = Math.abs(pose[3]) <= this.m.neutral_jaw_rad;
    if (this.headRest) this.headRest.observe([pose[0], pose[1], pose[2]], true, 0.04);
    if (this.fitted) this.fitted.observe(exp, pose, quiet, 0.04);
    if (reset && this.last) this.resetPending = true;
  }
  shape(name, v) {
    const dz = this.m.deadzone;
    return clip01((Math.max(0, v - dz) / (1 - dz)) * (this.m.gains[name] ?? 1));
  }
  // VRM 1.0 expression weights (aa ih ou ee oh) of a frame, before blinks and easing.
  mouth(exp, pose) {
    const out = {};
    if (this.fitted) {
      const c = this.fitted.controls(exp, pose);
      for (const v of VOWELS) out[VRM1[v]] = this.shape(v, c[v]);
    } else {  // no measured map: the jaw opens "aa"
      for (const v of VOWELS) out[VRM1[v]] = 0;
      out.aa = this.shape('A', clip01(pose[3] / this.m.jaw_open_rad));
    }
    return out;
  }
  headRotation(pose) {
    let rot = [pose[0], pose[1], pose[2]];
    if (this.headRest) rot = this.headRest.remove(rot);
    return rot.map((v) => v * this.m.head_gain);
  }
  // Everything the avatar shows at time `now` (s) for an interpolated frame (null: none yet);
  // stale: no new frames for a while (paused, stalled) — the face relaxes, blinks go on.
  controls(exp, pose, eyes, now, stale, dt) {
    let expressions, rot;
    if (exp && !stale) {
      expressions = this.mouth(exp, pose);
      rot = this.headRotation(pose);
    } else {
      const keep = Math.exp(-dt / 0.1);
      expressions = {};
      for (const [k, v] of Object.entries(this.relaxed || this.mouth(new Float32Array(50), new Float32Array(6)))) expressions[k] = keep * v;
      rot = this.last ? this.last.rot.slice() : [0, 0, 0];
    }
    if (this.resetPending && this.last && this.m.reset_ease_ms > 0) {
      const d = {};
      for (const k of Object.keys(expressions)) d[k] = (this.last.expressions[k] ?? expressions[k]) - expressions[k];
      this.ease = { start: now, d, dr: rot.map((v, i) => this.last.rot[i] - v) };
    }
    this.resetPending = false;
    if (this.ease) {
      const w = 1 - smoothstep((now - this.ease.start) / (this.m.reset_ease_ms / 1000));
      if (w <= 0) this.ease = null;
      else {
        for (const k of Object.keys(expressions)) expressions[k] = clip01(expressions[k] + w * (this.ease.d[k] ?? 0));
        rot = rot.map((v, i) => v + w * this.ease.dr[i]);
      }
    }
    this.relaxed = { ...expressions };
    this.last = { expressions: { ...expressions }, rot: rot.slice() };
    const lid = eyes && !stale ? Math.max(eyes[0], eyes[1]) : null;
    let left, right;
    if (this.m.blink.shape) left = right = this.blink.value(now, lid);
    else { left = eyes ? clip01(eyes[0]) : 0; right = eyes ? clip01(eyes[1]) : 0; }
    expressions.blink = Math.min(left, right);
    expressions.blinkLeft = left - expressions.blink;  // VRM adds blink and blinkLeft: no double closure
    expressions.blinkRight = right - expressions.blink;
    const share = this.m.neck_share;
    return { expressions, neck: rot.map((v) => v * share), head: rot.map((v) => v * (1 - share)) };
  }
}
