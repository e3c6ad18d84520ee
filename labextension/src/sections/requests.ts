import { Dialog, Notification, showDialog } from '@jupyterlab/apputils';
import { Widget } from '@lumino/widgets';
import { Message } from '@lumino/messaging';

import { button, h, row } from '../dom';
import type { IKernelChoice, IRequest } from '../models/apiTypes';
import {
  describeAsks,
  describeIncomplete,
  describeKind,
  formatCode,
  formatCountdown
} from '../models/requestViews';
import { ParallalxModel } from '../state/model';
import { KeyedCards, setChildren } from './keyedCards';
import { Section } from './section';

/**
 * "Requests": each pending incoming request (who, device ID, what is asked, expiry countdown,
 * verification code, kernel selector, Accept / Reject) and the outgoing requests waiting for the
 * other device, with their code. Requests opened but never completed are not shown one by one;
 * a line says how many there were (the device's `incomplete_requests`), so that a flood holding
 * this device's request caps is visible instead of silent.
 *
 * Incoming requests are compact one-line rows (name, kind, code, countdown, Accept / Reject) that
 * expand on click to the details (device ID, what is asked, the environment to run in), so the
 * section stays usable with many requests; "Reject all" (confirmed first) clears a flood.
 *
 * Incoming cards are keyed by request ID and updated in place, so a refresh never resets the
 * kernel a user is choosing, nor a row's expansion.
 */
export class RequestsSection extends Section {
  constructor(model: ParallalxModel) {
    super(model, { id: 'parallalx-section-requests', label: 'Requests' });
    this.addClass('jp-Parallalx-requestsSection');
    this.render();
  }

  render(): void {
    if (this.renderStatus()) {
      this._built = false;
      return;
    }
    if (!this._built) {
      this.node.replaceChildren(
        h('div', { class: 'jp-Parallalx-subheaderRow' }, this._incomingHeader, this._rejectAll),
        this._incomingList,
        this._incomplete,
        this._outgoingHeader,
        this._outgoingList
      );
      this._built = true;
    }
    this._renderIncoming();
    this._renderIncomplete();
    this._renderOutgoing();
    this._tick();
    this._updateTicker();
  }

  dispose(): void {
    this._stopTicker();
    super.dispose();
  }

  protected onAfterAttach(msg: Message): void {
    super.onAfterAttach(msg);
    this._updateTicker();
  }

  protected onBeforeDetach(msg: Message): void {
    this._stopTicker();
    super.onBeforeDetach(msg);
  }

  private _renderIncoming(): void {
    const pending = this.model.pendingIncoming;
    const title = pending.length > 0 ? `Incoming (${pending.length})` : 'Incoming';
    if (this._incomingHeader.textContent !== title) {
      this._incomingHeader.textContent = title;
    }
    this._rejectAll.hidden = pending.length < 2;
    const nodes = this._cards.update(pending);
    setChildren(
      this._incomingList,
      nodes.length > 0
        ? nodes
        : [h('div', { class: 'jp-Parallalx-empty' }, 'No requests waiting for you.')]
    );
  }

  private _renderIncomplete(): void {
    const text = describeIncomplete(this.model.device?.incomplete_requests);
    this._incomplete.hidden = text === null;
    if (this._incomplete.textContent !== (text ?? '')) {
      this._incomplete.textContent = text ?? '';
    }
  }

  private _renderOutgoing(): void {
    const outgoing = this.model.pendingOutgoing;
    this._outgoingHeader.hidden = outgoing.length === 0;
    this._outgoingList.replaceChildren(...outgoing.map(r => outgoingCard(r)));
  }

  /** Reject every pending incoming request, after a confirmation (Cancel is the default). */
  private async _rejectAllPending(): Promise<void> {
    const pending = this.model.pendingIncoming;
    if (pending.length === 0) {
      return;
    }
    const body = new Widget({
      node: h('div', { class: 'jp-Parallalx-dialogBody' },
        h('p', null, `Reject all ${pending.length} connection requests waiting for you?`),
        h('p', null, 'The other devices are told no; they can send a new request.'))
    });
    const result = await showDialog({
      title: 'Reject all requests',
      body,
      buttons: [Dialog.cancelButton(), Dialog.warnButton({ label: `Reject ${pending.length}` })],
      defaultButton: 0
    });
    if (!result.button.accept) {
      return;
    }
    this._rejectAll.disabled = true;
    try {
      const { failed } = await this.model.rejectMany(pending.map(r => r.id));
      if (failed.length > 0) {
        Notification.warning(
          `Parallalx: ${failed.length} request${failed.length === 1 ? '' : 's'} could not be rejected: ${failed[0]}`,
          { autoClose: 8000 }
        );
      }
    } finally {
      this._rejectAll.disabled = false;
    }
  }

