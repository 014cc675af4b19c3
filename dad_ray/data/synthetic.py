"""Procedural NYU-like indoor scenes with exact depth: the embedded default's data and the tests' data.

A scene is an axis-aligned room (floor, four walls, ceiling) holding furniture-like shapes (boxes, cabinets, a table
made of a slab on four legs), each rotated about the vertical axis, seen by a pinhole camera with NYU-like intrinsics
and a random pose. Every pixel's ray is intersected with every plane and box at once (NumPy, no per-pixel loop). Each
surface gets its own colour and texture (tiles, planks, stripes, noise), shaded Lambertian from a point light near the
ceiling with cast shadows and an ambient term, so depth is learnable from the image (perspective of textures, shading
fall-off, occlusion). Depth is the camera-frame z distance in metres (as a Kinect measures it), in [0.5, 10]; pixels
outside that range, at depth discontinuities and in a few random blobs are set to 0 (invalid), like Kinect holes.

``generate_scene(seed)`` is a pure function of its arguments: same seed, same arrays (bit for bit, on one platform).
"""

from __future__ import annotations

import numpy as np

MIN_DEPTH = 0.5
MAX_DEPTH = 10.0
_NYU_FOCAL = 518.8579  # NYU Kinect RGB focal length at 640 px width
_EPS = 1e-6


