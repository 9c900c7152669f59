// AudioWorklet: collects the microphone's 128-sample render quanta into ~20 ms blocks of mono
// float32 and posts them (transferred, not copied) to the upstream worker (mic-upstream.js) when
// the page hands it a port, else to the page, which sends them upstream itself.
class DptMic extends AudioWorkletProcessor {
  constructor() {
    super();
    this.block = Math.max(128, Math.round(sampleRate * 0.02));
    this.buf = new Float32Array(this.block);
    this.fill = 0;
    this.out = this.port;
    this.port.onmessage = (ev) => { if (ev.data && ev.data.port) this.out = ev.data.port; };
  }
  process(inputs) {
    const input = inputs[0];
    if (input && input.length) {
      const ch0 = input[0];
      for (let i = 0; i < ch0.length; i++) {
        let s = ch0[i];
        if (input.length > 1) { for (let c = 1; c < input.length; c++) s += input[c][i]; s /= input.length; }
        this.buf[this.fill++] = s;
        if (this.fill === this.block) {
          this.out.postMessage(this.buf.buffer, [this.buf.buffer]);
          this.buf = new Float32Array(this.block);
          this.fill = 0;
        }
      }
    }
    return true;
  }
}
registerProcessor('dpt-mic', DptMic);
