"""Cameras, keypoint projector, warping, depth-map renderer and degradations against hand-computed values."""

from __future__ import annotations

import math

import kornia
import pytest
import torch

from renderloop.renderers import cameras, degradations, depth_map, keypoints, warping

EYE = torch.eye(3)[None]


def test_look_at_frames_torch():
    eye = torch.tensor([[0.0, 0.0, 5.0]])
    R, t = cameras.look_at(eye, torch.zeros(3))
    # Looking down -z from +z: camera +x is world +x, camera +y (down) is world -y, camera +z is world -z.
    torch.testing.assert_close(R[0], torch.diag(torch.tensor([1.0, -1.0, -1.0])))
    torch.testing.assert_close(cameras.world_to_camera(torch.zeros(1, 1, 3), R, t)[0, 0], torch.tensor([0.0, 0.0, 5.0]))
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(1))
    # orbit: azimuth 90° puts the eye on +x, elevation 90° on +y.
    eye = cameras.orbit_eye(
        torch.tensor([math.pi / 2, 0.0]), torch.tensor([0.0, math.pi / 2]), torch.tensor([2.0, 3.0])
    )
    torch.testing.assert_close(eye, torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0]]), atol=1e-6, rtol=0)


def test_pixel_and_clip_frames_agree_torch():
    K = cameras.intrinsics(*(torch.tensor([v]) for v in (50.0, 60.0, 16.0, 12.0)))
    pts = torch.tensor([[[0.3, -0.2, 2.0], [-1.0, 0.5, 4.0]]])
    uv = cameras.camera_to_pixel(pts, K)
    torch.testing.assert_close(uv[0, 0], torch.tensor([50 * 0.15 + 16, 60 * -0.1 + 12]))
    torch.testing.assert_close(cameras.clip_to_pixel(cameras.camera_to_clip(pts, K, (24, 32)), (24, 32)), uv)
    torch.testing.assert_close(cameras.pixel_to_camera(uv, pts[..., 2], K), pts)
    assert cameras.pixel_grid(2, 3)[1, 2].tolist() == [2.5, 1.5]


def test_projector_hand_computed_torch():
    # Two joints; mean shape only (zero coefficients) with a known basis.
    basis = keypoints.PCABasis(
        mean=torch.tensor([0.0, 0.0, 0.0, 1.0, 0.0, 0.0]), components=torch.eye(6)[:2], stddev=torch.ones(2)
    )
    coeffs = torch.tensor([[0.5, 0.0]])  # moves joint 0 by +0.5 in x
    R = depth_map.euler_to_matrix(torch.tensor([[0.0, math.pi / 2, 0.0]]))  # 90° about y: x → -z
    kp2d, kp3d = keypoints.project_keypoints(
        coeffs, basis, R, torch.tensor([[0.0, 0.0, 10.0]]), torch.tensor([100.0]), torch.tensor([[64.0, 48.0]])
    )
    torch.testing.assert_close(kp3d[0], torch.tensor([[0.0, 0.0, 9.5], [0.0, 0.0, 9.0]]), atol=1e-6, rtol=0)
    torch.testing.assert_close(kp2d[0], torch.tensor([[64.0, 48.0], [64.0, 48.0]]), atol=1e-5, rtol=0)
    # Off-axis point: u = f x / z + cx.
    kp2d = keypoints.project_points(
        torch.tensor([[[1.0, -2.0, 4.0]]]), torch.tensor([[80.0, 40.0]]), torch.tensor([[10.0, 20.0]])
    )
    torch.testing.assert_close(kp2d, torch.tensor([[[30.0, 0.0]]]))
    heat = keypoints.gaussian_heatmaps(torch.tensor([[[2.5, 1.5]]]), (4, 5), sigma=1.0)
    assert heat[0, 0, 1, 2] == 1.0 and math.isclose(float(heat[0, 0, 1, 3]), math.exp(-0.5), rel_tol=1e-6)


