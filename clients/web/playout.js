// Adaptive jitter buffer: places 25 fps frames on the local clock and interpolates them to the
// display rate. The same algorithm as clients/playout.py (docs/CLIENTS.md, "Playout"; the tests
// run both on the same arrivals):
//   play time t = now - base - delay; base = lower envelope of (arrival - audio_time), dropping at
//   once for an early frame and leaking up by `leak` s per frame while frames keep coming late;
//   delay = the `quantile` of recent lateness above base (the measured arrival jitter) + `margin`,
//   at most `maxDelay`, followed at a bounded slew (`grow`, `shrink` s per s). A number for
//   `delay` fixes it instead (the viewer's ?delay=MS).
export class Playout {
  constructor({ delay = null, leak = 0.001, keep = 2.0, quantile = 0.9, margin = 0.01, window = 100,
    minDelay = 0.0, maxDelay = 0.15, initial = 0.1, grow = 1.0, shrink = 0.1 } = {}) {
    this.fixed = delay !== null && delay !== undefined;
    this.delay = this.fixed ? delay : initial;
    this.target = this.delay;
    Object.assign(this, { leak, keep, quantile, margin, window, minDelay, maxDelay, grow, shrink });
    this.jitter = [];  // lateness above base of the last `window` frames (s)
    this.times = []; this.values = [];
    this.base = null;
    this.lastNow = null;
    this.underruns = 0;
    this.resets = 0;
  }

  clear() { this.times = []; this.values = []; this.base = null; }

  push(audioTime, values, now, reset = false) {
    const n = this.times.length;
    if (n && (reset || audioTime < this.times[n - 1] - 0.5)) { this.clear(); this.resets++; }
    const lateness = now - audioTime;
    this.base = this.base === null ? lateness : Math.min(this.base + this.leak, lateness);
    const late = lateness - this.base;
    this.jitter.push(late);
    if (this.jitter.length > this.window) this.jitter.shift();
    if (late > this.delay) this.underruns++;  // it missed its play time (shown late; the target learns from it)
    if (!this.fixed) this.target = this._target();
    let i = this.times.length;
    while (i > 0 && this.times[i - 1] > audioTime) i--;
    if (i > 0 && this.times[i - 1] === audioTime) { this.values[i - 1] = values; return; }
    this.times.splice(i, 0, audioTime);
    this.values.splice(i, 0, values);
    while (this.times.length && this.times[0] < audioTime - this.keep) { this.times.shift(); this.values.shift(); }
  }

  // numpy.quantile's default (linear) rule, so both implementations size the buffer alike
  _target() {
    const s = this.jitter.slice().sort((a, b) => a - b);
    const pos = this.quantile * (s.length - 1), lo = Math.floor(pos), hi = Math.min(s.length - 1, lo + 1);
    const q = s[lo] + (pos - lo) * (s[hi] - s[lo]);
    return Math.min(this.maxDelay, Math.max(this.minDelay, q + this.margin));
  }

  _follow(now) {
    const dt = this.lastNow === null ? 0 : Math.max(0, now - this.lastNow);
    this.lastNow = now;
    if (this.fixed) return;
    if (this.target > this.delay) this.delay = Math.min(this.target, this.delay + this.grow * dt);
    else this.delay = Math.max(this.target, this.delay - this.shrink * dt);
  }

  playTime(now) { return this.base === null ? null : now - this.base - this.delay; }

  // {values, past}: interpolated values (null when empty) and how far play time is past the
  // newest frame (> 0: the buffer ran dry, the newest frame is held).
  sample(now, out) {
    this._follow(now);
    const n = this.times.length;
    if (!n) return { values: null, past: Infinity };
    const t = this.playTime(now);
    if (t <= this.times[0]) return { values: this.values[0], past: t - this.times[n - 1] };
    if (t >= this.times[n - 1]) return { values: this.values[n - 1], past: t - this.times[n - 1] };
    let i = 1;
    while (this.times[i] < t) i++;
    const t0 = this.times[i - 1], t1 = this.times[i], w = (t - t0) / (t1 - t0);
    const a = this.values[i - 1], b = this.values[i];
    const v = out && out.length === a.length ? out : new Float32Array(a.length);
    for (let k = 0; k < a.length; k++) v[k] = a[k] + w * (b[k] - a[k]);
    return { values: v, past: t - this.times[n - 1] };
  }

  // Frames waiting ahead of the play position, in seconds.
  buffered(now) {
    const n = this.times.length;
    return n ? Math.max(0, this.times[n - 1] - this.playTime(now)) : 0;
  }
}
