"""The training loop of the experiment stack: ``train_and_evaluate(config, workdir)``.

One jitted train step and one evaluation loop serve every method: a recipe
(:mod:`sparsejax.experiment.recipes`) turns the config into a list of
:class:`~sparsejax.experiment.recipes.Phase` values (dense training, prune →
retrain, ...), and :func:`run_phase` trains each of them, handing params, model
collections and pruning masks on to the next one.

Data parallelism uses ``jax.sharding``: a 1-D mesh ``("data",)`` over all devices,
batches sharded along it, params and optimizer state replicated; ``jax.jit``
propagates the shardings (gradients are all-reduced by XLA).

Several processes (hosts) run the same loop on one global mesh after
:func:`initialize_distributed` (``launch.py --coordinator_address=... --num_processes=N
--process_id=i``, or ``--config.distributed=True`` where JAX detects the cluster:
SLURM, Open MPI, Cloud TPU, Kubernetes). Every array the loop creates is a global
array made by a jitted function with explicit ``out_shardings`` (nothing is
``device_put`` from one process's memory onto the global mesh); host reads take
replicated values only; every process saves and restores the orbax checkpoints
(orbax writes each array once); ``config.json``, ``metrics.jsonl`` and
``summary.json`` are written by process 0 alone (the others compute the same
values and skip the writes). The workdir must be on a file system all processes
share. ``tests/test_multihost.py`` checks that 2 processes, killed after a
checkpoint and resumed, end bitwise equal to 1 process with the same 2-device mesh.

Per-step metric sums and the first non-finite step live in the (checkpointed)
train state, so logging needs a host sync only every ``log_every_steps`` and a
resumed run logs exactly what the uninterrupted run logs.

Example:
  >>> from sparsejax.experiment import config as config_lib, train
  >>> summary = train.train_and_evaluate(config_lib.base_config(), "/tmp/run")
  >>> summary["accuracy"]
  0.95...
"""

from __future__ import annotations

import builtins
import functools
import json
import os
import time
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from sparsejax.experiment import checkpoint as ckpt_lib
from sparsejax.experiment import config as config_lib
from sparsejax.analysis import costs
from sparsejax.experiment import recipes, report
from sparsejax.adapters.weights import contraction_axes
from sparsejax.transform import PruningState, get_masks
from sparsejax.tree import apply_masks

State = dict[str, Any]

_NO_CLUSTER = (
    "jax.distributed found no cluster to join: pass --coordinator_address=HOST:PORT (process "
    "0's host and a free port, the same on every process), --num_processes=N and "
    "--process_id=I (0..N-1, one per process) to launch.py, or start one process per host "
    "under SLURM (srun) or Open MPI (mpirun) with --config.distributed=True.")


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None) -> None:
    """Joins the processes of a multi-host job (``jax.distributed.initialize``).

    Must run before anything touches a JAX backend (``jax.devices()``, any
    computation). Values left ``None`` are detected by JAX where it knows the
    cluster (SLURM, Open MPI, Cloud TPU, Kubernetes; ``$JAX_COORDINATOR_ADDRESS``
    also sets the address). A second call is a no-op.

    Args:
      coordinator_address: ``host:port`` of process 0's coordinator service,
        identical on every process.
      num_processes: number of processes of the job.
      process_id: this process's index, ``0 .. num_processes - 1``.

    Raises:
      ValueError: nothing given and no cluster detected (the message says which
        flags or environment to set), or inconsistent values.

    Example:
      >>> initialize_distributed("10.0.0.1:1234", num_processes=2, process_id=0)  # host 0
      >>> jax.process_count()  # 2; jax.devices() now lists both hosts' devices
      2
    """
    if jax.distributed.is_initialized():
        return
    if coordinator_address is not None and not coordinator_address.rpartition(":")[2].isdigit():
        raise ValueError(f"--coordinator_address={coordinator_address!r} needs a port: use "
                         "HOST:PORT, e.g. 10.0.0.1:1234 (process 0's host).")
    if num_processes is not None and process_id is not None and not (
            0 <= process_id < num_processes):
        raise ValueError(f"--process_id={process_id} must be in 0..{num_processes - 1} "
                         f"(--num_processes={num_processes}): one id per process.")
    try:
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
    except ValueError as error:
        # JAX: "coordinator_address should be defined." / "... must be defined."
        unset = None in (coordinator_address, num_processes, process_id)
        if unset and "defined" in str(error):
            raise ValueError(_NO_CLUSTER) from None
        raise


