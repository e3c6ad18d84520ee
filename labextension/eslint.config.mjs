// ESLint flat config: typescript-eslint's recommended rules on the extension's sources and its
// unit tests (formatting is not linted).
import eslint from '@eslint/js';
import { defineConfig } from 'eslint/config';
import tseslint from 'typescript-eslint';

export default defineConfig(
  { ignores: ['lib/', 'node_modules/'] },
  eslint.configs.recommended,
  tseslint.configs.recommended,
  {
    files: ['**/*.ts'],
    rules: {
      // Lumino/JupyterLab style: namespaces merged with classes (e.g. ParallalxPanel.IOptions).
      '@typescript-eslint/no-namespace': 'off',
      '@typescript-eslint/no-unused-vars': [
        'error',
        { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }
      ],
      eqeqeq: ['error', 'smart'],
      'prefer-const': 'error'
    }
  }
);
