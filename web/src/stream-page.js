// A page that drives Stream's browser SDK (@stream-io/video-client, unmodified) for tests and for
// `avatar-bridge demo --watch`. Everything is reached through `window.streamPage`; the page itself
// only shows the remote participants' video, each with its audio, as a viewer would see them.
import { StreamVideoClient, CallingState } from '@stream-io/video-client';

const state = {
  client: null,
  call: null,
  errors: [],
  log: [],
  participants: {}, // sessionId -> { video, audio, frames, firstFrameAt, width, height }
};

// ---- lip sync at playout -------------------------------------------------------------------
// Flash frames (the avatar's sync mark: a bright patch in the bottom-right corner, see
// bridge/sim/marks.py) are timed by requestVideoFrameCallback's expectedDisplayTime; beep onsets
// by an AudioWorklet on the played stream, mapped from the AudioContext clock onto the same
// performance clock with getOutputTimestamp(). Both on performance.now()'s clock.
const measure = {
  t0: performance.now(),
  sessionId: null,
  flashes: [],
  leads: [],
  onsets: [],
  frames: 0,
  firstFrameAt: null,
  lastFrameAt: null,
  gaps: [],
  freezes: 0,
  freezeTimes: [], // { at: the frame that ended the freeze (page clock, ms), ms: the gap }
  prevFlash: false,
  lastPresented: null,
  notPresented: 0, // frames the browser decoded but never showed (their marks are lost)
  displayOffsets: [], // per frame: its display time minus its RTP time (last second's frames)
  // Per frame (last 600): expectedDisplayTime, and the rVFC callback's own time, each less the
  // frame's presentationTime: what the picture side's time is (docs/sync.md, calibration).
  expectedAhead: [],
  callbackAfter: [],
  frameRtp: null, // the last frame's RTP timestamp, and its unwrapped time in ms
  frameRtpMs: 0,
  audioContext: null,
  outputLatencyMs: null,
  ssrcOnsets: [],
  ssrcPolls: 0,
  ssrcLevels: 0,
  ssrcQuietSince: null,
  lastSsrcTs: null,
  lastSsrcRtp: null,
  ssrcUncertain: 0,
};
const PAIR_WINDOW_MS = 250;
const FREEZE_MIN_MS = 200;
const KEPT = 4096;

const ONSET_WORKLET = `
class Onsets extends AudioWorkletProcessor {
  constructor() { super(); this.quiet = 0; this.loud = false; }
  process(inputs) {
    const ch = inputs[0] && inputs[0][0];
    if (!ch) return true;
    let peak = -1;
    for (let i = 0; i < ch.length; i++) {
      const v = Math.abs(ch[i]);
      if (!this.loud && v > 0.08) { peak = i; break; }
    }
    let sum = 0;
    for (let i = 0; i < ch.length; i++) sum += ch[i] * ch[i];
    const rms = Math.sqrt(sum / ch.length);
    if (peak >= 0 && this.quiet >= 0.15 * sampleRate) {
      this.port.postMessage({ frame: currentFrame + peak, rate: sampleRate });
      this.loud = true;
    }
    if (rms < 0.01) { this.quiet += ch.length; this.loud = false; } else { this.quiet = 0; }
    return true;
  }
}
registerProcessor('onsets', Onsets);
`;

// Mean full-range luma of a 4x4 px sample at (cx, cy) of the current frame.
function lumaAt(video, canvas, cx, cy) {
  const ctx = canvas.getContext('2d', { willReadFrequently: true });
  ctx.drawImage(video, cx - 2, cy - 2, 4, 4, 0, 0, 4, 4);
  const px = ctx.getImageData(0, 0, 4, 4).data;
  let sum = 0;
  for (let i = 0; i < px.length; i += 4) sum += 0.299 * px[i] + 0.587 * px[i + 1] + 0.114 * px[i + 2];
  return sum / (px.length / 4);
}

