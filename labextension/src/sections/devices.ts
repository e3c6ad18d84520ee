import { Dialog, Notification, showDialog } from '@jupyterlab/apputils';
import { Widget } from '@lumino/widgets';

import { button, h, row } from '../dom';
import type { IPairedDevice } from '../models/apiTypes';
import { describePairedState, describeRole } from '../models/deviceViews';
import { describeAsks } from '../models/requestViews';
import { ParallalxModel } from '../state/model';
import { Section } from './section';

/** "Devices": paired devices with their role and state; revoke asks for confirmation. */
export class DevicesSection extends Section {
  constructor(model: ParallalxModel) {
    super(model, { id: 'parallalx-section-devices', label: 'Devices' });
    this.addClass('jp-Parallalx-devicesSection');
    this.render();
  }

  render(): void {
    if (this.renderStatus()) {
      return;
    }
    const devices = this.model.sortedDevices;
    if (devices.length === 0) {
      this.node.replaceChildren(
        h('div', { class: 'jp-Parallalx-empty' }, 'No paired devices yet. Invite one with the Invite button above, or wait for a request.')
      );
      return;
    }
    this.node.replaceChildren(...devices.map(d => this._card(d)));
  }

  private _card(device: IPairedDevice): HTMLElement {
    const grant = device.grant;
    const grantText = grant
      ? [
          ...describeAsks(grant.asks),
          grant.selection?.kernel ? `kernel ${grant.selection.kernel}` : ''
        ].filter(Boolean).join(', ')
      : '';
    const active = device.state === 'paired';
    return h(
      'div',
      {
        class: `jp-Parallalx-card jp-Parallalx-pairedDevice${active ? '' : ' jp-mod-revoked'}`,
        dataset: { deviceId: device.id, state: device.state }
      },
      h('div', { class: 'jp-Parallalx-cardTitle' },
        h('strong', { class: 'jp-Parallalx-peerName' }, device.name),
        h('span', { class: 'jp-Parallalx-badge jp-Parallalx-state' }, describePairedState(device.state))
      ),
      row('Device ID', h('code', { class: 'jp-Parallalx-peerId', title: device.id }, device.id_display), 'jp-mod-block'),
      row('Role', describeRole(device.role), 'jp-Parallalx-role'),
      device.peer_url ? row('Peer URL', h('code', null, device.peer_url)) : null,
      grantText ? row('Granted', grantText) : null,
      active
        ? h('div', { class: 'jp-Parallalx-actions' },
            button(`Revoke ${device.name}`, 'jp-mod-warn jp-Parallalx-revoke', () => this._revoke(device), `Stop sharing with ${device.name}`))
        : null
    );
  }

  private async _revoke(device: IPairedDevice): Promise<void> {
    const body = new Widget({ node: h('div', { class: 'jp-Parallalx-dialogBody' },
      h('p', null, 'Stop sharing with ', h('strong', null, device.name), '?'),
      h('p', null, 'Device ID: ', h('code', null, device.id_display)),
      h('p', null, 'Its workers are stopped and its certificate is refused from now on. Pairing again needs a new request.')
    ) });
    const result = await showDialog({
      title: `Revoke ${device.name}?`,
      body,
      buttons: [Dialog.cancelButton(), Dialog.warnButton({ label: 'Revoke' })],
      // Enter (or a stray key) must not revoke: Cancel has the focus
      defaultButton: 0
    });
    if (!result.button.accept) {
      return;
    }
    try {
      await this.model.revoke(device.id);
    } catch (error) {
      const message = error instanceof Error ? error.message : String(error);
      Notification.error(`Parallalx: could not revoke ${device.name}: ${message}`, { autoClose: 8000 });
    }
  }
}
