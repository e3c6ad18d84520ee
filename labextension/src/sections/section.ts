import { Widget } from '@lumino/widgets';

import { h } from '../dom';
import { ParallalxModel } from '../state/model';

/**
 * Base of the sidebar sections: one widget per section, re-rendered from the model.
 * Subclasses call `this.render()` at the end of their constructor.
 */
export abstract class Section extends Widget {
  constructor(model: ParallalxModel, options: { id: string; label: string }) {
    super();
    this.model = model;
    this.id = options.id;
    this.title.label = options.label;
    this.addClass('jp-Parallalx-section');
    this.node.setAttribute('aria-label', options.label);
    model.changed.connect(this._onChanged, this);
  }

  readonly model: ParallalxModel;

  dispose(): void {
    if (this.isDisposed) {
      return;
    }
    this.model.changed.disconnect(this._onChanged, this);
    super.dispose();
  }

  /** Bring the DOM in line with the model. */
  abstract render(): void;

  /** Common states: not loaded yet, server unreachable. Returns true when it rendered one. */
  protected renderStatus(): boolean {
    if (!this.model.loaded) {
      this.node.replaceChildren(h('div', { class: 'jp-Parallalx-empty' }, 'Loading…'));
      return true;
    }
    if (this.model.error !== null && this.model.device === null) {
      this.node.replaceChildren(
        h(
          'div',
          { class: 'jp-Parallalx-error' },
          `Could not reach the parallalx server: ${this.model.error}`
        )
      );
      return true;
    }
    return false;
  }

  private _onChanged(): void {
    this.render();
  }
}
