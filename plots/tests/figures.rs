//! Figures drawn end to end: the PNG decodes to the figure's size, every series shows in its
//! colour, the right axis has its own scale, a log-2 axis spreads powers of two evenly.

use std::path::Path;

use edkd_plot::{Axis, Corner, Figure, Image, PALETTE, Panel, Rgb, Series, Style};

/// Decodes an RGB8 PNG into an [`Image`].
fn read_png(path: &Path) -> Image {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgb);
    assert_eq!(info.bit_depth, png::BitDepth::Eight);
    buf.truncate(info.buffer_size());
    Image {
        width: info.width,
        height: info.height,
        rgb: buf,
    }
}

/// (x, y) of every pixel of exactly `colour`.
fn pixels_of(img: &Image, colour: Rgb) -> Vec<(u32, u32)> {
    let mut out = Vec::new();
    for y in 0..img.height {
        for x in 0..img.width {
            if img.pixel(x, y) == colour {
                out.push((x, y));
            }
        }
    }
    out
}

/// A falling, noisy training loss (0.5..4) and a handful of validation points on a scale a
/// thousand times larger.
fn training_figure() -> Figure {
    let train: Vec<(f64, f64)> = (1..=400)
        .map(|s| {
            let noise = ((s * 7919) % 13) as f64 / 13.0 - 0.5;
            (s as f64, 0.5 + 3.5 / (1.0 + 0.02 * s as f64) + 0.3 * noise)
        })
        .collect();
    let val: Vec<(f64, f64)> = (1..=8)
        .map(|i| (50.0 * i as f64, 3000.0 - 250.0 * i as f64))
        .collect();
    Figure::new("a training run", 960, 560).with(
        Panel::new(
            Axis::linear("step (optimizer steps)"),
            Axis::linear("train loss (nats/token)"),
        )
        .right_axis(Axis::linear("validation CE (nats/token)"))
        .with(Series::smoothed("train loss", train))
        .with(Series::line_markers("validation CE", val).on_right()),
    )
}

#[test]
fn a_training_figure_is_a_png_of_its_size_with_both_series() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/loss.png");
    let fig = training_figure();
    fig.save_png(&path).unwrap();
    let img = read_png(&path);
    assert_eq!((img.width, img.height), (960, 560));

    let train = pixels_of(&img, PALETTE[0]);
    let val = pixels_of(&img, PALETTE[1]);
    assert!(train.len() > 800, "train line: {} pixels", train.len());
    assert!(val.len() > 300, "validation: {} pixels", val.len());
    // The validation values are ~1000x the training loss: on a shared axis they would
    // squash the loss into a flat line. On their own axis both span much of the height.
    let rows = |px: &[(u32, u32)]| {
        let ys = px.iter().map(|p| p.1);
        ys.clone().max().unwrap() - ys.min().unwrap()
    };
    assert!(
        rows(&train) > img.height / 3,
        "train spans {} rows",
        rows(&train)
    );
    assert!(
        rows(&val) > img.height / 3,
        "validation spans {} rows",
        rows(&val)
    );
    // The raw series is drawn faintly: tinted pixels that are neither white nor the colour.
    let faint = img
        .rgb
        .chunks(3)
        .filter(|p| {
            let [r, b] = [p[0], p[2]];
            b > 0xd0 && r > 0xa0 && r < 0xf0 && b > r // light blue
        })
        .count();
    assert!(faint > 300, "raw series: {faint} faint pixels");
    // Title, tick labels and axis descriptions are dark text.
    let dark = img
        .rgb
        .chunks(3)
        .filter(|p| p.iter().all(|&c| c < 0x40))
        .count();
    assert!(dark > 2000, "{dark} dark pixels");
    let top_band = (0..40)
        .flat_map(|y| (0..img.width).map(move |x| (x, y)))
        .filter(|&(x, y)| img.pixel(x, y).iter().all(|&c| c < 0x40))
        .count();
    assert!(top_band > 50, "no title: {top_band} dark pixels on top");
}

