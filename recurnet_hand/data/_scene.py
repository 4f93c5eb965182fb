"""Random scenes for the synthetic hand dataset: pose, shape, camera, light, skin, clutter.

Every random choice of sample ``i`` is drawn from ``numpy.random.default_rng([seed, i])``
in a fixed order, so a sample depends only on ``(seed, i)`` and the MANO model,
never on which process renders it or in which order. Change
:data:`GENERATOR_VERSION` whenever a change here alters the images or labels, so
caches built by older code are refused.

Units: the MANO layer works in metres; the scene is built in metres in the camera
frame (X right, Y down, Z forward) and the labels leave in millimetres.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from scipy.spatial.transform import Rotation

from ..joints import MANO_TO_HAND21, PARENTS
from .render import DirectionalLight, render_mesh, vertex_normals

__all__ = ["GENERATOR_VERSION", "DEFAULT_VIEWPOINT", "VIEWPOINTS", "Viewpoint", "viewpoint", "HandRig", "HandScene",
           "render_scene"]

#: Version of the scene sampler; part of every cache manifest.
GENERATOR_VERSION = "2"

# Skin albedos (sRGB, 0-255) from very light to very dark; a tone is drawn between two neighbours.
_SKIN_TONES = np.array([
    (243, 205, 180), (232, 184, 150), (214, 160, 122), (190, 134, 96),
    (160, 106, 72), (126, 80, 52), (92, 58, 38), (62, 40, 28),
], dtype=np.float64) / 255.0

# Per-joint limits (radians) of flexion towards the palm, per finger (thumb, index, middle,
# ring, little) and joint (MCP/CMC, PIP/MCP, DIP/IP), as (low, high); the thumb row is
# (CMC, MCP, IP). Negative flexion is hyperextension.
_FLEX_LIMITS = np.array([
    [(-0.4, 0.9), (-0.2, 1.0), (-0.3, 1.3)],
    [(-0.3, 1.6), (0.0, 1.9), (-0.1, 1.3)],
    [(-0.3, 1.6), (0.0, 1.9), (-0.1, 1.3)],
    [(-0.3, 1.6), (0.0, 1.9), (-0.1, 1.3)],
    [(-0.3, 1.6), (0.0, 1.9), (-0.1, 1.3)],
])
# Largest sideways (ab/adduction) rotation at the base joint of each finger (radians).
_ABDUCTION = np.array([0.5, 0.25, 0.12, 0.2, 0.35])
_BETA_CLIP = 2.0  # betas ~ N(0, 1) clipped to +-2


@dataclass(frozen=True, eq=False)
class HandRig:
    """Rest-pose facts about one MANO model that the scene sampler needs.

    Built once per model by :meth:`from_joints` from a forward pass at zero pose and mean shape.

    Attributes:
        faces: ``(F, 3)`` int64 mesh faces.
        flex_axes: ``(5, 3, 3)`` unit axes (finger, joint, xyz), hand frame at rest:
            positive rotation curls that joint towards the palm.
        palm_normal: ``(3,)`` unit normal pointing out of the palm (rest pose).
        palmness: ``(V,)`` in ``[0, 1]``, how much each vertex lies on the palm side (skin shading).
        rest_vertices: ``(V, 3)`` metres, root-relative rest shape (texture coordinates).
        pose_joint: ``(5, 3)`` int, row of MANO's 15-joint pose vector for (finger, joint).
        is_right: handedness of the model.
        bone: ``(V,)`` int, child joint of the finger bone nearest to each vertex at rest, or
            ``-1`` for vertices nearer the palm bones.
        bone_dist: ``(V,)`` metres, rest distance from each vertex to that bone.
    """

    faces: np.ndarray
    flex_axes: np.ndarray
    palm_normal: np.ndarray
    palmness: np.ndarray
    rest_vertices: np.ndarray
    pose_joint: np.ndarray
    is_right: bool
    bone: np.ndarray
    bone_dist: np.ndarray

    @classmethod
    def from_joints(cls, vertices: np.ndarray, joints: np.ndarray, faces: np.ndarray, is_right: bool) -> HandRig:
        """Derive the rig from a flat rest pose.

        Args:
            vertices: ``(V, 3)`` rest vertices (metres).
            joints: ``(21, 3)`` rest joints in project order (metres).
            faces: ``(F, 3)`` mesh faces.
            is_right: right hand (mirrors which side is the palm).
        """
        palm = _hand_frame(joints, is_right)[:, 2]
        axes = np.zeros((5, 3, 3))
        for f in range(5):
            for s in range(3):
                bone = joints[2 + 4 * f + s] - joints[1 + 4 * f + s]
                # Rotating the bone about bone x palm moves it towards the palm; the thumb also
                # curls across the palm towards the little finger.
                towards = palm if f else palm + 0.8 * _unit(joints[17] - joints[5])
                axes[f, s] = _unit(np.cross(bone, towards))
        centred = vertices - joints[0]
        normals = vertex_normals(vertices, faces)
        palmness = np.clip(normals @ palm * 1.5 + 0.5, 0.0, 1.0)
        # MANO's pose vector holds joints 1..15 of its own order; the project order maps there.
        pose_joint = np.array([[MANO_TO_HAND21[1 + 4 * f + s] - 1 for s in range(3)] for f in range(5)])
        children = np.arange(1, 21)
        dist = _bone_distance(vertices[:, None], joints, children[None])  # (V, 20)
        nearest = children[dist.argmin(1)]
        bone = np.where(nearest % 4 == 1, -1, nearest)  # children 1, 5, .. end wrist-to-base bones
        return cls(np.asarray(faces, np.int64), axes, palm, palmness, centred, pose_joint, bool(is_right),
                   bone, dist.min(1))

    def finger_thickness(self, vertices: np.ndarray, joints: np.ndarray) -> np.ndarray:
        """``(5,)`` median distance of each finger's surface to its bones, relative to the rest shape."""
        has = self.bone >= 0
        ratio = _bone_distance(vertices[has], joints, self.bone[has]) / np.maximum(self.bone_dist[has], 1e-6)
        finger = (self.bone[has] - 1) // 4
        return np.array([np.median(ratio[finger == f]) for f in range(5)])


