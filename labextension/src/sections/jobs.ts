import { Notification } from '@jupyterlab/apputils';

import { button, h, row } from '../dom';
import type { IJob, IWorkload } from '../models/apiTypes';
import { formatEta, formatLoss } from '../models/format';
import { isFiniteNumber } from '../models/guards';
import {
  describeJobProgress,
  describeJobState,
  describeOwner,
  formatOutputLine,
  jobCancellable,
  jobEnded,
  jobEtaText,
  jobFraction,
  jobSpeedText,
  jobWorkersText,
  sparklinePoints
} from '../models/jobViews';
import {
  buildRunBody,
  defaultParamsText,
  describeWorkloadParams,
  pickWorkload,
  workloadRunnable
} from '../models/workloadForm';
import type { IJobOutputView } from '../state/jobOutput';
import { ParallalxModel } from '../state/model';
import { KeyedCards, setChildren } from './keyedCards';
import { Section } from './section';

export const NO_JOBS_TEXT =
  'No jobs yet — start one with %%parallalx train or parallalx_jupyter.train(...).';

const SVG_NS = 'http://www.w3.org/2000/svg';
const SPARK_WIDTH = 120;
const SPARK_HEIGHT = 24;
export const NO_OUTPUT_TEXT = 'No output yet.';
/** An Output within this many px of its bottom follows new lines; scrolled further up, it stays. */
const STICK_PX = 8;
let outputIds = 0;

/**
 * "Jobs": a "Run a workload…" form (collapsed until asked for), then one card per job (newest
 * first) with its name, workload, state, a progress bar, throughput, ETA, the loss and a loss
 * sparkline, the error of a failed job; Output (what its ranks printed, read when opened and
 * kept fresh while open), Cancel while it runs, Remove once it ended. Cards are
 * kept per job and updated in place, since a running job re-renders them up to twice a second
 * (buttons keep their focus and never move under a click).
 */
export class JobsSection extends Section {
  constructor(model: ParallalxModel) {
    super(model, { id: 'parallalx-section-jobs', label: 'Jobs' });
    this.addClass('jp-Parallalx-jobsSection');
    this._list = h('div', { class: 'jp-Parallalx-jobs' });
    this._empty = h('div', { class: 'jp-Parallalx-empty jp-Parallalx-noJobs' }, NO_JOBS_TEXT);
    this._error = h('div', { class: 'jp-Parallalx-error jp-Parallalx-jobsError' });
    this._runForm = new RunWorkloadForm(model);
    this.render();
  }

  render(): void {
    if (this.renderStatus()) {
      this._built = false;
      return;
    }
    if (!this._built) {
      this.node.replaceChildren(this._runForm.node, this._error, this._empty, this._list);
      this._built = true;
    }
    this._runForm.update();
    const jobs = this.model.jobs;
    const why = this.model.jobsError;
    this._error.textContent = why ? `Jobs not available: ${why}` : '';
    this._error.hidden = !why;
    this._empty.hidden = jobs.length > 0 || why !== null;

    setChildren(this._list, this._cards.update(jobs));
  }

  private async _cancel(job: IJob): Promise<void> {
    try {
      await this.model.cancelJob(job.id);
    } catch (error) {
      const message = error instanceof Error ? error.message : String(error);
      Notification.error(`Parallalx: could not cancel “${job.name}”: ${message}`, {
        autoClose: 8000
      });
    }
  }

  private async _remove(job: IJob): Promise<void> {
    try {
      await this.model.removeJob(job.id);
    } catch (error) {
      const message = error instanceof Error ? error.message : String(error);
      Notification.error(`Parallalx: could not remove “${job.name}”: ${message}`, {
        autoClose: 8000
      });
    }
  }

