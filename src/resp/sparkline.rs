//! Redis's ASCII sparkline, as LATENCY GRAPH draws it: each sample a
//! column of rows of `_`, `o` and `#` (three steps a row) over `|`, and
//! under the chart each sample's label, one character a line.

/// Columns a band of the chart holds; longer sequences wrap into bands.
pub(crate) const COLUMNS: usize = 80;

/// Rows of the chart itself, above the labels.
const ROWS: usize = 4;

const FILL: [u8; 3] = [b'_', b'o', b'#'];

/// Appends the chart of `samples` (value, label) to `out`, scaled from
/// their lowest value to their highest.
pub(crate) fn render(samples: &[(u64, String)], out: &mut String) {
    let low = samples.iter().map(|s| s.0).min().unwrap_or(0);
    let high = samples.iter().map(|s| s.0).max().unwrap_or(0);
    let labelled = samples.iter().any(|s| !s.1.is_empty());
    for (i, band) in samples.chunks(COLUMNS).enumerate() {
        if i > 0 {
            out.push('\n');
        }
        band_rows(band, low, high, labelled, out);
    }
}

fn band_rows(band: &[(u64, String)], low: u64, high: u64, labelled: bool, out: &mut String) {
    let span = match high - low {
        0 => 1.0,
        n => n as f64,
    };
    let steps = FILL.len() * ROWS;
    // Redis truncates the scaled value before it divides by the span, and
    // the quotient after.
    let step_of = |v: u64| ((((v - low) as f64 * steps as f64) as i64 as f64 / span) as usize).min(steps - 1);
    for row in 0.. {
        let mut line = vec![b' '; band.len()];
        let mut more = false;
        if row < ROWS {
            more = !band.is_empty();
            let floor = (ROWS - row - 1) * FILL.len();
            for (c, (v, _)) in line.iter_mut().zip(band) {
                let step = step_of(*v);
                if step >= floor + FILL.len() {
                    *c = b'|';
                } else if step >= floor {
                    *c = FILL[step - floor];
                }
            }
        } else if !labelled {
            break;
        } else if row == ROWS {
            // A blank line between the chart and its labels.
            more = true;
        } else {
            let at = row - ROWS - 1;
            for (c, (_, label)) in line.iter_mut().zip(band) {
                if let Some(&b) = label.as_bytes().get(at) {
                    *c = b;
                    more = true;
                }
            }
        }
        if !more {
            break;
        }
        out.push_str(&String::from_utf8_lossy(&line));
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_sequence_wraps_into_bands_of_columns() {
        let samples: Vec<(u64, String)> = (0..COLUMNS as u64 + 2).map(|i| (i % 2, format!("{i}"))).collect();
        let mut out = String::new();
        render(&samples, &mut out);
        let lines: Vec<&str> = out.lines().collect();
        // A band: four rows of chart, a blank row, a row per character of
        // the longest label; then an empty line, and the next band.
        let widths: Vec<usize> = lines.iter().map(|l| l.len()).collect();
        assert_eq!(widths, [[COLUMNS; 7].as_slice(), &[0], &[2; 7]].concat(), "{out}");
        // The low value's column is `_` at the bottom, the high one's `#`
        // at the top over `|`.
        assert_eq!(&lines[0][..2], " #");
        assert_eq!(&lines[3][..2], "_|");
        assert_eq!(lines[4].trim(), "");
        assert!(lines[5].starts_with("0123456789111"), "{out}");
        assert_eq!(lines[13..], ["88", "01"]);
    }
}