@dataclass(frozen=True, eq=False)
class HandScene:
    """One rendered sample.

    Attributes:
        image: ``(S, S, 3)`` uint8 RGB.
        joints3d: ``(21, 3)`` float64 mm, camera frame.
        joints2d: ``(21, 2)`` float64 crop px, exactly the projection of ``joints3d`` by ``K``.
        K: ``(3, 3)`` float64 crop intrinsics (px).
        mask: ``(S, S)`` bool, pixels covered by the hand (and forearm) mesh before occluders.
        rotation: ``(3, 3)`` float64 camera-from-hand rotation: the root-relative 3D joints are
            the MANO hand's (zero global orientation) rotated by it.
    """

    image: np.ndarray
    joints3d: np.ndarray
    joints2d: np.ndarray
    K: np.ndarray
    mask: np.ndarray
    rotation: np.ndarray


def _bone_distance(points: np.ndarray, joints: np.ndarray, child: np.ndarray) -> np.ndarray:
    """Distance from ``points`` to the bone segment parent(child) -> child (broadcasting)."""
    a, b = joints[np.asarray(PARENTS)[child]], joints[child]
    t = np.clip(np.sum((points - a) * (b - a), -1) / np.sum((b - a) ** 2, -1), 0.0, 1.0)
    return np.linalg.norm(points - (a + t[..., None] * (b - a)), axis=-1)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _hand_frame(joints: np.ndarray, is_right: bool) -> np.ndarray:
    """``(3, 3)`` rotation whose columns are the hand's across, up and palm-normal directions.

    ``up`` points from the wrist to the middle MCP; the palm normal leaves the palm side
    (for a right hand seen from its palm with the fingers up, the thumb is on the right).
    """
    wrist, index, middle, little = joints[0], joints[5], joints[9], joints[17]
    normal = _unit(np.cross(index - wrist, little - wrist)) * (1.0 if is_right else -1.0)
    up = _unit(middle - wrist)
    normal = _unit(normal - (normal @ up) * up)
    return np.column_stack([np.cross(up, normal), up, normal])


