import { LabIcon } from '@jupyterlab/ui-components';
import { Widget } from '@lumino/widgets';

import { h } from './dom';
import { ParallalxModel } from './state/model';

/**
 * Status-bar item: the number of pending incoming requests. Register it with
 * `isActive: () => model.pendingCount > 0` and `activeStateChanged: model.changed` so that the
 * status bar hides it while nothing is waiting.
 */
export class PendingStatus extends Widget {
  constructor(model: ParallalxModel, icon: LabIcon, onClick: () => void) {
    super();
    this._model = model;
    this.id = 'parallalx-jupyter-status';
    this.addClass('jp-Parallalx-status');
    this.node.setAttribute('role', 'button');
    this.node.tabIndex = 0;
    const iconNode = h('span', { class: 'jp-Parallalx-statusIcon' });
    icon.element({ container: iconNode, height: '16px', width: '16px' });
    this.node.append(iconNode, this._count);
    this.node.addEventListener('click', onClick);
    this.node.addEventListener('keydown', event => {
      if (event.key === 'Enter' || event.key === ' ') {
        onClick();
      }
    });
    model.changed.connect(this._update, this);
    this._update();
  }

  dispose(): void {
    this._model.changed.disconnect(this._update, this);
    super.dispose();
  }

  private _update(): void {
    const n = this._model.pendingCount;
    this._count.textContent = String(n);
    const text = `${n} Parallalx connection request${n === 1 ? '' : 's'} waiting`;
    this.node.title = text;
    this.node.setAttribute('aria-label', text);
    this.node.dataset.count = String(n);
  }

  private readonly _model: ParallalxModel;
  private readonly _count = h('span', { class: 'jp-Parallalx-statusCount' });
}
