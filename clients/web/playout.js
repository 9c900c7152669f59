// Jitter buffer: places 25 fps frames on the local clock and interpolates them to the display
// rate. Same algorithm as clients/vmc.py Playout (docs/CLIENTS.md, "Playout"):
//   play time t = now - base - delay, base = lower envelope of (arrival - audio_time), dropping at
//   once for an early frame and leaking up by `leak` s per frame while frames keep coming late.
export class Playout {
  constructor({ delay = 0.1, leak = 0.001, keep = 2.0 } = {}) {
    this.delay = delay; this.leak = leak; this.keep = keep;
    this.times = []; this.values = [];
    this.base = null;
    this.resets = 0;
  }

  clear() { this.times = []; this.values = []; this.base = null; }

  push(audioTime, values, now, reset = false) {
    const n = this.times.length;
    if (n && (reset || audioTime < this.times[n - 1] - 0.5)) { this.clear(); this.resets++; }
    const lateness = now - audioTime;
    this.base = this.base === null ? lateness : Math.min(this.base + this.leak, lateness);
    let i = this.times.length;
    while (i > 0 && this.times[i - 1] > audioTime) i--;
    if (i > 0 && this.times[i - 1] === audioTime) { this.values[i - 1] = values; return; }
    this.times.splice(i, 0, audioTime);
    this.values.splice(i, 0, values);
    while (this.times.length && this.times[0] < audioTime - this.keep) { this.times.shift(); this.values.shift(); }
  }

  // {values, past}: interpolated values (null when empty) and how far play time is past the
  // newest frame (> 0: the buffer ran dry, the newest frame is held).
  sample(now, out) {
    const n = this.times.length;
    if (!n) return { values: null, past: Infinity };
    const t = now - this.base - this.delay;
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
    return n ? Math.max(0, this.times[n - 1] - (now - this.base - this.delay)) : 0;
  }
}