def sample_hand_pose(rng: np.random.Generator, rig: HandRig) -> np.ndarray:
    """Random finger articulation within :data:`_FLEX_LIMITS`, as MANO's ``(15, 3)`` axis-angle.

    Finger curls share one grasp level (open hand .. fist) with per-finger noise, and a
    quarter of the fingers move independently (pointing, counting), so poses look like
    hands rather than independent joint noise.
    """
    grasp = rng.uniform(0.0, 1.0)
    alone = rng.random(5) < 0.25
    curl = np.where(alone, rng.uniform(0.0, 1.0, 5), np.clip(grasp + rng.normal(0.0, 0.15, 5), 0.0, 1.0))
    level = np.clip(curl[:, None] + rng.normal(0.0, 0.1, (5, 3)), 0.0, 1.0)
    flex = _FLEX_LIMITS[..., 0] + (_FLEX_LIMITS[..., 1] - _FLEX_LIMITS[..., 0]) * level
    spread = rng.uniform(-1.0, 1.0, 5) * _ABDUCTION * (1.0 - 0.6 * curl)
    rot = Rotation.from_rotvec((flex[..., None] * rig.flex_axes).reshape(15, 3))
    base = np.zeros((5, 3, 3))
    base[:, 0] = spread[:, None] * rig.palm_normal
    rot = rot * Rotation.from_rotvec(base.reshape(15, 3))
    pose = np.zeros((15, 3))
    pose[rig.pose_joint.reshape(-1)] = rot.as_rotvec()
    return pose


@dataclass(frozen=True)
class Viewpoint:
    """A distribution of camera-from-hand rotations (how the camera sees the hand).

    A draw starts from the hand facing the camera with its fingers up in the image
    (palm towards the camera with probability ``palm_prob``, else the back of the hand),
    tilts the palm normal away from the optical axis by up to ``tilt_deg`` in a random
    direction, leans the fingers away from the camera by ``U(lean_deg)`` degrees (a
    rotation about the image x axis: first-person views look along the hand), and rolls
    the result about the optical axis by ``U[-roll_deg, roll_deg]``. ``uniform`` draws
    from all of SO(3) instead.

    Attributes:
        name: the name in :data:`VIEWPOINTS` (recorded in cache manifests).
        palm_prob: probability that the palm faces the camera.
        tilt_deg: largest tilt of the palm normal off the optical axis (degrees).
        lean_deg: ``(low, high)`` lean of the fingers away from the camera (degrees).
        roll_deg: largest in-plane roll (degrees).
        uniform: uniform over SO(3) (the other fields are ignored).
    """

    name: str
    palm_prob: float = 0.5
    tilt_deg: float = 45.0
    lean_deg: tuple[float, float] = (0.0, 0.0)
    roll_deg: float = 60.0
    uniform: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.palm_prob <= 1.0:
            raise ValueError(f"Viewpoint {self.name!r}: palm_prob must be in [0, 1], got {self.palm_prob}")
        lo, hi = self.lean_deg
        if not (self.tilt_deg >= 0 and self.roll_deg >= 0 and lo <= hi):
            raise ValueError(f"Viewpoint {self.name!r}: tilt_deg and roll_deg must be >= 0 and lean_deg a "
                             f"(low, high) pair, got {self.tilt_deg}, {self.roll_deg}, {self.lean_deg}")

    def sample(self, rng: np.random.Generator, frame: np.ndarray) -> np.ndarray:
        """``(3, 3)`` camera-from-hand rotation for a hand whose rest frame is ``frame`` (see ``_hand_frame``).

        Always draws the same number of random values, whatever the settings.
        """
        u = rng.random(7)
        if self.uniform:
            return Rotation.from_quat(rng.normal(size=4)).as_matrix() @ frame.T
        rng.normal(size=4)  # keep the stream aligned with the uniform branch
        palm = u[0] < self.palm_prob
        normal = np.array([0.0, 0.0, -1.0 if palm else 1.0])
        up = np.array([0.0, -1.0, 0.0])
        target = np.column_stack([np.cross(up, normal), up, normal])
        direction = 2 * np.pi * u[1]
        tilt = Rotation.from_rotvec(np.array([np.cos(direction), np.sin(direction), 0.0])
                                    * np.deg2rad(self.tilt_deg) * np.sqrt(u[2]))
        lo, hi = self.lean_deg
        lean = Rotation.from_rotvec([-np.deg2rad(lo + (hi - lo) * u[3]), 0.0, 0.0])
        roll = Rotation.from_rotvec([0.0, 0.0, np.deg2rad(self.roll_deg) * (2 * u[4] - 1)])
        return (roll * lean * tilt).as_matrix() @ target @ frame.T


