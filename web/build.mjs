// Bundles the browser pages from the pinned npm packages (package-lock.json) into dist/.
import { build } from 'esbuild';

await build({
  entryPoints: {
    'stream-page': 'src/stream-page.js',
    'livekit-page': 'src/livekit-page.js',
  },
  outdir: 'dist',
  bundle: true,
  format: 'iife',
  platform: 'browser',
  target: ['chrome110'],
  sourcemap: true,
  logLevel: 'warning',
});