def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Camera-to-world rotation: camera x right, y down, z forward; world y up."""
    cy, sy = np.cos(yaw), np.sin(yaw)
    cp, sp = np.cos(pitch), np.sin(pitch)
    cr, sr = np.cos(roll), np.sin(roll)
    flip = np.array([[1, 0, 0], [0, -1, 0], [0, 0, 1]], dtype=np.float64)  # camera y down -> world y up
    r_roll = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    r_pitch = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    r_yaw = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    return r_yaw @ r_pitch @ flip @ r_roll


def _box_hits(origin: np.ndarray, dirs: np.ndarray, center, half, yaw: float, inside: bool, normals: bool = True):
    """Ray/box intersection for all rays at once (slab method in the box frame, box rotated by ``yaw`` about y).

    ``origin`` (3,) or (P, 3), ``dirs`` (P, 3). Returns ``(t, normal, axis)``: ``t`` (P,) the entry distance (or the
    exit distance when ``inside``, for the room's own walls), ``inf`` where missed; ``normal`` (P, 3) world-frame
    normal facing the ray (``None`` unless ``normals``); ``axis`` (P,) the box axis of the face hit. Works on one
    axis at a time (contiguous (P,) arrays), which is several times faster than reducing over a (P, 3) array.
    """
    c, s = np.float32(np.cos(yaw)), np.float32(np.sin(yaw))
    rel = origin - np.asarray(center, np.float32)
    ox, oy, oz = (rel[..., k] for k in range(3))
    dx, dy, dz = (np.ascontiguousarray(dirs[:, k]) for k in range(3))
    # world-to-box: rotate by -yaw about y
    o_box = (c * ox - s * oz, oy, s * ox + c * oz)
    d_box = (c * dx - s * dz, dy, s * dx + c * dz)
    best = None
    axis = np.zeros(len(dirs), np.int8)
    other = None
    for k in range(3):
        d = d_box[k]
        d = np.where(np.abs(d) < _EPS, np.float32(_EPS), d)
        inv = np.float32(1.0) / d
        ta = (-np.float32(half[k]) - o_box[k]) * inv
        tb = (np.float32(half[k]) - o_box[k]) * inv
        lo, hi = np.minimum(ta, tb), np.maximum(ta, tb)
        if inside:
            key = hi
            if best is None:
                best = key
            else:
                take = key < best
                best = np.where(take, key, best)
                axis[take] = k
        else:
            if best is None:
                best, other = lo, hi
            else:
                take = lo > best
                best = np.where(take, lo, best)
                axis[take] = k
                other = np.minimum(other, hi)
    if not inside:
        best = np.where((best <= other) & (best > _EPS), best, np.float32(np.inf))
    if not normals:
        return best.astype(np.float32), None, axis.astype(np.int64)
    d_hit = np.where(axis == 0, d_box[0], np.where(axis == 1, d_box[1], d_box[2]))
    sign = -np.sign(d_hit).astype(np.float32)
    # box-frame normal (sign on ``axis``) back to world: rotate by +yaw about y
    nx = np.where(axis == 0, sign, 0).astype(np.float32)
    ny = np.where(axis == 1, sign, 0).astype(np.float32)
    nz = np.where(axis == 2, sign, 0).astype(np.float32)
    normal = np.stack([c * nx + s * nz, ny, -s * nx + c * nz], axis=1)
    return best.astype(np.float32), normal, axis.astype(np.int64)


def _screen_box(center, half, yaw, cam, rot, focal, height, width) -> tuple[int, int, int, int]:
    """Pixel rectangle (y0, y1, x0, x1) that holds the box's projection (the whole image if a corner is behind the
    camera): primary rays outside it cannot hit the box."""
    c, s = np.cos(yaw), np.sin(yaw)
    corners = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)]) * np.asarray(half)
    world = corners @ np.array([[c, 0, -s], [0, 1, 0], [s, 0, c]]) + np.asarray(center)  # rows: R @ corner
    cam_pts = (world - cam) @ rot  # world-to-camera: rot.T @ p
    if (cam_pts[:, 2] <= 1e-3).any():
        return 0, height, 0, width
    u = cam_pts[:, 0] / cam_pts[:, 2] * focal + width / 2 - 0.5
    v = cam_pts[:, 1] / cam_pts[:, 2] * focal + height / 2 - 0.5
    x0, x1 = int(np.clip(np.floor(u.min()) - 1, 0, width)), int(np.clip(np.ceil(u.max()) + 2, 0, width))
    y0, y1 = int(np.clip(np.floor(v.min()) - 1, 0, height)), int(np.clip(np.ceil(v.max()) + 2, 0, height))
    return y0, y1, x0, x1


def _value_noise(u: np.ndarray, v: np.ndarray, rng: np.random.Generator, cells: int = 16) -> np.ndarray:
    """Smooth periodic value noise in [0, 1] at surface coordinates (u, v) (bilinear over a random lattice)."""
    lattice = rng.random((cells, cells)).astype(np.float32)
    fu, fv = np.floor(u), np.floor(v)
    i0 = fu.astype(np.int64) % cells
    j0 = fv.astype(np.int64) % cells
    i1, j1 = (i0 + 1) % cells, (j0 + 1) % cells
    a, b = u - fu, v - fv
    a = a * a * (3 - 2 * a)
    b = b * b * (3 - 2 * b)
    top = lattice[i0, j0] * (1 - a) + lattice[i1, j0] * a
    bottom = lattice[i0, j1] * (1 - a) + lattice[i1, j1] * a
    return top * (1 - b) + bottom * b


def _texture(kind: int, u: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Albedo modulation in about [0.55, 1.15] for one surface; ``u, v`` in metres along the surface."""
    scale = rng.uniform(0.15, 0.6)
    noise = _value_noise(u / (scale * 0.5), v / (scale * 0.5), rng)
    if kind == 0:  # tiles / checker
        checker = ((np.floor(u / scale) + np.floor(v / scale)) % 2).astype(np.float32)
        grout = np.minimum(np.abs(u / scale - np.round(u / scale)), np.abs(v / scale - np.round(v / scale))) < 0.03
        return 0.75 + 0.25 * checker - 0.3 * grout + 0.1 * noise
    if kind == 1:  # planks with grain
        plank = np.floor(v / (scale * 0.5))
        offset = (plank * 0.37) % 1.0
        grain = 0.5 + 0.5 * np.sin((u + offset * 3.0) * 25.0 + 4.0 * noise)
        return 0.7 + 0.2 * grain + 0.15 * ((plank % 3) / 2.0) - 0.25 * (np.abs(v / (scale * 0.5) - plank) < 0.04)
    if kind == 2:  # stripes (wallpaper)
        return 0.8 + 0.2 * (np.sin(u / scale * 2 * np.pi) > 0) + 0.08 * noise
    fine = _value_noise(u / (scale * 0.1), v / (scale * 0.1), rng)
    return 0.75 + 0.2 * noise + 0.12 * fine  # mottled plaster


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    k = (np.array([5.0, 3.0, 1.0]) + h * 6.0) % 6.0
    return (v - v * s * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)).astype(np.float32)