def _on_main_process(fn: Callable[[], Any], what: str) -> Any:
    """Runs ``fn`` on process 0 alone and gives its JSON-able result to every process.

    An exception raised by ``fn`` is raised on every process (the same built-in
    type and message), so no process waits for a result that never comes.
    """
    if not jax.distributed.is_initialized() or jax.process_count() == 1:
        return fn()
    payload, failure = None, None
    if jax.process_index() == 0:
        try:
            payload = {"result": fn()}
        except Exception as error:  # Re-raised below, on every process.
            failure = error
            payload = {"error": type(error).__name__, "message": str(error)}
    data = json.dumps(payload).encode() if payload is not None else b""
    size = int(multihost_utils.broadcast_one_to_all(np.int32(len(data))))
    buffer = np.zeros(size, np.uint8)
    if payload is not None:
        buffer[:] = np.frombuffer(data, np.uint8)
    message = json.loads(bytes(np.asarray(multihost_utils.broadcast_one_to_all(buffer))))
    if failure is not None:
        raise failure
    if "error" in message:
        kind = getattr(builtins, message["error"], None)
        if not (isinstance(kind, type) and issubclass(kind, Exception)):
            kind = RuntimeError
        raise kind(f"{message['message']} (raised on process 0 while {what})")
    return message["result"]


def make_mesh() -> Mesh:
    """A 1-D ``("data",)`` mesh over every device of every process."""
    return Mesh(np.asarray(jax.devices()), ("data",))


def check_batch_sizes(config: ml_collections.ConfigDict, num_devices: int) -> None:
    """Raises a clear error if a batch size does not split evenly over the devices."""
    for key in ("batch_size", "eval_batch_size"):
        if config[key] % num_devices:
            raise ValueError(
                f"config.{key}={config[key]} is not divisible by the {num_devices} devices; "
                f"use a multiple of {num_devices} (e.g. "
                f"{max(num_devices, config[key] // num_devices * num_devices)}).")


def make_schedule(config: ml_collections.ConfigDict, num_steps: int, main_steps: int,
                  steps_per_epoch: int, scale: float = 1.0) -> optax.Schedule:
    """The learning-rate schedule of a phase of ``num_steps`` steps.

    Epoch-valued settings (``warmup_epochs``, ``boundaries``) describe the main
    phase of ``main_steps`` steps; for a phase of another length they are scaled
    by ``num_steps / main_steps`` (so a retraining phase repeats the schedule's shape).

    Args:
      config: the run config (``optimizer.learning_rate``, ``schedule.*``).
      num_steps: steps of the phase.
      main_steps: steps of the main phase.
      steps_per_epoch: training batches per epoch.
      scale: factor on the learning rate (e.g. 0.1 for Han's retraining).

    Returns:
      ``step -> learning rate``.

    Example:
      >>> config.schedule.name, config.schedule.boundaries = "step", (50, 100)
      >>> lr = make_schedule(config, 150 * 391, 150 * 391, 391)  # SWAT's CIFAR schedule
    """
    ratio = num_steps / main_steps
    base = config.optimizer.learning_rate * scale
    warmup = min(num_steps - 1, round(config.schedule.warmup_epochs * steps_per_epoch * ratio))
    warmup = max(warmup, 0)
    name = config.schedule.name
    if name == "constant":
        main = optax.constant_schedule(base)
    elif name == "step":
        boundaries = {round(b * steps_per_epoch * ratio) - warmup: config.schedule.decay_factor
                      for b in config.schedule.boundaries}
        main = optax.piecewise_constant_schedule(base, boundaries)
    else:
        main = optax.cosine_decay_schedule(base, max(num_steps - warmup, 1))
    if warmup == 0:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, base, warmup), main], [warmup])


def _decay_mask(decay_1d: bool) -> Callable[[Any], Any]:
    return lambda params: jax.tree.map(lambda p: decay_1d or jnp.ndim(p) > 1, params)