function flashLevel(video, canvas) {
  const w = video.videoWidth;
  const h = video.videoHeight;
  if (!w || !h) return null;
  const b = w / 40; // the marks' block size
  return lumaAt(video, canvas, w - 2.5 * b, h - 2.5 * b);
}

// The lead patch (bridge/sim/marks.py): how long after this frame's media time the mark's sound
// starts (negative: before), luma 140 + 1.25 per ms in video range (the canvas gives full range:
// undo that first). A mark lights a few frames; the first one shown times it.
function leadMs(video, canvas) {
  const w = video.videoWidth;
  const h = video.videoHeight;
  const b = w / 40;
  const full = lumaAt(video, canvas, w - 6.5 * b, h - 2.5 * b);
  return (16 + (full * 219) / 255 - 140) / 1.25;
}

// How much later than the promptest of the last second's frames this frame is shown, against its
// RTP timestamp: a vsync missed, a late main thread, a frame the jitter buffer held. A mark's skew
// keeps it (the viewer sees the frame then); the negative control takes it out, so a control mark
// and its plain neighbours are compared like with like (tests/browser/test_sync_control.py).
function displayLate(t, meta) {
  if (meta.rtpTimestamp === undefined) return null;
  if (measure.frameRtp !== null) measure.frameRtpMs += ((meta.rtpTimestamp - measure.frameRtp) | 0) / 90;
  measure.frameRtp = meta.rtpTimestamp;
  const offsets = measure.displayOffsets;
  offsets.push(t - measure.frameRtpMs);
  if (offsets.length > 30) offsets.shift();
  return offsets[offsets.length - 1] - Math.min(...offsets);
}

function onMeasuredFrame(video, canvas, meta, now) {
  const t = meta.expectedDisplayTime;
  const late = displayLate(t, meta);
  if (meta.presentationTime !== undefined) {
    measure.expectedAhead.push(t - meta.presentationTime);
    if (measure.expectedAhead.length > 600) measure.expectedAhead.shift();
    // The rendering update this callback runs in (its frame time) after the frame was set.
    measure.callbackAfter.push(now - meta.presentationTime);
    if (measure.callbackAfter.length > 600) measure.callbackAfter.shift();
  }
  measure.frames += 1;
  if (measure.lastPresented !== null && meta.presentedFrames > measure.lastPresented + 1) {
    measure.notPresented += meta.presentedFrames - measure.lastPresented - 1;
  }
  measure.lastPresented = meta.presentedFrames;
  if (measure.firstFrameAt === null) measure.firstFrameAt = t;
  if (measure.lastFrameAt !== null) {
    const gap = t - measure.lastFrameAt;
    measure.gaps.push(gap);
    if (measure.gaps.length > 120) measure.gaps.shift();
    const sorted = [...measure.gaps].sort((a, b) => a - b);
    const median = sorted[Math.floor(sorted.length / 2)];
    if (measure.gaps.length >= 5 && gap > Math.max(FREEZE_MIN_MS, 3 * median)) {
      measure.freezes += 1;
      // When: a caller maps it onto its own clock to put a freeze down to an event (a switch).
      if (measure.freezeTimes.length < KEPT) measure.freezeTimes.push({ at: t, ms: gap });
    }
  }
  measure.lastFrameAt = t;
  const level = flashLevel(video, canvas);
  const flash = level !== null && level > 125;
  if (flash && !measure.prevFlash && measure.flashes.length < KEPT) {
    // The sound of the mark starts `lead` after this frame's media time: so should its picture.
    // A negative-control mark's flash is dimmer (marks.CONTROL_FLASH, 160: 168 in full range;
    // a plain one 235: 255).
    const lead = leadMs(video, canvas);
    measure.leads.push(lead);
    if (measure.leads.length > 64) measure.leads.shift();
    // From the arrival of the frame's last packet to its expectedDisplayTime (jitter buffer,
    // decode, the compositor): the video receiver's share of the skew, per mark.
    const shown = meta.receiveTime ? t - meta.receiveTime : null;
    measure.flashes.push({ at: t + lead, control: level < 212, shownAfterReceiveMs: shown, lead,
                           level, late });
  }
  measure.prevFlash = flash;
}