#: Named viewpoint distributions of the synthetic hands. ``stb``: third-person views as in
#: STB (a subject gesturing towards a camera in front of them): palm or back towards the
#: camera equally often, tilted up to 45 degrees, fingers within 60 degrees of upright; the
#: default. ``fpha``: first-person views as in FPHA (a head-mounted camera looking along the
#: arm): mostly the back of the hand (80%), fingers leaning 15 to 60 degrees away from the
#: camera, tilted up to 30 degrees, rolled up to 45 degrees either way. ``any``: every
#: orientation equally likely (uniform over SO(3)).
VIEWPOINTS: dict[str, Viewpoint] = {
    "stb": Viewpoint("stb", palm_prob=0.5, tilt_deg=45.0, roll_deg=60.0),
    "fpha": Viewpoint("fpha", palm_prob=0.2, tilt_deg=30.0, lean_deg=(15.0, 60.0), roll_deg=45.0),
    "any": Viewpoint("any", uniform=True),
}
DEFAULT_VIEWPOINT = "stb"


def viewpoint(name: str | Viewpoint) -> Viewpoint:
    """The :class:`Viewpoint` named ``name`` (a :class:`Viewpoint` is returned as it is)."""
    if isinstance(name, Viewpoint):
        return name
    try:
        return VIEWPOINTS[name]
    except KeyError:
        raise ValueError(f"unknown viewpoint {name!r}; known: {', '.join(VIEWPOINTS)}") from None


def _forearm(rng, joints, frame, R, t, tone, sides=14):
    """A tapered elliptic tube from inside the wrist away from the fingers, camera frame (metres).

    Bent at the wrist by a random flexion/deviation, 24 cm long unless it points at the
    camera (then shortened so it stays beyond 70% of the wrist's depth); half of the arms
    wear a sleeve starting 2-15 cm from the wrist.

    Returns:
        vertices ``(rings * sides, 3)``, faces ``(2 * sides * (rings - 1), 3)``, colours ``(rings * sides, 3)``.
    """
    across, up, normal = frame.T
    bend = Rotation.from_rotvec(across * rng.uniform(-0.5, 0.5)) * Rotation.from_rotvec(normal * rng.uniform(-0.3, 0.3))
    axis = bend.apply(-up)
    a_w = _unit(bend.apply(across))
    a_t = _unit(np.cross(axis, a_w))
    width = 0.5 * np.linalg.norm(joints[5] - joints[17]) * rng.uniform(0.9, 1.05)
    sleeve = rng.uniform(0.02, 0.15) if rng.random() < 0.5 else np.inf
    cloth = np.array(_random_colour(rng)) / 255.0
    towards_camera = -(R @ axis)[2]
    length = 0.24 if towards_camera <= 0 else float(np.clip(0.3 * t[2] / towards_camera, 0.05, 0.24))
    # Rings 1.5 cm inside the hand (hiding the wrist opening) to the elbow end; two close rings
    # give the sleeve a sharp edge.
    along = np.array([-0.015, 0.0, 0.2 * length, 0.45 * length, length])
    if sleeve < length:
        along = np.sort(np.r_[along, sleeve, sleeve + 0.002])
    scale = np.interp(along, [0.0, length], [1.0, 1.3])
    theta = np.linspace(0, 2 * np.pi, sides, endpoint=False)
    ring = np.cos(theta)[:, None] * a_w * width + np.sin(theta)[:, None] * a_t * width * 0.62
    verts = (joints[0] + along[:, None, None] * axis + scale[:, None, None] * ring).reshape(-1, 3)
    k = np.arange(sides)
    quads = [(r * sides + k, r * sides + (k + 1) % sides) for r in range(len(along) - 1)]
    faces = np.concatenate([np.stack([np.c_[a, b, b + sides], np.c_[a, b + sides, a + sides]], 1).reshape(-1, 3)
                            for a, b in quads])
    colours = np.where((np.repeat(along, sides) > sleeve + 0.001)[:, None], cloth, tone)
    return verts @ R.T + t, faces, colours