  private readonly _list: HTMLElement;
  private readonly _empty: HTMLElement;
  private readonly _error: HTMLElement;
  private readonly _runForm: RunWorkloadForm;
  private readonly _cards = new KeyedCards<IJob, HTMLElement, JobCard>({
    key: job => job.id,
    create: job =>
      new JobCard(job.id, {
        cancel: j => this._cancel(j),
        remove: j => this._remove(j),
        output: (j, open) => this.model.setJobOutputOpen(j.id, open)
      }),
    update: (card, job) => card.update(job, this.model.jobBusy(job.id), this.model.jobOutput(job.id))
  });
  private _built = false;
}

/**
 * "Run a workload": a workload picker (from GET workloads, asked when the form opens; those that
 * cannot be loaded are listed disabled with their error), its description, the parameters as a
 * JSON object (pre-filled with the defaults), an optional job name and scheduler address, and
 * Run. Refusals (invalid JSON here, the server's 4xx message) show inline as text.
 */
class RunWorkloadForm {
  constructor(model: ParallalxModel) {
    this._model = model;
    this._toggle = button('Run a workload…', 'jp-Parallalx-runToggle', () => this._setOpen(!this._open), 'Start an installed workload as a job of this server');
    this._toggle.setAttribute('aria-expanded', 'false');
    this._status = h('div', { class: 'jp-Parallalx-empty jp-Parallalx-workloadsStatus' });
    this._select = h('select', {
      class: 'jp-Parallalx-workloadSelect',
      attrs: { 'aria-label': 'Workload' }
    });
    this._select.addEventListener('change', () => this._choose(this._select.value));
    this._description = h('div', { class: 'jp-Parallalx-hint jp-Parallalx-workloadDescription' });
    this._params = h('textarea', {
      class: 'jp-Parallalx-workloadParams',
      attrs: { 'aria-label': 'Parameters (a JSON object)', spellcheck: 'false', rows: '4' }
    });
    this._paramsHelp = h('ul', { class: 'jp-Parallalx-hint jp-Parallalx-workloadParamsHelp' });
    this._name = h('input', {
      class: 'jp-mod-styled jp-Parallalx-runName',
      attrs: { type: 'text', maxlength: '200', placeholder: 'optional', 'aria-label': 'Job name (optional)' }
    });
    this._scheduler = h('input', {
      class: 'jp-mod-styled jp-Parallalx-runScheduler',
      attrs: {
        type: 'text',
        maxlength: '512',
        placeholder: "this device's cluster",
        spellcheck: 'false',
        'aria-label': 'Dask scheduler address (optional)'
      }
    });
    this._run = button('Run', 'jp-mod-accept jp-Parallalx-runWorkload', () => this._submit(), 'Start the workload as a job of this server');
    this._error = h('div', { class: 'jp-Parallalx-error jp-Parallalx-runError', attrs: { role: 'alert' } });
    this._error.hidden = true;
    this._started = h('div', { class: 'jp-Parallalx-hint jp-Parallalx-runStarted' });
    this._started.hidden = true;
    this._fields = h(
      'div',
      { class: 'jp-Parallalx-runFields' },
      row('Workload', this._select, 'jp-Parallalx-workloadRow'),
      this._description,
      row('Parameters', this._params, 'jp-mod-block jp-Parallalx-paramsRow'),
      this._paramsHelp,
      row('Job name', this._name, 'jp-Parallalx-runNameRow'),
      row('Scheduler', this._scheduler, 'jp-Parallalx-runSchedulerRow'),
      h('div', { class: 'jp-Parallalx-actions' }, this._run)
    );
    this._form = h(
      'div',
      { class: 'jp-Parallalx-card jp-Parallalx-runForm', attrs: { role: 'group', 'aria-label': 'Run a workload' } },
      this._status,
      this._fields,
      this._error,
      this._started
    );
    this._form.hidden = true;
    this.node = h('div', { class: 'jp-Parallalx-run' }, h('div', { class: 'jp-Parallalx-actions' }, this._toggle), this._form);
  }

  readonly node: HTMLElement;