  /** Update every countdown; refresh once when one runs out (the server marks it expired). */
  private _tick(): void {
    const now = this.model.serverNow();
    let expired = false;
    for (const node of Array.from(this.node.querySelectorAll<HTMLElement>('[data-expires-at]'))) {
      const left = Number(node.dataset.expiresAt) - now;
      node.textContent = formatCountdown(left);
      node.classList.toggle('jp-mod-soon', left > 0 && left < 60);
      expired = expired || left <= 0;
    }
    if (expired && !this._expiryRefreshed) {
      this._expiryRefreshed = true;
      void this.model.refresh();
    } else if (!expired) {
      this._expiryRefreshed = false;
    }
  }

  private _updateTicker(): void {
    const needed =
      this.isAttached &&
      (this.model.pendingIncoming.length > 0 || this.model.pendingOutgoing.length > 0);
    if (needed && this._ticker === null) {
      this._ticker = window.setInterval(() => this._tick(), 1000);
    } else if (!needed) {
      this._stopTicker();
    }
  }

  private _stopTicker(): void {
    if (this._ticker !== null) {
      window.clearInterval(this._ticker);
      this._ticker = null;
    }
  }

  private readonly _cards = new KeyedCards<IRequest, HTMLElement, IncomingCard>({
    key: request => request.id,
    create: request => new IncomingCard(this.model, request),
    update: (card, request) => card.update(request, this.model.kernelChoices)
  });
  private _incomingHeader = h('h3', { class: 'jp-Parallalx-subheader' }, 'Incoming');
  private _rejectAll = button('Reject all', 'jp-mod-warn jp-Parallalx-rejectAll', () => this._rejectAllPending(), 'Reject every request waiting for you (asks first)');
  private _incomingList = h('div', { class: 'jp-Parallalx-incoming' });
  private _incomplete = h('div', {
    class: 'jp-Parallalx-hint jp-Parallalx-incomplete',
    attrs: { role: 'status' }
  });
  private _outgoingHeader = h('h3', { class: 'jp-Parallalx-subheader' }, 'Sent, waiting for the other device');
  private _outgoingList = h('div', { class: 'jp-Parallalx-outgoing' });
  private _built = false;
  private _ticker: number | null = null;
  private _expiryRefreshed = false;
}

/** Lines that say who asks and what; shared by incoming and outgoing cards. */
function requestDetails(request: IRequest): HTMLElement[] {
  const asks = describeAsks(request.asks);
  const out = [row('Asks', [describeKind(request), ...asks].join(', '), 'jp-Parallalx-asks')];
  if (request.asks?.purpose) {
    out.push(row('Purpose', request.asks.purpose, 'jp-Parallalx-purpose'));
  }
  out.push(
    row(
      'Device ID',
      h('code', { class: 'jp-Parallalx-peerId', title: request.peer.id }, request.peer.id_display),
      'jp-mod-block'
    )
  );
  return out;
}

function codeBlock(request: IRequest, hint: string): HTMLElement {
  return h(
    'div',
    { class: 'jp-Parallalx-codeBlock', title: hint },
    h('span', { class: 'jp-Parallalx-label' }, 'Verification code'),
    h('span', { class: 'jp-Parallalx-code', dataset: { code: request.code ?? '' } }, formatCode(request.code)),
    h('span', { class: 'jp-Parallalx-hint' }, hint)
  );
}

function countdown(request: IRequest): HTMLElement {
  return h(
    'span',
    { class: 'jp-Parallalx-countdown', dataset: { expiresAt: String(request.expires_at) } },
    ''
  );
}

function outgoingCard(request: IRequest): HTMLElement {
  return h(
    'div',
    { class: 'jp-Parallalx-card jp-Parallalx-outgoingRequest', dataset: { requestId: request.id } },
    h('div', { class: 'jp-Parallalx-cardTitle' }, h('strong', { class: 'jp-Parallalx-peerName' }, request.peer.name)),
    codeBlock(request, 'Tell the other device\u2019s user this code; they accept only if theirs matches.'),
    row('Expires in', countdown(request)),
    ...requestDetails(request)
  );
}

/**
 * One pending incoming request, updated in place: a one-line row (name, kind, code, countdown,
 * Accept / Reject) and, once clicked, its details and the environment to run in.
 */
