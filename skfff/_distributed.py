"""skfff across processes: data-parallel training with ``torch.distributed``, Dask workers.

Data-parallel training (DDP)
    :func:`data_parallel` is a context manager for scripts launched with ``torchrun``: every
    ``fit`` of a torch-backed skfff estimator inside the block trains one model across the
    launched processes with :class:`torch.nn.parallel.DistributedDataParallel`. The shared
    training loop (``skfff.base``) asks this module four things, each a no-op outside the
    block: :func:`shared_seed` (one seed for every rank, so the validation rows agree),
    :func:`sharded_fit` (each rank trains on its shard of the training rows and validates
    on its shard of the validation rows; the epoch losses are gathered before early stopping
    or the learning-rate schedule read them), :func:`training_loss` (the DDP-wrapped loss
    whose backward all-reduces the gradients) and :func:`all_ranks` (a flag agreed by every
    rank, so a non-finite batch is skipped everywhere or nowhere).

Dask workers
    :class:`TorchThreads` is a Dask worker plugin that gives torch as many intra-op threads
    as the worker has threads, so workers sharing a machine do not oversubscribe its cores.
"""

from __future__ import annotations

import math
import numbers
import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from skorch.callbacks import Callback
from torch.utils.data import Subset

from ._checks import check_integer

__all__ = [
    "DataParallelInfo",
    "TorchThreads",  # noqa: F822 (built on first use, see __getattr__)
    "all_ranks",
    "data_parallel",
    "shared_seed",
    "sharded_fit",
    "training_loss",
]


