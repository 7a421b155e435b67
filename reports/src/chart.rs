//! The report's chart: credits purchased against credits debited per day, as a PNG (mail clients show images
//! attached inline; most of them drop SVG and scripts). The picture has no text: its title, legend and scale are
//! HTML beside it, so they stay readable and translatable.

/// Width of the chart, pixels.
pub const WIDTH: u32 = 720;
/// Height of the chart, pixels.
pub const HEIGHT: u32 = 240;

/// Colour of purchased credits.
pub const PURCHASED_RGB: [u8; 3] = [0x25, 0x63, 0xeb];
/// Colour of debited credits.
pub const DEBITED_RGB: [u8; 3] = [0xea, 0x58, 0x0c];
const AXIS_RGB: [u8; 3] = [0x6b, 0x72, 0x80];
const GRID_RGB: [u8; 3] = [0xe5, 0xe7, 0xeb];
const MARGIN: u32 = 12;

struct Canvas {
    pixels: Vec<u8>,
}

impl Canvas {
    fn new() -> Self {
        Self { pixels: vec![0xff; (WIDTH * HEIGHT * 3) as usize] }
    }

    /// Fills the rectangle `[x0, x1) x [y0, y1)`, clipped to the canvas.
    fn fill(&mut self, (x0, y0): (u32, u32), (x1, y1): (u32, u32), rgb: [u8; 3]) {
        for y in y0.min(HEIGHT)..y1.min(HEIGHT) {
            for x in x0.min(WIDTH)..x1.min(WIDTH) {
                let at = ((y * WIDTH + x) * 3) as usize;
                self.pixels[at..at + 3].copy_from_slice(&rgb);
            }
        }
    }
}

/// The scale of the chart: the round number of credits its top gridline stands for.
pub fn scale_top(days: &[(i64, i64)]) -> i64 {
    let largest = days.iter().map(|(purchased, debited)| (*purchased).max(*debited)).max().unwrap_or(0).max(1);
    // 1, 2 or 5 times a power of ten, at or above the largest bar.
    let mut step: i64 = 1;
    loop {
        for factor in [1, 2, 5] {
            if let Some(top) = step.checked_mul(factor)
                && top >= largest
            {
                return top;
            }
        }
        match step.checked_mul(10) {
            Some(next) => step = next,
            None => return i64::MAX,
        }
    }
}

/// Draws one pair of bars per day (`(purchased, debited)`, in any one unit, oldest first) against [`scale_top`],
/// with four gridlines, and encodes it as PNG.
pub fn bars_png(days: &[(i64, i64)]) -> Result<Vec<u8>, png::EncodingError> {
    let mut canvas = Canvas::new();
    let top = scale_top(days);
    let plot_height = HEIGHT - 2 * MARGIN;
    let baseline = HEIGHT - MARGIN;
    for quarter in 1..=4 {
        let y = baseline - plot_height * quarter / 4;
        canvas.fill((MARGIN, y), (WIDTH - MARGIN, y + 1), GRID_RGB);
    }
    let count = u32::try_from(days.len().max(1)).unwrap_or(u32::MAX);
    let slot = (WIDTH - 2 * MARGIN) / count;
    let bar = (slot.saturating_sub(2) / 2).max(1);
    let height_of = |value: i64| -> u32 {
        let value = i128::from(value.clamp(0, top));
        u32::try_from(value * i128::from(plot_height) / i128::from(top)).unwrap_or(plot_height)
    };
    for (index, (purchased, debited)) in (0..count).zip(days) {
        let x = MARGIN + index * slot + 1;
        canvas.fill((x, baseline - height_of(*purchased)), (x + bar, baseline), PURCHASED_RGB);
        canvas.fill((x + bar, baseline - height_of(*debited)), (x + 2 * bar, baseline), DEBITED_RGB);
    }
    canvas.fill((MARGIN, baseline), (WIDTH - MARGIN, baseline + 1), AXIS_RGB);
    canvas.fill((MARGIN, MARGIN), (MARGIN + 1, baseline + 1), AXIS_RGB);
    let mut bytes = Vec::new();
    let mut encoder = png::Encoder::new(&mut bytes, WIDTH, HEIGHT);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(&canvas.pixels)?;
    writer.finish()?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scale_is_a_round_number_over_the_largest_bar() {
        assert_eq!(scale_top(&[]), 1);
        assert_eq!(scale_top(&[(3, 1)]), 5);
        assert_eq!(scale_top(&[(120, 7)]), 200);
        assert_eq!(scale_top(&[(5_000, 9_999)]), 10_000);
    }

    #[test]
    fn bars_are_drawn_to_scale_in_a_png() {
        let png_bytes = bars_png(&[(10, 5), (0, 10)]).expect("png");
        let decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
        let mut reader = decoder.read_info().expect("a PNG");
        let mut pixels = vec![0; reader.output_buffer_size().expect("size")];
        let info = reader.next_frame(&mut pixels).expect("frame");
        assert_eq!((info.width, info.height), (WIDTH, HEIGHT));
        let at = |x: u32, y: u32| -> [u8; 3] {
            let i = ((y * WIDTH + x) * 3) as usize;
            [pixels[i], pixels[i + 1], pixels[i + 2]]
        };
        let slot = (WIDTH - 2 * MARGIN) / 2;
        let bar = (slot - 2) / 2;
        let baseline = HEIGHT - MARGIN;
        let plot = HEIGHT - 2 * MARGIN;
        // Day one: purchased fills the whole height (10 of 10), debited half of it.
        assert_eq!(at(MARGIN + 2, MARGIN + 1), PURCHASED_RGB);
        assert_eq!(at(MARGIN + 1 + bar + 1, baseline - plot / 2 + 1), DEBITED_RGB);
        assert_eq!(at(MARGIN + 1 + bar + 1, baseline - plot / 2 - 2), [0xff; 3]);
        // Day two: nothing purchased.
        assert_eq!(at(MARGIN + slot + 2, baseline - 2), [0xff; 3]);
    }
}
