// Builds the console (index.html) and the dashboard (dashboard.html) into web/static/dist.
// The server mounts that directory at /assets and serves the two pages at / and /dashboard,
// so every built URL starts with /assets/ and the bundles sit flat beside the pages.
import { resolve } from 'node:path';
import { defineConfig } from 'vite';

const root = import.meta.dirname;

export default defineConfig({
  root,
  base: '/assets/',
  build: {
    outDir: resolve(root, '../static/dist'),
    emptyOutDir: true,
    assetsDir: '',
    // Offline by construction: everything is bundled, nothing is fetched from a CDN.
    assetsInlineLimit: 0,
    rollupOptions: {
      // Code and styles both pages use go in one shared chunk, named for what it is.
      output: { chunkFileNames: 'shared-[hash].js', assetFileNames: 'shared-[hash][extname]' },
      input: {
        console: resolve(root, 'index.html'),
        dashboard: resolve(root, 'dashboard.html'),
      },
    },
  },
});
