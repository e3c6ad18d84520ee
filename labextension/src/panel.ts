import { ServerConnection } from '@jupyterlab/services';
import { Message } from '@lumino/messaging';
import { Widget } from '@lumino/widgets';

import { getDevice } from './api';

/** Left-sidebar panel showing this computer's parallalx identity. */
export class ParallalxPanel extends Widget {
  constructor(settings: ServerConnection.ISettings) {
    super();
    this._settings = settings;
    this.id = 'parallalx-jupyter-panel';
    this.addClass('jp-ParallalxPanel');

    const header = document.createElement('h2');
    header.className = 'jp-ParallalxPanel-header';
    header.textContent = 'Parallalx';
    this._body = document.createElement('div');
    this.node.append(header, this._body);
  }

  /** Refresh interval while visible, in ms (0 disables polling). */
  get pollInterval(): number {
    return this._pollInterval;
  }
  set pollInterval(value: number) {
    this._pollInterval = Math.max(0, value);
    if (this.isVisible) {
      this._startPolling();
    }
  }

  /** Fetch the device and re-render. */
  async refresh(): Promise<void> {
    try {
      const device = await getDevice(this._settings);
      this._renderDevice(device.name, device.id_display);
    } catch (error) {
      this._renderError(error instanceof Error ? error.message : String(error));
    }
  }

  dispose(): void {
    this._stopPolling();
    super.dispose();
  }

  protected onAfterShow(msg: Message): void {
    super.onAfterShow(msg);
    void this.refresh();
    this._startPolling();
  }

  protected onAfterHide(msg: Message): void {
    super.onAfterHide(msg);
    this._stopPolling();
  }

  private _renderDevice(name: string, idDisplay: string): void {
    this._body.replaceChildren(
      this._row('This computer:', name),
      this._row('ID:', idDisplay)
    );
  }

  private _renderError(message: string): void {
    const line = document.createElement('div');
    line.className = 'jp-ParallalxPanel-error';
    line.textContent = `Could not reach the parallalx server: ${message}`;
    this._body.replaceChildren(line);
  }

  private _row(label: string, value: string): HTMLElement {
    const row = document.createElement('div');
    row.className = 'jp-ParallalxPanel-row';
    const labelNode = document.createElement('span');
    labelNode.className = 'jp-ParallalxPanel-label';
    labelNode.textContent = label;
    const valueNode = document.createElement('span');
    valueNode.textContent = value;
    row.append(labelNode, valueNode);
    return row;
  }

  private _startPolling(): void {
    this._stopPolling();
    if (this._pollInterval > 0) {
      this._timer = window.setInterval(() => void this.refresh(), this._pollInterval);
    }
  }

  private _stopPolling(): void {
    if (this._timer !== null) {
      window.clearInterval(this._timer);
      this._timer = null;
    }
  }

  private readonly _settings: ServerConnection.ISettings;
  private readonly _body: HTMLDivElement;
  private _pollInterval = 5000;
  private _timer: number | null = null;
}
