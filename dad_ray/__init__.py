"""dad_ray: Distill-Any-Depth knowledge distillation on Ray Data, Ray Train and Ray Tune."""

__version__ = "0.1.0"