async function measureAudio(stream) {
  if (measure.audioContext) return;
  const ctx = new AudioContext();
  measure.audioContext = ctx;
  const url = URL.createObjectURL(new Blob([ONSET_WORKLET], { type: 'application/javascript' }));
  await ctx.audioWorklet.addModule(url);
  const node = new AudioWorkletNode(ctx, 'onsets');
  node.port.onmessage = (e) => {
    const ts = ctx.getOutputTimestamp();
    const at = ts.performanceTime + (e.data.frame / e.data.rate - ts.contextTime) * 1000;
    if (measure.onsets.length < KEPT) measure.onsets.push(at);
  };
  ctx.createMediaStreamSource(stream).connect(node);
  measure.outputLatencyMs = (ctx.outputLatency || 0) * 1000;
  if (ctx.state !== 'running') await ctx.resume();
}

// The playout reference: the audio receiver's synchronization source says when the audio of each
// packet was delivered for playout (its timestamp, epoch ms) and that audio's level (RFC 6464).
// Polled every 4 ms. An onset is the first packet with a level after >= 150 ms of silence; it is
// refined over the packets that follow it (see bridge/sim/browser_viewer.py, "calibration"):
// * libwebrtc delivers a 20 ms packet in two 10 ms pulls and the entry keeps the latest, so a
//   poll may see a packet's second pull: the packet's start is the earliest of its own time and
//   each following packet's time minus their RTP distance (3 packets followed);
// * the onset may fall inside its packet: a packet's level is its RMS, so the fraction of the
//   packet the beep fills is (level / level of the next, full packet)^2, and the onset is that
//   far from the packet's end.
const REFINE_PACKETS = 3;
let pendingOnset = null; // { rtp, start, level, full, seen }

function settleOnset(p) {
  const duration = p.duration || 20;
  const fill = p.full > 0 ? Math.min(1, (p.level / p.full) ** 2) : 1;
  if (measure.ssrcOnsets.length < KEPT) measure.ssrcOnsets.push(p.start + (1 - fill) * duration);
}

function pollSsrc() {
  const pc = state.call?.subscriber?.pc;
  if (!pc) return;
  for (const r of pc.getReceivers()) {
    if (!r.track || r.track.kind !== 'audio') continue;
    for (const src of r.getSynchronizationSources()) {
      if (src.timestamp === measure.lastSsrcTs) continue;
      const samePacket = src.rtpTimestamp === measure.lastSsrcRtp;
      // Packets seen back to back (20 ms = 960 at 48 kHz) or not: a poll that stalled may have
      // missed the packet the onset is in, and would time it late. Such onsets are discarded.
      const step = measure.lastSsrcRtp === null ? null : (src.rtpTimestamp - measure.lastSsrcRtp) >>> 0;
      const contiguous = step !== null && step <= 960;
      measure.lastSsrcTs = src.timestamp;
      measure.lastSsrcRtp = src.rtpTimestamp;
      measure.ssrcPolls += 1;
      const at = src.timestamp - performance.timeOrigin;
      const level = src.audioLevel ?? 0;
      if (level > 0) measure.ssrcLevels += 1;
      if (pendingOnset !== null && !samePacket) {
        const p = pendingOnset;
        const ahead = ((src.rtpTimestamp - p.rtp) >>> 0) / 48; // ms of media after the onset packet
        if (!contiguous || ahead > REFINE_PACKETS * 20 + 1) {
          settleOnset(p);
          pendingOnset = null;
        } else {
          p.start = Math.min(p.start, at - ahead);
          if (p.seen === 0) { p.full = level; p.duration = ahead; }
          p.seen += 1;
          if (p.seen >= REFINE_PACKETS) { settleOnset(p); pendingOnset = null; }
        }
      }
      if (samePacket) continue;
      if (level < 0.01) {
        if (measure.ssrcQuietSince === null) measure.ssrcQuietSince = at;
      } else {
        if (measure.ssrcQuietSince !== null && at - measure.ssrcQuietSince >= 150) {
          if (contiguous) {
            if (pendingOnset !== null) settleOnset(pendingOnset);
            pendingOnset = { rtp: src.rtpTimestamp, start: at, level, full: 0, seen: 0,
                             duration: 20 };
          } else {
            measure.ssrcUncertain += 1;
          }
        }
        measure.ssrcQuietSince = null;
      }
    }
  }
}
setInterval(pollSsrc, 4);

