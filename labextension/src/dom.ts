/**
 * A tiny element builder. Children that are strings become text nodes, so peer-supplied text
 * (device names, purposes, URLs) can never turn into markup. Nothing in this extension parses
 * HTML strings (test/safety.test.ts checks the sources).
 */

export type Child = Node | string | number | null | undefined | false;

export interface IProps {
  class?: string;
  title?: string;
  /** Extra attributes (values are set with setAttribute, i.e. as text). */
  attrs?: { [name: string]: string };
  dataset?: { [name: string]: string };
  onclick?: (event: MouseEvent) => void;
}

export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  props: IProps | null = null,
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  if (props) {
    if (props.class) {
      node.className = props.class;
    }
    if (props.title) {
      node.title = props.title;
    }
    for (const [name, value] of Object.entries(props.attrs ?? {})) {
      node.setAttribute(name, value);
    }
    for (const [name, value] of Object.entries(props.dataset ?? {})) {
      node.dataset[name] = value;
    }
    const onclick = props.onclick;
    if (onclick) {
      node.addEventListener('click', event => onclick(event as MouseEvent));
    }
  }
  append(node, ...children);
  return node;
}

/** Append children, strings as text nodes. */
export function append(parent: Node, ...children: Child[]): void {
  for (const child of children) {
    if (child === null || child === undefined || child === false) {
      continue;
    }
    parent.appendChild(
      typeof child === 'string' || typeof child === 'number'
        ? document.createTextNode(String(child))
        : child
    );
  }
}

/** A `label: value` row; the value is text. */
export function row(label: string, value: Child, cls = ''): HTMLElement {
  return h(
    'div',
    { class: `jp-Parallalx-row ${cls}`.trim() },
    h('span', { class: 'jp-Parallalx-label' }, label),
    h('span', { class: 'jp-Parallalx-value' }, value)
  );
}

/** A button that runs `action` and is disabled while it runs. */
export function button(
  label: string,
  cls: string,
  action: (event: MouseEvent) => void | Promise<void>,
  title?: string
): HTMLButtonElement {
  const node = h('button', {
    class: `jp-Button jp-mod-styled jp-Parallalx-button ${cls}`.trim(),
    title,
    attrs: { type: 'button' }
  }, label);
  node.addEventListener('click', event => {
    void action(event as MouseEvent);
  });
  return node;
}