def make_optimizer(config: ml_collections.ConfigDict, phase: recipes.Phase,
                   schedule: optax.Schedule) -> optax.GradientTransformation:
    """The optimizer chain of a phase: [gradient transform], decay + optimizer, [pruning],
    all wrapped by the phase's ``optimizer_wrapper`` (DST, AC/DC) when it has one.

    Weight decay skips 1-D parameters (biases, norm scales) unless
    ``optimizer.decay_1d``; SGD uses coupled L2 (as PyTorch's SGD and the papers'
    code), AdamW decoupled decay. The pruning transform comes last so pruned
    weights stay exactly 0.

    Args:
      config: the run config.
      phase: the phase (its ``gradient_transform``, ``pruning`` and
        ``optimizer_wrapper`` fields).
      schedule: learning-rate schedule.

    Returns:
      An optax transformation (call ``update(grads, state, params)``).
    """
    opt = config.optimizer
    mask = _decay_mask(opt.decay_1d)
    parts = []
    if phase.gradient_transform is not None:
        parts.append(phase.gradient_transform)
    if opt.name == "sgd":
        if opt.weight_decay:
            parts.append(optax.add_decayed_weights(opt.weight_decay, mask=mask))
        parts.append(optax.sgd(schedule, momentum=opt.momentum or None, nesterov=opt.nesterov))
    else:
        parts.append(optax.adamw(schedule, weight_decay=opt.weight_decay, mask=mask))
    if phase.pruning is not None:
        if phase.optimizer_wrapper is not None:
            raise ValueError(f"phase {phase.name!r} has both pruning and optimizer_wrapper; a "
                             "wrapper (DST, AC/DC) keeps its own masks: use one of them.")
        parts.append(phase.pruning)
    tx = optax.chain(*parts)
    if phase.optimizer_wrapper is not None:  # DST / AC/DC: sees the raw gradients, owns the state
        tx = phase.optimizer_wrapper(tx)
    return tx


def _zero_metrics() -> dict[str, jax.Array]:
    return {"loss_sum": jnp.zeros((), jnp.float32), "correct": jnp.zeros((), jnp.int32),
            "count": jnp.zeros((), jnp.int32), "steps": jnp.zeros((), jnp.int32),
            "first_nonfinite": jnp.full((), -1, jnp.int32)}


def _no_eval() -> dict[str, jax.Array]:
    """The ``pruned_eval`` of a state that was not evaluated right after pruning (NaN)."""
    return {"accuracy": jnp.full((), jnp.nan, jnp.float32),
            "loss": jnp.full((), jnp.nan, jnp.float32),
            "kept_magnitude": jnp.full((), jnp.nan, jnp.float32)}


def _kept_magnitude(params: Any, masks: Any) -> jax.Array:
    """``Σ|W ⊙ mask| / Σ|W|`` over the masked leaves (NaN when none is masked)."""

    def parts(mask, w):
        if mask is None:
            return jnp.zeros(2, jnp.float32)
        a = jnp.abs(w.astype(jnp.float32))
        return jnp.stack([jnp.sum(jnp.where(mask, a, 0.0)), jnp.sum(a)])

    sums = sum(jax.tree.leaves(jax.tree.map(parts, masks, params, is_leaf=lambda x: x is None)),
               jnp.zeros(2, jnp.float32))
    return sums[0] / sums[1]


def _measure_kept(previous: State | None, state: State, replicated: NamedSharding,
                  label: str) -> float:
    """:func:`_kept_magnitude` of ``previous``'s params under ``state``'s masks (NaN if none)."""
    masks = get_masks(state["opt_state"])
    if masks is None or previous is None:
        return float("nan")
    try:
        kept = jax.jit(_kept_magnitude, out_shardings=replicated)(previous["params"], masks)
    except (ValueError, TypeError) as error:  # A mask tree that does not mirror the params.
        logging.warning("%s: kept magnitude not measured (%s).", label, error)
        return float("nan")
    return float(jax.device_get(kept))


PREPARE_FILE = "prepare.json"
"""The info of a phase's ``prepare`` (e.g. ASP's channel permutation), in its checkpoint
directory: written when the phase starts fresh, read back when it resumes."""


def prepared_info(workdir: str, index: int, phase: recipes.Phase) -> dict[str, Any] | None:
    """The info dict that ``phase.prepare`` returned in this run (``None`` if none).

    Args:
      workdir: the run directory.
      index: position of the phase.
      phase: the phase.

    Returns:
      The dict saved by :func:`run_phase` in the phase's checkpoint directory, or
      ``None`` when the phase has no ``prepare`` or has not started.
    """
    path = os.path.join(_phase_dir(workdir, index, phase), PREPARE_FILE)
    if phase.prepare is None or not os.path.exists(path):
        return None
    return ckpt_lib.read_json(path, "phase prepare info")


