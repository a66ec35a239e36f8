import { defineConfig } from 'vitest/config';
import react from '@vitejs/plugin-react';

// `base: './'`: asset paths are relative, so any broker serves the page from `/`
// (and the embedded copy in the drmq binary needs no rewriting).
export default defineConfig({
  base: './',
  plugins: [react()],
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    sourcemap: false,
  },
  server: {
    // `npm run dev` against the mock: the page's own origin is Vite, so
    // /api/cluster is proxied to the mock's first broker; the other brokers'
    // sockets go straight to their advertised addresses.
    // The page treats its origin as the broker that served it, so /ws goes
    // there too.
    proxy: {
      '/api': `http://127.0.0.1:${process.env.MOCK_BASE_PORT ?? 7101}`,
      '/ws': { target: `ws://127.0.0.1:${process.env.MOCK_BASE_PORT ?? 7101}`, ws: true },
    },
  },
  test: {
    include: ['src/**/*.test.ts'],
    environment: 'node',
  },
});
