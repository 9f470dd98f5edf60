"""Procedural driving scenes: a seeded, deterministic camera sequence with exact ground truth.

A pinhole camera (KITTI-like: focal length 0.58 × width, 1.65 m above a flat road) looks down a
road with lanes. Vehicles, pedestrians, cyclists and traffic lights live in world coordinates
(X to the right, Z forward, metres) and move smoothly from frame to frame; each frame they are
projected, painted far to near, and the label of every object is the exact extent of the pixels
it still owns after nearer objects were painted over it (its *visible* extent, clipped to the
frame). Objects too small or too hidden to label become ignore regions, by the rule of
`shared/EVAL.md`: visible height < 25 px at the frame's resolution, or less than half visible.

Only NumPy and OpenCV are used, so a vehicle (or a simulator feeding one) needs no PyTorch.
Same seed and same library versions → byte-identical images and boxes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from .classes import SCENE_CLASSES

CAMERA_HEIGHT_M = 1.65
FOCAL_PER_WIDTH = 0.58  # KITTI: f = 721 px for a 1242 px wide image
MIN_LABEL_HEIGHT_PX = 25.0
MIN_VISIBLE_FRACTION = 0.5
LANE_WIDTH_M = 3.5
NEAR_Z_M, FAR_Z_M = 4.0, 70.0
EGO_GAP_M = 9.0  # the nearest a vehicle in our own lane gets

CLASS_INDEX = {name: i for i, name in enumerate(SCENE_CLASSES)}

CAR_COLOURS = np.array(
    [
        (30, 30, 30),
        (230, 230, 230),
        (160, 160, 160),
        (40, 40, 140),
        (140, 40, 30),
        (40, 90, 40),
        (20, 60, 120),
        (200, 180, 150),
        (90, 90, 100),
        (30, 140, 200),
        (60, 60, 60),
        (180, 60, 60),
    ],
    dtype=np.int32,
)  # BGR


@dataclass
class SceneObject:
    """Ground truth of one object in one frame (pixels of the frame, x2/y2 exclusive)."""

    track_id: int
    class_id: int
    box: tuple[float, float, float, float]  # visible extent x1, y1, x2, y2
    visible_fraction: float  # visible pixels / all pixels of the object, including those outside the frame
    truncation: float  # fraction of the object outside the frame
    occlusion: float  # fraction of its in-frame pixels hidden by nearer objects
    ignore: bool  # too small or too hidden to label: an ignore region for evaluation

    @property
    def class_name(self) -> str:
        return SCENE_CLASSES[self.class_id]


@dataclass
class SceneFrame:
    index: int
    stamp_ns: int
    image: np.ndarray  # (H, W, 3) uint8, BGR
    objects: list[SceneObject]


@dataclass
class _Actor:
    """An object in world coordinates; `kind` picks its painter."""

    track_id: int
    kind: str  # car, truck, bus, person, cyclist, traffic light
    x: float
    z: float
    vx: float
    vz: float
    width: float
    height: float
    length: float
    colour: np.ndarray
    facing_away: bool = True  # we see its rear (same direction) or its front (oncoming)
    elevation: float = 0.0  # bottom above the road (traffic lights)
    phase: float = 0.0  # walking / pedalling animation
    extra: dict = field(default_factory=dict)


@dataclass
class _Camera:
    width: int
    height: int
    focal: float
    cx: float
    horizon: float

    def project(self, x: np.ndarray | float, y_up: np.ndarray | float, z: np.ndarray | float):
        z = np.maximum(z, 0.1)
        u = self.cx + self.focal * np.asarray(x) / z
        v = self.horizon + self.focal * (CAMERA_HEIGHT_M - np.asarray(y_up)) / z
        return u, v


class SceneSequence:
    """An endless, deterministic sequence of driving frames; `frame(i)` must be called in order."""

    def __init__(self, seed: int, size: tuple[int, int] = (1224, 370), rate_hz: float = 10.0, start_ns: int = 0):
        width, height = size
        if width <= 0 or height <= 0:
            raise ValueError(f"size {width}x{height}: expected positive width and height")
        if rate_hz <= 0:
            raise ValueError(f"rate {rate_hz}: expected a positive frame rate")
        self.rng = np.random.default_rng(seed)  # the world: layout, actors, motion
        self.seed = seed
        self.size = size
        self.rate_hz = rate_hz
        self.start_ns = start_ns
        rng = self.rng
        self.camera = _Camera(
            width, height, FOCAL_PER_WIDTH * width, width / 2.0, height * (0.46 + rng.uniform(-0.03, 0.03))
        )
        self.ego_speed = rng.uniform(6.0, 18.0)
        self.curvature = rng.uniform(-1.2e-3, 1.2e-3)
        self.lanes_left = int(rng.integers(1, 3))  # lanes left of ours (the leftmost may be oncoming)
        self.lanes_right = int(rng.integers(0, 2))
        self.oncoming = bool(rng.random() < 0.6)
        self.light = rng.uniform(0.55, 1.25)  # global exposure
        self.tint = rng.uniform(0.85, 1.15, size=3)
        self.blur_sigma = rng.choice([0.0, 0.0, 0.5, 0.8, 1.1])
        self.noise_sigma = rng.uniform(1.5, 7.0)
        self.sky_top = np.array([rng.uniform(170, 245), rng.uniform(140, 215), rng.uniform(100, 190)])
        if rng.random() < 0.3:  # overcast
            self.sky_top[:] = rng.uniform(150, 225)
        self.sky_bottom = np.clip(self.sky_top + rng.uniform(-10, 40, size=3), 0, 255)
        self.road_grey = rng.uniform(70, 125)
        self.verge_colour = (np.array([60, 110, 90]) * rng.uniform(0.9, 1.1, size=3)).astype(np.float32)
        self.travelled = 0.0
        self._next_track = 0
        self._frame_index = 0
        self.background = self._make_background()
        self.actors: list[_Actor] = []
        self._density = {
            "car": int(rng.integers(4, 12)),
            "truck": int(rng.integers(0, 3)),
            "bus": int(rng.integers(0, 2)),
            "person": int(rng.integers(1, 8)),
            "cyclist": int(rng.integers(0, 3)),
            "traffic light": int(rng.integers(0, 4)),
        }
        for kind, count in self._density.items():
            for _ in range(count):
                self.actors.append(self._spawn(kind, initial=True))
        self._follow()

    # ------------------------------------------------------------------ world
    def _lane_centres(self) -> list[tuple[float, bool]]:
        """(x, oncoming) of each lane centre."""
        lanes = [(i * LANE_WIDTH_M, False) for i in range(-self.lanes_left, self.lanes_right + 1)]
        if self.oncoming:
            lanes[0] = (lanes[0][0], True)
        return lanes

    def _road_edges(self) -> tuple[float, float]:
        return (-(self.lanes_left + 0.5) * LANE_WIDTH_M, (self.lanes_right + 0.5) * LANE_WIDTH_M)

    def _curve(self, z):
        return self.curvature * np.square(z)

    def _distance(self, initial: bool) -> float:
        # Log-uniform distance gives KITTI's size spread: about half of the cars beyond 24 m
        # (< 45 px tall) and a fifth beyond 45 m (< 25 px, ignore regions).
        if initial:
            return float(math.exp(self.rng.uniform(math.log(NEAR_Z_M + 2.0), math.log(FAR_Z_M))))
        return float(self.rng.uniform(0.6, 1.0) * FAR_Z_M)

    def _spawn(self, kind: str, initial: bool) -> _Actor:
        rng = self.rng
        track = self._next_track
        self._next_track += 1
        z = self._distance(initial)
        left, right = self._road_edges()
        colour = CAR_COLOURS[rng.integers(len(CAR_COLOURS))] + rng.integers(-15, 16, size=3)
        if kind in ("car", "truck", "bus"):
            lane_x, oncoming = self._lane_centres()[rng.integers(len(self._lane_centres()))]
            parked = not oncoming and rng.random() < 0.25
            if parked:
                lane_x = right + 1.2 if rng.random() < 0.6 else left - 1.2
                vz = -self.ego_speed
            elif oncoming:
                vz = -self.ego_speed - rng.uniform(6, 16)
                if not initial:
                    z = FAR_Z_M * rng.uniform(0.85, 1.0)
            else:
                vz = rng.uniform(-3.0, 3.0)
            dims = {
                "car": (rng.uniform(1.6, 1.9), rng.uniform(1.35, 1.6), rng.uniform(3.9, 4.7)),
                "truck": (rng.uniform(2.3, 2.55), rng.uniform(2.8, 3.8), rng.uniform(6.0, 10.0)),
                "bus": (2.55, rng.uniform(3.0, 3.3), rng.uniform(10.5, 12.0)),
            }[kind]
            if kind == "bus":
                colour = np.array([(30, 170, 230), (200, 200, 200), (40, 40, 180), (160, 100, 40)][rng.integers(4)])
            x = lane_x + rng.uniform(-0.4, 0.4)
            if abs(lane_x) < LANE_WIDTH_M / 2:  # our lane: keep a safe gap ahead
                z = max(z, EGO_GAP_M)
            elif not initial and vz > 0:  # a faster car overtakes us in another lane: it comes from behind
                z = NEAR_Z_M
            return _Actor(track, kind, x, z, 0.0, vz, dims[0], dims[1], dims[2], colour, facing_away=not oncoming)
        if kind == "person":
            side = right + rng.uniform(1.0, 4.0) if rng.random() < 0.55 else left - rng.uniform(1.0, 4.0)
            crossing = rng.random() < 0.2
            vx = rng.choice([-1.0, 1.0]) * rng.uniform(0.8, 1.6) if crossing else rng.uniform(-0.2, 0.2)
            vz = -self.ego_speed + (0.0 if crossing else rng.uniform(-1.5, 1.5))
            clothes = {"shirt": rng.integers(20, 235, size=3), "trousers": rng.integers(10, 120, size=3)}
            return _Actor(
                track,
                kind,
                side,
                z,
                vx,
                vz,
                rng.uniform(0.45, 0.6),
                rng.uniform(1.5, 1.9),
                0.3,
                colour,
                phase=rng.uniform(0, 6.28),
                extra=clothes,
            )
        if kind == "cyclist":
            x = right - 0.6 if rng.random() < 0.7 else right + 1.5
            clothes = {"shirt": rng.integers(20, 235, size=3), "trousers": rng.integers(10, 120, size=3)}
            return _Actor(
                track,
                kind,
                x,
                z,
                0.0,
                rng.uniform(-self.ego_speed + 2, -self.ego_speed + 6),
                0.6,
                1.05,
                1.75,
                colour,
                phase=rng.uniform(0, 6.28),
                extra=clothes,
            )
        # traffic light: a housing on a pole at the roadside or over the road
        overhead = rng.random() < 0.4
        x = rng.uniform(left, right) if overhead else (right + 1.5 if rng.random() < 0.6 else left - 1.5)
        return _Actor(
            track,
            kind,
            x,
            z,
            0.0,
            -self.ego_speed,
            0.35,
            rng.uniform(0.85, 1.05),
            0.3,
            np.array([25, 25, 25]),
            elevation=rng.uniform(4.5, 5.5) if overhead else rng.uniform(2.4, 3.2),
            extra={"lit": int(rng.integers(3)), "overhead": overhead},
        )

    def _follow(self) -> None:
        """Vehicles in one lane keep a gap: the one behind takes the speed of the one ahead."""
        vehicles = sorted((a for a in self.actors if a.kind in ("car", "truck", "bus")), key=lambda a: a.z)
        for i, behind in enumerate(vehicles):
            for ahead in vehicles[i + 1 :]:
                if abs(ahead.x - behind.x) < 1.5 and ahead.z - (behind.z + behind.length) < 3.0:
                    behind.vz = min(behind.vz, ahead.vz)
                    if ahead.z - (behind.z + behind.length) < 1.0:
                        behind.z = ahead.z - behind.length - 1.0  # spawned overlapping: pull it back
                    break

    def _step(self) -> None:
        dt = 1.0 / self.rate_hz
        self.travelled += self.ego_speed * dt
        self.curvature = float(np.clip(self.curvature + self.rng.normal(0, 2e-5), -1.5e-3, 1.5e-3))
        self.light = float(np.clip(self.light + self.rng.normal(0, 0.004), 0.5, 1.3))
        for i, actor in enumerate(self.actors):
            actor.x += actor.vx * dt
            actor.z += actor.vz * dt
            actor.phase += dt * 7.0
            if actor.kind in ("car", "truck", "bus") and abs(actor.x) < LANE_WIDTH_M / 2 and actor.z < EGO_GAP_M:
                actor.vz = abs(actor.vz) + 0.5  # the car ahead pulls away rather than being driven into
            if actor.z < NEAR_Z_M - 1.0 or actor.z > FAR_Z_M + 5.0 or abs(actor.x) > 25:
                self.actors[i] = self._spawn(actor.kind, initial=False)
        self._follow()

    # --------------------------------------------------------------- painting
    def _make_background(self) -> np.ndarray:
        """Static far scenery: sky gradient, buildings and trees along the horizon, road and verges."""
        cam = self.camera
        w, h = cam.width, cam.height
        rng = self.rng
        img = np.empty((h, w, 3), np.float32)
        t = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
        img[:] = (1 - t) * self.sky_top + t * self.sky_bottom
        horizon = int(cam.horizon)
        x = 0
        while x < w:  # skyline
            bw = int(rng.integers(max(8, w // 60), max(20, w // 12)))
            bh = int(rng.uniform(0.02, 0.14) * h)
            grey = rng.uniform(60, 180)
            colour = np.clip(grey + rng.uniform(-25, 25, size=3), 0, 255)
            if rng.random() < 0.4:  # trees
                colour = np.array([rng.uniform(30, 70), rng.uniform(70, 130), rng.uniform(30, 70)])
                cv2.ellipse(
                    img, (x + bw // 2, horizon - bh // 2), (bw // 2 + 1, bh // 2 + 1), 0, 0, 360, colour.tolist(), -1
                )
            else:
                cv2.rectangle(img, (x, horizon - bh), (x + bw, horizon + 2), colour.tolist(), -1)
            x += bw
        return img

    def _paint_ground(self, img: np.ndarray) -> None:
        cam = self.camera
        h = cam.height
        horizon = cam.horizon
        rows = np.arange(int(math.ceil(horizon)) + 1, h)
        z = cam.focal * CAMERA_HEIGHT_M / (rows - horizon)
        left, right = self._road_edges()
        curve = self._curve(z)
        ul, _ = cam.project(left + curve, 0.0, z)
        ur, _ = cam.project(right + curve, 0.0, z)
        verge = self.verge_colour
        cols = np.arange(cam.width, dtype=np.float32)[None, :]
        on_road = (cols >= ul[:, None]) & (cols <= ur[:, None])
        sidewalk = (cols >= ul[:, None] - 0.25 * (ur - ul)[:, None]) & (cols <= ur[:, None] + 0.25 * (ur - ul)[:, None])
        ground = img[rows]
        ground[:] = verge
        ground[sidewalk] = (150, 150, 150)
        ground[on_road] = self.road_grey
        # lane markings: dashed between lanes, solid at the road edges; dashes move as we drive
        dash = ((z + self.travelled) % 12.0) < 4.0
        for i in range(-self.lanes_left, self.lanes_right + 2):
            xm = (i - 0.5) * LANE_WIDTH_M + curve
            um, _ = cam.project(xm, 0.0, z)
            half = np.maximum(cam.focal * 0.07 / z, 0.5)
            solid = i in (-self.lanes_left, self.lanes_right + 1)
            paint = np.abs(cols - um[:, None]) <= half[:, None]
            if not solid:
                paint &= dash[:, None]
            colour = (40, 200, 230) if (self.oncoming and i == -self.lanes_left + 1) else (225, 225, 225)
            ground[paint] = colour
        img[rows] = ground

    def _actor_parts(self, a: _Actor) -> list[tuple[str, list[tuple[str, object, tuple]]]]:
        """The labelled parts of an actor, each (class name, primitives in painting order).

        Primitives are ("poly", points) or ("ellipse", (centre, axes)) with a colour. A cyclist has two
        parts, labelled as COCO does it: the bicycle and, painted over it, its rider (a person).
        """
        cam = self.camera
        x = a.x + float(self._curve(a.z))
        shapes: list[tuple[str, object, tuple]] = []

        def quad(x0, x1, y0, y1, z):
            u, v = cam.project(np.array([x0, x1, x1, x0]), np.array([y0, y0, y1, y1]), z)
            return np.stack([u, v], 1)

        def col(c, k=1.0):
            return tuple(float(min(255, max(0, ch * k))) for ch in c)

        if a.kind in ("car", "truck", "bus"):
            hw, hgt, near_z = a.width / 2, a.height, a.z
            far_z = a.z + a.length
            body = a.colour
            # the visible side face (towards the camera's axis), then the rear/front face
            side_x = x - hw if x > 0 else x + hw
            su, sv = cam.project(
                np.array([side_x] * 4), np.array([0.25, 0.25, hgt, hgt]), np.array([near_z, far_z, far_z, near_z])
            )
            shapes.append(("poly", np.stack([su, sv], 1), col(body, 0.75)))
            if a.kind == "bus":
                wu, wv = cam.project(
                    np.array([side_x] * 4),
                    np.array([hgt * 0.55, hgt * 0.55, hgt * 0.85, hgt * 0.85]),
                    np.array([near_z + 0.5, far_z - 0.5, far_z - 0.5, near_z + 0.5]),
                )
                shapes.append(("poly", np.stack([wu, wv], 1), (40, 35, 30)))
            # wheels on the side
            for wz in (near_z + 0.7, far_z - 0.8):
                u, v = cam.project(side_x, 0.33, wz)
                r = cam.focal * 0.33 / wz
                shapes.append(("ellipse", ((float(u), float(v)), (max(r * 0.35, 0.6), max(r, 0.6))), (20, 20, 20)))
            if a.kind == "car":
                shapes.append(("poly", quad(x - hw, x + hw, 0.25, hgt * 0.6, near_z), col(body)))
                # cabin: narrower trapezoid, mostly glass
                u, v = cam.project(
                    np.array([x - hw * 0.95, x + hw * 0.95, x + hw * 0.7, x - hw * 0.7]),
                    np.array([hgt * 0.6, hgt * 0.6, hgt, hgt]),
                    near_z + 0.4,
                )
                shapes.append(("poly", np.stack([u, v], 1), col(body, 0.9)))
                u, v = cam.project(
                    np.array([x - hw * 0.85, x + hw * 0.85, x + hw * 0.68, x - hw * 0.68]),
                    np.array([hgt * 0.64, hgt * 0.64, hgt * 0.95, hgt * 0.95]),
                    near_z + 0.4,
                )
                shapes.append(("poly", np.stack([u, v], 1), (50, 45, 40)))
                lamp = (40, 40, 210) if a.facing_away else (200, 235, 245)
                for lx in (x - hw * 0.85, x + hw * 0.6):
                    shapes.append(("poly", quad(lx, lx + hw * 0.25, hgt * 0.42, hgt * 0.52, near_z), lamp))
                shapes.append(
                    ("poly", quad(x - hw * 0.3, x + hw * 0.3, hgt * 0.25, hgt * 0.34, near_z), (210, 210, 210))
                )
            else:
                shapes.append(("poly", quad(x - hw, x + hw, 0.35, hgt, near_z), col(body)))
                if a.kind == "bus" or not a.facing_away:
                    shapes.append(
                        ("poly", quad(x - hw * 0.85, x + hw * 0.85, hgt * 0.5, hgt * 0.9, near_z), (50, 45, 40))
                    )
                else:
                    shapes.append(("poly", quad(x - 0.02, x + 0.02, 0.45, hgt * 0.95, near_z), col(body, 0.6)))
                shapes.append(("poly", quad(x - hw, x + hw, 0.3, 0.5, near_z), (30, 30, 30)))
            # wheels below the bumper
            for wx in (x - hw * 0.8, x + hw * 0.55):
                shapes.append(("poly", quad(wx, wx + hw * 0.25, 0.0, 0.32, near_z), (15, 15, 15)))
            return [(a.kind, shapes)]
        if a.kind in ("person", "cyclist"):
            base = 0.0
            parts = []
            if a.kind == "cyclist":
                # the bicycle, seen from behind/side: wheels and frame
                r = 0.34
                for dz in (0.0, a.length):
                    u, v = cam.project(x, r, a.z + dz)
                    rad = cam.focal * r / (a.z + dz)
                    shapes.append(
                        ("ellipse", ((float(u), float(v)), (max(rad * 0.25, 0.6), max(rad, 0.6))), (25, 25, 25))
                    )
                u, v = cam.project(
                    np.array([x - 0.04, x + 0.04, x + 0.04, x - 0.04]),
                    np.array([0.35, 0.35, 0.95, 0.95]),
                    np.array([a.z + 0.2, a.z + 0.2, a.z + a.length - 0.3, a.z + a.length - 0.3]),
                )
                shapes.append(("poly", np.stack([u, v], 1), col(a.colour)))
                parts.append(("bicycle", shapes))
                shapes = []
                base = 0.75
            h = a.height * (0.75 if a.kind == "cyclist" else 1.0)
            hw = a.width / 2
            swing = 0.12 * math.sin(a.phase)
            z = a.z + (a.length * 0.5 if a.kind == "cyclist" else 0.0)
            trousers, shirt = a.extra["trousers"], a.extra["shirt"]
            for sgn in (-1, 1):  # legs
                lx = x + sgn * hw * 0.4 + sgn * swing
                shapes.append(("poly", quad(lx - hw * 0.22, lx + hw * 0.22, base, base + h * 0.47, z), col(trousers)))
            shapes.append(("poly", quad(x - hw, x + hw, base + h * 0.45, base + h * 0.82, z), col(shirt)))
            for sgn in (-1, 1):  # arms
                ax = x + sgn * hw * 1.05
                shapes.append(
                    ("poly", quad(ax - hw * 0.16, ax + hw * 0.16, base + h * 0.5, base + h * 0.8, z), col(shirt, 0.8))
                )
            u, v = cam.project(x, base + h * 0.91, z)
            rad = cam.focal * h * 0.09 / z
            skin = (70 + 80 * (a.track_id % 3), 110 + 40 * (a.track_id % 2), 150 + 30 * (a.track_id % 3))
            shapes.append(("ellipse", ((float(u), float(v)), (max(rad * 0.85, 0.6), max(rad, 0.6))), skin))
            return parts + [("person", shapes)]
        # traffic light housing with three lamps, one lit
        e, h, hw = a.elevation, a.height, a.width / 2
        shapes.append(("poly", quad(x - hw, x + hw, e, e + h, a.z), (25, 25, 25)))
        lit_colours = [(40, 40, 230), (30, 190, 240), (80, 220, 60)]
        for k in range(3):
            yc = e + h * (0.8 - 0.3 * k)
            u, v = cam.project(x, yc, a.z)
            rad = cam.focal * 0.11 / a.z
            lamp = lit_colours[k] if k == a.extra["lit"] else (55, 55, 55)
            shapes.append(("ellipse", ((float(u), float(v)), (max(rad, 0.6), max(rad, 0.6))), lamp))
        return [(a.kind, shapes)]

    def _pole(self, img: np.ndarray, owner: np.ndarray, a: _Actor) -> None:
        """Traffic-light poles and arms are scenery, not part of the labelled housing; they hide what is behind them."""
        cam = self.camera
        x = a.x + float(self._curve(a.z))
        px = x if not a.extra["overhead"] else self._road_edges()[1] + 1.0
        mask = np.zeros(owner.shape, np.uint8)
        u, v = cam.project(
            np.array([px - 0.08, px + 0.08, px + 0.08, px - 0.08]),
            np.array([0, 0, a.elevation + 0.2, a.elevation + 0.2]),
            a.z + 0.05,
        )
        cv2.fillPoly(mask, [np.round(np.stack([u, v], 1)).astype(np.int32)], 1)
        if a.extra["overhead"]:
            u, v = cam.project(
                np.array([x, px, px, x]), np.array([a.elevation + 0.7] * 2 + [a.elevation + 0.85] * 2), a.z + 0.05
            )
            cv2.fillPoly(mask, [np.round(np.stack([u, v], 1)).astype(np.int32)], 1)
        covered = mask > 0
        img[covered] = (70, 70, 70)
        owner[covered] = -1

    def _rasterise(self, shapes) -> tuple[int, int, np.ndarray, np.ndarray] | None:
        """Paint an object's primitives on a canvas of its own full extent (inside or outside the frame)."""
        points = []
        for kind, geom, _ in shapes:
            if kind == "poly":
                points.append(geom)
            else:
                (cu, cv), (ax, ay) = geom
                points.append(np.array([[cu - ax, cv - ay], [cu + ax, cv + ay]]))
        pts = np.concatenate(points)
        x0, y0 = np.floor(pts.min(0)).astype(int) - 1
        x1, y1 = np.ceil(pts.max(0)).astype(int) + 1
        if x1 - x0 > 8 * self.camera.width or y1 - y0 > 8 * self.camera.height:
            return None  # absurdly close: never drawn (such actors are respawned before they get here)
        canvas = np.zeros((y1 - y0, x1 - x0, 3), np.float32)
        mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
        shift = 4  # sub-pixel precision for fillPoly / ellipse
        for kind, geom, colour in shapes:
            if kind == "poly":
                p = np.round((geom - (x0, y0)) * (1 << shift)).astype(np.int32)
                cv2.fillPoly(canvas, [p], colour, lineType=cv2.LINE_8, shift=shift)
                cv2.fillPoly(mask, [p], 255, lineType=cv2.LINE_8, shift=shift)
            else:
                (cu, cv), (ax, ay) = geom
                c = (int(round((cu - x0) * (1 << shift))), int(round((cv - y0) * (1 << shift))))
                axes = (int(round(ax * (1 << shift))), int(round(ay * (1 << shift))))
                cv2.ellipse(canvas, c, axes, 0, 0, 360, colour, -1, cv2.LINE_8, shift)
                cv2.ellipse(mask, c, axes, 0, 0, 360, 255, -1, cv2.LINE_8, shift)
        return int(x0), int(y0), canvas, mask > 0

    def _paint_shadows(self, img: np.ndarray) -> None:
        """Vehicles darken the road beneath them; all shadows lie on the ground, under every object."""
        cam = self.camera
        shade = np.zeros(img.shape[:2], np.uint8)
        for a in self.actors:
            if a.kind not in ("car", "truck", "bus"):
                continue
            x = a.x + float(self._curve(a.z))
            u, v = cam.project(
                np.array([x - a.width * 0.6, x + a.width * 0.6, x + a.width * 0.6, x - a.width * 0.6]),
                np.zeros(4),
                np.array([a.z - 0.3, a.z - 0.3, a.z + a.length, a.z + a.length]),
            )
            cv2.fillPoly(shade, [np.round(np.stack([u, v], 1)).astype(np.int32)], 1)
        img[shade > 0] *= 0.55

    def frame(self, index: int | None = None) -> SceneFrame:
        """Paint frame `index` (default: the next one). Frames may be skipped (the world still moves) but not revisited."""
        if index is None:
            index = self._frame_index
        if index < self._frame_index:
            raise ValueError(f"frame {index} requested, but the sequence is already at frame {self._frame_index}")
        while self._frame_index < index:
            self._frame_index += 1
            self._step()
        cam = self.camera
        w, h = cam.width, cam.height
        img = self.background.copy()
        self._paint_ground(img)
        owner = np.full((h, w), -1, np.int32)  # which piece owns each pixel, after painting far to near
        pieces = []  # (actor, class name, full area, in-frame area, in-frame rectangle)
        self._paint_shadows(img)
        for a in sorted(self.actors, key=lambda actor: -actor.z):
            if a.kind == "traffic light":
                self._pole(img, owner, a)
            for class_name, shapes in self._actor_parts(a):
                raster = self._rasterise(shapes)
                if raster is None:
                    continue
                x0, y0, canvas, mask = raster
                fx0, fy0 = max(x0, 0), max(y0, 0)
                fx1, fy1 = min(x0 + mask.shape[1], w), min(y0 + mask.shape[0], h)
                if fx1 <= fx0 or fy1 <= fy0:
                    continue
                local = mask[fy0 - y0 : fy1 - y0, fx0 - x0 : fx1 - x0]
                in_frame = int(local.sum())
                if in_frame == 0:
                    continue
                img[fy0:fy1, fx0:fx1][local] = canvas[fy0 - y0 : fy1 - y0, fx0 - x0 : fx1 - x0][local]
                owner[fy0:fy1, fx0:fx1][local] = len(pieces)
                pieces.append((a, class_name, int(mask.sum()), in_frame, (fx0, fy0, fx1, fy1)))
        objects = []
        for i, (a, class_name, full, in_frame, (fx0, fy0, fx1, fy1)) in enumerate(pieces):
            mine = owner[fy0:fy1, fx0:fx1] == i
            visible = int(mine.sum())
            if visible == 0:
                continue
            rows = np.flatnonzero(mine.any(1))
            cols = np.flatnonzero(mine.any(0))
            box = (float(fx0 + cols[0]), float(fy0 + rows[0]), float(fx0 + cols[-1] + 1), float(fy0 + rows[-1] + 1))
            visible_fraction = visible / full
            ignore = (box[3] - box[1]) < MIN_LABEL_HEIGHT_PX or visible_fraction < MIN_VISIBLE_FRACTION
            objects.append(
                SceneObject(
                    a.track_id,
                    CLASS_INDEX[class_name],
                    box,
                    visible_fraction,
                    1.0 - in_frame / full,
                    1.0 - visible / in_frame,
                    ignore,
                )
            )
        image = self._finish(img)
        stamp = self.start_ns + int(round(index * 1e9 / self.rate_hz))
        out = SceneFrame(index, stamp, image, sorted(objects, key=lambda o: (o.track_id, o.class_id)))
        self._frame_index += 1
        self._step()  # the world is now at the next frame
        return out

    def _finish(self, img: np.ndarray) -> np.ndarray:
        """Camera effects: exposure and tint, blur, sensor noise; then 8-bit BGR."""
        img *= (self.light * self.tint).astype(np.float32)
        if self.blur_sigma > 0:
            cv2.GaussianBlur(img, (0, 0), float(self.blur_sigma), dst=img)
        # Sensor noise has its own stream per frame, so a frame's pixels do not depend on which frames were painted before it.
        noise_rng = np.random.default_rng((self.seed, self._frame_index))
        noise = noise_rng.standard_normal(img.shape[:2], dtype=np.float32) * np.float32(self.noise_sigma)
        img += noise[:, :, None]
        return np.clip(img, 0, 255).astype(np.uint8)


def generate_frames(
    count: int, seed: int, size: tuple[int, int] = (1224, 370), rate_hz: float = 10.0, start_ns: int = 0
):
    """Yield `count` consecutive frames of the sequence seeded by `seed`."""
    if count <= 0:
        raise ValueError(f"frames {count}: expected a positive frame count")
    sequence = SceneSequence(seed, size, rate_hz, start_ns)
    for i in range(count):
        yield sequence.frame(i)
