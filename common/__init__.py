"""Plumbing shared by the GenEx-Explorer and PECN pipelines (video I/O, checkpoints, trackers)."""
