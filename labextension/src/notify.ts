import { Notification } from '@jupyterlab/apputils';

import type { IRequest } from './models/apiTypes';
import { toastMessage } from './models/requestViews';
import { ParallalxModel } from './state/model';

/**
 * A toast for each new incoming request, with Accept / Reject actions; the toast goes away when
 * the request stops being pending (decided in the panel, elsewhere, or expired).
 */
export class RequestToasts {
  constructor(
    model: ParallalxModel,
    options: { onShow?: () => void; enabled?: boolean } = {}
  ) {
    this._model = model;
    this._onShow = options.onShow;
    this.enabled = options.enabled ?? true;
    model.newIncoming.connect(this._onNew, this);
    model.incomingClosed.connect(this._onClosed, this);
  }

  /** The `showToasts` setting. */
  enabled: boolean;

  dispose(): void {
    this._model.newIncoming.disconnect(this._onNew, this);
    this._model.incomingClosed.disconnect(this._onClosed, this);
  }

  private _onNew(_: ParallalxModel, requests: IRequest[]): void {
    if (!this.enabled) {
      return;
    }
    for (const request of requests) {
      const actions: Notification.IAction[] = [
        {
          label: 'Accept',
          caption: 'Accept in the default environment (only if the codes match)',
          displayType: 'accent',
          callback: () => void this._decide(request, true)
        },
        {
          label: 'Reject',
          displayType: 'warn',
          callback: () => void this._decide(request, false)
        }
      ];
      if (this._onShow) {
        const show = this._onShow;
        actions.push({ label: 'Details', displayType: 'link', callback: () => show() });
      }
      const id = Notification.info(toastMessage(request), {
        autoClose: false,
        actions,
        data: { parallalxRequest: request.id }
      });
      this._toasts.set(request.id, id);
    }
  }

  private _onClosed(_: ParallalxModel, ids: string[]): void {
    for (const requestId of ids) {
      const id = this._toasts.get(requestId);
      if (id !== undefined) {
        Notification.dismiss(id);
        this._toasts.delete(requestId);
      }
    }
  }

  private async _decide(request: IRequest, accept: boolean): Promise<void> {
    this._toasts.delete(request.id);
    try {
      if (accept) {
        await this._model.accept(request.id, null);
        Notification.success(`Parallalx: accepted “${request.peer.name}”.`, { autoClose: 4000 });
      } else {
        await this._model.reject(request.id);
        Notification.info(`Parallalx: rejected “${request.peer.name}”.`, { autoClose: 4000 });
      }
    } catch (error) {
      const message = error instanceof Error ? error.message : String(error);
      Notification.error(
        `Parallalx: could not ${accept ? 'accept' : 'reject'} “${request.peer.name}”: ${message}`,
        { autoClose: 8000 }
      );
    }
  }

  private readonly _model: ParallalxModel;
  private readonly _onShow?: () => void;
  private readonly _toasts = new Map<string, string>();
}
