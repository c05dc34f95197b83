//! How every scenario prints its results: [`print`] writes the table of rows (to stdout,
//! or to stderr when `--json` puts one JSON object on stdout), and the small helpers here
//! format the values that several tables share (milliseconds, MiB, KiB, p50/p99/max).

use std::time::Duration;

use switchboard_client::Histogram;

/// Prints the table (stdout, or stderr when JSON goes to stdout) and the JSON object.
pub fn print(json: bool, rows: &[(&str, String)], value: serde_json::Value) {
    let mut table = String::new();
    for (k, v) in rows {
        table.push_str(&format!("{k:<28} {v}\n"));
    }
    if json {
        eprint!("{table}");
        println!("{value}");
    } else {
        print!("{table}");
    }
}

/// Microseconds as milliseconds, three decimals.
pub fn ms(us: u64) -> String {
    format!("{:.3}", us as f64 / 1000.0)
}

/// A duration as whole milliseconds with the unit: `1234 ms`.
pub fn whole_ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1e3)
}

/// Bytes as MiB, one decimal; `-` when unknown.
pub fn mib(bytes: Option<u64>) -> String {
    bytes.map_or("-".into(), |b| format!("{:.1}", b as f64 / 1048576.0))
}

/// Bytes as KiB, two decimals; `-` when unknown.
pub fn kib(bytes: Option<f64>) -> String {
    bytes.map_or("-".into(), |b| format!("{:.2}", b / 1024.0))
}

/// A histogram of microseconds as `p50 / p99 / max`, in milliseconds.
pub fn p50_p99_max(h: &Histogram) -> String {
    format!(
        "{} / {} / {}",
        ms(h.percentile(50.0)),
        ms(h.percentile(99.0)),
        ms(h.max())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_format_as_the_tables_show_them() {
        assert_eq!(ms(1500), "1.500");
        assert_eq!(whole_ms(Duration::from_micros(1_234_400)), "1234 ms");
        assert_eq!(mib(Some(3 * 1048576 / 2)), "1.5");
        assert_eq!(mib(None), "-");
        assert_eq!(kib(Some(2560.0)), "2.50");
        assert_eq!(kib(None), "-");
        let mut h = Histogram::new();
        h.record(2000);
        assert_eq!(p50_p99_max(&h), format!("{0} / {0} / {0}", ms(h.max())));
    }
}
