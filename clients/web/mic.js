// Browser microphone -> server: getUserMedia, an AudioWorklet (ScriptProcessor where worklets
// are missing) producing mono float32 at the AudioContext's rate, sent as binary messages after
// {"type":"audio_start","rate":R,"channels":1,"format":"f32le"}; {"type":"audio_end"} on stop.
// With a worklet the blocks go straight to a worker (mic-upstream.js) that owns its own socket
// (mode=upstream), so they never wait for the page's main thread (rendering, layout).
export class MicStreamer {
  constructor(conn, onState) { this.conn = conn; this.onState = onState; this.active = false; this.sent = 0; }

  async start() {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      throw new Error('this page has no microphone access (needs https or localhost)');
    }
    this.stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true } });
    this.ctx = new AudioContext();
    const src = this.ctx.createMediaStreamSource(this.stream);
    const sink = this.ctx.createGain();
    sink.gain.value = 0;  // keeps the graph pulled without playing the mic back
    sink.connect(this.ctx.destination);
    const send = (buf) => { if (this.active && this.conn.sendBinary(buf)) this.sent += buf.byteLength / 4; };
    if (this.ctx.audioWorklet) {
      await this.ctx.audioWorklet.addModule('mic-worklet.js');
      this.node = new AudioWorkletNode(this.ctx, 'dpt-mic', { numberOfInputs: 1, numberOfOutputs: 1 });
      if (window.Worker) this.startWorker();
      else this.node.port.onmessage = (ev) => send(ev.data);
    } else {
      this.node = this.ctx.createScriptProcessor(1024, 1, 1);
      this.node.onaudioprocess = (ev) => send(new Float32Array(ev.inputBuffer.getChannelData(0)).buffer);
    }
    src.connect(this.node);
    this.node.connect(sink);
    this.active = true;
    this.announce();
    this.onState(true);
  }

  startWorker() {
    const hook = window.__dptE2E;  // bench-e2e's hook (clients/web/e2e-hook.js), absent for users
    const channel = new MessageChannel();
    this.node.port.postMessage({ port: channel.port1 }, [channel.port1]);
    this.worker = new Worker('mic-upstream.js');
    this.worker.onmessage = (ev) => {
      const m = ev.data;
      if (m.type === 'sent') {
        if (this.active) this.sent += m.samples;
        if (hook && m.data) hook.upstreamBlock(hook.fromWorker(m.t, m.wall), new Float32Array(m.data));
      } else if (m.type === 'started') {
        if (hook) hook.upstreamStart(hook.fromWorker(m.t, m.wall), m.rate);
      } else if (m.type === 'status') {
        console.warn(`microphone upstream: ${m.state}: ${m.detail}`);
      }
    };
    this.worker.postMessage({ type: 'start', url: this.upstreamUrl(), rate: Math.round(this.ctx.sampleRate),
      e2e: !!hook, port: channel.port2 }, [channel.port2]);
  }

  upstreamUrl() {
    const q = new URLSearchParams();
    if (this.conn.token) q.set('token', this.conn.token);
    q.set('session', (this.conn.hello && this.conn.hello.session) || this.conn.session || 'default');
    q.set('mode', 'upstream');
    return `${location.protocol === 'https:' ? 'wss:' : 'ws:'}//${location.host}/ws?${q}`;
  }

  // (Re)declare the upstream; called again after a reconnect (the worker's socket redeclares itself).
  announce() {
    if (this.active && !this.worker) this.conn.send({ type: 'audio_start', rate: Math.round(this.ctx.sampleRate), channels: 1, format: 'f32le' });
  }

  async stop() {
    if (!this.active) return;
    this.active = false;
    if (this.worker) {
      this.worker.postMessage({ type: 'stop' });  // it ends the upstream and closes itself
      this.worker = null;
    } else {
      this.conn.send({ type: 'audio_end' });
    }
    try { this.node.disconnect(); } catch (e) { /* already gone */ }
    for (const t of this.stream.getTracks()) t.stop();
    await this.ctx.close();
    this.onState(false);
  }
}