  /** Bring the form in line with the model's workloads (never touching what the user typed). */
  update(): void {
    const workloads = this._model.workloads;
    const why = this._model.workloadsError;
    let status = '';
    if (workloads === null) {
      status = why ? `Workloads not available: ${why}` : 'Loading workloads…';
    } else if (why) {
      status = `Could not refresh the workloads: ${why}`;
    } else if (workloads.length === 0) {
      status = 'No workloads are installed on this server.';
    } else if (!workloads.some(workloadRunnable)) {
      status = 'No installed workload can be loaded.';
    }
    setText(this._status, status);
    this._status.hidden = !status;
    this._status.classList.toggle('jp-Parallalx-error', why !== null);
    this._fields.hidden = workloads === null || workloads.length === 0;

    const key = JSON.stringify(workloads);
    if (workloads !== null && key !== this._key) {
      this._key = key;
      this._workloads = workloads;
      this._select.replaceChildren(
        ...workloads.map(w => {
          const runnable = workloadRunnable(w);
          const option = h(
            'option',
            { attrs: { value: w.name }, title: runnable ? w.description : (w.error ?? '') },
            runnable ? w.name : `${w.name} (cannot be loaded)`
          );
          option.disabled = !runnable;
          return option;
        })
      );
      const picked = pickWorkload(workloads, this._selected);
      if (picked && picked.name === this._selected) {
        this._select.value = picked.name;
        this._describe(picked);
      } else {
        this._choose(picked?.name ?? null);
      }
    }
    this._run.disabled = this._busy || this._current() === null;
  }

  private _setOpen(open: boolean): void {
    this._open = open;
    this._form.hidden = !open;
    this._toggle.setAttribute('aria-expanded', String(open));
    this._toggle.classList.toggle('jp-mod-active', open);
    if (open) {
      // Asked each time the form opens: a workload installed meanwhile shows up.
      void this._model.loadWorkloads();
    }
  }

  /** The runnable workload selected now, or null. */
  private _current(): IWorkload | null {
    const current = this._workloads.find(w => w.name === this._selected);
    return current && workloadRunnable(current) ? current : null;
  }

  /** Select a workload: its description, and its defaults in the parameters box. */
  private _choose(name: string | null): void {
    this._selected = name;
    const workload = this._current();
    this._select.value = workload?.name ?? '';
    this._describe(workload);
    const text = defaultParamsText(workload);
    this._params.value = text;
    this._params.rows = Math.min(12, Math.max(3, text.split('\n').length));
    this._showError('');
    this._started.hidden = true;
    this._run.disabled = this._busy || workload === null;
  }

  private _describe(workload: IWorkload | null): void {
    setText(this._description, workload?.description ?? '');
    this._description.hidden = !workload?.description;
    const lines = describeWorkloadParams(workload);
    this._paramsHelp.replaceChildren(...lines.map(line => h('li', null, line)));
    this._paramsHelp.hidden = lines.length === 0;
  }

  private async _submit(): Promise<void> {
    const workload = this._current();
    if (!workload || this._busy) {
      return;
    }
    this._started.hidden = true;
    const built = buildRunBody(this._params.value, this._name.value, this._scheduler.value);
    if (!built.body) {
      this._showError(built.error);
      return;
    }
    this._busy = true;
    this._run.disabled = true;
    setText(this._run, 'Starting…');
    this._showError('');
    try {
      const job = await this._model.runWorkload(workload.name, built.body);
      setText(this._started, `Started “${job.name}”: it is listed below.`);
      this._started.hidden = false;
    } catch (error) {
      this._showError(error instanceof Error ? error.message : String(error));
    } finally {
      this._busy = false;
      setText(this._run, 'Run');
      this._run.disabled = this._current() === null;
    }
  }

  private _showError(message: string): void {
    setText(this._error, message);
    this._error.hidden = !message;
  }

  private readonly _model: ParallalxModel;
  private readonly _toggle: HTMLButtonElement;
  private readonly _form: HTMLElement;
  private readonly _fields: HTMLElement;
  private readonly _status: HTMLElement;
  private readonly _select: HTMLSelectElement;
  private readonly _description: HTMLElement;
  private readonly _params: HTMLTextAreaElement;
  private readonly _paramsHelp: HTMLElement;
  private readonly _name: HTMLInputElement;
  private readonly _scheduler: HTMLInputElement;
  private readonly _run: HTMLButtonElement;
  private readonly _error: HTMLElement;
  private readonly _started: HTMLElement;
  private _workloads: readonly IWorkload[] = [];
  private _selected: string | null = null;
  private _key = '';
  private _open = false;
  private _busy = false;
}

