import { Notification } from '@jupyterlab/apputils';

import type { IRequest } from './models/apiTypes';
import { decidedMessage, pendingMessage } from './models/requestViews';
import { ParallalxModel } from './state/model';

/**
 * One notification for the incoming requests, however many there are: while one waits it
 * shows that request (its code, Accept / Reject); while several wait it says how many, with a
 * button to the panel. It is updated in place as the count changes and dismissed at zero, and it
 * also comes up for requests that were already waiting when Lab opened.
 *
 * The sender gets a notification too, when the other device accepts or rejects their request
 * (or it expires).
 */
export class RequestToasts {
  constructor(
    model: ParallalxModel,
    options: { onShow?: () => void; enabled?: boolean } = {}
  ) {
    this._model = model;
    this._onShow = options.onShow;
    this._enabled = options.enabled ?? true;
    model.changed.connect(this._sync, this);
    model.outgoingDecided.connect(this._onDecided, this);
    this._sync();
  }

  /** The `showToasts` setting. */
  get enabled(): boolean {
    return this._enabled;
  }
  set enabled(value: boolean) {
    this._enabled = value;
    this._sync();
  }

  /** The notification's ID while one is shown (for tests). */
  get notificationId(): string | null {
    return this._id;
  }

  dispose(): void {
    this._model.changed.disconnect(this._sync, this);
    this._model.outgoingDecided.disconnect(this._onDecided, this);
    this._dismiss();
  }

  private _sync(): void {
    if (!this._model.loaded) {
      return;
    }
    const pending = this._model.pendingIncoming;
    const message = this._enabled ? pendingMessage(pending) : null;
    if (message === null) {
      this._dismiss();
      return;
    }
    // Only a change of what it says updates it (an update brings a closed toast back).
    const key = pending.length === 1 ? `one:${pending[0].id}:${message}` : `many:${pending.length}`;
    if (key === this._key && this._id !== null) {
      return;
    }
    this._key = key;
    const actions = pending.length === 1 ? this._oneActions(pending[0]) : this._manyActions();
    const data = { parallalxPending: pending.length };
    if (this._id !== null && Notification.update({ id: this._id, message, type: 'info', autoClose: false, actions, data })) {
      return;
    }
    this._id = Notification.info(message, { autoClose: false, actions, data });
  }

  private _oneActions(request: IRequest): Notification.IAction[] {
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
    return actions;
  }

  private _manyActions(): Notification.IAction[] {
    const show = this._onShow;
    return show
      ? [{ label: 'Show requests', caption: 'Open the Parallalx panel', displayType: 'accent', callback: () => show() }]
      : [];
  }

  private _dismiss(): void {
    if (this._id !== null) {
      Notification.dismiss(this._id);
      this._id = null;
      this._key = '';
    }
  }

  private _onDecided(_: ParallalxModel, requests: IRequest[]): void {
    if (!this._enabled) {
      return;
    }
    for (const request of requests) {
      const message = decidedMessage(request);
      const options = { autoClose: 10000, data: { parallalxDecided: request.id } };
      if (request.state === 'accepted') {
        Notification.success(message, options);
      } else if (request.state === 'rejected') {
        Notification.warning(message, options);
      } else {
        Notification.info(message, options);
      }
    }
  }

  private async _decide(request: IRequest, accept: boolean): Promise<void> {
    // A click on an action closes the toast: show it again for what is still waiting.
    this._key = '';
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
  private _enabled: boolean;
  private _id: string | null = null;
  private _key = '';
}