@dataclass(frozen=True)
class DataParallelInfo:
    """Where this process stands in a :func:`data_parallel` block.

    Attributes
    ----------
    rank : int
        Index of this process, 0 to ``world_size - 1``; rank 0 should save the model.
    world_size : int
        Number of processes training together (1 outside ``torchrun``).
    local_rank : int
        Index of this process on its machine (its GPU under the NCCL backend).
    backend : str or None
        ``"gloo"`` or ``"nccl"``; ``None`` for a single process.
    """

    rank: int
    world_size: int
    local_rank: int
    backend: str | None
    _wrappers: dict[int, torch.nn.Module] = field(default_factory=dict, repr=False)

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0."""
        return self.rank == 0


_ACTIVE: ContextVar[DataParallelInfo | None] = ContextVar("skfff_data_parallel", default=None)


@contextmanager
def data_parallel(backend: str | None = None) -> Iterator[DataParallelInfo]:
    """Train every skfff ``fit`` inside the block data-parallel across ``torchrun`` processes.

    Launch the script with ``torchrun --nproc-per-node N script.py``. Each process loads the
    same data and calls ``fit`` with the same parameters; inside the block the torch-backed
    estimators (``FreeFormFlow``, ``ManifoldFreeFormFlow``, ``MLAutoencoder``,
    ``GINTransformer``, ``DirichletLatentClassifier``, and the density of a
    ``FermatDistance``) then train one model together:

    - every rank draws the same validation rows (the seed is rank 0's) and trains on its own
      shard of the remaining rows (shards padded to equal size by repeating a few rows);
    - ``batch_size`` stays the *global* batch: each rank takes ``ceil(batch_size / N)`` rows,
      so a step sees as many rows and the learning rate means what it means on one process;
    - gradients are averaged across ranks by
      :class:`~torch.nn.parallel.DistributedDataParallel` (rank 0's initial weights are
      broadcast first), so the weights stay identical on every rank;
    - the validation loss is evaluated on each rank's shard of the validation rows and
      gathered, so ``history_``, early stopping and the learning-rate schedule see the loss
      of all validation rows and take the same decisions on every rank;
    - a batch with a non-finite loss on any rank is skipped on all of them.

    After ``fit`` every rank holds the same fitted estimator, an ordinary one: rank 0 pickles
    it as usual. Outside ``torchrun`` (no ``WORLD_SIZE`` in the environment) the block is a
    single process and ``fit`` runs as without it.

    Parameters
    ----------
    backend : {"nccl", "gloo"} or None, default=None
        Used when the block starts the process group itself: ``None`` takes NCCL when CUDA
        is available, else gloo. Under NCCL each process trains on ``cuda:LOCAL_RANK``
        (``device="auto"`` picks it); use gloo to train on CPUs. A process group the user
        started before the block is used as it is, and left open.

    Yields
    ------
    DataParallelInfo
        This process's ``rank``, ``world_size`` and ``local_rank``.

    Examples
    --------
    ``torchrun --nproc-per-node 2 train.py``, with ``train.py``::

        import joblib
        import skfff

        X = load_my_data()
        with skfff.data_parallel() as dp:
            flow = skfff.FreeFormFlow(random_state=0).fit(X)
        if dp.is_main:
            joblib.dump(flow, "flow.joblib")
    """
    if _ACTIVE.get() is not None:
        raise RuntimeError("data_parallel() blocks cannot be nested")
    started = False
    if dist.is_available() and dist.is_initialized():
        info = _info_of_group()
    elif int(os.environ.get("WORLD_SIZE", "1")) > 1:
        if not dist.is_available():
            raise RuntimeError("torch was built without torch.distributed")
        if backend is None:
            backend = "nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend, init_method="env://")
        started = True
        info = _info_of_group()
    else:
        info = DataParallelInfo(rank=0, world_size=1, local_rank=0, backend=None)
    token = _ACTIVE.set(info)
    try:
        yield info
    finally:
        _ACTIVE.reset(token)
        if started:
            dist.destroy_process_group()


def _info_of_group() -> DataParallelInfo:
    return DataParallelInfo(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        backend=str(dist.get_backend()),
    )


def _current() -> DataParallelInfo | None:
    """The active data-parallel group of more than one process, else ``None``."""
    info = _ACTIVE.get()
    return info if info is not None and info.world_size > 1 else None


def _collective_device(info: DataParallelInfo) -> torch.device:
    """Where small tensors for collectives live: NCCL needs them on this rank's GPU."""
    if info.backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# ------------------------------------------------------------- hooks of the training loop
def shared_seed(seed: int) -> int:
    """Rank 0's ``seed`` on every rank (``seed`` itself outside :func:`data_parallel`)."""
    info = _current()
    if info is None:
        return seed
    value = torch.tensor([seed], dtype=torch.int64, device=_collective_device(info))
    dist.broadcast(value, src=0)
    return int(value.item())


def training_loss(module: torch.nn.Module) -> Callable[..., torch.Tensor]:
    """The function computing ``module``'s training loss for this step.

    Under :func:`sharded_fit` this calls the DDP wrapper, whose backward averages the
    gradients across ranks; otherwise it is ``module.training_loss``.
    """
    info = _current()
    if info is not None and id(module) in info._wrappers:
        return info._wrappers[id(module)]
    return module.training_loss


def all_ranks(flag: torch.Tensor) -> torch.Tensor:
    """``flag`` (a boolean scalar tensor) and-ed over the ranks, on the device, no sync."""
    info = _current()
    if info is None:
        return flag
    value = flag.to(device=_collective_device(info), dtype=torch.int32)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return value.to(flag.device).bool()


class _TrainingLossForward(torch.nn.Module):
    """``forward`` is the wrapped module's ``training_loss``: what DDP needs to hook in."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, **batch: torch.Tensor) -> torch.Tensor:
        return self.module.training_loss(**batch)


class _ShardedSplit:
    """A train split whose training rows are this rank's shard (padded to equal size).

    The validation rows are sharded too (unpadded) when every rank gets at least one;
    otherwise every rank validates on all of them.
    """

    def __init__(self, split: Any, rank: int, world_size: int) -> None:
        self.split = split
        self.rank = rank
        self.world_size = world_size

    @staticmethod
    def _indices(subset: Any) -> tuple[Any, np.ndarray]:
        if isinstance(subset, Subset):
            return subset.dataset, np.asarray(subset.indices)
        return subset, np.arange(len(subset))

    def __call__(self, dataset: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
        if self.split:
            train, valid = self.split(dataset, *args, **kwargs)
        else:
            train, valid = dataset, None
        base, idx = self._indices(train)
        per_rank = math.ceil(len(idx) / self.world_size)
        padded = np.resize(idx, per_rank * self.world_size)
        train = Subset(base, padded[self.rank :: self.world_size].tolist())
        if valid is not None and len(valid) >= self.world_size:
            base, idx = self._indices(valid)
            valid = Subset(base, idx[self.rank :: self.world_size].tolist())
        return train, valid


class _GatherEpoch(Callback):
    """Turn each rank's epoch losses into the losses over all ranks' rows.

    Runs after the epoch metrics and before early stopping and the learning-rate schedule,
    and wraps the module in DDP for the duration of training.
    """

    def __init__(self, info: DataParallelInfo, seed: int) -> None:
        self.info = info
        self.seed = seed

    def on_train_begin(self, net: Any, **kwargs: Any) -> None:
        module = net.module_
        device = next(module.parameters()).device
        if self.info.backend == "nccl" and device.type != "cuda":
            raise ValueError(
                "data_parallel() runs on NCCL, which needs the model on a GPU; "
                'use device="auto" or data_parallel(backend="gloo") to train on CPUs'
            )
        ddp = torch.nn.parallel.DistributedDataParallel(
            _TrainingLossForward(module),
            device_ids=[device.index] if device.type == "cuda" else None,
            # the same parameters take part in every step's loss; parameters a method never
            # trains (e.g. only used after fit) are found at the first step, not an error
            static_graph=True,
        )
        self.info._wrappers[id(module)] = ddp
        # every rank started from the same seed; its batches and probes now differ
        torch.manual_seed(self.seed + 7919 * self.info.rank)

    def on_train_end(self, net: Any, **kwargs: Any) -> None:
        self.info._wrappers.pop(id(net.module_), None)

    def on_epoch_end(self, net: Any, **kwargs: Any) -> None:
        row = net.history[-1]
        counts = {
            prefix: float(sum(b.get(f"{prefix}_batch_size", 0) for b in row["batches"]))
            for prefix in ("train", "valid")
        }
        keys = sorted(
            k
            for k, v in row.items()
            if (k == "train_loss" or k.startswith("valid_"))
            and not k.endswith(("_best", "_batch_count"))
            and isinstance(v, numbers.Real)
            and not isinstance(v, bool)
        )
        prefixes = ["train" if k == "train_loss" else "valid" for k in keys]
        local = [row[k] * counts[p] for k, p in zip(keys, prefixes, strict=True)]
        total = torch.tensor(
            [*local, counts["train"], counts["valid"]],
            dtype=torch.float64,
            device=_collective_device(self.info),
        )
        dist.all_reduce(total)
        values = total.tolist()
        n = {"train": values[-2], "valid": values[-1]}
        for key, prefix, value in zip(keys, prefixes, values, strict=False):
            net.history.record(key, value / n[prefix] if n[prefix] else float("nan"))
        for key in ("train_loss", "valid_loss"):
            if f"{key}_best" in row:
                earlier = [r[key] for r in net.history[:-1] if key in r]
                net.history.record(f"{key}_best", bool(not earlier or row[key] < min(earlier)))


@contextmanager
def sharded_fit(net: Any, seed: int) -> Iterator[None]:
    """Set up the skorch ``net`` to train as one rank of the active :func:`data_parallel`.

    Outside a data-parallel block of several processes this does nothing. Inside, for the
    duration of the block: the net's train split yields this rank's shards, its batch size
    is this rank's share of the global batch, and a callback wraps the module in DDP and
    gathers the epoch losses. The net is restored on exit, so the fitted estimator pickles
    and refits as any other.
    """
    info = _current()
    if info is None:
        yield
        return
    saved = net.batch_size, net.train_split
    net.batch_size = max(1, math.ceil(net.batch_size / info.world_size))
    net.train_split = _ShardedSplit(net.train_split, info.rank, info.world_size)
    entry = ("data_parallel", _GatherEpoch(info, seed).initialize())
    # skorch reads callbacks_ once initialised (as skfff's nets are), callbacks before
    callbacks = net.callbacks_ if getattr(net, "initialized_", False) else net.callbacks
    names = [c[0] if isinstance(c, tuple) else None for c in callbacks]
    callbacks.insert(names.index("epoch_metrics") + 1 if "epoch_metrics" in names else 0, entry)
    try:
        with warnings.catch_warnings():
            # DDP's note that a gradient's memory layout differs from its bucket's (some
            # parameters are views): a possible slowdown, not an error
            warnings.filterwarnings("ignore", message="Grad strides do not match")
            yield
    finally:
        callbacks.remove(entry)
        info._wrappers.pop(id(net.module_), None)
        net.batch_size, net.train_split = saved


# ------------------------------------------------------------------------- Dask workers
def __getattr__(name: str) -> Any:
    # TorchThreads subclasses distributed's WorkerPlugin (Dask refuses duck-typed plugins);
    # it is built on first use so that importing skfff does not import Dask.
    if name == "TorchThreads":
        cls = _make_torch_threads()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _make_torch_threads() -> type:
    try:
        from distributed import WorkerPlugin
    except ImportError:  # the class still exists (``from skfff import *``); using it says why
        WorkerPlugin = None

    class TorchThreads(WorkerPlugin or object):
        """Dask worker plugin: torch's intra-op threads from the worker's thread count.

        Register it once on the client, before the search::

            client.register_plugin(skfff.TorchThreads())

        Each worker (also those that join later) then runs torch with ``n_threads`` threads,
        by default as many as the worker has (``--nthreads`` of ``dask worker``,
        ``threads_per_worker`` of ``LocalCluster``): a machine's workers together use as
        many torch threads as they have Dask threads, so one cluster with one thread per
        worker process does not oversubscribe the cores, whatever ``OMP_NUM_THREADS`` the
        workers inherited. A worker with several threads runs several fits at once, each
        with ``n_threads`` torch threads: pass ``n_threads=1`` there.

        Parameters
        ----------
        n_threads : int or None, default=None
            Intra-op threads per worker process; ``None`` takes the worker's thread count.
        """

        idempotent = True
        name = "skfff-torch-threads"

        def __init__(self, n_threads: int | None = None) -> None:
            if WorkerPlugin is None:
                raise ImportError('TorchThreads needs Dask: pip install "dask[distributed]"')
            if n_threads is not None:
                check_integer(n_threads, "n_threads")
            self.n_threads = n_threads

        def setup(self, worker: Any) -> None:
            torch.set_num_threads(int(self.n_threads or worker.state.nthreads))

    TorchThreads.__module__ = __name__
    TorchThreads.__qualname__ = "TorchThreads"
    return TorchThreads
