// A page that drives LiveKit's browser SDK (livekit-client, unmodified) for tests: it joins rooms,
// subscribes, decodes and shows the remote video, publishes the (fake) camera and microphone, and
// reports what the SDK and the browser's own decoder saw. Everything is reached through
// `window.lkPage`; one page may hold several rooms (each a participant), by a name the caller picks.
import {
  ConnectionError,
  ConnectionErrorReason,
  Room,
  RoomEvent,
  Track,
  VideoQuality,
} from 'livekit-client';

const rooms = {}; // name -> { room, events, videos: { trackSid: <video> }, box }
const t0 = performance.now();

function describeError(e) {
  const out = { name: e?.name ?? typeof e, message: String(e?.message ?? e) };
  if (e instanceof ConnectionError) {
    out.connectionError = true;
    out.reason = e.reason;
    out.reasonName = ConnectionErrorReason[e.reason];
    out.status = e.status ?? null;
  }
  return out;
}

function record(entry, event, detail = {}) {
  entry.events.push({ event, at: Math.round(performance.now() - t0), ...detail });
  if (entry.events.length > 2000) entry.events.shift();
}

function attachVideo(entry, track, publication) {
  // The element is sized and in the page before the SDK sees it: adaptive stream takes its
  // first visibility from the layout at attach time. An element attached while still detached
  // reads as hidden (the SDK asks the server to pause the video) until an IntersectionObserver
  // callback says otherwise, which a busy renderer may deliver late.
  const el = document.createElement('video');
  el.muted = true;
  el.playsInline = true;
  el.autoplay = true;
  // Adaptive stream sizes the requested layer from the element: its box is the test's ask.
  el.style.width = `${entry.box.width}px`;
  el.style.height = `${entry.box.height}px`;
  el.dataset.room = entry.name;
  document.getElementById('videos').appendChild(el);
  track.attach(el);
  entry.videos[publication.trackSid] = el;
}

async function inboundVideo(receiver) {
  // The browser's own decoder: the inbound-rtp entry and the codec its codecId names.
  const report = await receiver.getStats();
  let inbound = null;
  report.forEach((s) => {
    if (s.type === 'inbound-rtp' && s.kind === 'video') inbound = s;
  });
  if (!inbound) return null;
  const codec = inbound.codecId ? report.get(inbound.codecId) : null;
  return {
    codec: codec ? codec.mimeType : null,
    codecParams: codec ? codec.sdpFmtpLine ?? '' : '',
    frameWidth: inbound.frameWidth ?? 0,
    frameHeight: inbound.frameHeight ?? 0,
    framesDecoded: inbound.framesDecoded ?? 0,
    keyFramesDecoded: inbound.keyFramesDecoded ?? 0,
    packetsReceived: inbound.packetsReceived ?? 0,
    packetsLost: inbound.packetsLost ?? 0,
    ssrc: inbound.ssrc,
  };
}

