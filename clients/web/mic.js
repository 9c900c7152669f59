// Browser microphone -> server: getUserMedia, an AudioWorklet (ScriptProcessor where worklets
// are missing) producing mono float32 at the AudioContext's rate, sent as binary messages after
// {"type":"audio_start","rate":R,"channels":1,"format":"f32le"}; {"type":"audio_end"} on stop.
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
      this.node.port.onmessage = (ev) => send(ev.data);
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

  // (Re)declare the upstream; called again after a reconnect.
  announce() {
    if (this.active) this.conn.send({ type: 'audio_start', rate: Math.round(this.ctx.sampleRate), channels: 1, format: 'f32le' });
  }

  async stop() {
    if (!this.active) return;
    this.active = false;
    this.conn.send({ type: 'audio_end' });
    try { this.node.disconnect(); } catch (e) { /* already gone */ }
    for (const t of this.stream.getTracks()) t.stop();
    await this.ctx.close();
    this.onState(false);
  }
}
