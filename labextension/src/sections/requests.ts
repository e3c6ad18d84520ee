import { Notification } from '@jupyterlab/apputils';
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
 * Incoming cards are keyed by request ID and updated in place, so a refresh never resets the
 * kernel a user is choosing.
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
        this._incomingHeader,
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
    const nodes = this._cards.update(this.model.pendingIncoming);
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

/** One pending incoming request, updated in place. */
class IncomingCard {
  constructor(model: ParallalxModel, request: IRequest) {
    this._model = model;
    this._id = request.id;
    this.node = h('div', {
      class: 'jp-Parallalx-card jp-Parallalx-incomingRequest',
      dataset: { requestId: request.id }
    });
    this._details = h('div', { class: 'jp-Parallalx-details' });
    this._kernel = h('select', {
      class: 'jp-Parallalx-kernel',
      attrs: { 'aria-label': 'Environment for the worker' }
    });
    this._error = h('div', { class: 'jp-Parallalx-error' });
    this._error.hidden = true;
    this._accept = button('Accept', 'jp-mod-accept jp-Parallalx-accept', () => this._decide(true), 'Accept: only if the code matches the other screen');
    this._reject = button('Reject', 'jp-mod-warn jp-Parallalx-reject', () => this._decide(false));
    this.node.append(
      this._details,
      row('Run in', this._kernel, 'jp-Parallalx-kernelRow'),
      h('div', { class: 'jp-Parallalx-actions' }, this._accept, this._reject),
      this._error
    );
  }

  readonly node: HTMLElement;

  update(request: IRequest, choices: readonly IKernelChoice[]): void {
    const key = JSON.stringify([request.peer, request.asks, request.code, request.expires_at, request.kind]);
    if (key !== this._key) {
      this._key = key;
      this._details.replaceChildren(
        h('div', { class: 'jp-Parallalx-cardTitle' },
          h('strong', { class: 'jp-Parallalx-peerName' }, request.peer.name),
          h('span', { class: 'jp-Parallalx-badge' }, request.kind)
        ),
        codeBlock(request, 'Accept only if the other device shows the same code.'),
        row('Expires in', countdown(request)),
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
  private readonly _details: HTMLElement;
  private readonly _kernel: HTMLSelectElement;
  private readonly _accept: HTMLButtonElement;
  private readonly _reject: HTMLButtonElement;
  private readonly _error: HTMLElement;
  private _key = '';
  private _choicesKey = '';
}
