// Test hook of `dpt-live bench-e2e` (bench/e2e.py): injected with playwright's add_init_script
// before the viewer's own scripts; the viewer never loads it. It records, on one clock
// (performance.timeOrigin + performance.now(), ms since the Unix epoch):
//   starts  [t, rate]                    audio_start sent (the server's stream time 0)
//   blocks  [t, samples]                 each microphone block as it is sent upstream (page or worker)
//   envelope                             peak |x| per 1 ms of the upstream (where the onsets are)
//   clock   [t, Date.now()]              once a second: the page clock against the system clock
//   frames  [t, seq, audioTime, emitTime, flags, jaw]   each binary frame as it arrives
//   renders [t, jaw, playTime]           each playout sample the render loop draws (rAF time)
//   rafs    [t]                          animation-frame times (when a drawn frame is presented)
(() => {
  const E = { starts: [], blocks: [], envelope: [], sent: 0, frames: [], renders: [], rafs: [], clock: [] };
  window.__dptE2E = E;
  const clock = () => performance.timeOrigin + performance.now();
  const JAW = 53;  // payload float: pose[3], the jaw opening (protocol LAYOUT: exp 0..49, pose 50..55)

  // the upstream: declared (stream time 0) and each block as it leaves, from the page's own socket
  // (WebSocket.send below) or from the microphone worker (clients/web/mic.js calls these)
  E.upstreamStart = (t, rate) => { E.starts.push([t, rate]); E.sent = 0; E.envelope = []; E.blocks = []; };
  E.upstreamBlock = (t, x) => {
    // peak |x| per millisecond of stream (sample positions, so any AudioContext rate bins right)
    const rate = E.starts.length ? E.starts[E.starts.length - 1][1] : 48000;
    for (let k = 0; k < x.length; k++) {
      const ms = Math.floor(((E.sent + k) * 1000) / rate);
      while (E.envelope.length <= ms) E.envelope.push(0);
      const a = Math.abs(x[k]);
      if (a > E.envelope[ms]) E.envelope[ms] = a;
    }
    E.sent += x.length;
    E.blocks.push([t, x.length]);
  };
  // A worker's clock (its own timeOrigin) can sit milliseconds off the page's: its times are moved
  // onto the page's clock through Date.now(), sampled with each of them in both contexts (medians
  // of the recent offsets: Date.now() has 1 ms steps)
  const offsets = { worker: [], page: [] };
  const median = (a) => { const b = a.slice().sort((x, y) => x - y); return b[b.length >> 1]; };
  E.fromWorker = (t, wall) => {
    for (const [k, v] of [['worker', t - wall], ['page', clock() - Date.now()]]) {
      offsets[k].push(v);
      if (offsets[k].length > 101) offsets[k].shift();
    }
    return t - median(offsets.worker) + median(offsets.page);
  };
  const send = WebSocket.prototype.send;
  WebSocket.prototype.send = function (data) {
    const t = clock();
    if (typeof data === 'string') {
      try { const m = JSON.parse(data); if (m.type === 'audio_start') E.upstreamStart(t, m.rate); } catch (e) { /* not JSON */ }
    } else {
      E.upstreamBlock(t, new Float32Array(data instanceof ArrayBuffer ? data : data.buffer));
    }
    return send.call(this, data);
  };

  const Native = window.WebSocket;
  window.WebSocket = class extends Native {
    constructor(...args) {
      super(...args);
      this.addEventListener('message', (ev) => {
        if (typeof ev.data === 'string' || ev.data.byteLength < 32 + 4 * (JAW + 1)) return;
        const dv = new DataView(ev.data);
        E.frames.push([clock(), dv.getUint32(8, true), dv.getFloat64(16, true), dv.getFloat64(24, true),
          dv.getUint16(6, true), dv.getFloat32(32 + 4 * JAW, true)]);
      });
    }
  };

  // The viewer's jitter buffer is window.dptViewer.playout (main.js); record what it hands the renderer.
  const wrap = () => {
    const p = window.dptViewer && window.dptViewer.playout;
    if (!p) { setTimeout(wrap, 20); return; }
    const sample = p.sample.bind(p);
    p.sample = (now, out) => {
      const r = sample(now, out);
      if (r.values) E.renders.push([performance.timeOrigin + now * 1000, r.values[JAW], p.playTime ? p.playTime(now) : now - p.base - p.delay]);
      return r;
    };
  };
  wrap();
  setInterval(() => E.clock.push([clock(), Date.now()]), 1000);
  const raf = (t) => { E.rafs.push(performance.timeOrigin + t); requestAnimationFrame(raf); };
  requestAnimationFrame(raf);
})();
