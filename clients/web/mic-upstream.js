// Dedicated worker: the microphone's upstream socket. The worklet's blocks come in on a
// MessagePort and leave on a WebSocket of this worker (mode=upstream: no frames come back), so
// a busy page (rendering, layout) never holds the audio back. Reports to the page:
// {type:'started', t, wall, rate}, {type:'sent', t, wall, samples, data?} per block (t: this worker's
// clock, wall: Date.now() then; data only when asked, for the latency benchmark's hook),
// {type:'status', state, detail}.
let ws = null;
let cfg = null;  // {url, rate, e2e}
let stopped = false;
let ready = false;
let retry = 500;
const clock = () => performance.timeOrigin + performance.now();

function connect() {
  ready = false;
  ws = new WebSocket(cfg.url);
  ws.binaryType = 'arraybuffer';
  ws.onmessage = (ev) => {
    if (typeof ev.data !== 'string') return;
    let msg;
    try { msg = JSON.parse(ev.data); } catch (e) { return; }
    if (msg.type === 'hello') {
      ws.send(JSON.stringify({ type: 'audio_start', rate: cfg.rate, channels: 1, format: 'f32le' }));
      ready = true;
      retry = 500;
      postMessage({ type: 'started', t: clock(), wall: Date.now(), rate: cfg.rate });
    } else if (msg.type === 'error') {
      postMessage({ type: 'status', state: 'error', detail: msg.message || 'error' });
    }
  };
  ws.onclose = (ev) => {
    ready = false;
    if (stopped) { close(); return; }  // the upstream ended: this worker's job is done
    postMessage({ type: 'status', state: 'reconnecting', detail: `upstream closed (${ev.code}${ev.reason ? ': ' + ev.reason : ''})` });
    setTimeout(() => { if (!stopped) connect(); }, retry);
    retry = Math.min(retry * 2, 8000);
  };
}

onmessage = (ev) => {
  const m = ev.data;
  if (m.type === 'start') {
    cfg = m;
    stopped = false;
    m.port.onmessage = (e) => {
      if (!ready || ws.readyState !== WebSocket.OPEN) return;
      const buf = e.data;
      const samples = buf.byteLength / 4;
      const copy = cfg.e2e ? buf.slice(0) : null;
      ws.send(buf);
      postMessage({ type: 'sent', t: clock(), wall: Date.now(), samples, data: copy }, copy ? [copy] : []);
    };
    connect();
  } else if (m.type === 'stop') {
    stopped = true;
    if (ws && ws.readyState === WebSocket.OPEN) {
      if (ready) ws.send(JSON.stringify({ type: 'audio_end' }));
      ws.close(1000);  // onclose ends the worker
    } else {
      close();
    }
  }
};
