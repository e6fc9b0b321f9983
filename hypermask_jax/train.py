"""Runs an experiment: one run, or the runs of a sweep as vmapped programs, one after another.

A start is all checks first (the config and its sweep, every folder, the data,
the memory a program needs), then the commitment (locks, config.json), so a
refused start leaves the workdir as it was. Each program then trains its runs
together (host_loop.py), sharded over the local devices; a sweep ends by
writing its tables (sweep_results.py).
"""

from absl import logging
import jax

from hypermask_jax import backend
from hypermask_jax import checkpoints
from hypermask_jax import config_checks
from hypermask_jax import devices
from hypermask_jax import environment
from hypermask_jax import fields
from hypermask_jax import host_loop
from hypermask_jax import outputs
from hypermask_jax import paths
from hypermask_jax import preemption
from hypermask_jax import sweep
from hypermask_jax import sweep_results
from hypermask_jax import trainer as trainer_lib
from hypermask_jax.data import decoded_copy
from hypermask_jax.data import tasks
from hypermask_jax.methods import METHODS
from hypermask_jax.methods import base


def build(config, input_shape, num_classes):
  """(method, trainer) for a resolved config."""
  method = METHODS[config.method](config, input_shape, num_classes)
  return method, trainer_lib.Trainer(config, method)


def build_for(config):
  """(method, trainer) from the config alone (shapes known without loading the data)."""
  return build(config, tasks.input_shape(config.dataset, config.data_protocol),
               tasks.num_classes(config))


def state_shapes(config):
  """One run's train state shapes for config, without computing anything."""
  _, trainer = build_for(config)
  state = jax.eval_shape(trainer.init_run, trainer_lib.run_hyperparams(config))
  return jax.tree.map(lambda x: (x.shape, x.dtype), state)


def _with_field(config, field, value):
  """A copy of config with the dotted `field` set to a saved (JSON) value."""
  config = config.copy_and_resolve_references()
  *parents, name = field.split('.')
  node = config
  for parent in parents:
    node = node[parent]
  with config.ignore_type(), config.unlocked():
    node[name] = tuple(value) if isinstance(node[name], tuple) else value
  return config


def refuse_shape_changes(config, changed):
  """Raises ConfigError if resuming with the `changed` fields would change the state's shapes.

  `changed` maps each differing field to (saved value, requested value); the
  fields named are those whose change alone changes a shape (all of them if
  only their combination does).
  """
  shapes = state_shapes(config)
  saved = config
  for field, (value, _) in changed.items():
    saved = _with_field(saved, field, value)
  if state_shapes(saved) == shapes:
    return
  culprits = [f for f, (value, _) in changed.items()
              if state_shapes(_with_field(config, f, value)) != shapes] or list(changed)
  raise config_checks.ConfigError(
      f"--allow_config_change cannot resume with {', '.join(culprits)} changed: "
      f"{'it changes' if len(culprits) == 1 else 'they change'} the shapes of the saved train "
      'state; keep the saved value, or use another --workdir')


def log_results(summary, path):
  """The final row of the accuracy matrix and the headline numbers, on the console."""
  final = [a for a in summary['accuracy_matrix'][-1] if a is not None]
  logging.info('final test accuracy (%%) of tasks 1-%d: %s', len(final),
               ' '.join(f'{a:.2f}' for a in final))
  logging.info('done: mean accuracy %.2f%%, BWT %.2f, forgetting %.2f; results in %s',
               summary['mean_accuracy'], summary['bwt'], summary['forgetting'], path)


def log_sweep(points, workdir):
  for point in points:
    mean, std = point.stat('mean_accuracy')
    logging.info('%s: mean accuracy %.2f%% ± %.2f over seeds %s', point.label, mean, std,
                 ', '.join(map(str, point.seeds)))
  logging.info('sweep tables in %s (%s, %s, %s, %s)', workdir, sweep_results.RUNS_CSV,
               sweep_results.GRID_CSV, sweep_results.BEST, sweep_results.RESULTS)


