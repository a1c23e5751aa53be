"""The experiments layer: batches of runs and what is said about them.

- :mod:`~hlbcli.experiments.batch`: ``hlb train --runs N`` (and ``hlb bench``), N seeds in this
  process on one session.
- :mod:`~hlbcli.experiments.plan`: a battery's plan (``hlb ablate``): options, arms, the folder
  claimed, ``ablation.json``.
- :mod:`~hlbcli.experiments.battery`: the :class:`~hlbcli.experiments.battery.Backend` interface,
  what every backend reports into, and ``run_ablation``.
- :mod:`~hlbcli.experiments.local_backend` and :mod:`~hlbcli.experiments.ray_backend` (with
  :mod:`~hlbcli.experiments.ray_cluster` and :mod:`~hlbcli.experiments.ray_probe`): the two backends.
- :mod:`~hlbcli.experiments.tail`: the one interrupt-and-summary tail they all share.
- :mod:`~hlbcli.experiments.summary`: the battery's summary and its table (the progress display
  is :mod:`hlbcli.progress`'s, one for runs and batteries).

Nothing here knows a trick; below it are the run levels (:mod:`hlbcli.resolve` ->
:mod:`hlbcli.session` -> :mod:`hlbcli.run` -> :mod:`hlbcli.step`).
"""
