"""Strategy presets that need a line of code.

:class:`DataParallelFSDP2Strategy` is Lightning's ``ModelParallelStrategy`` (FSDP2 through
``fully_shard`` in ``configure_model``) with one difference: ``data_parallel_size="auto"`` means
"every rank not used for tensor parallelism" (world size / tensor_parallel_size), so the same
preset shards over 2 CPU processes, 8 GPUs or 4 nodes × 8 GPUs without editing. Lightning's own
"auto" means the number of nodes, which fails on one node with several devices.

:class:`ReplicatingDDPStrategy` is Lightning's ``DDPStrategy`` for modules that may have no trainable
parameter (online learners such as river's Hoeffding trees, ficsum.md §2): torch refuses to wrap such a
module in ``DistributedDataParallel``, so it is left unwrapped and its buffers are synchronised from
rank 0 once, as Lightning does outside fitting. Every rank then runs the same stream; process group,
barriers and broadcasts work as usual. Modules with parameters are wrapped exactly as by ``DDPStrategy``.
The DDP presets (``ddp_cpu2``, ``ddp_gpu``) use it.
"""

from __future__ import annotations

from typing import Any, Literal

from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy
from lightning.pytorch.overrides.distributed import _sync_module_states

__all__ = ["DataParallelFSDP2Strategy", "ReplicatingDDPStrategy"]


class DataParallelFSDP2Strategy(ModelParallelStrategy):
    """FSDP2 over all ranks by default (see the module docstring).

    Args:
        data_parallel_size: ranks per data-parallel (sharding) group; "auto" = world size / tensor_parallel_size.
        tensor_parallel_size: ranks per tensor-parallel group (1 = pure FSDP2).
        kwargs: passed to ``ModelParallelStrategy`` (``save_distributed_checkpoint``, ``timeout`` ...).
    """

    def __init__(
        self,
        data_parallel_size: Literal["auto"] | int = "auto",
        tensor_parallel_size: Literal["auto"] | int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(data_parallel_size=data_parallel_size, tensor_parallel_size=tensor_parallel_size, **kwargs)

    def setup_environment(self) -> None:
        if self._data_parallel_size == "auto" and isinstance(self._tensor_parallel_size, int):
            world = self.num_nodes * self.num_processes
            if world % self._tensor_parallel_size:
                raise ValueError(
                    f"tensor_parallel_size={self._tensor_parallel_size} does not divide the world size {world}"
                )
            self._data_parallel_size = world // self._tensor_parallel_size
        super().setup_environment()


class ReplicatingDDPStrategy(DDPStrategy):
    """``DDPStrategy`` that replicates, instead of wrapping, a module without trainable parameters.

    Args:
        kwargs: passed to Lightning's ``DDPStrategy`` (``process_group_backend``, ``find_unused_parameters`` ...).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)

    def configure_ddp(self) -> None:
        assert self.model is not None
        if any(p.requires_grad for p in self.model.parameters()):
            super().configure_ddp()
            return
        _sync_module_states(self.model)  # nothing to all-reduce: every rank starts from rank 0's buffers