def _skin(rng, rig: HandRig):
    """``(V, 3)`` per-vertex albedo: a tone between two neighbouring anchors, lighter palms,
    and low-frequency blotches so the skin is not a flat colour."""
    pos = rng.uniform(0, len(_SKIN_TONES) - 1)
    lo = int(pos)
    tone = _SKIN_TONES[lo] + (pos - lo) * (_SKIN_TONES[min(lo + 1, len(_SKIN_TONES) - 1)] - _SKIN_TONES[lo])
    tone = tone * rng.uniform(0.92, 1.08, 3) ** 0.5
    palm_tone = tone + (1.0 - tone) * np.array([0.25, 0.18, 0.15]) * (1.0 - tone.mean())
    freq = rng.normal(0.0, 2 * np.pi / 0.04, (4, 3))
    blotch = np.sin(rig.rest_vertices @ freq.T + rng.uniform(0, 2 * np.pi, 4)).mean(1)
    colours = tone + rig.palmness[:, None] * (palm_tone - tone)
    return np.clip(colours * (1.0 + 0.06 * blotch[:, None]), 0.0, 1.0), tone


def _random_colour(rng, skin_like: bool = False) -> tuple[int, int, int]:
    """An RGB colour (0-255): skin-like, or random with half of them muted towards grey."""
    if skin_like:
        c = _SKIN_TONES[rng.integers(len(_SKIN_TONES))] * rng.uniform(0.85, 1.1)
    else:
        c = rng.random(3) ** rng.uniform(0.5, 2.0)
        if rng.random() < 0.5:
            c = c.mean() + (c - c.mean()) * rng.uniform(0.15, 0.7)
    return tuple(int(v) for v in np.clip(c * 255, 0, 255))


def _texture(rng, width: int, height: int) -> Image.Image:
    """A smooth value-noise or a stripe texture, RGB ``width x height``."""
    if rng.random() < 0.5:
        cells = int(rng.integers(2, 14))
        grid = (rng.random((cells, cells, 3)) * 255).astype(np.uint8)
        return Image.fromarray(grid).resize((width, height), Image.Resampling.BICUBIC)
    angle, period = rng.uniform(0, np.pi), rng.uniform(4, 40)
    phase = np.arange(width)[None, :] * np.cos(angle) + np.arange(height)[:, None] * np.sin(angle)
    stripe = (np.sin(phase * (2 * np.pi / period)) > 0).astype(np.uint8)
    palette = np.array([_random_colour(rng), _random_colour(rng)], dtype=np.uint8)
    return Image.fromarray(palette[stripe])