def _scene_objects(rng: np.random.Generator, room: np.ndarray, cam: np.ndarray) -> list[tuple]:
    """Furniture as ``(center, half, yaw)`` boxes standing on the floor, kept clear of the camera."""
    wx, hy, lz = room
    objects: list[tuple] = []
    attempts = 0
    n_target = int(rng.integers(3, 9))
    while len(objects) < n_target and attempts < 60:
        attempts += 1
        kind = rng.random()
        yaw = float(rng.uniform(-0.6, 0.6)) if rng.random() < 0.6 else 0.0
        if kind < 0.2:  # table: slab + four legs
            half = np.array([rng.uniform(0.4, 0.9), 0.025, rng.uniform(0.3, 0.6)])
            top = rng.uniform(0.45, 0.8)
        elif kind < 0.45:  # tall cabinet / shelf against a wall
            half = np.array([rng.uniform(0.3, 0.8), rng.uniform(0.6, 1.0), rng.uniform(0.2, 0.35)])
            top = 2 * half[1]
        else:  # box / bed / sofa-like block
            half = np.array([rng.uniform(0.15, 0.9), rng.uniform(0.15, 0.5), rng.uniform(0.15, 0.9)])
            top = 2 * half[1]
        radius = float(np.hypot(half[0], half[2]))
        x = rng.uniform(-wx / 2 + radius, wx / 2 - radius) if wx / 2 > radius else 0.0
        z = rng.uniform(1.2 + radius, lz - radius) if lz - radius > 1.2 + radius else lz / 2
        if kind >= 0.2 and kind < 0.45 and rng.random() < 0.7:  # push cabinets to the back wall
            z = lz - half[2] - 0.01
            yaw = 0.0
        if np.hypot(x - cam[0], z - cam[2]) < radius + 0.9:
            continue
        if kind < 0.2:
            objects.append(((x, top - half[1], z), tuple(half), yaw))
            leg = np.array([0.03, (top - 2 * half[1]) / 2, 0.03])
            c, s = np.cos(yaw), np.sin(yaw)
            for sx in (-1, 1):
                for sz in (-1, 1):
                    lx, lzz = sx * (half[0] - 0.05), sz * (half[2] - 0.05)
                    objects.append(((x + c * lx + s * lzz, leg[1], z - s * lx + c * lzz), tuple(leg), yaw))
        else:
            objects.append(((x, half[1] + 0.001, z), tuple(half), yaw))
    return objects


def _albedo(
    surface: np.ndarray, normal: np.ndarray, points: np.ndarray, n_surfaces: int, rng: np.random.Generator
) -> np.ndarray:
    """Per-surface colour x texture at surface coordinates (the two axes orthogonal to the normal): surface ids (N,),
    normals and hit points (N, 3) -> albedo float32 (N, 3). Draws from ``rng`` surface by surface, in id order."""
    albedo = np.empty((len(surface), 3), np.float32)
    dominant = np.abs(normal).argmax(axis=1)
    u = np.where(dominant == 0, points[:, 2], points[:, 0])
    v = np.where(dominant == 1, points[:, 2], points[:, 1])
    for sid in range(n_surfaces):
        sel = surface == sid
        if not sel.any():
            continue
        if sid in (0, 1, 4, 5):
            base = _hsv_to_rgb(rng.random(), rng.uniform(0.05, 0.35), rng.uniform(0.6, 0.95))
            kind = int(rng.choice([2, 3, 3]))
        elif sid == 2:
            base = _hsv_to_rgb(rng.random(), rng.uniform(0.0, 0.1), rng.uniform(0.8, 1.0))
            kind = 3
        elif sid == 3:
            base = _hsv_to_rgb(rng.uniform(0.02, 0.12), rng.uniform(0.2, 0.6), rng.uniform(0.4, 0.85))
            kind = int(rng.choice([0, 1]))
        else:
            base = _hsv_to_rgb(rng.random(), rng.uniform(0.2, 0.8), rng.uniform(0.3, 0.9))
            kind = int(rng.integers(0, 4))
        pattern = _texture(kind, u[sel], v[sel], rng)
        albedo[sel] = base[None, :] * pattern[:, None]
    return albedo