class IncomingCard {
  constructor(model: ParallalxModel, request: IRequest) {
    this._model = model;
    this._id = request.id;
    this.node = h('div', {
      class: 'jp-Parallalx-card jp-Parallalx-incomingRequest jp-mod-compact',
      dataset: { requestId: request.id }
    });
    this._toggle = h('button', {
      class: 'jp-Parallalx-expand',
      title: 'Show the details',
      attrs: { type: 'button', 'aria-expanded': 'false', 'aria-label': 'Details' }
    });
    this._name = h('strong', { class: 'jp-Parallalx-peerName' });
    this._kind = h('span', { class: 'jp-Parallalx-badge' });
    this._paired = h('span', {
      class: 'jp-Parallalx-badge jp-Parallalx-alreadyPaired',
      title: 'This device is paired already: accepting renews that pairing, its worker keeps running'
    }, 'already paired');
    this._paired.hidden = true;
    this._code = h('span', { class: 'jp-Parallalx-code', title: 'Accept only if the other device shows the same code.' });
    this._countdown = h('span', { class: 'jp-Parallalx-countdown' });
    this._details = h('div', { class: 'jp-Parallalx-details' });
    this._kernel = h('select', {
      class: 'jp-Parallalx-kernel',
      attrs: { 'aria-label': 'Environment for the worker' }
    });
    this._error = h('div', { class: 'jp-Parallalx-error' });
    this._error.hidden = true;
    this._accept = button('Accept', 'jp-mod-accept jp-Parallalx-accept', () => this._decide(true), 'Accept: only if the code matches the other screen');
    this._reject = button('Reject', 'jp-mod-warn jp-Parallalx-reject', () => this._decide(false));
    const line = h('div', { class: 'jp-Parallalx-requestLine' },
      this._toggle,
      h('span', { class: 'jp-Parallalx-requestWho' }, this._name, this._kind, this._paired),
      this._code,
      this._countdown,
      h('span', { class: 'jp-Parallalx-actions jp-Parallalx-requestActions' }, this._accept, this._reject)
    );
    // a click anywhere on the row but its buttons opens or closes the details
    line.addEventListener('click', event => {
      const target = event.target as HTMLElement | null;
      if (target?.closest('button') && target.closest('button') !== this._toggle) {
        return;
      }
      this._setExpanded(!this._expanded);
    });
    this._more = h('div', { class: 'jp-Parallalx-requestMore' },
      this._details,
      row('Run in', this._kernel, 'jp-Parallalx-kernelRow'));
    this._more.hidden = true;
    this.node.append(line, this._more, this._error);
  }

  readonly node: HTMLElement;

  update(request: IRequest, choices: readonly IKernelChoice[]): void {
    const key = JSON.stringify([request.peer, request.asks, request.code, request.expires_at, request.kind, request.already_paired]);
    if (key !== this._key) {
      this._key = key;
      this._name.textContent = request.peer.name;
      this._name.title = request.peer.name;
      this._kind.textContent = request.kind;
      this._paired.hidden = request.already_paired !== true;
      this._code.textContent = formatCode(request.code);
      this._code.dataset.code = request.code ?? '';
      this._countdown.dataset.expiresAt = String(request.expires_at);
      this._details.replaceChildren(
        h('div', { class: 'jp-Parallalx-hint' }, 'Accept only if the other device shows the same code.'),
        ...requestDetails(request)
      );
    }
    const choicesKey = JSON.stringify(choices);
    if (choicesKey !== this._choicesKey) {
      this._choicesKey = choicesKey;
      const selected = this._kernel.value;
      // HOOK: the choices come from the kernels API (a later issue); until it exists only the
      // default environment is offered.
      this._kernel.replaceChildren(
        h('option', { attrs: { value: '' } }, 'Default environment'),
        ...choices.map(c => {
          const option = h('option', { attrs: { value: c.name }, title: c.reason }, c.selectable ? c.display_name : `${c.display_name} (${c.reason ?? 'not selectable'})`);
          option.disabled = !c.selectable;
          return option;
        })
      );
      if (choices.some(c => c.name === selected && c.selectable)) {
        this._kernel.value = selected;
      }
    }
  }

  private _setExpanded(expanded: boolean): void {
    this._expanded = expanded;
    this._more.hidden = !expanded;
    this.node.classList.toggle('jp-mod-compact', !expanded);
    this.node.classList.toggle('jp-mod-expanded', expanded);
    this._toggle.setAttribute('aria-expanded', String(expanded));
    this._toggle.title = expanded ? 'Hide the details' : 'Show the details';
  }

  private async _decide(accept: boolean): Promise<void> {
    this._accept.disabled = true;
    this._reject.disabled = true;
    this._error.hidden = true;
    try {
      if (accept) {
        await this._model.accept(this._id, this._kernel.value || null);
      } else {
        await this._model.reject(this._id);
      }
    } catch (error) {
      const message = error instanceof Error ? error.message : String(error);
      this._error.textContent = `Could not ${accept ? 'accept' : 'reject'}: ${message}`;
      this._error.hidden = false;
      Notification.error(`Parallalx: could not ${accept ? 'accept' : 'reject'} the request: ${message}`, { autoClose: 8000 });
    } finally {
      this._accept.disabled = false;
      this._reject.disabled = false;
    }
  }

  private readonly _model: ParallalxModel;
  private readonly _id: string;
  private readonly _toggle: HTMLButtonElement;
  private readonly _name: HTMLElement;
  private readonly _kind: HTMLElement;
  private readonly _code: HTMLElement;
  private readonly _paired: HTMLElement;
  private readonly _countdown: HTMLElement;
  private readonly _details: HTMLElement;
  private readonly _more: HTMLElement;
  private readonly _kernel: HTMLSelectElement;
  private readonly _accept: HTMLButtonElement;
  private readonly _reject: HTMLButtonElement;
  private readonly _error: HTMLElement;
  private _expanded = false;
  private _key = '';
  private _choicesKey = '';
}
