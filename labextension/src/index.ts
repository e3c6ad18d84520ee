import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { ICommandPalette, Notification } from '@jupyterlab/apputils';
import { ISettingRegistry } from '@jupyterlab/settingregistry';
import { IStatusBar } from '@jupyterlab/statusbar';
import { LabIcon, refreshIcon } from '@jupyterlab/ui-components';

import iconSvg from '../style/icon.svg';
import { ParallalxAPI } from './api';
import { askInvitation } from './inviteDialog';
import type { RequestKind } from './models/apiTypes';
import { formatCode } from './models/requestViews';
import { RequestToasts } from './notify';
import { ParallalxPanel } from './panel';
import { ParallalxModel } from './state/model';
import { PendingStatus } from './statusbar';

export { APIError, ParallalxAPI, getDevice, requestAPI } from './api';
export type { IDevice, IJob, IPairedDevice, IRequest } from './models/apiTypes';
export { ParallalxModel } from './state/model';
export { ParallalxPanel } from './panel';

const PLUGIN_ID = 'parallalx-jupyter:plugin';

export namespace CommandIDs {
  export const open = 'parallalx:open';
  export const refresh = 'parallalx:refresh';
  export const invite = 'parallalx:invite';
  export const offer = 'parallalx:offer';
}

export const parallalxIcon = new LabIcon({
  name: 'parallalx-jupyter:icon',
  svgstr: iconSvg
});

const plugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description:
    'Parallalx sidebar: this device, connection requests, paired devices, the cluster and jobs.',
  autoStart: true,
  optional: [ILayoutRestorer, ISettingRegistry, IStatusBar, ICommandPalette],
  activate: (
    app: JupyterFrontEnd,
    restorer: ILayoutRestorer | null,
    settingRegistry: ISettingRegistry | null,
    statusBar: IStatusBar | null,
    palette: ICommandPalette | null
  ) => {
    const api = new ParallalxAPI(app.serviceManager.serverSettings);
    const model = new ParallalxModel(api);
    const { commands, shell } = app;

    const panel = new ParallalxPanel({
      model,
      commands,
      toolbarCommands: [
        { id: CommandIDs.invite, label: 'Invite' },
        { id: CommandIDs.refresh, label: '' }
      ],
      // A nearby device: the usual invite dialog, its announced peer URL filled in.
      onInvite: (_device, url) => commands.execute(CommandIDs.invite, { url })
    });
    panel.title.icon = parallalxIcon;
    shell.add(panel, 'left', { rank: 800 });
    restorer?.add(panel, panel.id);

    const openPanel = () => shell.activateById(panel.id);
    const toasts = new RequestToasts(model, { onShow: openPanel });

    // Live updates: our events from the server's event bus; polling is the fallback.
    app.serviceManager.events.stream.connect((_, emission) => {
      model.handleEmission(emission);
    });

    commands.addCommand(CommandIDs.open, {
      label: 'Open Parallalx Panel',
      caption: 'Show this device, connection requests and paired devices',
      icon: parallalxIcon,
      execute: openPanel
    });
    commands.addCommand(CommandIDs.refresh, {
      label: 'Refresh Parallalx',
      caption: 'Fetch this device, requests, devices, the cluster and jobs again',
      icon: args => (args['isPalette'] ? undefined : refreshIcon),
      execute: () => model.refresh({ device: true })
    });
    const sendRequest = async (kind: RequestKind, url = '') => {
      const asked = await askInvitation(kind, url);
      if (!asked) {
        return;
      }
      if (!asked.body) {
        Notification.error(`Parallalx: ${asked.error}`, { autoClose: 8000 });
        return;
      }
      const body = asked.body;
      try {
        const request = await model.invite(body);
        openPanel();
        Notification.success(
          `Parallalx: request sent to “${request.peer.name}”. Code ${formatCode(request.code)}: their screen must show the same.`,
          { autoClose: 10000 }
        );
      } catch (error) {
        const message = error instanceof Error ? error.message : String(error);
        Notification.error(`Parallalx: could not send the request: ${message}`, {
          autoClose: 10000
        });
      }
    };
    commands.addCommand(CommandIDs.invite, {
      label: 'Invite a Device by URL…',
      caption: 'Send a connection request asking another device to run workers for this one',
      icon: args => (args['isPalette'] ? undefined : parallalxIcon),
      execute: args => sendRequest('invite', typeof args['url'] === 'string' ? args['url'] : '')
    });
    commands.addCommand(CommandIDs.offer, {
      label: 'Offer This Device to a Main Device…',
      caption: 'Send a connection request offering this device as a worker',
      execute: () => sendRequest('offer')
    });
    if (palette) {
      const category = 'Parallalx';
      for (const command of [CommandIDs.open, CommandIDs.refresh, CommandIDs.invite, CommandIDs.offer]) {
        palette.addItem({ command, category, args: { isPalette: true } });
      }
    }

    if (statusBar) {
      const item = new PendingStatus(model, parallalxIcon, openPanel);
      statusBar.registerStatusItem('parallalx-jupyter:pending', {
        item,
        align: 'left',
        rank: 50,
        isActive: () => model.pendingCount > 0,
        activeStateChanged: model.changed
      });
    }

    if (settingRegistry) {
      settingRegistry
        .load(PLUGIN_ID)
        .then(settings => {
          const apply = () => {
            model.pollInterval = settings.get('pollInterval').composite as number;
            toasts.enabled = settings.get('showToasts').composite as boolean;
          };
          apply();
          settings.changed.connect(apply);
        })
        .catch(reason => {
          console.error('parallalx-jupyter: failed to load settings', reason);
        });
    }

    void model.start();
  }
};

export default plugin;
