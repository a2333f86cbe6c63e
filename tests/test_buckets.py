"""kohya bucketing on known cases (rules.md §7)."""

from PIL import Image

from bakery.craft.prepare.buckets import bucket_resolutions, downscale_factor, fit_to_bucket, select_bucket


def test_17_buckets_at_512():
    resos = bucket_resolutions(512, 256, 1024, 64)
    assert len(resos) == 17
    assert (512, 512) in resos and (640, 384) in resos and (384, 640) in resos and (256, 1024) in resos
    assert all(w * h <= 512 * 512 for w, h in resos)
    assert all(w % 64 == 0 and h % 64 == 0 for w, h in resos)


def test_1920x1080_goes_to_640x384_via_683x384():
    choice = select_bucket(1920, 1080, bucket_resolutions(512))
    assert choice.bucket == (640, 384)
    assert choice.resized == (683, 384)
    assert choice.crop_box == (21, 0, 661, 384)
    assert round(downscale_factor(1920, 1080, choice), 2) == 2.81


def test_portrait_and_square_and_exact_size():
    resos = bucket_resolutions(512)
    tall = select_bucket(1000, 1500, resos)  # aspect 0.667: 384/640 = 0.6 is nearer than 448/576 = 0.78
    assert tall.bucket == (384, 640) and tall.resized == (427, 640)
    assert select_bucket(300, 300, resos).bucket == (512, 512)
    assert select_bucket(300, 300, resos).resized == (512, 512)  # small images are enlarged
    assert select_bucket(640, 384, resos).resized == (640, 384)


def test_no_upscale_keeps_small_images_and_rounds_down():
    resos = bucket_resolutions(512)
    small = select_bucket(300, 200, resos, no_upscale=True, resolution=512)
    assert small.resized == (300, 200) and small.bucket == (256, 192)
    big = select_bucket(2000, 1000, resos, no_upscale=True, resolution=512)
    assert big.bucket[0] * big.bucket[1] <= 512 * 512
    assert abs(big.resized[0] / big.resized[1] - 2.0) < 0.02


def test_fit_to_bucket_crops_centre():
    img = Image.new("RGB", (1920, 1080), "white")
    img.paste((255, 0, 0), (0, 0, 50, 1080))  # a red band on the left edge is cropped away
    out = fit_to_bucket(img, select_bucket(1920, 1080, bucket_resolutions(512)))
    assert out.size == (640, 384)
    assert out.getpixel((0, 192)) == (255, 255, 255)


def test_aspect_range_is_what_the_sides_allow():
    from bakery.craft.prepare.bucket_report import aspect_range

    assert aspect_range(bucket_resolutions(512)) == (0.25, 4.0)  # 256x1024 .. 1024x256
    lo, hi = aspect_range(bucket_resolutions(512, 384, 768, 64))  # 384x640 .. 640x384
    assert (round(lo, 3), round(hi, 3)) == (0.6, 1.667)


def test_a_15_to_1_panorama_loses_three_quarters_to_the_centre_crop():
    from bakery.craft.prepare.bucket_report import crop_share

    choice = select_bucket(2100, 140, bucket_resolutions(512))
    assert choice.bucket == (1024, 256) and choice.resized == (3840, 256)  # heights matched, then cropped
    assert round(crop_share(choice), 4) == round(1 - 1024 / 3840, 4) == 0.7333
    img = Image.new("RGB", (2100, 140), "white")
    img.paste((255, 0, 0), (0, 0, 500, 140))  # the left quarter and more: all of it is thrown away
    out = fit_to_bucket(img, choice)
    assert out.size == (1024, 256) and out.getpixel((0, 128)) == (255, 255, 255)
    assert crop_share(select_bucket(1024, 256, bucket_resolutions(512))) == 0.0  # 4:1 fits its bucket
