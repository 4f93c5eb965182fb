"""Tests for the NumPy triangle rasteriser (recurnet_hand.data.render)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recurnet_hand.data import render
from recurnet_hand.data.render import DirectionalLight, rasterize, render_mesh, shade, vertex_normals

# With K = I and Z = 1 a vertex (x, y, 1) lands on pixel coordinates (x, y).
EYE = np.eye(3)


def _flat(xy, z=1.0):
    xy = np.asarray(xy, dtype=np.float64)
    return np.column_stack([xy * z, np.full(len(xy), z)])


def _icosphere(subdivisions: int):
    t = (1 + 5**0.5) / 2
    verts = [(-1, t, 0), (1, t, 0), (-1, -t, 0), (1, -t, 0), (0, -1, t), (0, 1, t),
             (0, -1, -t), (0, 1, -t), (t, 0, -1), (t, 0, 1), (-t, 0, -1), (-t, 0, 1)]
    faces = [(0, 11, 5), (0, 5, 1), (0, 1, 7), (0, 7, 10), (0, 10, 11), (1, 5, 9), (5, 11, 4),
             (11, 10, 2), (10, 7, 6), (7, 1, 8), (3, 9, 4), (3, 4, 2), (3, 2, 6), (3, 6, 8),
             (3, 8, 9), (4, 9, 5), (2, 4, 11), (6, 2, 10), (8, 6, 7), (9, 8, 1)]
    verts = [np.array(p, float) / np.linalg.norm(p) for p in verts]
    for _ in range(subdivisions):
        mid, new = {}, []

        def m(a, b):
            key = (min(a, b), max(a, b))
            if key not in mid:
                p = verts[a] + verts[b]
                verts.append(p / np.linalg.norm(p))
                mid[key] = len(verts) - 1
            return mid[key]

        for a, b, c in faces:
            ab, bc, ca = m(a, b), m(b, c), m(c, a)
            new += [(a, ab, ca), (b, bc, ab), (c, ca, bc), (ab, bc, ca)]
        faces = new
    return np.array(verts), np.array(faces)


SPHERE_V, SPHERE_F = _icosphere(3)  # 642 vertices, 1280 faces, outward (CCW) winding
K_SPHERE = np.array([[250.0, 0, 111.5], [0, 250.0, 111.5], [0, 0, 1]])


def _brute_force_mask(xy, h, w):
    """Reference coverage: every pixel centre tested against the three edge functions."""
    (x0, y0), (x1, y1), (x2, y2) = xy
    ys, xs = np.mgrid[0:h, 0:w].astype(float)
    e0 = (x1 - x0) * (ys - y0) - (y1 - y0) * (xs - x0)
    e1 = (x2 - x1) * (ys - y1) - (y2 - y1) * (xs - x1)
    e2 = (x0 - x2) * (ys - y2) - (y0 - y2) * (xs - x2)
    return ((e0 >= 0) & (e1 >= 0) & (e2 >= 0)) | ((e0 <= 0) & (e1 <= 0) & (e2 <= 0))


def test_right_triangle_covers_exactly_the_pixels_below_the_hypotenuse():
    frags = rasterize(_flat([(0, 0), (4, 0), (0, 4)]), [[0, 1, 2]], EYE, (6, 7))
    expected = np.zeros((6, 7), bool)
    for y in range(5):
        expected[y, : 5 - y] = True  # pixel centres (x, y) with x + y <= 4, edges inclusive
    np.testing.assert_array_equal(frags.mask, expected)
    assert frags.mask.sum() == 15
    np.testing.assert_array_equal(frags.face_index[expected], 0)
    assert np.all(frags.face_index[~expected] == -1)
    np.testing.assert_allclose(frags.depth[expected], 1.0)
    assert np.all(np.isinf(frags.depth[~expected]))


def test_fractional_triangle_covers_pixel_centres_only():
    # Row y is covered for 1.5 <= x <= 1.5 + 5 (1 - (y - 1.5) / 4): 5.875, 4.625, 3.375, 2.125.
    xy = [(1.5, 1.5), (6.5, 1.5), (1.5, 5.5)]
    frags = rasterize(_flat(xy), [[0, 1, 2]], EYE, 8)
    rows = {2: [2, 3, 4, 5], 3: [2, 3, 4], 4: [2, 3], 5: [2]}
    for y in range(8):
        assert np.flatnonzero(frags.mask[y]).tolist() == rows.get(y, [])


def test_barycentrics_interpolate_vertex_colours_at_the_corners():
    v = _flat([(0, 0), (6, 0), (0, 6)])
    colours = np.eye(3)
    img = shade(rasterize(v, [[0, 1, 2]], EYE, 8), v, [[0, 1, 2]], colours,
                DirectionalLight(intensity=0.0, ambient=1.0))
    np.testing.assert_allclose(img[0, 0], [1, 0, 0])
    np.testing.assert_allclose(img[0, 6], [0, 1, 0])
    np.testing.assert_allclose(img[6, 0], [0, 0, 1])
    np.testing.assert_allclose(img[2, 2], [1 / 3, 1 / 3, 1 / 3])


def test_depth_is_perspective_correct_on_a_tilted_plane():
    # Plane Z = 2 + X seen through f = 10: the ray through pixel u hits it at Z = 2 / (1 - (u - c) / f).
    f, c = 10.0, 16.0
    K = np.array([[f, 0, c], [0, f, c], [0, 0, 1]])
    xs = np.array([-1.0, 1.5, -1.0])
    ys = np.array([-1.0, 0.0, 1.0])
    v = np.column_stack([xs, ys, 2.0 + xs])
    frags = rasterize(v, [[0, 1, 2]], K, 32)
    yy, uu = np.nonzero(frags.mask)
    assert len(uu) > 20
    np.testing.assert_allclose(frags.depth[yy, uu], 2.0 / (1.0 - (uu - c) / f), rtol=1e-9)


@pytest.mark.parametrize("order", [[0, 1], [1, 0]])
def test_nearer_triangle_wins_regardless_of_draw_order(order):
    xy = np.array([(0, 0), (8, 0), (0, 8)], dtype=float)
    v = np.vstack([_flat(xy, z=1.0), _flat(xy + 2, z=3.0)])  # far copy shifted by 2 px
    faces = np.array([[0, 1, 2], [3, 4, 5]])[order]
    frags = rasterize(v, faces, EYE, 12)
    near_face, far_face = order.index(0), order.index(1)
    # Pixel (3, 3) lies inside both triangles: the nearer one (Z = 1) is visible.
    assert frags.face_index[3, 3] == near_face
    assert frags.depth[3, 3] == pytest.approx(1.0)
    # Pixel (7, 4) lies only inside the far one (7 + 4 > 8).
    assert frags.face_index[4, 7] == far_face
    assert frags.depth[4, 7] == pytest.approx(3.0)
    # Pixel (0, 0) lies only inside the near one.
    assert frags.face_index[0, 0] == near_face


def test_equal_depth_ties_go_to_the_lower_face_index():
    v = _flat([(0, 0), (5, 0), (0, 5)])
    frags = rasterize(v, [[0, 1, 2], [0, 2, 1]], EYE, 6)
    assert np.all(frags.face_index[frags.mask] == 0)


def test_blocks_do_not_change_the_result(monkeypatch):
    v = SPHERE_V * 0.1 + [0, 0, 0.5]
    full = rasterize(v, SPHERE_F, K_SPHERE, 224)
    monkeypatch.setattr(render, "_BLOCK_PIXELS", 97)  # forces hundreds of blocks
    split = rasterize(v, SPHERE_F, K_SPHERE, 224)
    np.testing.assert_array_equal(full.face_index, split.face_index)
    np.testing.assert_array_equal(full.depth, split.depth)


def test_sphere_mask_matches_its_silhouette_and_depth_its_surface():
    radius, dist = 0.1, 0.5
    frags = rasterize(SPHERE_V * radius + [0, 0, dist], SPHERE_F, K_SPHERE, 224)
    # Perspective silhouette of a sphere: a disc of radius f r / sqrt(d^2 - r^2) px.
    r_px = 250.0 * radius / np.sqrt(dist**2 - radius**2)
    assert frags.mask.sum() == pytest.approx(np.pi * r_px**2, rel=0.03)  # icosphere is slightly inside
    assert not frags.mask[0].any() and not frags.mask[:, 0].any()
    assert frags.depth[111, 111] == pytest.approx(dist - radius, abs=2e-3)
    assert frags.depth[frags.mask].min() >= dist - radius - 1e-9


def test_sphere_is_brighter_where_it_faces_the_light():
    light = DirectionalLight(direction=(-1.0, 0.0, -0.5), intensity=0.8, ambient=0.2)
    r = render_mesh(SPHERE_V * 0.1 + [0, 0, 0.5], SPHERE_F, K_SPHERE, 224, vertex_colors=(1.0, 1.0, 1.0), light=light)
    lum = r.image.mean(-1)
    left, right = lum[:, :111][r.mask[:, :111]].mean(), lum[:, 112:][r.mask[:, 112:]].mean()
    assert left > right + 0.3
    # The far right limb faces away from the light: ambient only.
    assert lum[111, 155] == pytest.approx(0.2, abs=0.02)
    # Normal interpolation gives a smooth image: neighbouring pixels differ by little.
    inner = r.mask[1:, :] & r.mask[:-1, :]
    assert np.abs(np.diff(lum, axis=0))[inner].max() < 0.08


def test_vertex_normals_of_a_sphere_point_outwards():
    n = vertex_normals(SPHERE_V, SPHERE_F)
    assert np.all(np.einsum("ij,ij->i", n, SPHERE_V) > 0.99)


def test_backface_culling_and_two_sided_lighting():
    # Counter-clockwise in the image with Y down means the normal points away from the camera.
    v = _flat([(0, 0), (6, 0), (0, 6)])
    normal = np.cross(v[1] - v[0], v[2] - v[0])
    assert normal @ v[0] > 0  # a back face
    assert rasterize(v, [[0, 1, 2]], EYE, 8).mask.any()
    assert not rasterize(v, [[0, 1, 2]], EYE, 8, cull_backfaces=True).mask.any()
    assert rasterize(v, [[0, 2, 1]], EYE, 8, cull_backfaces=True).mask.any()
    light = DirectionalLight(direction=(0, 0, -1), intensity=0.6, ambient=0.4)
    two = render_mesh(v, [[0, 1, 2]], EYE, 8, vertex_colors=(1, 1, 1), light=light).image
    one = render_mesh(v, [[0, 1, 2]], EYE, 8, vertex_colors=(1, 1, 1), light=light, two_sided=False).image
    np.testing.assert_allclose(two[1, 1], 1.0)
    np.testing.assert_allclose(one[1, 1], 0.4)


def test_faces_behind_the_near_plane_are_dropped():
    v = np.array([[0.0, 0, 1], [4, 0, 1], [0, 4, -1]])
    assert not rasterize(v, [[0, 1, 2]], EYE, 8).mask.any()


def test_background_is_kept_where_nothing_is_drawn():
    bg = np.full((8, 8, 3), 0.25)
    r = render_mesh(_flat([(0, 0), (4, 0), (0, 4)]), [[0, 1, 2]], EYE, 8, background=bg)
    np.testing.assert_allclose(r.image[~r.mask], 0.25)
    assert r.image.shape == (8, 8, 3) and r.depth.shape == (8, 8) and r.mask.dtype == bool


def test_bad_input_fails_with_the_argument_name():
    v = _flat([(0, 0), (4, 0), (0, 4)])
    with pytest.raises(ValueError, match="faces index vertices"):
        rasterize(v, [[0, 1, 3]], EYE, 8)
    with pytest.raises(ValueError, match=r"vertices must have shape \(N, 3\)"):
        rasterize(v[:, :2], [[0, 1, 2]], EYE, 8)
    with pytest.raises(ValueError, match=r"K must have shape \(3, 3\)"):
        rasterize(v, [[0, 1, 2]], np.eye(4), 8)
    with pytest.raises(ValueError, match="image_size"):
        rasterize(v, [[0, 1, 2]], EYE, (0, 8))
    with pytest.raises(ValueError, match="light direction"):
        DirectionalLight(direction=(0, 0, 0))
    with pytest.raises(ValueError, match="background"):
        render_mesh(v, [[0, 1, 2]], EYE, 8, background=np.zeros((4, 4, 3)))


coord = st.floats(-3.0, 14.0, allow_nan=False)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(coord, coord), min_size=3, max_size=3))
def test_coverage_matches_a_per_pixel_reference(xy):
    xy = np.array(xy)
    area = (xy[1, 0] - xy[0, 0]) * (xy[2, 1] - xy[0, 1]) - (xy[1, 1] - xy[0, 1]) * (xy[2, 0] - xy[0, 0])
    frags = rasterize(_flat(xy), [[0, 1, 2]], EYE, (10, 12))
    if abs(area) <= 1e-12:
        assert not frags.mask.any()
        return
    ref = _brute_force_mask(xy, 10, 12)
    # A pixel centre may only go either way when it lies on an edge (up to rounding).
    for y, x in zip(*np.nonzero(frags.mask != ref)):
        dist = [_line_distance((x, y), xy[i], xy[(i + 1) % 3]) for i in range(3)]
        assert min(dist) < 1e-6, (x, y, dist)


def _line_distance(p, a, b):
    d = np.asarray(b) - a
    return abs(d[0] * (p[1] - a[1]) - d[1] * (p[0] - a[0])) / max(np.hypot(*d), 1e-300)


@settings(max_examples=15, deadline=None)
@given(st.permutations(list(range(40))))
def test_result_does_not_depend_on_face_order(perm):
    rng = np.random.default_rng(0)
    v = np.column_stack([rng.uniform(-1, 1, (60, 2)), rng.uniform(2, 4, 60)])
    faces = rng.integers(0, 60, (40, 3))
    a = rasterize(v, faces, np.array([[10.0, 0, 10], [0, 10, 10], [0, 0, 1]]), 20)
    b = rasterize(v, faces[perm], np.array([[10.0, 0, 10], [0, 10, 10], [0, 0, 1]]), 20)
    np.testing.assert_array_equal(a.depth, b.depth)
    np.testing.assert_array_equal(a.mask, b.mask)
    np.testing.assert_array_equal(np.asarray(perm)[b.face_index[b.mask]], a.face_index[a.mask])
