import { Clipboard } from '@jupyterlab/apputils';

import { button, h, row } from '../dom';
import { describeResources } from '../models/deviceViews';
import { ParallalxModel } from '../state/model';
import { Section } from './section';

/** "This device": name, device ID, peer URLs and resources (cores, memory, GPUs). */
export class DeviceSection extends Section {
  constructor(model: ParallalxModel) {
    super(model, { id: 'parallalx-section-device', label: 'This device' });
    this.addClass('jp-Parallalx-deviceSection');
    this.render();
  }

  render(): void {
    if (this.renderStatus()) {
      return;
    }
    const device = this.model.device;
    if (!device) {
      this.node.replaceChildren(h('div', { class: 'jp-Parallalx-empty' }, 'No device information.'));
      return;
    }
    const res = describeResources(device.profile);
    const idValue = h(
      'span',
      { class: 'jp-Parallalx-id' },
      h('code', { class: 'jp-Parallalx-deviceId', title: device.id }, device.id_display),
      button('Copy', 'jp-Parallalx-copy', () => Clipboard.copyToSystem(device.id_display), 'Copy the device ID')
    );
    const urls =
      device.peer_urls.length > 0
        ? h('ul', { class: 'jp-Parallalx-list' }, ...device.peer_urls.map(u => h('li', null, h('code', null, u))))
        : 'none (peer listener not running)';
    const gpus = h('ul', { class: 'jp-Parallalx-list' }, ...res.gpus.map(g => h('li', null, g)));
    const probe = button('Probe again', 'jp-Parallalx-probe jp-mod-reject', async event => {
      const target = event.currentTarget as HTMLButtonElement;
      target.disabled = true;
      try {
        await this.model.probe();
      } catch {
        // the section shows the previous values; the next refresh retries
      } finally {
        target.disabled = false;
      }
    }, 'Run the accelerator probe again (torch, CUDA, MPS)');
    const lines: HTMLElement[] = [
      row('Name', h('strong', { class: 'jp-Parallalx-deviceName' }, device.name)),
      row('Device ID', idValue, 'jp-mod-block'),
      row('Peer URLs', urls, 'jp-Parallalx-peerUrls'),
      row('CPU', res.cores, 'jp-Parallalx-cores'),
      row('Memory', res.memory, 'jp-Parallalx-memory'),
      row('GPUs', gpus, 'jp-Parallalx-gpus'),
      h('div', { class: 'jp-Parallalx-actions' }, probe)
    ];
    if (this.model.error !== null) {
      lines.push(h('div', { class: 'jp-Parallalx-error' }, `Last refresh failed: ${this.model.error}`));
    }
    this.node.replaceChildren(...lines);
  }
}
