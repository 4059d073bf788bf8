mod common;
#[test]
fn sheet() {
    let mut sheet = image::RgbaImage::from_pixel(224 * 2, 224, image::Rgba([90, 90, 90, 255]));
    for (i, n) in ["a", "b"].iter().enumerate() {
        let img = image::open(format!("/tmp/bl/out/{n}.png"))
            .unwrap()
            .to_rgba8();
        for (x, y, px) in img.enumerate_pixels() {
            let a = px[3] as f32 / 255.0;
            let blend = |c: u8| (c as f32 * a + 90.0 * (1.0 - a)) as u8;
            sheet.put_pixel(
                i as u32 * 224 + x,
                y,
                image::Rgba([blend(px[0]), blend(px[1]), blend(px[2]), 255]),
            );
        }
    }
    sheet.save("/tmp/bl/sheet.png").unwrap();
}
