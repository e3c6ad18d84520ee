import { button, h, row } from '../dom';
import type { INearbyDevice } from '../models/apiTypes';
import { ParallalxModel } from '../state/model';
import { Section } from './section';

/** What the Invite button of a nearby device does (the panel gets it from the plugin). */
export type NearbyInvite = (device: INearbyDevice, url: string) => void | Promise<void>;

/**
 * "Nearby": devices announcing themselves on the local network, each with an Invite button
 * that opens the usual invite flow with its peer URL filled in. Names, IDs and addresses come
 * from the network unverified: they are shown as text, and nothing happens without the user.
 */
export class NearbySection extends Section {
  constructor(model: ParallalxModel, invite: NearbyInvite) {
    super(model, { id: 'parallalx-section-nearby', label: 'Nearby' });
    this.addClass('jp-Parallalx-nearbySection');
    this._invite = invite;
    this.render();
  }

  render(): void {
    if (this.renderStatus()) {
      return;
    }
    const devices = this.model.nearby.filter(d => d.urls.length > 0);
    const error = this.model.nearbyError;
    const note = h(
      'div',
      { class: 'jp-Parallalx-hint' },
      'Found by their own announcement, which proves nothing: compare the verification code on both screens before the other user accepts.'
    );
    if (devices.length === 0) {
      this.node.replaceChildren(
        error
          ? h('div', { class: 'jp-Parallalx-error' }, `Could not list nearby devices: ${error}`)
          : h(
              'div',
              { class: 'jp-Parallalx-empty' },
              'No devices found on this network. Devices with parallalx announce themselves where multicast works; otherwise invite by URL.'
            )
      );
      return;
    }
    this.node.replaceChildren(...devices.map(d => this._card(d)), note);
  }

  private _card(device: INearbyDevice): HTMLElement {
    const url = device.urls[0];
    return h(
      'div',
      { class: 'jp-Parallalx-card jp-Parallalx-nearbyDevice', dataset: { deviceId: device.id } },
      h(
        'div',
        { class: 'jp-Parallalx-cardTitle' },
        h('strong', { class: 'jp-Parallalx-peerName' }, device.name),
        device.paired ? h('span', { class: 'jp-Parallalx-badge' }, 'paired') : null
      ),
      row(
        'Device ID',
        h('code', { class: 'jp-Parallalx-peerId', title: device.id_display }, device.id_display.slice(0, 15) + '…'),
        'jp-mod-block'
      ),
      row('Address', h('code', { class: 'jp-Parallalx-nearbyAddress' }, `${device.addresses.join(', ')}:${device.port}`)),
      h(
        'div',
        { class: 'jp-Parallalx-actions' },
        button('Invite', 'jp-mod-accept jp-Parallalx-invite', () => this._invite(device, url), `Send a connection request to ${url}`)
      )
    );
  }

  private readonly _invite: NearbyInvite;
}
