import { PageConfig, URLExt } from '@jupyterlab/coreutils';

import { button, h, row } from '../dom';
import type { ClusterAction, IClusterState, IServedMain } from '../models/apiTypes';
import {
  IWorkerGroup,
  describeServedState,
  joinRetryable,
  describeWorker,
  groupWorkers,
  workerLabels
} from '../models/clusterViews';
import { deviceLabel, deviceNames, shortId } from '../models/deviceViews';
import { ParallalxModel } from '../state/model';
import { Section } from './section';

/**
 * "Cluster": this device's scheduler (address, Dask dashboard link), the workers connected to it
 * grouped by device, the main devices this device serves, and Start / Stop / Add this device.
 */
export class ClusterSection extends Section {
  constructor(model: ParallalxModel) {
    super(model, { id: 'parallalx-section-cluster', label: 'Cluster' });
    this.addClass('jp-Parallalx-clusterSection');
    this._start = button('Start', 'jp-mod-accept jp-Parallalx-clusterStart', () => this._run('start'), "Start this device's scheduler");
    this._stop = button('Stop', 'jp-mod-warn jp-Parallalx-clusterStop', () => this._run('stop'), "Stop this device's scheduler and its own worker");
    this._addSelf = button('Add this device', 'jp-Parallalx-clusterAddSelf', () => this._run('add-self'), 'Start the scheduler if needed and run a worker on this device');
    this._actions = h('div', { class: 'jp-Parallalx-actions' }, this._start, this._stop, this._addSelf);
    this._body = h('div', { class: 'jp-Parallalx-clusterBody' });
    this._error = h('div', { class: 'jp-Parallalx-error jp-Parallalx-clusterError' });
    this.render();
  }

  render(): void {
    if (this.renderStatus()) {
      this._built = false;
      return;
    }
    if (!this._built) {
      // The buttons stay the same nodes across renders (focus, disabled state).
      this.node.replaceChildren(this._body, this._actions, this._error);
      this._built = true;
    }
    const cluster = this.model.cluster;
    const busy = this.model.clusterBusy;
    this._start.disabled = busy !== null || cluster?.running === true;
    this._stop.disabled = busy !== null || cluster?.running !== true;
    // This device's worker starts with the cluster (unless opted out): once in, nothing to add.
    const selfId = this.model.device?.id ?? null;
    const selfTrains = (cluster?.workers ?? []).some(w => w.this_device === true || w.device_id === selfId);
    this._addSelf.disabled = busy !== null || selfTrains;
    this._addSelf.textContent =
      busy === 'add-self' ? 'Adding this device…' : selfTrains ? 'This device trains' : 'Add this device';
    this._addSelf.title = selfTrains
      ? "This device's own worker is in the cluster"
      : 'Start the scheduler if needed and run a worker on this device';
    this._start.textContent = busy === 'start' ? 'Starting…' : 'Start';
    this._stop.textContent = busy === 'stop' ? 'Stopping…' : 'Stop';

    const actionError = this.model.clusterActionError;
    this._error.textContent = actionError ? `Cluster action failed: ${actionError}` : '';
    this._error.hidden = !actionError;

    if (!cluster) {
      const why = this.model.clusterError;
      this._body.replaceChildren(
        why
          ? h('div', { class: 'jp-Parallalx-error' }, `Cluster not available: ${why}`)
          : h('div', { class: 'jp-Parallalx-empty' }, 'Loading…')
      );
      return;
    }
    this._body.replaceChildren(...this._content(cluster));
  }

