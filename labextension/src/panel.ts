import { CommandRegistry } from '@lumino/commands';
import { CommandToolbarButton, SidePanel } from '@jupyterlab/ui-components';
import { AccordionPanel, Widget } from '@lumino/widgets';

import { h } from './dom';
import { ClusterSection } from './sections/cluster';
import { DeviceSection } from './sections/device';
import { DevicesSection } from './sections/devices';
import { JobsSection } from './sections/jobs';
import { NearbyInvite, NearbySection } from './sections/nearby';
import { PeerAddress } from './sections/peerAddress';
import { RequestsSection } from './sections/requests';
import { ParallalxModel } from './state/model';

/**
 * The left-sidebar panel: a header, a toolbar (invite, refresh) and one collapsible section per
 * component: this device, requests, devices, devices nearby, the cluster and jobs.
 */
export class ParallalxPanel extends SidePanel {
  constructor(options: ParallalxPanel.IOptions) {
    super();
    this.model = options.model;
    this.id = 'parallalx-jupyter-panel';
    this.addClass('jp-ParallalxPanel');
    this.title.caption = 'Parallalx';

    this.header.addWidget(
      new Widget({ node: h('h2', { class: 'jp-ParallalxPanel-header' }, 'Parallalx') })
    );
    this.header.addWidget(new PeerAddress(this.model));
    if (options.commands) {
      for (const { id, label } of options.toolbarCommands ?? []) {
        this.toolbar.addItem(
          id,
          new CommandToolbarButton({ commands: options.commands, id, label })
        );
      }
    }

    this.deviceSection = new DeviceSection(this.model);
    this.requestsSection = new RequestsSection(this.model);
    this.devicesSection = new DevicesSection(this.model);
    this.addWidget(this.deviceSection);
    this.addWidget(this.requestsSection);
    this.clusterSection = new ClusterSection(this.model);
    this.addWidget(this.devicesSection);
    this.nearbySection = new NearbySection(
      this.model,
      options.onInvite ?? ((_device, url) => this.model.invite({ url, kind: 'invite' }).then(() => undefined))
    );
    this.addWidget(this.nearbySection);
    this.addWidget(this.clusterSection);
    this.jobsSection = new JobsSection(this.model);
    this.addWidget(this.jobsSection);
    // Requests need the room: code, asks, kernel and buttons; jobs: progress, loss, buttons.
    (this.content as AccordionPanel).setRelativeSizes([2, 3, 2, 2, 2, 3]);
  }

  readonly model: ParallalxModel;
  readonly deviceSection: DeviceSection;
  readonly requestsSection: RequestsSection;
  readonly devicesSection: DevicesSection;
  readonly nearbySection: NearbySection;
  readonly clusterSection: ClusterSection;
  readonly jobsSection: JobsSection;
}

export namespace ParallalxPanel {
  export interface IOptions {
    model: ParallalxModel;
    commands?: CommandRegistry;
    /** Commands shown as toolbar buttons (label '' for an icon only). */
    toolbarCommands?: { id: string; label?: string }[];
    /** A nearby device's Invite button (default: send the request at once). */
    onInvite?: NearbyInvite;
  }
}
