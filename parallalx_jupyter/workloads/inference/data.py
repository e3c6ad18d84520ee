"""Row ranges: how big the next shard is, which ranges are left, how rows are read."""

from __future__ import annotations

from collections import deque
from typing import Any


# --------------------------------------------------------------------------- shard sizing
def shard_rows(
    speed: float,
    total_speed: float,
    remaining: int,
    batch_size: int,
    target_s: float,
    in_flight: int = 0,
    all_in_flight: int = 0,
) -> int:
    """Rows of the next shard for a worker running ``speed`` rows/s (0: none for now).

    About ``target_s`` seconds of that worker's work, in whole batches (a partial batch costs
    nearly as much as a full one). Near the end, no more than brings the worker's outstanding
    rows (``in_flight`` plus this shard) to its speed share of all outstanding rows
    (``remaining`` plus ``all_in_flight``), so that the last shards finish together instead of
    one device holding up the end; a worker that already holds its share gets nothing, one
    that holds nothing gets at least a batch. Never more than ``remaining``.
    """
    if remaining <= 0:
        return 0
    speed = max(speed, 0.0)
    want = speed * target_s
    if total_speed > 0:
        want = min(want, (remaining + all_in_flight) * speed / total_speed - in_flight)
    batches = round(want / batch_size)
    if batches <= 0 and in_flight > 0:
        return 0
    return int(min(max(1, batches) * batch_size, remaining))


# --------------------------------------------------------------------------- data sets
class RowSource:
    """Inputs of rows ``[lo, hi)``, whatever form the data set came in.

    A tensor or NumPy array (or the ``x`` of an ``(x, y)`` tuple) is sliced; a map-style data
    set is read item by item and collated, and of ``(inputs, target)`` items only the inputs
    are kept. A list is ``[x, y]`` only if it holds two or three arrays of one length, else a
    data set of rows.
    """

    def __init__(self, data: Any) -> None:
        import torch

        self.tensor: Any = None
        self.dataset: Any = None
        if (isinstance(data, tuple) and data) or (isinstance(data, list) and _columns(data)):
            data = data[0]
        if _is_numpy(data):
            data = torch.as_tensor(data)
        if isinstance(data, torch.Tensor):
            if data.dim() == 0:
                raise TypeError("a 0-dimensional tensor has no rows")
            self.tensor = data.detach()
            self.length = int(data.shape[0])
        elif hasattr(data, "__len__") and hasattr(data, "__getitem__"):
            columns = getattr(data, "tensors", None)
            if isinstance(columns, (tuple, list)) and columns:  # TensorDataset: slice column 0
                self.tensor = columns[0].detach()
            else:
                self.dataset = data
            self.length = len(data)
        else:
            raise TypeError(
                "expected a tensor, an (x, y) tuple of tensors, a map-style data set, "
                f"or a zero-argument factory of one; got {type(data).__name__}"
            )

    def __len__(self) -> int:
        return self.length

    def rows(self, lo: int, hi: int) -> Any:
        if self.tensor is not None:
            return self.tensor[lo:hi].contiguous()
        from torch.utils.data import default_collate

        batch = default_collate([self.dataset[i] for i in range(lo, hi)])
        return batch[0] if isinstance(batch, (list, tuple)) else batch


def _columns(data: list[Any]) -> bool:
    """True for ``[x, y]``-like lists: a few arrays of one length (a list of rows is longer)."""
    import torch

    def length(t: Any) -> int | None:
        ok = (isinstance(t, torch.Tensor) or _is_numpy(t)) and len(t.shape) > 0
        return int(t.shape[0]) if ok else None

    lengths = {length(t) for t in data}
    return 2 <= len(data) <= 3 and len(lengths) == 1 and None not in lengths


def _is_numpy(obj: Any) -> bool:
    return type(obj).__module__ == "numpy" and hasattr(obj, "__array__")


def _is_module(obj: Any) -> bool:
    import torch

    return isinstance(obj, torch.nn.Module)


def _is_factory(dataset: Any) -> bool:
    """A zero-argument factory: callable and not itself a data set (a Dataset may be callable)."""
    import torch

    if isinstance(dataset, (torch.Tensor, tuple, list)) or _is_numpy(dataset):
        return False
    return callable(dataset) and not (hasattr(dataset, "__len__")
                                      and hasattr(dataset, "__getitem__"))


# --------------------------------------------------------------------------- on the worker

class _Queue:
    """Row ranges still to run, each with how often it was lost already; lost ranges go to
    the front so the output fills in roughly in order."""

    def __init__(self, n: int) -> None:
        self.ranges: deque[list[int]] = deque([[0, n, 0]] if n else [])

    def remaining(self) -> int:
        return sum(hi - lo for lo, hi, _ in self.ranges)

    def take(self, size: int) -> tuple[int, int, int]:
        first = self.ranges[0]
        lo, hi, tries = first
        end = min(hi, lo + max(size, 1))
        if end == hi:
            self.ranges.popleft()
        else:
            first[0] = end
        return lo, end, tries

    def put_back(self, lo: int, hi: int, tries: int) -> None:
        self.ranges.appendleft([lo, hi, tries])


