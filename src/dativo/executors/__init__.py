"""Executors other than the engine's local one, each registered under the ``dativo.executors`` entry points.

``ray`` (:mod:`dativo.executors.ray`): a job's partitions as Ray tasks, committed once
on the driver (docs/ray.md). Ray itself is imported only when a job runs on it.
"""