  private _content(cluster: IClusterState): HTMLElement[] {
    const names = deviceNames(this.model.devices, this.model.device);
    const out: HTMLElement[] = [];
    const address = cluster.running && cluster.scheduler_address
      ? h('code', { class: 'jp-Parallalx-schedulerAddress' }, cluster.scheduler_address)
      : h('span', { class: 'jp-Parallalx-schedulerAddress jp-mod-stopped' }, cluster.running ? 'starting' : 'not running');
    out.push(row('Scheduler', address, 'jp-Parallalx-scheduler'));
    if (cluster.running && cluster.dashboard_link) {
      // served by this Jupyter server (server/dashboard_proxy.py): works under a base_url and
      // from another machine, where the scheduler's own 127.0.0.1 address would not
      const dashboard = URLExt.join(PageConfig.getBaseUrl(), 'parallalx', 'dashboard', 'status');
      const link = document.createElement('a');
      link.className = 'jp-Button jp-mod-styled jp-Parallalx-button jp-Parallalx-dashboardLink';
      link.href = dashboard;
      link.target = '_blank';
      link.rel = 'noopener noreferrer';
      link.textContent = 'Open the Dask dashboard';
      link.title = 'The Dask dashboard of this device\u2019s scheduler, in a new tab';
      out.push(row('Dashboard', link, 'jp-Parallalx-dashboard'));
    }
    if (cluster.running) {
      const groups = groupWorkers(cluster.workers ?? [], names, this.model.device?.id ?? null);
      out.push(h('h3', { class: 'jp-Parallalx-subheader' }, 'Workers'));
      out.push(
        groups.length > 0
          ? h('div', { class: 'jp-Parallalx-workers' }, ...groups.map(g => workerGroup(g)))
          : h('div', { class: 'jp-Parallalx-empty jp-Parallalx-noWorkers' }, 'No workers connected yet.')
      );
    }
    const refused = cluster.refused_joins ?? [];
    if (cluster.running && refused.length > 0) {
      out.push(h('h3', { class: 'jp-Parallalx-subheader' }, 'Refused'));
      out.push(h('ul', { class: 'jp-Parallalx-list jp-Parallalx-refusedJoins' },
        ...refused.map(r => h('li', {
          class: 'jp-Parallalx-refusedJoin jp-Parallalx-error', dataset: { deviceId: r.device_id }
        }, `${r.device_name || deviceLabel(r.device_id, names)}: its worker was refused (${r.reason})`))));
    }
    const own = cluster.own_worker;
    if (cluster.running && own && own.state !== 'running') {
      out.push(row("This device's worker",
        h('span', { class: `jp-Parallalx-ownWorker${own.state === 'failed' ? ' jp-Parallalx-error' : ''}` },
          describeServedState(own.state) + (own.message ? `: ${own.message}` : '')),
        'jp-Parallalx-ownWorkerRow'));
    }
    const serving = cluster.serving ?? [];
    if (serving.length > 0) {
      out.push(h('h3', { class: 'jp-Parallalx-subheader' }, 'This device works for'));
      const retry = (mainId: string) => void this.model.retryJoin(mainId);
      const busy = this.model.clusterBusy !== null;
      out.push(h('div', { class: 'jp-Parallalx-serving' }, ...serving.map(s =>
        servedCard(s, s.main_name || deviceLabel(s.main_id, names), busy ? null : retry))));
    }
    return out;
  }

  private async _run(action: ClusterAction): Promise<void> {
    await this.model.clusterAction(action);
  }

  private readonly _start: HTMLButtonElement;
  private readonly _stop: HTMLButtonElement;
  private readonly _addSelf: HTMLButtonElement;
  private readonly _actions: HTMLElement;
  private readonly _body: HTMLElement;
  private readonly _error: HTMLElement;
  private _built = false;
}

function workerGroup(group: IWorkerGroup): HTMLElement {
  return h(
    'div',
    {
      class: `jp-Parallalx-card jp-Parallalx-workerGroup${group.isSelf ? ' jp-mod-self' : ''}`,
      dataset: { deviceId: group.deviceId }
    },
    h('div', { class: 'jp-Parallalx-cardTitle' },
      h('strong', { class: 'jp-Parallalx-workerDevice', title: group.deviceId }, group.label),
      group.isSelf ? h('span', { class: 'jp-Parallalx-badge' }, 'this device') : null,
      h('span', { class: 'jp-Parallalx-badge jp-Parallalx-workerCount' },
        `${group.workers.length} worker${group.workers.length === 1 ? '' : 's'}`)
    ),
    h('ul', { class: 'jp-Parallalx-list' },
      ...group.workers.map((w, i) => {
        const details = describeWorker(w);
        const label = workerLabels(group.label, group.workers.length)[i];
        return h('li', { class: 'jp-Parallalx-worker' },
          h('span', { class: 'jp-Parallalx-workerName' }, label),
          details ? ` · ${details}` : '');
      })
    )
  );
}

function servedCard(
  served: IServedMain, label: string, retry: ((mainId: string) => void) | null
): HTMLElement {
  const retryable = joinRetryable(served.state);
  return h(
    'div',
    {
      class: `jp-Parallalx-card jp-Parallalx-servedMain${retryable ? ' jp-mod-failed' : ''}`,
      dataset: { mainId: served.main_id, state: served.state }
    },
    h('div', { class: 'jp-Parallalx-cardTitle' },
      h('strong', { class: 'jp-Parallalx-peerName', title: served.main_id }, label),
      h('span', { class: 'jp-Parallalx-badge jp-Parallalx-state' }, describeServedState(served.state))
    ),
    row('Device ID', h('code', { class: 'jp-Parallalx-peerId', title: served.main_id }, shortId(served.main_id)), 'jp-mod-block'),
    served.message ? row('Status', served.message, 'jp-Parallalx-servedMessage') : null,
    retryable && served.next_retry_at
      ? row('Next try', new Date(served.next_retry_at * 1000).toLocaleTimeString(), 'jp-Parallalx-nextRetry')
      : null,
    retryable
      ? h('div', { class: 'jp-Parallalx-actions' },
        button(`Retry ${label}`, 'jp-Parallalx-retryJoin', () => retry?.(served.main_id),
          `Join ${label}'s cluster again now`))
      : null,
    served.scheduler ? row('Scheduler', h('code', null, served.scheduler)) : null
  );
}