const round1 = (v) => Math.round(v * 10) / 10;

function pairs(onsets, windowMs = PAIR_WINDOW_MS) {
  const out = [];
  for (const { at: f, control, lead, level, late } of measure.flashes) {
    let best = null;
    for (const a of onsets) {
      if (best === null || Math.abs(a - f) < Math.abs(best - f)) best = a;
    }
    if (best !== null && Math.abs(best - f) <= windowMs) {
      const pair = { at: f, skewMs: f - best, leadMs: round1(lead), level: Math.round(level),
                     lateMs: late === null ? null : round1(late) };
      if (control) pair.control = true;
      out.push(pair);
    }
  }
  return out;
}

function skews() {
  return pairs(measure.onsets);
}

// pairWindowMs: a flash and an onset further apart are not one mark (at most half the marks'
// period: 250 ms for the demo's 500 ms beeps).
function viewerReport({ pairWindowMs } = {}) {
  const span = (measure.lastFrameAt ?? 0) - (measure.firstFrameAt ?? 0);
  return {
    sessionId: measure.sessionId,
    frames: measure.frames,
    fps: measure.frames > 1 && span > 0 ? ((measure.frames - 1) * 1000) / span : null,
    freezes: measure.freezes,
    freezeTimes: measure.freezeTimes,
    notPresented: measure.notPresented,
    firstFrameAt: measure.firstFrameAt,
    flashes: measure.flashes.length,
    onsets: measure.onsets.length,
    // Read now, not when the context was made: a context not yet running reads 0 (the bench
    // had 0 and 30 ms in runs of one row). Reported only: the onsets are NetEq's delivery
    // times, before the output device (docs/sync.md, "Calibration").
    outputLatencyMs: measure.audioContext
      ? (measure.audioContext.outputLatency || 0) * 1000 : measure.outputLatencyMs,
    leadsMs: measure.leads.slice(-16).map(round1),
    shownAfterReceiveMs: measure.flashes.map((f) => f.shownAfterReceiveMs)
      .filter((v) => v !== null && v !== undefined).map(round1),
    expectedAheadMs: measure.expectedAhead.map(round1),
    callbackAfterMs: measure.callbackAfter.map(round1),
    skews: skews(),
    ssrc: { polls: measure.ssrcPolls, withLevel: measure.ssrcLevels,
            uncertain: measure.ssrcUncertain,
            onsets: measure.ssrcOnsets.length,
            skews: pairs(measure.ssrcOnsets, pairWindowMs ?? PAIR_WINDOW_MS) },
  };
}

function note(text) {
  state.log.push(`${(performance.now() / 1000).toFixed(3)} ${text}`);
  if (state.log.length > 500) state.log.shift();
}

function errorText(err) {
  if (!err) return String(err);
  return err.message || JSON.stringify(err);
}

async function connect({
  apiKey, token, userId, baseURL, locationHintUrl, logLevel, maxConnectUserRetries,
}) {
  // maxConnectUserRetries: the SDK's own option (default 5 attempts, with back-off), for a test
  // that expects a refusal and need not see it five times.
  const options = { baseURL, locationHintUrl, logLevel: logLevel || 'warn' };
  if (maxConnectUserRetries) options.maxConnectUserRetries = maxConnectUserRetries;
  const client = new StreamVideoClient({ apiKey, options });
  state.client = client;
  try {
    await client.connectUser({ id: userId, name: userId }, token);
    note(`connected as ${userId}`);
    return { ok: true };
  } catch (err) {
    state.errors.push(errorText(err));
    return { ok: false, error: errorText(err) };
  }
}

