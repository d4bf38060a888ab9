import { defineConfig } from "vitest/config";

export default defineConfig({
  build: {
    target: "es2022",
    // No inline scripts or styles: the server's CSP forbids them.
    modulePreload: { polyfill: false },
    assetsInlineLimit: 0,
    sourcemap: false,
  },
  server: {
    proxy: { "/v1": { target: "http://127.0.0.1:8480", ws: true }, "/health": "http://127.0.0.1:8480" },
  },
  test: {
    include: ["test/**/*.test.ts"],
    environment: "node",
  },
});
