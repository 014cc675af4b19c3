"""dad_ray.train"""
