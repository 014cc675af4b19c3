"""dad_ray.tune"""
