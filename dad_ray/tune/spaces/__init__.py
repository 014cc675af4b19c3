"""Search spaces shipped with the package (``jobs/tune.py --space <name>``); see :mod:`dad_ray.tune.space`."""