interface IJobActions {
  cancel(job: IJob): Promise<void>;
  remove(job: IJob): Promise<void>;
  /** Open or close the job's Output. */
  output(job: IJob, open: boolean): void;
}

/** One job's card; `update` brings it in line with the job (all text through textContent). */
class JobCard {
  constructor(id: string, actions: IJobActions) {
    this._name = h('strong', { class: 'jp-Parallalx-jobName' });
    this._workload = h('span', { class: 'jp-Parallalx-badge jp-Parallalx-jobWorkload' });
    this._state = h('span', { class: 'jp-Parallalx-badge jp-Parallalx-state jp-Parallalx-jobState' });
    this._fill = h('div', { class: 'jp-Parallalx-progressFill' });
    this._bar = h(
      'div',
      {
        class: 'jp-Parallalx-progress',
        attrs: { role: 'progressbar', 'aria-valuemin': '0', 'aria-valuemax': '100' }
      },
      this._fill
    );
    this._progressText = h('div', { class: 'jp-Parallalx-progressText' });
    this._rate = h('span', { class: 'jp-Parallalx-jobRate' });
    this._eta = h('span', { class: 'jp-Parallalx-jobEta' });
    this._workers = h('span', { class: 'jp-Parallalx-jobWorkers' });
    this._loss = h('span', { class: 'jp-Parallalx-jobLoss' });
    this._line = document.createElementNS(SVG_NS, 'polyline');
    this._line.setAttribute('class', 'jp-Parallalx-sparklineLine');
    this._spark = document.createElementNS(SVG_NS, 'svg');
    this._spark.setAttribute('class', 'jp-Parallalx-sparkline');
    this._spark.setAttribute('viewBox', `0 0 ${SPARK_WIDTH} ${SPARK_HEIGHT}`);
    this._spark.setAttribute('width', String(SPARK_WIDTH));
    this._spark.setAttribute('height', String(SPARK_HEIGHT));
    this._spark.setAttribute('preserveAspectRatio', 'none');
    this._spark.setAttribute('role', 'img');
    this._spark.appendChild(this._line);
    this._message = h('span', { class: 'jp-Parallalx-jobMessage' });
    this._error = h('div', { class: 'jp-Parallalx-error jp-Parallalx-jobError' });
    this._owner = h('span', { class: 'jp-Parallalx-jobOwner' });
    this._took = h('span', { class: 'jp-Parallalx-jobTook' });
    this._cancel = button('Cancel', 'jp-mod-warn jp-Parallalx-jobCancel', () => this._run(actions.cancel), 'Ask the job to stop');
    this._remove = button('Remove', 'jp-mod-reject jp-Parallalx-jobRemove', () => this._run(actions.remove), 'Remove this job from the list');
    const outputId = `jp-Parallalx-jobOutput-${++outputIds}`;
    this._outputToggle = button(
      'Output',
      'jp-Parallalx-jobOutputToggle',
      () => {
        if (this._job) {
          actions.output(this._job, !this._outputOpen);
        }
      },
      'Show what the ranks of this job printed'
    );
    this._outputToggle.setAttribute('aria-expanded', 'false');
    this._outputToggle.setAttribute('aria-controls', outputId);
    this._outputStatus = h('div', { class: 'jp-Parallalx-empty jp-Parallalx-jobOutputStatus' });
    this._outputPre = h('pre', {
      class: 'jp-Parallalx-jobOutputLines',
      attrs: { tabindex: '0', 'aria-label': 'Output of the ranks' }
    });
    this._outputPre.addEventListener('scroll', () => {
      const pre = this._outputPre;
      this._stick = pre.scrollHeight - pre.scrollTop - pre.clientHeight <= STICK_PX;
    });
    this._output = h(
      'div',
      { class: 'jp-Parallalx-jobOutput', attrs: { id: outputId, role: 'region', 'aria-label': 'Job output' } },
      this._outputStatus,
      this._outputPre
    );
    this._output.hidden = true;

    this._rows = {
      rate: row('Speed', this._rate),
      eta: row('ETA', this._eta),
      workers: row('Workers', this._workers),
      loss: row('Loss', h('span', { class: 'jp-Parallalx-lossValue' }, this._loss, this._spark)),
      message: row('Status', this._message),
      owner: row('Runs in', this._owner),
      took: row('Took', this._took)
    };
    this.node = h(
      'div',
      { class: 'jp-Parallalx-card jp-Parallalx-job', dataset: { jobId: id } },
      h('div', { class: 'jp-Parallalx-cardTitle' }, this._name, this._workload, this._state),
      h('div', { class: 'jp-Parallalx-jobProgress' }, this._bar, this._progressText),
      this._rows.rate,
      this._rows.eta,
      this._rows.workers,
      this._rows.loss,
      this._rows.message,
      this._error,
      this._rows.owner,
      this._rows.took,
      h('div', { class: 'jp-Parallalx-actions' }, this._outputToggle, this._cancel, this._remove),
      this._output
    );
  }

