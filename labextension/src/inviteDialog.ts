import { Dialog, showDialog } from '@jupyterlab/apputils';
import { Widget } from '@lumino/widgets';

import { h } from './dom';
import type { RequestKind } from './models/apiTypes';
import { InviteFormValue, inviteBody } from './models/invitation';

/** The body of the Invite / Offer dialog: peer address, purpose, CPU threads. */
export class InviteForm extends Widget {
  constructor(kind: RequestKind, url = '') {
    super();
    this._kind = kind;
    this.addClass('jp-Parallalx-inviteForm');
    const invite = kind === 'invite';
    this._url = input('jp-Parallalx-inviteUrl', 'url', 'https://192.168.1.20:8476');
    this._url.value = url; // a nearby device's announced address (Nearby section)
    this._purpose = input('jp-Parallalx-invitePurpose', 'text', invite ? 'e.g. train a digits classifier' : 'e.g. spare GPU for your runs');
    this._purpose.maxLength = 4096;
    this._threads = input('jp-Parallalx-inviteThreads', 'number', 'no limit');
    this._threads.min = '1';
    this._threads.max = '1024';
    this._threads.step = '1';
    this.node.append(
      field(
        invite ? 'Peer address of the device that should run workers for you' : 'Peer address of the main device',
        this._url
      ),
      field(invite ? 'Purpose (shown to the other user)' : 'Note (shown to the other user)', this._purpose),
      field(invite ? 'CPU threads to ask for' : 'CPU threads to offer', this._threads)
    );
  }

  getValue(): InviteFormValue {
    return inviteBody(this._kind, {
      url: this._url.value,
      purpose: this._purpose.value,
      threads: this._threads.value
    });
  }

  private readonly _kind: RequestKind;
  private readonly _url: HTMLInputElement;
  private readonly _purpose: HTMLInputElement;
  private readonly _threads: HTMLInputElement;
}

/** Ask for an invitation (`url`: the address filled in); null when cancelled. */
export async function askInvitation(kind: RequestKind, url = ''): Promise<InviteFormValue | null> {
  const result = await showDialog({
    title: kind === 'invite' ? 'Invite a device' : 'Offer this device to a main device',
    body: new InviteForm(kind, url),
    buttons: [Dialog.cancelButton(), Dialog.okButton({ label: 'Send request' })],
    focusNodeSelector: 'input'
  });
  if (!result.button.accept || !result.value) {
    return null;
  }
  return result.value;
}

function input(cls: string, type: string, placeholder: string): HTMLInputElement {
  return h('input', {
    class: `jp-mod-styled ${cls}`,
    attrs: { type, placeholder, spellcheck: 'false' }
  });
}

function field(label: string, control: HTMLInputElement): HTMLElement {
  return h('label', { class: 'jp-Parallalx-field' }, h('span', { class: 'jp-Parallalx-label' }, label), control);
}
