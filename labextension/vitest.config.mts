import { defineConfig } from 'vitest/config';

// Unit tests of the DOM-free modules (models, API client, state); the widgets are covered by
// the browser tests in tests/ui/.
export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    environment: 'node'
  }
});