#[test]
fn panels_share_the_figure_and_a_log2_axis_spreads_powers_of_two() {
    let lengths = [256.0, 512.0, 1024.0, 2048.0, 4096.0];
    let pts = |f: fn(f64) -> f64| lengths.iter().map(|&x| (x, f(x))).collect::<Vec<_>>();
    let fig = Figure::new("efficiency", 1200, 480)
        .with(
            Panel::new(Axis::log2("input length (tokens)"), Axis::linear("ms"))
                .titled("latency")
                .legend_at(Corner::UpperLeft)
                .with(Series::line_markers("twin", pts(|x| x / 10.0)).with_colour(PALETTE[3]))
                .with(Series::line_markers("student", pts(|x| x / 20.0))),
        )
        .with(
            Panel::new(
                Axis::log2("input length (tokens)"),
                Axis::linear("tokens/s"),
            )
            .titled("throughput")
            .with(Series::new("student", pts(|_| 50.0), Style::Markers)),
        );
    let img = fig.render().unwrap();
    assert_eq!((img.width, img.height), (1200, 480));
    let red = pixels_of(&img, PALETTE[3]);
    let blue = pixels_of(&img, PALETTE[0]);
    assert!(
        red.len() > 200 && blue.len() > 200,
        "{} / {}",
        red.len(),
        blue.len()
    );
    assert!(
        red.iter().all(|p| p.0 < 600),
        "the twin is drawn in the left panel only"
    );
    assert!(
        blue.iter().any(|p| p.0 > 600),
        "the right panel has its markers"
    );

    // Markers of equal y in the right panel: on a log-2 axis the powers of two are equally
    // spaced. Columns holding marker pixels form five groups; their centres' gaps agree.
    // (The legend's marker sits in the top corner, above the rows looked at.)
    let middle = img.height * 3 / 10..img.height * 8 / 10;
    let mut cols: Vec<u32> = blue
        .iter()
        .filter(|p| p.0 > 600 && middle.contains(&p.1))
        .map(|p| p.0)
        .collect();
    cols.sort();
    cols.dedup();
    let mut groups: Vec<Vec<u32>> = Vec::new();
    for c in cols {
        match groups.last_mut() {
            Some(g) if c - *g.last().unwrap() <= 2 => g.push(c),
            _ => groups.push(vec![c]),
        }
    }
    let centres: Vec<f64> = groups
        .iter()
        .map(|g| g.iter().sum::<u32>() as f64 / g.len() as f64)
        .collect();
    assert_eq!(centres.len(), 5, "marker columns {centres:?}");
    let gaps: Vec<f64> = centres.windows(2).map(|w| w[1] - w[0]).collect();
    let (lo, hi) = gaps
        .iter()
        .fold((f64::INFINITY, 0f64), |(a, b), &g| (a.min(g), b.max(g)));
    assert!(hi - lo <= 2.0, "uneven spacing {gaps:?}");
}

#[test]
fn a_series_without_points_still_has_its_legend_entry() {
    let img = Figure::new("empty", 640, 400)
        .with(
            Panel::new(Axis::linear("x"), Axis::linear("y"))
                .with(Series::smoothed("nothing", vec![(1.0, f64::NAN)])),
        )
        .render()
        .unwrap();
    assert!(
        !pixels_of(&img, PALETTE[0]).is_empty(),
        "legend swatch missing"
    );
}

#[test]
fn bad_sizes_and_empty_figures_are_refused_by_name() {
    let panel = Panel::new(Axis::linear("x"), Axis::linear("y"));
    let err = Figure::new("t", 100_000, 400)
        .with(panel)
        .render()
        .unwrap_err()
        .to_string();
    assert!(err.contains("width 100000"), "{err}");
    let err = Figure::new("t", 640, 400).render().unwrap_err().to_string();
    assert!(err.contains("no panel"), "{err}");
}

#[test]
fn wide_lines_have_one_width_at_every_slope() {
    // A steep rise, then shallow and flat segments near the top. Every column crossing the
    // shallow or flat part holds a core of one or two pixels in the exact colour and two to
    // four tinted by it (the anti-aliased edges), whatever the slope.
    let pts = vec![(0.0, 0.0), (1.0, 10.0), (5.0, 11.0), (9.0, 11.0)];
    let img = Figure::new("widths", 800, 500)
        .with(
            Panel::new(Axis::linear("x"), Axis::linear("y"))
                .legend_at(Corner::LowerRight)
                .with(Series::line("l", pts)),
        )
        .render()
        .unwrap();
    let band = img.height / 3; // the shallow and flat parts, above the legend
    let exact: Vec<(u32, u32)> = pixels_of(&img, PALETTE[0])
        .into_iter()
        .filter(|p| p.1 < band)
        .collect();
    let (lo, hi) = (
        exact.iter().map(|p| p.0).min().unwrap(),
        exact.iter().map(|p| p.0).max().unwrap(),
    );
    let bluish = |x: u32| {
        (0..band)
            .filter(|&y| {
                let [r, _, b] = img.pixel(x, y);
                b as i32 - r as i32 > 20
            })
            .count()
    };
    // Skip the steep part's columns (x < 1.5 of 9) and the round cap at the end.
    let columns = lo + (hi - lo) / 6..hi - 2;
    assert!(columns.len() > 300, "{columns:?}");
    for x in columns {
        let core = exact.iter().filter(|p| p.0 == x).count();
        let tinted = bluish(x);
        assert!((1..=2).contains(&core), "column {x}: {core} exact pixels");
        assert!(
            (2..=4).contains(&tinted),
            "column {x}: {tinted} tinted pixels"
        );
    }
}
