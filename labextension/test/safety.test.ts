import { readFileSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

import { toastMessage } from '../src/models/requestViews';
import { makeRequest } from './fixtures';

function sources(dir: string): string[] {
  return readdirSync(dir).flatMap(name => {
    const path = join(dir, name);
    return statSync(path).isDirectory() ? sources(path) : path.endsWith('.ts') || path.endsWith('.tsx') ? [path] : [];
  });
}

describe('peer text is never markup', () => {
  it('no source file writes HTML strings into the DOM', () => {
    const src = join(__dirname, '..', 'src');
    const offenders = sources(src).filter(path =>
      /innerHTML|outerHTML|insertAdjacentHTML|dangerouslySetInnerHTML|document\.write|createContextualFragment/.test(
        readFileSync(path, 'utf8')
      )
    );
    expect(offenders).toEqual([]);
  });

  it('the toast text keeps the name literally and the code first', () => {
    const message = toastMessage(
      makeRequest({ code: '042137', peer: { ...makeRequest().peer, name: '<img src=x onerror=alert(1)>' } })
    );
    expect(message.startsWith('Parallalx code 042 137:')).toBe(true);
    expect(message).toContain('“<img src=x onerror=alert(1)>”');
  });
});
