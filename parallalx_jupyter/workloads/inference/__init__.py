"""Sharded batch inference as a workload: one model over a large data set, every worker helping.

Why it is built this way:

* **Shards sized to each device.** A pinned probe task per worker times the forward pass, and
  every shard a worker gets is about ``target_shard_seconds`` of *its* work, so a GPU gets big
  shards and a laptop small ones, and near the end shards shrink to each worker's fair part of
  what is left so that all finish together. Measured shard times keep refining the estimate.
* **Pull, not push.** Each worker holds at most :data:`IN_FLIGHT` shards (one running, one
  queued behind it to hide the round trip); the next one is cut only when a slot frees up. A
  lost worker therefore loses little, and a new worker can join half way.
* **Ship once.** The model, ``postprocess`` and a data-set factory travel once per worker
  (one broadcast scatter of a cloudpickle blob); workers build them once per job and keep them
  in a small per-process cache that a final pinned task drops. Only row ranges (and, for data
  held by the notebook, the rows of that range) travel per shard.
* **Tasks never talk to Dask.** Like the training ranks, shard tasks use only what a worker has
  (its own task state, to stop when cancelled); the hardened cluster refuses clients to workers.
* **Every row exactly once, in order.** Results are stored by range start; a range whose worker
  vanished is cancelled and put back on the queue (at most ``max_retries`` times), and its late
  result, if any, is never read. User-code errors are not retried: they fail the job with the
  worker's traceback.
"""

from .common import InferenceError, InferenceUserError
from .data import shard_rows
from .workload import InferenceWorkload

__all__ = ["InferenceError", "InferenceUserError", "InferenceWorkload", "shard_rows"]