def _draw_shape(rng, canvas: Image.Image, centre, radius: float) -> None:
    """Draw one filled ellipse, polygon or thick line at ``centre`` (px), plain or textured."""
    kind = rng.integers(3)
    cx, cy = centre
    if kind == 0:
        rx, ry = radius * rng.uniform(0.4, 1.0, 2)
        points, width = [(cx - rx, cy - ry), (cx + rx, cy + ry)], 0
    elif kind == 1:
        n = int(rng.integers(3, 7))
        ang = np.sort(rng.uniform(0, 2 * np.pi, n))
        rad = radius * rng.uniform(0.4, 1.0, n)
        points, width = [(cx + r * np.cos(a), cy + r * np.sin(a)) for a, r in zip(ang, rad)], 0
    else:
        a = rng.uniform(0, np.pi)
        dx, dy = radius * np.cos(a), radius * np.sin(a)
        points, width = [(cx - dx, cy - dy), (cx + dx, cy + dy)], max(2, int(radius * rng.uniform(0.1, 0.4)))
    textured = rng.random() < 0.35

    def draw(target: Image.Image, shift, fill) -> None:
        pts = [(x - shift[0], y - shift[1]) for x, y in points]
        d = ImageDraw.Draw(target)
        if kind == 0:
            d.ellipse(pts, fill=fill)
        elif kind == 1:
            d.polygon(pts, fill=fill)
        else:
            d.line(pts, fill=fill, width=width)

    if not textured:
        draw(canvas, (0, 0), _random_colour(rng, rng.random() < 0.2))
        return
    # Textures only over the shape's bounding box (clipped to the canvas): much cheaper than full size.
    xy = np.array(points)
    x0, y0 = np.maximum(np.floor(xy.min(0) - width), 0).astype(int)
    x1, y1 = np.minimum(np.ceil(xy.max(0) + width), canvas.size).astype(int)
    if x1 <= x0 or y1 <= y0:
        return
    mask = Image.new("L", (x1 - x0, y1 - y0), 0)
    draw(mask, (x0, y0), 255)
    canvas.paste(_texture(rng, x1 - x0, y1 - y0), (int(x0), int(y0)), mask)


def _background(rng, size: int) -> Image.Image:
    """Gradient or noise base with 4-20 random shapes, sometimes out of focus."""
    if rng.random() < 0.5:
        t = np.linspace(0.0, 1.0, size)
        a = rng.uniform(0, 2 * np.pi)
        ramp = np.clip(0.5 + (np.cos(a) * (t[None, :] - 0.5) + np.sin(a) * (t[:, None] - 0.5)), 0, 1)
        c0, c1 = np.array(_random_colour(rng)), np.array(_random_colour(rng))
        canvas = Image.fromarray((c0 + ramp[..., None] * (c1 - c0)).astype(np.uint8))
    else:
        canvas = _texture(rng, size, size)
    for _ in range(int(rng.integers(4, 21))):
        _draw_shape(rng, canvas, rng.uniform(-0.1, 1.1, 2) * size, size * rng.uniform(0.05, 0.4))
    if rng.random() < 0.5:
        canvas = canvas.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 2.5)))
    return canvas


def _place(rng, verts_cam: np.ndarray, size: int):
    """Pick intrinsics and a translation so the hand fills 50-85% of the crop near its centre.

    The principal point is the crop centre, as in a crop centred on the hand: the camera
    looks at the hand, so its root-relative 3D pose is what the image shows (an off-axis
    principal point hidden from the network would add perspective skew it cannot know).
    """
    f = size * rng.uniform(2.2, 4.5)
    cx = cy = (size - 1) / 2.0
    K = np.array([[f, 0.0, cx], [0.0, f, cy], [0.0, 0.0, 1.0]])
    lo, hi = verts_cam.min(0), verts_cam.max(0)
    fill = rng.uniform(0.5, 0.85)
    depth = f * float((hi - lo)[:2].max()) / (fill * size) + (hi[2] - lo[2]) / 2
    target = size / 2 - 0.5 + rng.uniform(-0.06, 0.06, 2) * size
    t = np.r_[(target - [cx, cy]) * depth / f, depth] - (lo + hi) / 2 * [1, 1, 0]
    # One correction step: the perspective bounding box centre is not the projected 3D centre.
    uv = _project(K, verts_cam + t)
    t[:2] += (target - (uv.min(0) + uv.max(0)) / 2) * t[2] / f
    return K, t


def _project(K, X):
    p = X @ K.T
    return p[:, :2] / p[:, 2:3]


