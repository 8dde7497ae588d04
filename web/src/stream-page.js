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

function note(text) {
  state.log.push(`${(performance.now() / 1000).toFixed(3)} ${text}`);
  if (state.log.length > 500) state.log.shift();
}

function errorText(err) {
  if (!err) return String(err);
  return err.message || JSON.stringify(err);
}

async function connect({ apiKey, token, userId, baseURL, locationHintUrl, logLevel }) {
  const client = new StreamVideoClient({
    apiKey,
    options: { baseURL, locationHintUrl, logLevel: logLevel || 'warn' },
  });
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
  const onFrame = (now, meta) => {
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
      nackCount: s.nackCount,
    };
  });
  return out;
}

window.streamPage = { connect, join, leave, snapshot, receiverStats, state };
document.getElementById('status').textContent = 'ready';