window.lkPage = {
  /** Join `name`: { url, token, singlePeerConnection, adaptiveStream, box: {width, height} }.
   * Resolves { ok, sid, identity } or { ok: false, error } (never throws, so the error's fields
   * reach the caller). */
  async connect(name, opts) {
    const room = new Room({
      adaptiveStream: !!opts.adaptiveStream,
      dynacast: false,
      singlePeerConnection: opts.singlePeerConnection !== false,
    });
    const entry = {
      name,
      room,
      events: [],
      videos: {},
      box: opts.box ?? { width: 640, height: 360 },
    };
    rooms[name] = entry;
    for (const ev of [
      RoomEvent.Connected,
      RoomEvent.Reconnecting,
      RoomEvent.SignalReconnecting,
      RoomEvent.Reconnected,
      RoomEvent.ConnectionStateChanged,
      RoomEvent.ParticipantConnected,
      RoomEvent.ParticipantDisconnected,
      RoomEvent.LocalTrackPublished,
    ]) {
      room.on(ev, (arg) => record(entry, ev, typeof arg === 'string' ? { state: arg } : {}));
    }
    room.on(RoomEvent.Disconnected, (reason) => record(entry, RoomEvent.Disconnected, { reason }));
    room.on(RoomEvent.TrackSubscribed, (track, publication, participant) => {
      record(entry, RoomEvent.TrackSubscribed, {
        kind: track.kind,
        trackSid: publication.trackSid,
        identity: participant.identity,
      });
      if (track.kind === Track.Kind.Video) attachVideo(entry, track, publication);
    });
    room.on(RoomEvent.TrackSubscriptionFailed, (trackSid, participant, reason) =>
      record(entry, RoomEvent.TrackSubscriptionFailed, { trackSid, reason: String(reason) }),
    );
    try {
      await room.connect(opts.url, opts.token, { autoSubscribe: true, maxRetries: 1 });
    } catch (e) {
      const error = describeError(e);
      record(entry, 'connectFailed', error);
      return { ok: false, error };
    }
    return { ok: true, sid: await room.localParticipant.sid, identity: room.localParticipant.identity };
  },

  events(name) {
    return rooms[name].events;
  },

  state(name) {
    return rooms[name].room.state;
  },

  /** Every RTP stream on the SDK's peer connections (a failure's evidence: did packets arrive,
   * on which SSRC and payload type, and did the transport connect). Internal SDK fields, read
   * for diagnostics only. */
  async peerStats(name) {
    const manager = rooms[name].room.engine?.pcManager;
    const out = {};
    for (const [label, transport] of [
      ['publisher', manager?.publisher],
      ['subscriber', manager?.subscriber],
    ]) {
      const report = transport ? await transport.getStats() : undefined;
      if (!report) continue;
      const rows = [];
      report.forEach((s) => {
        if (s.type === 'inbound-rtp' || s.type === 'outbound-rtp') {
          const codec = s.codecId ? report.get(s.codecId) : null;
          rows.push({
            type: s.type,
            kind: s.kind,
            ssrc: s.ssrc,
            mid: s.mid,
            codec: codec ? `${codec.payloadType} ${codec.mimeType}` : null,
            packets: s.packetsReceived ?? s.packetsSent ?? 0,
            framesDecoded: s.framesDecoded,
            size: [s.frameWidth, s.frameHeight],
            // The receiver's own repair: what it lost, asked again, and keyframes it asked for.
            lost: s.packetsLost,
            nacks: s.nackCount,
            plis: s.pliCount,
            firs: s.firCount,
            framesReceived: s.framesReceived,
            framesDropped: s.framesDropped,
            keyFramesDecoded: s.keyFramesDecoded,
          });
        } else if (s.type === 'transport') {
          rows.push({ type: s.type, dtlsState: s.dtlsState, bytesReceived: s.bytesReceived });
        }
      });
      out[label] = rows;
    }
    return out;
  },

  /** What adaptive stream bases its ask on: the page's visibility and each element's box. */
  layout(name) {
    return {
      visibilityState: document.visibilityState,
      viewport: [window.innerWidth, window.innerHeight],
      videos: Object.entries(rooms[name].videos).map(([sid, el]) => {
        const r = el.getBoundingClientRect();
        return { trackSid: sid, box: [r.left, r.top, r.width, r.height] };
      }),
    };
  },

  /** Every subscribed remote video track: what its TrackInfo announced and what was decoded. */
  async videoStats(name) {
    const out = [];
    for (const participant of rooms[name].room.remoteParticipants.values()) {
      for (const pub of participant.videoTrackPublications.values()) {
        if (!pub.track) continue;
        const info = pub.trackInfo;
        out.push({
          identity: participant.identity,
          trackSid: pub.trackSid,
          announced: {
            mimeType: pub.mimeType ?? info?.mimeType ?? '',
            width: info?.width ?? 0,
            height: info?.height ?? 0,
            layers: (info?.layers ?? []).map((l) => ({
              quality: VideoQuality[l.quality],
              width: l.width,
              height: l.height,
            })),
          },
          decoded: await inboundVideo(pub.track.receiver),
        });
      }
    }
    return out;
  },

  /** Ask for a simulcast layer of every subscribed video: 'LOW', 'MEDIUM' or 'HIGH'. */
  setVideoQuality(name, quality) {
    for (const participant of rooms[name].room.remoteParticipants.values()) {
      for (const pub of participant.videoTrackPublications.values()) {
        pub.setVideoQuality(VideoQuality[quality]);
      }
    }
  },

  /** Publish the camera and microphone with the SDK's defaults (simulcast video). */
  async publish(name) {
    const p = rooms[name].room.localParticipant;
    try {
      await p.enableCameraAndMicrophone();
    } catch (e) {
      return { ok: false, error: describeError(e) };
    }
    return { ok: true };
  },

  /** The local video's outbound-rtp entries (one per simulcast layer) and their codec. */
  async publishedVideo(name) {
    const out = [];
    const p = rooms[name].room.localParticipant;
    for (const pub of p.videoTrackPublications.values()) {
      if (!pub.track?.sender) continue;
      const report = await pub.track.sender.getStats();
      report.forEach((s) => {
        if (s.type !== 'outbound-rtp') return;
        const codec = s.codecId ? report.get(s.codecId) : null;
        out.push({
          rid: s.rid ?? '',
          codec: codec ? codec.mimeType : null,
          frameWidth: s.frameWidth ?? 0,
          frameHeight: s.frameHeight ?? 0,
          packetsSent: s.packetsSent ?? 0,
          framesEncoded: s.framesEncoded ?? 0,
        });
      });
    }
    return out;
  },

  async disconnect(name) {
    const entry = rooms[name];
    if (entry) await entry.room.disconnect();
  },
};

document.getElementById('status').textContent = 'ready';