def render_scene(index: int, seed: int, size: int, rig: HandRig, mano_forward,
                 view: Viewpoint | str = DEFAULT_VIEWPOINT) -> HandScene:
    """Render sample ``index`` of the dataset with ``seed``.

    Args:
        index: sample index (>= 0).
        seed: dataset seed (>= 0).
        size: crop side ``S`` (px).
        rig: rest-pose facts of the MANO model.
        mano_forward: ``(pose (15, 3), betas (10,)) -> (vertices (V, 3), joints (21, 3))`` in
            metres with zero global rotation.
        view: the :class:`Viewpoint` (or its name) the hand's orientation is drawn from.

    Returns:
        The :class:`HandScene`.
    """
    rng = np.random.default_rng([seed, index])
    pose = sample_hand_pose(rng, rig)
    betas = np.clip(rng.normal(size=10), -_BETA_CLIP, _BETA_CLIP)
    verts, joints = mano_forward(pose, betas)
    # Guard against shape spaces where large betas thin fingers to needles (or bloat them):
    # shrink the shape towards the mean until every finger is 0.5-1.8x its mean thickness.
    for _ in range(4):
        thickness = rig.finger_thickness(verts, joints)
        if np.all((thickness > 0.5) & (thickness < 1.8)):
            break
        betas = betas * 0.6
        verts, joints = mano_forward(pose, betas)
    verts, joints = verts - joints[0], joints - joints[0]
    frame = _hand_frame(joints, rig.is_right)
    R = viewpoint(view).sample(rng, frame)
    colours, tone = _skin(rng, rig)
    faces = rig.faces
    has_arm = rng.random() < 0.85
    hand_cam = verts @ R.T
    K, t = _place(rng, hand_cam, size)
    mesh_v, mesh_f, mesh_c = hand_cam + t, faces, colours
    if has_arm:
        arm_v, arm_f, arm_c = _forearm(rng, joints, frame, R, t, tone)
        mesh_v, mesh_c = np.vstack([mesh_v, arm_v]), np.vstack([colours, arm_c])
        mesh_f = np.vstack([faces, arm_f + len(verts)])
    toward = rng.normal(size=3)
    toward[2] = -abs(toward[2]) - 0.5  # mostly from the camera's side
    light = DirectionalLight(toward, intensity=rng.uniform(0.45, 0.85), ambient=rng.uniform(0.2, 0.45),
                             color=1.0 + rng.uniform(-0.08, 0.08, 3))
    background = _background(rng, size)
    rendered = render_mesh(mesh_v, mesh_f, K, size, vertex_colors=mesh_c, light=light)
    image = _composite(rng, rendered.image, rendered.mask, background)
    joints_cam = joints @ R.T + t
    return HandScene(image, joints_cam * 1000.0, _project(K, joints_cam), K, rendered.mask, R)


def _composite(rng, hand: np.ndarray, mask: np.ndarray, background: Image.Image) -> np.ndarray:
    """Blend the hand over the background with soft edges, add occluders and camera noise."""
    soft = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).filter(ImageFilter.GaussianBlur(0.6)))
    # Only the inner rim blends with the background: a cheap stand-in for anti-aliasing.
    alpha = np.minimum(mask, soft * np.float32(1.6 / 255.0))[..., None].clip(0, 1)
    image = np.asarray(background, dtype=np.float32) * ((1.0 - alpha) / 255.0) + hand.astype(np.float32) * alpha
    if mask.any() and rng.random() < 0.3:
        ys, xs = np.nonzero(mask)
        canvas = Image.fromarray((image * 255.0 + 0.5).astype(np.uint8))
        extent = max(xs.max() - xs.min(), ys.max() - ys.min())
        for _ in range(int(rng.integers(1, 3))):
            k = rng.integers(len(xs))
            _draw_shape(rng, canvas, (xs[k], ys[k]), extent * rng.uniform(0.12, 0.35))
        image = np.asarray(canvas, dtype=np.float32) / 255.0
    if rng.random() < 0.25:
        canvas = Image.fromarray((image * 255.0 + 0.5).astype(np.uint8))
        image = np.asarray(canvas.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0))), dtype=np.float32) / 255.0
    image = np.clip(image * rng.uniform(0.8, 1.2) + rng.uniform(-0.08, 0.08), 0.0, 1.0) ** rng.uniform(0.8, 1.25)
    image += rng.standard_normal(image.shape, dtype=np.float32) * rng.uniform(0.0, 0.025)
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
