"""dad_ray.data"""