def test_pca_reconstructs_its_training_shapes_torch():
    latent = torch.randn(50, 3)
    shapes = (latent @ torch.randn(3, 12)).view(50, 4, 3) + 1.0
    basis = keypoints.fit_pca(shapes, 3)
    coeffs = (shapes.view(50, -1) - basis.mean) @ basis.components.T
    torch.testing.assert_close(keypoints.compose_shape(coeffs, basis), shapes, atol=1e-4, rtol=1e-4)
    assert basis.stddev[0] >= basis.stddev[1] >= basis.stddev[2]


def test_warp_hand_computed_torch():
    # Fronto-parallel plane at depth 2, source camera shifted so points move 1 pixel right.
    H, W = 4, 6
    K = cameras.intrinsics(*(torch.tensor([v]) for v in (10.0, 10.0, 3.0, 2.0)))
    source = torch.arange(H * W, dtype=torch.float32).view(1, 1, H, W)
    depth = torch.full((1, H, W), 2.0)
    t = torch.tensor([[0.2, 0.0, 0.0]])  # x_src = x_tgt + 0.2 → u_src = u_tgt + 10 * 0.2 / 2 = u_tgt + 1
    warped, valid = warping.warp(source, depth, K, torch.eye(3)[None], t)
    torch.testing.assert_close(warped[0, 0, :, :-1], source[0, 0, :, 1:])
    assert valid[0, 0, :, :-1].all() and not valid[0, 0, :, -1].any()


def test_warp_matches_kornia_torch():
    # kornia puts pixel centres on integers; ours are at +0.5, so its principal point is ours - 0.5.
    H, W = 12, 16
    K = cameras.fov_intrinsics(60.0, H, W)
    depth = 2.0 + torch.rand(1, H, W)
    source = torch.rand(1, 3, H, W)
    R, t = warping.pose_to_rt(torch.tensor([[0.02, -0.05, 0.01, 0.1, -0.05, 0.02]]))
    ours, valid = warping.warp(source, depth, K, R, t)
    K_kornia = K.clone()
    K_kornia[:, :2, 2] -= 0.5
    src_T_dst = torch.eye(4)[None]
    src_T_dst[:, :3, :3], src_T_dst[:, :3, 3] = R, t
    ref = kornia.geometry.depth.warp_frame_depth(source, depth[:, None], src_T_dst, K_kornia)
    # kornia samples with align_corners=True: compare where both are well inside the image.
    inner = valid.bool().expand_as(ours).clone()
    inner[..., :2, :] = inner[..., -2:, :] = inner[..., :, :2] = inner[..., :, -2:] = False
    torch.testing.assert_close(ours[inner], ref[inner], atol=0.08, rtol=0)


def test_depth_map_normals_and_identity_view_torch():
    H, W = 8, 10
    K = cameras.fov_intrinsics(50.0, H, W)
    # Tilted plane z = 2 + 0.5 x: normal ∝ (0.5, 0, -1), facing the camera.
    pts = depth_map.depth_to_points(torch.ones(1, H, W), K)
    rx = pts[..., 0]  # x/z for unit depth
    depth = 2 / (1 - 0.5 * rx)
    normals = depth_map.depth_to_normals(depth, K)
    expected = torch.nn.functional.normalize(torch.tensor([0.5, 0.0, -1.0]), dim=0)
    torch.testing.assert_close(normals[0, 1:-1, 1:-1], expected.expand(H - 2, W - 2, 3), atol=1e-5, rtol=0)
    # Identity view: the re-projected image equals the canonical shading (inside the grid mesh).
    albedo = torch.rand(1, 3, H, W)
    light = torch.tensor([[0.0, 0.0, -1.0]])
    out = depth_map.render_depth_map(depth, albedo, light, K, torch.eye(3)[None], torch.zeros(1, 3), 0.0, 1.0)
    inner = out.mask[0, 0].bool()
    assert bool(inner.all())  # the identity view covers every pixel, borders included
    torch.testing.assert_close(out.image[0][:, inner], out.canonical_image[0][:, inner], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.canonical_image[0, :, 3, 3], albedo[0, :, 3, 3] * float(-expected[2]))
    torch.testing.assert_close(out.depth[0][inner], depth[0][inner], atol=1e-5, rtol=1e-5)


