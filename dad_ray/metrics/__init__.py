"""dad_ray.metrics"""