function bindParticipant(call, p) {
  const view = document.getElementById('participants');
  let entry = state.participants[p.sessionId];
  if (entry) return;
  const box = document.createElement('div');
  box.className = 'participant';
  const video = document.createElement('video');
  video.autoplay = true;
  video.playsInline = true;
  video.width = 640;
  video.height = 360;
  const audio = document.createElement('audio');
  audio.autoplay = true;
  const label = document.createElement('div');
  label.textContent = p.userId;
  box.append(video, audio, label);
  view.append(box);
  entry = { userId: p.userId, video, audio, frames: 0, firstFrameAt: null, width: 0, height: 0,
            unbind: [] };
  state.participants[p.sessionId] = entry;
  const canvas = document.createElement('canvas');
  canvas.width = 4;
  canvas.height = 4;
  const measured = measure.sessionId === null;  // the first remote participant is measured
  if (measured) measure.sessionId = p.sessionId;
  const onFrame = (now, meta) => {
    if (measured) onMeasuredFrame(video, canvas, meta, now);
    entry.frames += 1;
    entry.width = meta.width;
    entry.height = meta.height;
    if (entry.firstFrameAt === null) entry.firstFrameAt = now;
    video.requestVideoFrameCallback(onFrame);
  };
  video.requestVideoFrameCallback(onFrame);
  const unbindVideo = call.bindVideoElement(video, p.sessionId, 'videoTrack');
  const unbindAudio = call.bindAudioElement(audio, p.sessionId, 'audioTrack');
  if (unbindVideo) entry.unbind.push(unbindVideo);
  if (unbindAudio) entry.unbind.push(unbindAudio);
  if (measured) {
    const started = setInterval(() => {
      if (audio.srcObject) {
        clearInterval(started);
        measureAudio(audio.srcObject).catch((err) => state.errors.push(errorText(err)));
      }
    }, 50);
  }
  note(`bound ${p.userId} ${p.sessionId}`);
}

async function join({ callType, callId, publish, create }) {
  const call = state.client.call(callType, callId);
  state.call = call;
  // Camera and microphone follow the call type's settings unless publishing is asked for.
  if (!publish) {
    await call.camera.disable();
    await call.microphone.disable();
  }
  try {
    await call.join({ create: create !== false });
  } catch (err) {
    state.errors.push(errorText(err));
    return { ok: false, error: errorText(err) };
  }
  note(`joined ${callType}:${callId}`);
  call.state.remoteParticipants$.subscribe((ps) => ps.forEach((p) => bindParticipant(call, p)));
  if (publish) {
    await call.camera.enable();
    await call.microphone.enable();
    note('publishing camera and microphone');
  }
  return { ok: true, sessionId: call.state.localParticipant?.sessionId };
}

async function leave() {
  if (state.call) await state.call.leave();
  if (state.client) await state.client.disconnectUser();
  return true;
}

function snapshot() {
  const call = state.call;
  const participants = {};
  for (const [sid, e] of Object.entries(state.participants)) {
    participants[sid] = {
      userId: e.userId,
      frames: e.frames,
      firstFrameAt: e.firstFrameAt,
      width: e.width,
      height: e.height,
      videoPlaying: !e.video.paused && e.video.readyState >= 2,
      audioTracks: e.audio.srcObject ? e.audio.srcObject.getAudioTracks().length : 0,
    };
  }
  const local = call?.state.localParticipant;
  return {
    coordinatorConnected: Boolean(state.client?.streamClient?.wsConnection?.isHealthy),
    callingState: call ? call.state.callingState : null,
    joined: call ? call.state.callingState === CallingState.JOINED : false,
    localSessionId: local?.sessionId || null,
    publishedTracks: local?.publishedTracks || [],
    remote: (call?.state.remoteParticipants || []).map((p) => ({
      userId: p.userId, sessionId: p.sessionId, publishedTracks: p.publishedTracks,
    })),
    participants,
    errors: state.errors.slice(-20),
    log: state.log.slice(-50),
  };
}

