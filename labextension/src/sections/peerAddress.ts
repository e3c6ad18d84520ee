import { Clipboard } from '@jupyterlab/apputils';
import { Widget } from '@lumino/widgets';

import { button, h } from '../dom';
import { ParallalxModel } from '../state/model';

/**
 * Under the panel's title, always in sight: this device's peer address (what the other user
 * types into their Invite dialog) and a Copy button. Other addresses of the device are in its
 * title and in "This device".
 */
export class PeerAddress extends Widget {
  constructor(model: ParallalxModel) {
    super();
    this._model = model;
    this.addClass('jp-Parallalx-peerAddress');
    this._url = h('code', { class: 'jp-Parallalx-peerAddressUrl' });
    this._copy = button('Copy', 'jp-Parallalx-copy jp-Parallalx-copyPeerUrl', () => {
      const url = this._model.device?.peer_urls[0];
      if (url) {
        Clipboard.copyToSystem(url);
        this._copy.textContent = 'Copied';
        window.setTimeout(() => {
          this._copy.textContent = 'Copy';
        }, 1500);
      }
    }, 'Copy this device\u2019s peer address: the other user needs it to invite this device');
    this.node.append(h('span', { class: 'jp-Parallalx-label' }, 'Your address'), this._url, this._copy);
    model.changed.connect(this._render, this);
    this._render();
  }

  dispose(): void {
    if (this.isDisposed) {
      return;
    }
    this._model.changed.disconnect(this._render, this);
    super.dispose();
  }

  private _render(): void {
    const urls = this._model.device?.peer_urls ?? [];
    const text = urls[0] ?? (this._model.device ? 'peer listener not running' : '…');
    if (this._url.textContent !== text) {
      this._url.textContent = text;
    }
    this._url.title = urls.join('\n');
    this._copy.hidden = urls.length === 0;
  }

  private readonly _model: ParallalxModel;
  private readonly _url: HTMLElement;
  private readonly _copy: HTMLButtonElement;
}