  readonly node: HTMLElement;

  update(job: IJob, busy: boolean, output: IJobOutputView | null = null): void {
    this._job = job;
    const ended = jobEnded(job);
    const progress = job.progress ?? null;
    this.node.dataset.state = job.state;
    this.node.classList.toggle('jp-mod-ended', ended);
    this.node.classList.toggle('jp-mod-failed', job.state === 'failed' || job.state === 'lost');
    setText(this._name, job.name);
    this._name.title = job.id;
    setText(this._workload, job.workload);
    setText(this._state, describeJobState(job.state));

    let fraction = jobFraction(progress);
    if (fraction === null && job.state === 'finished') {
      fraction = 1;
    }
    this._bar.classList.toggle('jp-mod-indeterminate', fraction === null && !ended);
    this._bar.hidden = fraction === null && ended;
    if (fraction === null) {
      this._bar.removeAttribute('aria-valuenow');
      this._fill.style.width = '0%';
    } else {
      const percent = Math.round(fraction * 1000) / 10;
      this._bar.setAttribute('aria-valuenow', String(percent));
      this._fill.style.width = `${percent}%`;
    }
    const progressText = describeJobProgress(progress);
    setText(this._progressText, progressText);
    this._progressText.hidden = !progressText;

    // speed, ETA and workers describe a running job: the job's own smoothed numbers, written
    // as the CLI and the notebook write them; the Status row shows the phase before step one
    this._show('rate', this._rate, ended ? '' : jobSpeedText(progress));
    this._show('eta', this._eta, ended ? '' : jobEtaText(progress));
    this._show('workers', this._workers, ended ? '' : jobWorkersText(progress));
    const history = Array.isArray(job.loss_history) ? job.loss_history : [];
    const finite = history.filter(isFiniteNumber);
    const lastLoss = isFiniteNumber(progress?.loss) ? progress?.loss : finite[finite.length - 1];
    const loss = formatLoss(lastLoss);
    const points = sparklinePoints(history, SPARK_WIDTH, SPARK_HEIGHT, 2);
    setText(this._loss, loss);
    this._line.setAttribute('points', points);
    this._spark.style.display = points ? '' : 'none';
    this._spark.setAttribute('aria-label', `loss over the last ${history.length} reports`);
    this._rows.loss.hidden = !loss && !points;
    this._show('message', this._message, typeof progress?.message === 'string' ? progress.message : '');
    setText(this._error, job.error ?? '');
    this._error.hidden = !job.error;
    this._show('owner', this._owner, describeOwner(job.owner));
    const took =
      ended && isFiniteNumber(job.finished_at) && isFiniteNumber(job.created_at)
        ? formatEta(job.finished_at - job.created_at)
        : '';
    this._show('took', this._took, took);

    this._cancel.hidden = ended;
    this._cancel.disabled = busy || !jobCancellable(job);
    setText(this._cancel, job.state === 'cancelling' || job.cancel_requested ? 'Cancelling…' : 'Cancel');
    this._remove.hidden = !ended;
    this._remove.disabled = busy;
    this._updateOutput(output);
  }