def test_depth_map_view_moves_the_image_torch():
    H, W = 16, 16
    K = cameras.fov_intrinsics(40.0, H, W)
    depth = torch.full((1, H, W), 3.0)
    albedo = torch.zeros(1, 1, H, W)
    albedo[..., 4:12, 4:6] = 1.0
    R, t = depth_map.view_about_pivot(torch.zeros(1, 3), torch.tensor([[3.0 / K[0, 0, 0] * 2, 0.0, 0.0]]), 3.0)
    out = depth_map.render_depth_map(depth, albedo, torch.tensor([[0.0, 0.0, -1.0]]), K, R, t, 1.0, 0.0)
    # A translation of 2 pixels' worth to the right moves the stripe 2 columns right.
    torch.testing.assert_close(out.image[0, 0, 5:11, 6:8], torch.ones(6, 2), atol=1e-4, rtol=0)
    assert float(out.image[0, 0, 5:11, 4:6].max()) < 1e-4


def test_sampling_a_view_into_the_canonical_frame_undoes_the_move_torch():
    H, W = 16, 16
    K = cameras.fov_intrinsics(40.0, H, W)
    depth = torch.full((1, H, W), 3.0)
    R, t = depth_map.view_about_pivot(torch.zeros(1, 3), torch.tensor([[3.0 / K[0, 0, 0] * 2, 0.0, 0.0]]), 3.0)
    seen = torch.zeros(1, 1, H, W)
    seen[..., 4:12, 6:8] = 1.0  # a stripe the view shows 2 columns right of where the canonical one is
    back = depth_map.sample_into_canonical(seen, depth, K, R, t)
    torch.testing.assert_close(back[0, 0, 4:12, 4:6], torch.ones(8, 2), atol=1e-4, rtol=0)
    assert float(back[0, 0, :, 7:].max()) < 1e-4
    # There and back: the canonical stripe carried into the view by reproject, then sampled home.
    there, mask, _ = depth_map.reproject(back, depth, K, R, t)
    torch.testing.assert_close(there[0, 0, 5:11, 6:8], seen[0, 0, 5:11, 6:8], atol=1e-4, rtol=0)


def test_degradations_torch():
    image = torch.arange(16, dtype=torch.float32).view(1, 1, 4, 4)
    torch.testing.assert_close(degradations.downsample(image, 2), torch.tensor([[[[2.5, 4.5], [10.5, 12.5]]]]))
    with pytest.raises(ValueError, match=r"downsample\(\): factor must be a positive divisor"):
        degradations.downsample(image, 3)
    gen = torch.Generator().manual_seed(3)
    masks = degradations.random_box_masks(8, (32, 32), (0.25, 0.5), generator=gen)
    holes = (1 - masks).sum((1, 2, 3))
    assert masks.shape == (8, 1, 32, 32) and bool(((holes >= 8 * 8 - 16) & (holes <= 16 * 16 + 34)).all())
    again = degradations.random_box_masks(8, (32, 32), (0.25, 0.5), generator=torch.Generator().manual_seed(3))
    assert torch.equal(masks, again)
    filled = degradations.apply_mask(torch.ones(8, 3, 32, 32), masks, fill=-1.0)
    assert torch.equal(filled[:, :1] == -1, masks == 0)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: warping.warp(torch.rand(1, 3, 4, 4), torch.ones(1, 4, 5), EYE, EYE, torch.zeros(1, 3)),
         r"warp\(\): target_depth must have shape \[1, 4, 4\]"),
        (lambda: keypoints.fit_pca(torch.full((4, 2, 3), float("nan")), 2), r"fit_pca\(\): shapes must be finite"),
        (lambda: keypoints.fit_pca(torch.rand(4, 2, 3), 9), r"num_components must be in \[1, 4\]"),
        (lambda: keypoints.gaussian_heatmaps(torch.rand(1, 2, 3), (4, 4)), r"kp2d must have shape"),
        (lambda: depth_map.euler_to_matrix(torch.rand(2, 2)), r"angles must have shape \[B, 3\]"),
        (lambda: degradations.random_box_masks(2, (4, 4), (0.6, 0.2)), r"box_fraction must satisfy"),
    ],
)  # fmt: skip
def test_bad_inputs_raise_torch(call, match):
    with pytest.raises(ValueError, match=match):
        call()
