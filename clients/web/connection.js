// The viewer's WebSocket to `dpt-live serve` (docs/PROTOCOL.md): token from the page URL, hello,
// binary frames decoded per the hello's layout, control messages, reconnect with backoff.
const MAGIC = 0x46545044;  // "DPTF" read as little-endian uint32

export function decodeFrame(buf, hello) {
  const dv = new DataView(buf);
  const headerBytes = hello.header_bytes;
  if (buf.byteLength !== headerBytes + 4 * hello.frame_floats) throw new Error(`frame of ${buf.byteLength} bytes`);
  if (dv.getUint32(0, true) !== MAGIC) throw new Error('frame magic is not DPTF');
  const version = dv.getUint16(4, true);
  if (version !== 1) throw new Error(`frame version ${version}`);
  const flags = dv.getUint16(6, true);
  const payload = new Float32Array(hello.frame_floats);
  for (let i = 0; i < hello.frame_floats; i++) payload[i] = dv.getFloat32(headerBytes + 4 * i, true);
  const field = {};
  for (const f of hello.layout) field[f.name] = payload.subarray(f.offset, f.offset + f.size);
  return {
    seq: dv.getUint32(8, true), dropped: dv.getUint32(12, true),
    audioTime: dv.getFloat64(16, true), emitTime: dv.getFloat64(24, true),
    eyesValid: (flags & 1) !== 0, reset: (flags & 2) !== 0, degraded: (flags & 4) !== 0,
    exp: field.exp, pose: field.pose, eyes: (flags & 1) ? field.eyes : null,
  };
}

export class Connection {
  // handlers: onHello(hello), onFrame(frame, recvWall), onMessage(obj), onStatus(state, detail)
  constructor({ token, session, handlers, minBackoff = 500, maxBackoff = 8000 }) {
    this.token = token; this.session = session; this.h = handlers;
    this.minBackoff = minBackoff; this.maxBackoff = maxBackoff;
    this.backoff = minBackoff;
    this.ws = null; this.hello = null; this.timer = null; this.stopped = false;
    this.connects = 0; this.failures = 0;
  }

  url() {
    const q = new URLSearchParams();
    if (this.token) q.set('token', this.token);
    if (this.session) q.set('session', this.session);
    q.set('mode', 'binary');
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    return `${scheme}//${location.host}/ws?${q}`;
  }

  start() {
    this.stopped = false;
    this.h.onStatus('connecting');
    let opened = false;
    const ws = new WebSocket(this.url());
    ws.binaryType = 'arraybuffer';
    this.ws = ws;
    ws.onopen = () => { opened = true; };
    ws.onmessage = (ev) => {
      if (typeof ev.data === 'string') {
        let msg;
        try { msg = JSON.parse(ev.data); } catch (e) { this.h.onStatus('error', `bad JSON from server: ${e}`); return; }
        if (msg.type === 'hello') {
          if (msg.protocol !== 1) { this.h.onStatus('error', `server speaks protocol ${msg.protocol}`); ws.close(); this.stopped = true; return; }
          this.hello = msg; this.backoff = this.minBackoff; this.connects++;
          this.h.onStatus('connected', msg.session);
          this.h.onHello(msg);
        } else {
          this.h.onMessage(msg);
        }
        return;
      }
      if (!this.hello) return;
      try { this.h.onFrame(decodeFrame(ev.data, this.hello), Date.now() / 1000); }
      catch (e) { this.h.onStatus('error', `bad frame: ${e.message}`); }
    };
    ws.onclose = (ev) => {
      this.ws = null; this.hello = null;
      if (this.stopped) { this.h.onStatus('closed'); return; }
      this.failures++;
      this._explain(opened, ev).then((why) => {
        const delay = this.backoff * (0.8 + 0.4 * Math.random());
        this.backoff = Math.min(this.backoff * 2, this.maxBackoff);
        this.h.onStatus('reconnecting', `${why}; retry in ${(delay / 1000).toFixed(1)} s`);
        this.timer = setTimeout(() => this.start(), delay);
      });
    };
  }

  // A browser cannot see the HTTP status of a refused upgrade: if /healthz answers, the server
  // is up, so a socket that never opened was refused (token or Origin).
  async _explain(opened, ev) {
    if (opened) return `closed (${ev.code}${ev.reason ? ': ' + ev.reason : ''})`;
    try {
      const r = await fetch('/healthz', { cache: 'no-store' });
      if (r.ok) return 'refused by the server (check ?token= in the page URL)';
    } catch (e) { /* server down */ }
    return 'server unreachable';
  }

  send(obj) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN && this.hello) { this.ws.send(JSON.stringify(obj)); return true; }
    return false;
  }

  sendBinary(buf) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN && this.hello) { this.ws.send(buf); return true; }
    return false;
  }

  get connected() { return !!this.hello; }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.ws) this.ws.close(1000);
  }
}