def generate_scene(seed: int, height: int = 480, width: int = 640) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic scene: ``image`` uint8 (H, W, 3) and ``depth`` float32 (H, W) metres, 0 where invalid."""
    rng = np.random.default_rng([int(seed), 0x5CE7E])
    room = np.array([rng.uniform(3.0, 7.0), rng.uniform(2.4, 3.2), rng.uniform(4.0, 9.0)])
    wx, hy, lz = room
    cam = np.array([rng.uniform(-wx / 2 + 0.5, wx / 2 - 0.5), rng.uniform(1.0, 1.8), rng.uniform(0.2, 1.0)])
    rot = _rotation(rng.uniform(-0.4, 0.4), rng.uniform(-0.1, 0.4), rng.uniform(-0.05, 0.05))  # pitch > 0: down
    focal = _NYU_FOCAL * width / 640.0 * rng.uniform(0.9, 1.1)

    # Rays: camera-frame (x, y, 1), so the hit distance t along them IS the z depth.
    ys, xs = np.meshgrid(np.arange(height, dtype=np.float32), np.arange(width, dtype=np.float32), indexing="ij")
    cam_dirs = np.stack([(xs + 0.5 - width / 2) / focal, (ys + 0.5 - height / 2) / focal, np.ones_like(xs)], -1)
    dirs = (cam_dirs.reshape(-1, 3) @ rot.T.astype(np.float32)).astype(np.float32)
    origin = cam.astype(np.float32)

    # The room: inside of a box; surface ids 0..5 by axis and side.
    room_center = (0.0, hy / 2, lz / 2)
    t, normal, axis = _box_hits(origin, dirs, room_center, room / 2, 0.0, inside=True)
    side = (normal[np.arange(len(dirs)), axis] > 0).astype(np.int64)
    surface = axis * 2 + side  # 0/1 walls x, 2 ceiling (normal -y), 3 floor (normal +y), 4/5 walls z
    objects = _scene_objects(rng, room, cam)
    t2, normal2, surface2 = t.reshape(height, width), normal.reshape(height, width, 3), surface.reshape(height, width)
    dirs2 = dirs.reshape(height, width, 3)
    for k, (center, half, yaw) in enumerate(objects):
        y0, y1, x0, x1 = _screen_box(center, half, yaw, cam, rot, focal, height, width)
        if y1 <= y0 or x1 <= x0:
            continue
        sub = np.ascontiguousarray(dirs2[y0:y1, x0:x1]).reshape(-1, 3)
        tb, nb, _ = _box_hits(origin, sub, center, half, yaw, inside=False)
        tb, nb = tb.reshape(y1 - y0, x1 - x0), nb.reshape(y1 - y0, x1 - x0, 3)
        closer = tb < t2[y0:y1, x0:x1]
        t2[y0:y1, x0:x1][closer] = tb[closer]
        normal2[y0:y1, x0:x1][closer] = nb[closer]
        surface2[y0:y1, x0:x1][closer] = 6 + k
    points = origin + dirs * t[:, None]

    albedo = _albedo(surface, normal, points, 6 + len(objects), rng)

    # Shading: Lambert from a point light near the ceiling (with cast shadows from the furniture) + ambient.
    light = np.array([rng.uniform(-wx / 4, wx / 4), hy - 0.15, rng.uniform(lz * 0.3, lz * 0.7)], np.float32)
    to_light = light - points
    dist = np.linalg.norm(to_light, axis=1)
    ldir = to_light / np.maximum(dist, _EPS)[:, None]
    lambert = np.clip((normal * ldir).sum(axis=1), 0.0, 1.0)
    lit = np.ones(len(dirs), bool)
    start = points + normal * 1e-3
    for center, half, yaw in objects:
        ts, _, _ = _box_hits(start, ldir, center, half, yaw, inside=False, normals=False)
        lit &= ~(ts < dist)
    falloff = 1.0 / (1.0 + 0.04 * dist**2)
    intensity = 0.25 + 0.95 * lambert * lit * falloff * rng.uniform(0.9, 1.3)
    rgb = albedo * intensity[:, None]
    rgb = rgb + rng.normal(0.0, 0.01, rgb.shape).astype(np.float32)  # sensor noise
    image = (np.clip(rgb, 0.0, 1.0) ** (1 / 1.4) * 255.0 + 0.5).astype(np.uint8).reshape(height, width, 3)

    depth = t.reshape(height, width).astype(np.float32)
    depth = _kinect_holes(depth, rng)
    return image, depth


def _kinect_holes(depth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Zero out what a Kinect misses: out-of-range depth, a thin band at depth discontinuities, random blobs."""
    h, w = depth.shape
    invalid = (depth < MIN_DEPTH) | (depth > MAX_DEPTH) | ~np.isfinite(depth)
    # Depth edges: a relative jump to the right or below, widened to the far side's shadow band (1-2 px).
    jump_x = np.abs(np.diff(depth, axis=1)) / np.minimum(depth[:, 1:], depth[:, :-1]) > 0.08
    jump_y = np.abs(np.diff(depth, axis=0)) / np.minimum(depth[1:, :], depth[:-1, :]) > 0.08
    edges = np.zeros_like(invalid)
    edges[:, 1:] |= jump_x
    edges[:, :-1] |= jump_x
    edges[1:, :] |= jump_y
    edges[:-1, :] |= jump_y
    if rng.random() < 0.5:  # sometimes a wider band
        edges[:, 1:] |= edges[:, :-1].copy()
    # Random elliptic blobs (specular / absorbing patches): 2-6 of them, 1-5 % of the short side.
    ys, xs = np.ogrid[:h, :w]
    blobs = np.zeros_like(invalid)
    for _ in range(int(rng.integers(2, 7))):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry, rx = rng.uniform(0.01, 0.05, size=2) * min(h, w) + 1.0
        blobs |= ((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 <= 1.0
    # The far range gets sparse dropouts.
    far = (depth > 0.8 * MAX_DEPTH) & (rng.random((h, w)) < 0.3)
    holes = invalid | edges | blobs | far
    return np.where(holes, np.float32(0.0), depth).astype(np.float32)