async function receiverStats() {
  // What the subscriber peer connection receives, per kind: codec (from the wire), packets, frames.
  const pc = state.call?.subscriber?.pc;
  if (!pc) return null;
  const report = await pc.getStats();
  const codecs = {};
  const out = {};
  report.forEach((s) => { if (s.type === 'codec') codecs[s.id] = s.mimeType; });
  report.forEach((s) => {
    if (s.type !== 'inbound-rtp') return;
    out[s.kind] = {
      codec: codecs[s.codecId] || null,
      packetsReceived: s.packetsReceived,
      packetsLost: s.packetsLost,
      framesDecoded: s.framesDecoded,
      freezeCount: s.freezeCount,
      totalFreezesDuration: s.totalFreezesDuration,
      nackCount: s.nackCount,
      // The receiver's own delays (libwebrtc's jitter buffers: NetEq for audio, the frame buffer
      // for video): the evidence for where a viewer's A/V skew comes from.
      jitterBufferDelay: s.jitterBufferDelay,
      jitterBufferTargetDelay: s.jitterBufferTargetDelay,
      jitterBufferMinimumDelay: s.jitterBufferMinimumDelay,
      jitterBufferEmittedCount: s.jitterBufferEmittedCount,
      totalDecodeTime: s.totalDecodeTime,
      totalProcessingDelay: s.totalProcessingDelay,
      totalSamplesReceived: s.totalSamplesReceived,
      pliCount: s.pliCount,
      // Packets that came as RTX (the answers to this viewer's NACKs), per libwebrtc's count.
      retransmittedPacketsReceived: s.retransmittedPacketsReceived,
      framesReceived: s.framesReceived,
      framesDropped: s.framesDropped,
      keyFramesDecoded: s.keyFramesDecoded,
    };
  });
  return out;
}

function resetViewer() {
  pendingOnset = null;
  Object.assign(measure, { flashes: [], leads: [], onsets: [], ssrcOnsets: [], ssrcUncertain: 0,
                           frames: 0, expectedAhead: [], callbackAfter: [],
                           notPresented: 0, firstFrameAt: null,
                           lastFrameAt: null, gaps: [], freezes: 0, freezeTimes: [], t0: performance.now() });
}

window.streamPage = { connect, join, leave, snapshot, receiverStats, viewerReport, resetViewer,
                      state };

// A page opened by a person (avatar-bridge demo --watch): everything it needs is in the hash.
function showLive() {
  const r = viewerReport();
  const recent = r.skews.slice(-10).map((s) => s.skewMs);
  const median = recent.length ? [...recent].sort((a, b) => a - b)[Math.floor(recent.length / 2)] : null;
  document.getElementById('status').textContent =
    `fps ${r.fps ? r.fps.toFixed(1) : '-'} | freezes ${r.freezes} | A/V skew (last 10 marks, ` +
    `median, <0 = picture early) ${median === null ? '-' : median.toFixed(0) + ' ms'}`;
}

async function autojoin() {
  const params = new URLSearchParams(location.hash.slice(1));
  if (!params.get('apiKey')) {
    document.getElementById('status').textContent = 'ready';
    return;
  }
  document.getElementById('status').textContent = 'joining';
  const connected = await connect({
    apiKey: params.get('apiKey'), token: params.get('token'), userId: params.get('userId'),
    baseURL: params.get('baseURL'), locationHintUrl: params.get('locationHintUrl'),
  });
  if (!connected.ok) {
    document.getElementById('status').textContent = `connect failed: ${connected.error}`;
    return;
  }
  const joined = await join({ callType: params.get('callType') || 'default',
                              callId: params.get('callId'), publish: false });
  if (!joined.ok) {
    document.getElementById('status').textContent = `join failed: ${joined.error}`;
    return;
  }
  setInterval(showLive, 500);
}

autojoin().catch((err) => { document.getElementById('status').textContent = errorText(err); });
