"""dad_ray.losses"""
