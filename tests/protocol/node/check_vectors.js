// Checks the Node client extracted from docs/protocol.md against the golden vectors.
//   node check_vectors.js CLIENT.js VECTORS.json
// Encoding: every vector with a "frame" is rebuilt byte for byte (JSON frames with the client's
// encodeJson, HELLOs also with helloFrame). Decoding: every daemon-to-client vector is fed to the
// client's Decoder whole and byte by byte, and must yield the vector's "expect".
'use strict';
const assert = require('node:assert');
const fs = require('node:fs');
const path = require('node:path');

const [clientPath, vectorsPath] = process.argv.slice(2);
const abp = require(path.resolve(clientPath));
const { vectors } = JSON.parse(fs.readFileSync(vectorsPath, 'utf8'));

function normalise(m) {
  switch (m.kind) {
    case 'pong': return { kind: 'pong', hex: m.payload.toString('hex') };
    case 'ready': return { kind: 'ready', session_id: m.session_id, session_key: m.session_key,
      resumed: m.resumed, audio: { sample_rate: m.audio.sample_rate, channels: m.audio.channels },
      limits: m.limits };
    case 'error': return { kind: 'error', code: m.code, message: m.message, fatal: m.fatal };
    default: return m;
  }
}

function decodeAll(hex, byteByByte) {
  const decoder = new abp.Decoder();
  const data = Buffer.from(hex, 'hex');
  if (!byteByByte) return decoder.push(data).map(normalise);
  const out = [];
  for (let i = 0; i < data.length; i++) out.push(...decoder.push(data.subarray(i, i + 1)));
  return out.map(normalise);
}

let ok = 0;
const failures = [];
function check(name, fn) {
  try {
    fn();
    ok++;
  } catch (err) {
    failures.push(`${name}: ${err.message}`);
  }
}

for (const v of vectors) {
  if (v.frame) {
    const f = v.frame;
    check(`${v.name} encode`, () => {
      const got = f.json !== undefined
        ? (f.flags ? abp.encodeFrame(f.type, Buffer.from(JSON.stringify(f.json)), f.flags)
          : abp.encodeJson(f.type, f.json))
        : abp.encodeFrame(f.type, Buffer.from(f.payload_hex, 'hex'), f.flags);
      assert.strictEqual(got.toString('hex'), v.hex);
    });
    if (f.type === abp.T.HELLO && !('future_option' in f.json)) {
      check(`${v.name} helloFrame`, () => {
        const { v: version, call, audio, ...extra } = f.json;
        const got = abp.helloFrame(call, audio.sample_rate, audio.channels, extra);
        assert.strictEqual(got.toString('hex'), v.hex);
      });
    }
  }
  if (v.direction === 'daemon_to_client') {
    check(`${v.name} decode`, () => assert.deepStrictEqual(decodeAll(v.hex, false), v.expect));
    check(`${v.name} decode byte by byte`,
      () => assert.deepStrictEqual(decodeAll(v.hex, true), v.expect));
  }
}

for (const f of failures) console.log(`FAIL ${f}`);
console.log(`node vector checks: ${ok} ok, ${failures.length} bad`);
process.exitCode = failures.length ? 1 : 0;