def _log_prepared(label: str, info: dict[str, Any], restored: bool) -> None:
    how = "restored" if restored else "computed"
    logging.info("%s: prepare info (%s): %d entr%s.", label, how, len(info),
                 "y" if len(info) == 1 else "ies")
    for key, value in info.items():
        if isinstance(value, dict) and "kept_perm" in value:
            logging.info("%s: channel permutation of %s (producer %s): kept |w| %.6g -> %.6g of "
                         "%.6g (unstructured bound %.6g), efficacy %.3f, %d regroupings.", label,
                         key, value.get("producer"), value["kept_base"], value["kept_perm"],
                         value["total"], value["kept_unstructured"], value["efficacy"],
                         value["regroupings"])
        else:
            logging.info("%s: %s = %s", label, key, value)


def _prepare(phase: recipes.Phase, previous: State, replicated: NamedSharding, directory: str,
             label: str) -> State:
    """Applies ``phase.prepare`` on the host to ``previous``'s params and collections.

    Every process runs it (it is deterministic) and places the result as global
    replicated arrays (``make_array_from_callback``: each process fills its own
    devices); process 0 saves the info in the phase directory.
    """
    host = jax.device_get({"params": previous["params"],
                           "collections": previous["collections"]})
    params, collections, info = phase.prepare(host["params"], host["collections"])
    info = json.loads(json.dumps(info))  # JSON-able, and as a resumed run reads it back.
    if ckpt_lib.is_main_process():
        os.makedirs(directory, exist_ok=True)
    ckpt_lib.write_json(os.path.join(directory, PREPARE_FILE), info)
    _log_prepared(label, info, restored=False)

    def place(x):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, replicated,
                                            lambda index: np.asarray(x[index]))

    return {**previous, "params": jax.tree.map(place, params),
            "collections": jax.tree.map(place, collections)}


def _cross_entropy(logits: jax.Array, labels: jax.Array, smoothing: float) -> jax.Array:
    targets = jax.nn.one_hot(labels, logits.shape[-1])
    if smoothing:
        targets = optax.smooth_labels(targets, smoothing)
    return optax.softmax_cross_entropy(logits, targets)