def runs_per_program(config, mesh):
  """The most runs one program of this config takes: runs_per_program, or as many as fit.

  Raises ConfigError if not even one run (with the data) fits a device.
  """
  _, trainer = build_for(config)
  per_run = host_loop.memory_per_run(trainer, config)
  capacity = host_loop.device_memory()
  gib = host_loop.format_bytes
  if per_run > capacity:
    raise config_checks.ConfigError(
        f'config: one run needs about {gib(per_run)} (its train state, gradients and Adam '
        f'update) but a device holds {gib(capacity)}; it does not fit even at one run per '
        'program: make the model smaller, or use a larger device')
  fit = mesh.devices.size * (capacity // per_run)
  logging.info('%s per run (train state %s); up to %d runs per program fit on %d device(s)',
               gib(per_run), gib(host_loop.bytes_of(
                   jax.eval_shape(trainer.init_run, trainer_lib.run_hyperparams(config)))),
               fit, mesh.devices.size)
  return min(config.runs_per_program, fit) if config.runs_per_program else fit


def _data_key(config):
  seed = config.seed if config.dataset in fields.SEEDED_TASKS else None
  return (config.dataset, config.data_dir, config.download, config.num_tasks,
          config.fecam_scenario, seed)


def _task_set(task_sets, config):
  """config's data from task_sets (a dict by _data_key), loaded into it on first use."""
  key = _data_key(config)
  if key not in task_sets:
    logging.info('loading data: %s (TFDS %s) from %s', config.dataset,
                 tasks.TFDS_NAMES[config.dataset], config.data_dir or 'the TFDS default data_dir')
    task_sets[key] = tasks.load_task_set(config)
  return task_sets[key]


def write_report(workdir, is_sweep, task_sets):
  """The figures and report.md (report.py) at the end: a run's, or the sweep's by grid point.
  Extras: a failure here is logged and never fails the finished run."""
  from hypermask_jax import report  # pylint: disable=g-import-not-at-top  (matplotlib: on demand)
  try:
    if is_sweep:
      report.write_report([workdir])
    else:
      report.write_run_report(workdir, data=next(iter(task_sets.values()), None))
  except Exception:  # pylint: disable=broad-except
    logging.exception('Could not write the report; the results in %s are complete.', workdir)


def train_and_evaluate(config, workdir, allow_config_change=False, sweep_shard=None,
                       with_report=False):
  """Runs `config` (one run, or the runs of config.sweep) in `workdir`, resuming where it stopped.

  Returns the summary of a single run; for a sweep, {'runs': {name: summary}
  of the finished runs, 'grid': their grid points (results.GridPoint)}. Raises
  errors.BadInput (before anything is written) for a config, workdir or
  dataset it cannot run with, and preemption.Preempted after saving if SIGTERM
  or SIGINT arrived; running the same call again continues where it stopped and
  ends with the results an uninterrupted run would have produced. with_report:
  write the figures and report.md when the run or the sweep ends.
  """
  backend.check_environment()
  decoded_copy.enabled()  # a bad HYPERMASK_DECODED_COPY stops the run before it writes
  workdir = paths.absolute(workdir)
  runs, (shard_index, shard_count) = sweep.check(config, workdir, sweep_shard)
  is_sweep = sweep.is_sweep(config)
  run_outputs = {run.name: outputs.RunOutputs(sweep.run_folder(workdir, config, run))
                 for run in runs}
  finished = {run.name: run_outputs[run.name].finished_summary(run.config) for run in runs}
  if all(s is not None for s in finished.values()) and not is_sweep:
    logging.info('%s already holds the finished results of this config; not retraining.',
                 workdir)
    log_results(finished[runs[0].name], workdir)
    return finished[runs[0].name]

  # The workdir, the data and the batch are checked before the state's shapes are traced to
  # size the programs (runs_per_program): tracing builds the CPU kernels at a first run.
  if devices.is_primary():
    outputs.Workdir(workdir).check_usable()
  task_sets = {}
  for run in runs:
    if finished[run.name] is None:
      config_checks.fit_to_data(run.config, _task_set(task_sets, run.config))

  logging.info('%s', environment.one_line())
  environment.use_compilation_cache(runs[0].config.compilation_cache)
  mesh = devices.runs_mesh()
  caps = {}

  def capacity(program_config):
    key = repr(sorted(outputs.flat_config(program_config).items()))
    if key not in caps:
      caps[key] = runs_per_program(program_config, mesh)
    return caps[key]

  programs = sweep.group(runs, capacity)
  mine = [p for p in sweep.shard(programs, shard_index, shard_count)
          if any(finished[run.name] is None for run in p.runs)]
  for program in mine:  # every check before anything is written
    if devices.is_primary():
      outputs.Workdir(sweep.program_folder(workdir, config, program)).check_usable()
  for i, program in enumerate(mine):
    mine[i] = fit_to_data(program, _task_set(task_sets, program.config))  # epochs become steps
    for run in mine[i].runs:  # compared as saved: with the steps the epochs became
      changed = run_outputs[run.name].changes(run.config, allow_config_change)
      if changed:
        refuse_shape_changes(run.config, changed)
  if is_sweep and mine and devices.is_primary():
    sweep.save_record(workdir, config)

  later_steps = sum(p.config.num_tasks * p.config.steps_per_task for p in mine)
  for program in mine:
    later_steps -= program.config.num_tasks * program.config.steps_per_task
    summaries = run_program(program, _task_set(task_sets, program.config),
                            [run_outputs[r.name] for r in program.runs],
                            sweep.program_folder(workdir, config, program), mesh,
                            (program.index, len(programs), later_steps) if is_sweep else None)
    for run, summary in zip(program.runs, summaries):
      finished[run.name] = summary
  if not is_sweep:
    summary = finished[runs[0].name]
    log_results(summary, workdir)
    if with_report and devices.is_primary():
      write_report(workdir, is_sweep, task_sets)
    return summary
  if not devices.is_primary():
    return {'runs': {name: s for name, s in finished.items() if s is not None}, 'grid': []}
  points = sweep_results.write(workdir, config, runs)
  log_sweep(points, workdir)
  if with_report and mine:
    write_report(workdir, is_sweep, task_sets)
  return {'runs': {name: s for name, s in finished.items() if s is not None}, 'grid': points}


def fit_to_data(program, task_set):
  """The program with its configs checked against the data and steps_per_task filled in."""
  fit = lambda config: config_checks.fit_to_data(config, task_set)
  runs = tuple(sweep.Run(run.index, run.values, fit(run.config)) for run in program.runs)
  return sweep.Program(program.index, runs, fit(program.config))


def run_program(program, task_set, outs, folder, mesh, sweep_position):
  """Trains one program's runs to the end (or to a stop request); returns their summaries."""
  config = program.config
  method, trainer = build(config, task_set.input_shape, task_set.num_classes)
  padded = devices.padded_runs(len(program.runs), mesh)
  state, data, hp = trainer.fresh(task_set, host_loop.padded_configs(program, padded), mesh)
  counts = method.param_counts(jax.eval_shape(
      trainer.init_run, trainer_lib.run_hyperparams(program.runs[0].config)).params)
  logging.info('%s%d tasks of %d training steps; %d run(s)%s; parameters per run: %s',
               f'{program.name}: ' if sweep_position else '', config.num_tasks,
               config.steps_per_task, len(program.runs),
               f' (+{padded - len(program.runs)} padding)' if padded > len(program.runs) else '',
               base.describe_counts(counts))
  logging.info('Settings: %s', config_checks.describe(config))
  folder = outputs.Workdir(folder)
  primary = devices.is_primary()
  if primary:
    folder.lock_and_create()
  try:
    checkpointer = checkpoints.Checkpointer(folder.path, config.checkpoints_to_keep)
    try:
      restored = host_loop.restore(checkpointer, state, program, folder.path)
      for index, (run, out) in enumerate(zip(program.runs, outs)):
        if primary:
          out.save_config(run.config, folder.path, index)
      with preemption.StopSignals() as stop:
        loop = host_loop.ProgramLoop(program, outs, data, method, trainer, hp, checkpointer,
                                     stop, sweep_position)
        try:
          return loop.run(state, restored)
        finally:
          loop.close()
    finally:
      checkpointer.close()
  finally:
    if primary:
      folder.release()
