import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { ISettingRegistry } from '@jupyterlab/settingregistry';
import { LabIcon } from '@jupyterlab/ui-components';

import iconSvg from '../style/icon.svg';
import { ParallalxPanel } from './panel';

export { requestAPI, getDevice } from './api';
export type { IDeviceInfo } from './api';
export { ParallalxPanel } from './panel';

const PLUGIN_ID = 'parallalx-jupyter:plugin';

export const parallalxIcon = new LabIcon({
  name: 'parallalx-jupyter:icon',
  svgstr: iconSvg
});

const plugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description: 'Parallalx sidebar panel: pool your computers into one training cluster.',
  autoStart: true,
  optional: [ILayoutRestorer, ISettingRegistry],
  activate: (
    app: JupyterFrontEnd,
    restorer: ILayoutRestorer | null,
    settingRegistry: ISettingRegistry | null
  ) => {
    const panel = new ParallalxPanel(app.serviceManager.serverSettings);
    panel.title.icon = parallalxIcon;
    panel.title.caption = 'Parallalx';
    app.shell.add(panel, 'left', { rank: 800 });
    restorer?.add(panel, panel.id);

    if (settingRegistry) {
      settingRegistry
        .load(PLUGIN_ID)
        .then(settings => {
          const apply = () => {
            panel.pollInterval = settings.get('pollInterval').composite as number;
          };
          apply();
          settings.changed.connect(apply);
        })
        .catch(reason => {
          console.error('parallalx-jupyter: failed to load settings', reason);
        });
    }
  }
};

export default plugin;