def _train_step(state: State, batch: dict[str, jax.Array], data_step: jax.Array, *,
                model: nn.Module, tx: optax.GradientTransformation,
                label_smoothing: float) -> State:
    key = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), data_step)
    mutable = sorted(state["collections"])

    def loss_fn(params):
        variables = {"params": params, **state["collections"]}
        rngs = {"dropout": key}
        if mutable:
            logits, updates = model.apply(variables, batch["image"], train=True,
                                          mutable=mutable, rngs=rngs)
        else:
            logits, updates = model.apply(variables, batch["image"], train=True, rngs=rngs), {}
        weights = batch["mask"].astype(jnp.float32)
        losses = _cross_entropy(logits, batch["label"], label_smoothing)
        loss = jnp.sum(losses * weights) / jnp.maximum(jnp.sum(weights), 1.0)
        return loss, (logits, updates)

    (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    deltas, opt_state = tx.update(grads, state["opt_state"], state["params"], grads=grads)
    params = optax.apply_updates(state["params"], deltas)
    correct = jnp.sum((jnp.argmax(logits, -1) == batch["label"]) & batch["mask"])
    m = state["metrics"]
    nonfinite = ~jnp.isfinite(loss)
    metrics = {"loss_sum": m["loss_sum"] + loss, "correct": m["correct"] + correct,
               "count": m["count"] + jnp.sum(batch["mask"]).astype(jnp.int32),
               "steps": m["steps"] + 1,
               "first_nonfinite": jnp.where((m["first_nonfinite"] < 0) & nonfinite,
                                            state["step"], m["first_nonfinite"])}
    return {"step": state["step"] + 1, "params": params,
            "collections": {**state["collections"], **updates}, "opt_state": opt_state,
            "rng": state["rng"], "metrics": metrics, "pruned_eval": state["pruned_eval"]}


def _eval_step(variables: dict[str, Any], batch: dict[str, jax.Array], *,
               model: nn.Module) -> dict[str, jax.Array]:
    logits = model.apply(variables, batch["image"], train=False)
    losses = _cross_entropy(logits, batch["label"], 0.0)
    mask = batch["mask"]
    return {"loss": jnp.sum(jnp.where(mask, losses, 0.0)),
            "correct": jnp.sum((jnp.argmax(logits, -1) == batch["label"]) & mask),
            "count": jnp.sum(mask)}


_jitted_eval_step = jax.jit(_eval_step, static_argnames="model")


def evaluate(model: nn.Module, state: State, dataset: Any) -> dict[str, float]:
    """Accuracy and mean cross-entropy over one pass of ``dataset`` (padding masked).

    Args:
      model: the (possibly sparsified) model of the state.
      state: a train state (``params`` and ``collections``).
      dataset: an evaluation :class:`sparsejax.data.Dataset`.

    Returns:
      ``{"accuracy": float, "loss": float}``.
    """
    variables = {"params": state["params"], **state["collections"]}
    totals = None
    for batch in dataset:
        out = _jitted_eval_step(variables, batch, model=model)
        totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
    count = max(int(totals["count"]), 1)
    return {"accuracy": float(totals["correct"]) / count, "loss": float(totals["loss"]) / count}


class _Progress:
    """Logs step, loss, accuracy, learning rate, throughput and ETA of the whole run."""

    def __init__(self, total_steps: int, done_steps: int, batch_size: int) -> None:
        self.total = total_steps
        self.done = done_steps
        self.batch_size = batch_size
        self.time = time.perf_counter()
        self.steps_since = 0

    def tick(self, steps: int) -> None:
        self.done += steps
        self.steps_since += steps

    def throughput(self) -> float:
        now = time.perf_counter()
        rate = self.steps_since / max(now - self.time, 1e-9)
        self.time, self.steps_since = now, 0
        return rate

    def eta(self, rate: float) -> str:
        seconds = int((self.total - self.done) / max(rate, 1e-9))
        return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _format_phase(index: int, count: int, phase: recipes.Phase) -> str:
    return f"phase {index + 1}/{count} {phase.name}"


def run_phase(*, index: int, phases: list[recipes.Phase], base_model: nn.Module,
              previous: State | None, config: ml_collections.ConfigDict, workdir: str,
              train_ds: Any, test_ds: Any, main_steps: int, data_offset: int,
              replicated: NamedSharding,
              progress: _Progress) -> tuple[State, dict[str, float] | None]:
    """Trains one phase (the one training loop of the experiment stack).

    Starts from ``previous`` (params, model collections and pruning masks of the
    last phase; ``None`` initialises the model), resumes from the phase's latest
    checkpoint if there is one, logs and checkpoints as configured, evaluates at
    the end and returns the final state. A fresh phase with a ``prepare``
    transform first applies it to ``previous`` on the host and saves its info
    (:func:`prepared_info`); a phase after the first that starts by pruning is
    evaluated right after it and records the fraction of the incoming weights'
    magnitude its masks keep (``state["pruned_eval"]``).

    Args:
      index: position of the phase in ``phases``.
      phases: all phases of the recipe.
      base_model: the unmodified zoo model.
      previous: final state of the previous phase, or ``None``.
      config: the run config.
      workdir: the run directory.
      train_ds: the training dataset (batched by step).
      test_ds: the evaluation dataset.
      main_steps: steps of the main phase (sets the LR schedule's scale).
      data_offset: global data step of the phase's step 0.
      replicated: sharding of the train state.
      progress: progress tracker (throughput and ETA).

    Returns:
      The final train state of the phase and its final evaluation (``None`` when
      the phase was already complete in the checkpoint).

    Raises:
      FloatingPointError: the loss became NaN or infinite (names the step).
    """
    phase = phases[index]
    model = phase.model(base_model)
    schedule = make_schedule(config, phase.num_steps, main_steps, train_ds.steps_per_epoch,
                             phase.lr_scale)
    tx = make_optimizer(config, phase, schedule)
    checkpointer = ckpt_lib.Checkpointer(_phase_dir(workdir, index, phase))
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    label = _format_phase(index, len(phases), phase)
    start = checkpointer.latest_step()
    if phase.prepare is not None and previous is not None:
        if start is None:  # A fresh start: transform the incoming params (host side).
            previous = _prepare(phase, previous, replicated,
                                _phase_dir(workdir, index, phase), label)
        elif (info := prepared_info(workdir, index, phase)) is not None:
            _log_prepared(label, info, restored=True)
    # Built by one jitted function with out_shardings: global arrays on every process
    # (a device_put of process-local arrays onto a multi-process mesh is not one).
    build = functools.partial(_initial_state, model, tx, phase, config=config,
                              image_shape=train_ds.info.image_shape, index=index)
    state = jax.jit(lambda prev: build(previous=prev), out_shardings=replicated)(previous)
    zero_metrics = jax.jit(_zero_metrics, out_shardings=replicated)
    if start is not None:
        state = checkpointer.restore(state)
        logging.info("%s: restored the checkpoint of step %d.", label, start)
        progress.tick(start)
    step_fn = jax.jit(functools.partial(_train_step, model=model, tx=tx,
                                        label_smoothing=config.optimizer.label_smoothing),
                      donate_argnums=0, out_shardings=replicated)
    log_every = config.log_every_steps or phase.num_steps
    eval_every = config.eval_every_steps or phase.num_steps
    ckpt_every = config.checkpoint_every_steps or phase.num_steps
    step = int(state["step"])
    if start is None and index > 0 and phase.pruning is not None and _masks_at_init(state):
        # The accuracy of the freshly pruned model (before any retraining): kept in the
        # (checkpointed, replicated) state so a resumed run reports it too.
        pruned = evaluate(model, state, test_ds)
        # Fraction of the incoming (dense) weights' magnitude the fresh masks keep.
        kept = _measure_kept(previous, state, replicated, label)
        logging.info("%s: test accuracy right after pruning %.4f, loss %.4f; the masks keep "
                     "%.4f of the weight magnitude", label, pruned["accuracy"], pruned["loss"],
                     kept)
        ckpt_lib.append_jsonl(metrics_path, {
            "type": "eval", "phase": phase.name, "phase_index": index, "step": data_offset,
            "phase_step": 0, **pruned})
        values = {k: jnp.float32(v) for k, v in {**pruned, "kept_magnitude": kept}.items()}
        state = {**state, "pruned_eval": jax.jit(lambda: values, out_shardings=replicated)()}
    progress.throughput()
    result = None
    while step < phase.num_steps:
        batch = train_ds.get_batch(data_offset + step)
        state = step_fn(state, batch, jnp.int32(data_offset + step))
        step += 1
        progress.tick(1)
        end = step == phase.num_steps
        if step % log_every == 0 or end or step % ckpt_every == 0:
            state = _log_train(state, step, label, phase, schedule, data_offset, metrics_path,
                               progress, config.batch_size, zero_metrics)
        if step % eval_every == 0 or end:
            result = evaluate(model, state, test_ds)
            logging.info("%s step %d/%d: test accuracy %.4f, loss %.4f", label, step,
                         phase.num_steps, result["accuracy"], result["loss"])
            ckpt_lib.append_jsonl(metrics_path, {
                "type": "eval", "phase": phase.name, "phase_index": index,
                "step": data_offset + step, "phase_step": step, **result})
        if step % ckpt_every == 0 or end:
            checkpointer.save(step, state)
    checkpointer.close()
    return state, result


def _initial_state(model: nn.Module, tx: optax.GradientTransformation, phase: recipes.Phase,
                   previous: State | None, config: ml_collections.ConfigDict,
                   image_shape: tuple[int, ...], index: int) -> State:
    """Phase 0 initialises the model; later phases take the previous params and
    collections (a method's fresh ``sparsity`` state is initialised when it changes).
    Traceable: :func:`run_phase` jits it with the state's ``out_shardings``."""
    if previous is None or phase.method is not None:
        # XLA:CPU compiles RngBitGenerator-based initialisers ~5x faster than threefry ones.
        key = jax.random.fold_in(jax.random.key(config.seed, impl="rbg"), index)
        sample = jnp.zeros((1, *image_shape), jnp.float32)
        variables = dict(jax.jit(functools.partial(model.init, train=False))(
            {"params": key, "dropout": key}, sample))
        params = variables.pop("params")
        collections = variables
    else:
        params, collections = previous["params"], {}
    if previous is not None:
        params = previous["params"]
        collections = {**collections, **{k: v for k, v in previous["collections"].items()
                                         if k != "sparsity"}}
    opt_state = jax.jit(tx.init)(params)
    masks = get_masks(opt_state)
    if masks is not None:
        params = apply_masks(params, masks)
    return {"step": jnp.zeros((), jnp.int32), "params": params, "collections": collections,
            "opt_state": opt_state,
            "rng": jax.random.key_data(jax.random.fold_in(jax.random.key(config.seed), 1 << 20)),
            "metrics": _zero_metrics(), "pruned_eval": _no_eval()}


def _masks_at_init(state: State) -> bool:
    """Whether the phase's pruning made its masks at ``init`` (magnitude, SNIP), so the
    model can be evaluated "right after pruning"; a criterion that needs the step's
    gradient (saliency) makes them at the first update, and that evaluation is left out
    (reported as missing) rather than measuring the dense weights."""
    is_state = lambda x: isinstance(x, PruningState)
    found = [x for x in jax.tree.leaves(state["opt_state"], is_leaf=is_state) if is_state(x)]
    return bool(found) and int(jax.device_get(found[0].mask_step)) >= 0


def _log_train(state: State, step: int, label: str, phase: recipes.Phase,
               schedule: optax.Schedule, data_offset: int, metrics_path: str,
               progress: _Progress, batch_size: int,
               zero_metrics: Callable[[], dict[str, jax.Array]]) -> State:
    m = jax.device_get(state["metrics"])  # Replicated: every process reads its own copy.
    bad = int(m["first_nonfinite"])
    if bad >= 0:
        raise FloatingPointError(
            f"{label}: the training loss became NaN/inf at phase step {bad} (global step "
            f"{data_offset + bad}). Lower config.optimizer.learning_rate, add warm-up "
            "(config.schedule.warmup_epochs) or check the data; the last good checkpoint is "
            "kept in the workdir.")
    rate = progress.throughput()
    record = {"type": "train", "phase": phase.name, "step": data_offset + step,
              "phase_step": step, "loss": float(m["loss_sum"]) / max(int(m["steps"]), 1),
              "accuracy": float(m["correct"]) / max(int(m["count"]), 1),
              "learning_rate": float(schedule(step - 1))}
    ckpt_lib.append_jsonl(metrics_path, record)
    logging.info("%s step %d/%d (%.0f%%): loss %.4f, accuracy %.4f, lr %.4g | %.1f steps/s, "
                 "%.0f examples/s | ETA %s", label, step, phase.num_steps,
                 100 * step / phase.num_steps, record["loss"], record["accuracy"],
                 record["learning_rate"], rate, rate * batch_size, progress.eta(rate))
    return {**state, "metrics": zero_metrics()}


def _phase_dir(workdir: str, index: int, phase: recipes.Phase) -> str:
    return os.path.join(workdir, "checkpoints", f"phase{index}_{phase.name}")


def _resume_point(workdir: str, phases: list[recipes.Phase]) -> int:
    """Global step of the newest checkpoint of the run (0 if none)."""
    point, offset = 0, 0
    for index, phase in enumerate(phases):
        directory = _phase_dir(workdir, index, phase)
        if os.path.isdir(directory):
            latest = ckpt_lib.Checkpointer(directory).latest_step()
            if latest is not None:
                point = offset + latest
        offset += phase.num_steps
    return point


def _truncate_metrics(path: str, last_step: int) -> None:
    """Drops records logged after ``last_step`` (they are replayed after a resume)."""
    records = ckpt_lib.read_jsonl(path)
    kept = [r for r in records if r["step"] <= last_step]
    if len(kept) != len(records):
        ckpt_lib.write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       overwrite: bool = False, resume: bool = False) -> dict[str, Any]:
    """Trains and evaluates one run of ``config``; writes its results to ``workdir``.

    Writes ``config.json``, ``metrics.jsonl`` (train and eval records),
    ``checkpoints/`` and, at the end, ``summary.json`` (accuracy, achieved
    sparsity, training-FLOP model; see :mod:`sparsejax.experiment.report`). A
    workdir holding the same config is resumed from its checkpoints; if it is
    finished, its summary is returned without training.

    With several JAX processes every process calls this with the same config and
    workdir (on a shared file system): process 0 checks and writes the run files,
    all of them train, checkpoint and evaluate together, and all return the summary.

    Args:
      config: run configuration (see :func:`sparsejax.experiment.config.base_config`).
      workdir: run directory (created).
      overwrite: delete a previous run with a different config in ``workdir``.
      resume: continue a previous run even though its config differs.

    Returns:
      The summary dict (also written to ``summary.json``).

    Raises:
      ValueError: unknown names in the config, a workdir with a different run, a
        batch size not divisible by the device count, a checkpoint of another model.
      FileNotFoundError: a dataset that is not prepared (and ``download`` is off).
      FloatingPointError: the loss became NaN or infinite.

    Example:
      >>> summary = train_and_evaluate(config_lib.load("experiments/swat.py:smoke"), "runs/x")
    """
    from sparsejax import data, zoo

    if config.distributed:
        # Before anything touches a backend (launch.py has already joined with its flags);
        # validate() may (building a recipe evaluates its sparsity schedule).
        initialize_distributed()
    config_lib.validate(config)
    summary_path = os.path.join(workdir, "summary.json")

    def prepare() -> bool:
        """Process 0 alone creates or checks the workdir; True if the run is finished."""
        status = ckpt_lib.prepare_workdir(workdir, config_lib.to_dict(config),
                                          overwrite=overwrite, resume=resume)
        if status == "same" and os.path.exists(summary_path):
            return True
        if os.path.exists(summary_path):
            os.remove(summary_path)
        return False

    if _on_main_process(prepare, f"preparing the workdir {workdir!r}"):
        logging.info("%s is finished (summary.json exists); not training again.", workdir)
        return ckpt_lib.read_json(summary_path, "summary file")
    started = time.perf_counter()
    mesh = make_mesh()
    check_batch_sizes(config, mesh.size)
    batch_sharding = NamedSharding(mesh, PartitionSpec("data"))
    replicated = NamedSharding(mesh, PartitionSpec())
    ds = config.dataset
    common = dict(data_dir=ds.data_dir or None, download=ds.download, image_size=ds.image_size,
                  seed=config.seed, sharding=batch_sharding)
    train_ds = data.load(ds.name, split="train", batch_size=config.batch_size,
                         augment=ds.augment, **common)
    test_ds = data.load(ds.name, split="test", batch_size=config.eval_batch_size, train=False,
                        **common)
    base_model = zoo.get_model(config.model.name, num_classes=train_ds.info.num_classes,
                               **config.model.kwargs.to_dict())
    main_steps = config.num_steps or max(1, round(config.num_epochs * train_ds.steps_per_epoch))
    # The model's contraction axes: N:M recipes group along them (attention kernels too).
    axes = contraction_axes(base_model, jnp.zeros((1, *train_ds.info.image_shape)), train=False)
    phases = recipes.build_phases(config, main_steps, train_ds.steps_per_epoch, axes,
                                  model=base_model, input_shape=train_ds.info.image_shape,
                                  calibration=lambda i: np.asarray(jax.device_get(
                                      train_ds.get_batch(i)["image"])))
    progress = _Progress(sum(p.num_steps for p in phases), 0, config.batch_size)
    logging.info("Run %r: %s on %s, %d phase(s): %s; %d device(s).", config.name,
                 config.model.name, ds.name, len(phases),
                 ", ".join(f"{p.name} ({p.num_steps} steps)" for p in phases), mesh.size)
    resume_point = _resume_point(workdir, phases)
    # Every process has seen the same checkpoints before any process writes one.
    ckpt_lib.sync_processes("resume point")
    if ckpt_lib.is_main_process():
        _truncate_metrics(os.path.join(workdir, "metrics.jsonl"), resume_point)
    layers = costs.linear_layers(base_model, train_ds.info.image_shape)
    state, offset, densities, pruned, final, prepared = None, 0, [], [], None, []
    for index, phase in enumerate(phases):
        state, final = run_phase(
            index=index, phases=phases, base_model=base_model, previous=state, config=config,
            workdir=workdir, train_ds=train_ds, test_ds=test_ds, main_steps=main_steps,
            data_offset=offset, replicated=replicated, progress=progress)
        densities.append(phase.densities(state, layers))  # The next phase donates `state`.
        after = {k: float(v) for k, v in jax.device_get(state["pruned_eval"]).items()}
        pruned.append(None if np.isnan(after["accuracy"]) else after)
        # Process 0 wrote it (fresh start) or it is on the shared disk (resumed phase).
        prepared.append(_on_main_process(functools.partial(prepared_info, workdir, index, phase),
                                         f"reading the prepare info of phase {phase.name!r}"))
        offset += phase.num_steps
    if final is None:
        final = evaluate(phases[-1].model(base_model), state, test_ds)
    summary = report.run_summary(config=config, phases=phases, densities=densities,
                                 layers=layers, main_steps=main_steps, evaluation=final,
                                 wall_time=time.perf_counter() - started,
                                 num_test_examples=test_ds.num_examples, pruned=pruned,
                                 permutation=prepared)
    ckpt_lib.write_json(summary_path, summary)  # Process 0 writes; the others computed it too.
    ckpt_lib.sync_processes("summary written")  # All return once summary.json exists.
    logging.info("Run %r finished: accuracy %.4f, weight sparsity %.3f, training FLOPs %.3f of "
                 "dense.", config.name, summary["accuracy"], summary["weight_sparsity"],
                 summary["train_flops_ratio"])
    return summary
