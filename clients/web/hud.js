// Heads-up display: connection state, latency figures, frame counters, style selector, mic button.
const LATENCY_HELP = [
  'latency: frame arrival (this browser clock) minus emit_time (server clock, set when the frame',
  'was produced); needs synchronised clocks (same machine or NTP).',
  'jitter: how much later than the earliest frame a frame arrived, relative to its audio_time',
  '(95th percentile over 5 s): 0 means frames arrive exactly at the audio pace.',
  'buffer: frames waiting in the jitter buffer now; delay: how long the buffer holds frames after the',
  'earliest arrival, sized from the measured jitter (auto) or fixed with ?delay=MS in the page URL.',
  'The server-side part (audio arrival to frame emit) is in /metrics, dpt_frame_latency_seconds.',
].join('\n');

export class Hud {
  constructor(root, { onStyle, onMic }) {
    this.el = {};
    for (const id of ['state', 'latency', 'frames', 'mode', 'style', 'mic', 'message', 'fps']) {
      this.el[id] = root.querySelector(`#hud-${id}`);
    }
    this.el.latency.title = LATENCY_HELP;
    this.el.style.addEventListener('change', () => onStyle(this.el.style.value || null));
    this.el.mic.addEventListener('click', () => onMic());
  }

  state(state, detail = '') {
    this.el.state.textContent = detail ? `${state} — ${detail}` : state;
    this.el.state.dataset.state = state;
  }

  styles(names, current) {
    const sel = this.el.style;
    sel.replaceChildren();
    const none = document.createElement('option');
    none.value = ''; none.textContent = '(model default)';
    sel.append(none);
    for (const n of names) {
      const o = document.createElement('option');
      o.value = n; o.textContent = n;
      sel.append(o);
    }
    sel.value = current || '';
    sel.disabled = names.length === 0;
  }

  style(current) { this.el.style.value = current || ''; }

  latency(netMs, jitterMs, bufferMs, delayMs = NaN, fixed = false) {
    const f = (x) => (Number.isFinite(x) ? `${Math.round(x)} ms` : '–');
    this.el.latency.textContent = `latency ${f(netMs)} · jitter ${f(jitterMs)} · buffer ${f(bufferMs)}`
      + ` · delay ${f(delayMs)} (${fixed ? 'fixed' : 'auto'})`;
  }

  frames(received, lastSeq, dropped, degraded = 0) {
    this.el.frames.textContent = `frames ${received} · seq ${lastSeq < 0 ? '–' : lastSeq} · dropped ${dropped}`
      + (degraded ? ` · degraded ${degraded}` : '');  // frames the server shed work for (overload)
  }

  fps(renderFps) { this.el.fps.textContent = `${renderFps.toFixed(0)} fps`; }

  mode(mode) { this.el.mode.textContent = mode; }

  mic(active, available = true) {
    this.el.mic.textContent = active ? 'stop mic' : 'mic';
    this.el.mic.classList.toggle('active', active);
    this.el.mic.disabled = !available;
  }

  message(text, kind = 'info') {
    this.el.message.textContent = text || '';
    this.el.message.dataset.kind = kind;
  }
}