  /** The Output toggle and, while open, the lines (rebuilt only when they changed). */
  private _updateOutput(output: IJobOutputView | null): void {
    const open = output !== null;
    const opened = open && !this._outputOpen;
    this._outputOpen = open;
    this._outputToggle.setAttribute('aria-expanded', String(open));
    this._outputToggle.classList.toggle('jp-mod-active', open);
    this._output.hidden = !open;
    if (!open) {
      if (this._outputKey !== '') {
        this._outputKey = '';
        this._outputPre.replaceChildren();
      }
      return;
    }
    if (opened) {
      this._stick = true;
    }
    const lines = output.lines;
    let status = '';
    if (output.error !== null) {
      status = `Could not read the output: ${output.error}`;
    } else if (lines === null) {
      status = 'Loading…';
    } else if (lines.length === 0) {
      status = NO_OUTPUT_TEXT;
    }
    setText(this._outputStatus, status);
    this._outputStatus.hidden = !status;
    this._outputStatus.classList.toggle('jp-Parallalx-error', output.error !== null);
    this._outputPre.hidden = !lines || lines.length === 0;

    const key = JSON.stringify(lines ?? []);
    const changed = key !== this._outputKey;
    if (changed) {
      this._outputKey = key;
      // each line as text (never markup), stderr marked for its own colour
      this._outputPre.replaceChildren(
        ...(lines ?? []).map(line =>
          h(
            'span',
            {
              class: `jp-Parallalx-outputLine${line.stream === 'stderr' ? ' jp-mod-stderr' : ''}`,
              dataset: { stream: line.stream }
            },
            `${formatOutputLine(line)}\n`
          )
        )
      );
    }
    // follow new lines, unless the user scrolled up to read
    if (this._stick && (opened || changed)) {
      this._outputPre.scrollTop = this._outputPre.scrollHeight;
    }
  }

  private _show(key: RowKey, node: HTMLElement, text: string): void {
    setText(node, text);
    this._rows[key].hidden = !text;
  }

  private async _run(action: (job: IJob) => Promise<void>): Promise<void> {
    if (this._job) {
      await action(this._job);
    }
  }

  private _job: IJob | null = null;
  private readonly _name: HTMLElement;
  private readonly _workload: HTMLElement;
  private readonly _state: HTMLElement;
  private readonly _bar: HTMLElement;
  private readonly _fill: HTMLElement;
  private readonly _progressText: HTMLElement;
  private readonly _rate: HTMLElement;
  private readonly _eta: HTMLElement;
  private readonly _workers: HTMLElement;
  private readonly _loss: HTMLElement;
  private readonly _spark: SVGSVGElement;
  private readonly _line: SVGPolylineElement;
  private readonly _message: HTMLElement;
  private readonly _error: HTMLElement;
  private readonly _owner: HTMLElement;
  private readonly _took: HTMLElement;
  private readonly _cancel: HTMLButtonElement;
  private readonly _remove: HTMLButtonElement;
  private readonly _outputToggle: HTMLButtonElement;
  private readonly _output: HTMLElement;
  private readonly _outputStatus: HTMLElement;
  private readonly _outputPre: HTMLPreElement;
  private _outputOpen = false;
  private _outputKey = '';
  private _stick = true;
  private readonly _rows: { [key in RowKey]: HTMLElement };
}

type RowKey = 'rate' | 'eta' | 'workers' | 'loss' | 'message' | 'owner' | 'took';

/** Set a node's text only when it differs (no needless DOM churn at 2 updates a second). */
function setText(node: Element, text: string): void {
  if (node.textContent !== text) {
    node.textContent = text;
  }
}
