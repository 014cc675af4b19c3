"""dad_ray.models"""
