"""Tensor parallelism: one model sharded over several processes joined by torch.distributed.

* :mod:`modelport.distributed.state`: which rank this process is (:func:`~modelport.distributed.state.current`);
  native models read it in ``from_config`` to build their shard.
* :mod:`modelport.distributed.layers`: column- and row-parallel linear layers, the
  vocabulary-parallel embedding and LM head, and the collectives they need.
* :mod:`modelport.distributed.launcher`: the seam between the driver (rank 0, the process that
  runs the scheduler) and whatever starts the other ranks (``WorkerLauncher``; ``mp`` in core,
  ``ray`` in modelport-ray), and :func:`~modelport.distributed.launcher.run_worker`, what every
  other rank runs.
* :mod:`modelport.distributed.driver`: the driver-side model proxy the executor drives.

Nothing here imports torch at module level.
"""
