"""dad_ray.bench"""
