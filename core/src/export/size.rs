//! Shard sizes as people write them: `5GB`, `500MB`, `2GiB`, `1048576`.

/// The smallest and largest shard size: below a kilobyte every tensor gets a file of its own
/// for no reason, and a shard above 100 TB is a typo.
pub const SHARD_SIZE_RANGE: std::ops::RangeInclusive<u64> = 1_000..=100_000_000_000_000;

/// A shard size such as `5GB` ([`parse_size`]), within [`SHARD_SIZE_RANGE`].
pub fn parse_shard_size(text: &str) -> Result<u64, String> {
    let size = parse_size(text)?;
    if SHARD_SIZE_RANGE.contains(&size) {
        Ok(size)
    } else {
        Err(format!(
            "{size} bytes is outside the allowed range of 1kB to 100TB"
        ))
    }
}

/// Parses a byte size. Decimal units (`KB`, `MB`, `GB`, `TB`) are powers of 1000 as in
/// Hugging Face's `max_shard_size`; binary units (`KiB`, `MiB`, `GiB`, `TiB`) powers of 1024.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a size; write it like 5GB, 500MB or 2GiB"))?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "m" | "mb" => 1_000_000,
        "g" | "gb" => 1_000_000_000,
        "t" | "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        other => {
            return Err(format!(
                "`{other}` in `{text}` is not a size unit; use B, KB, MB, GB, TB or KiB, MiB, GiB, TiB"
            ));
        }
    };
    let bytes = (value * multiplier as f64).round();
    if !(bytes >= 1.0 && bytes < u64::MAX as f64) {
        return Err(format!(
            "`{text}` is not a usable size; it must be at least 1 byte"
        ));
    }
    Ok(bytes as u64)
}

/// A byte count for people: `1.57 GB`.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.2} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hf_style_sizes() {
        assert_eq!(parse_size("5GB"), Ok(5_000_000_000));
        assert_eq!(parse_size("500 MB"), Ok(500_000_000));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("1.5gb"), Ok(1_500_000_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("5 parsecs").is_err());
        assert!(parse_size("0").is_err());
        assert!(parse_size("GB").is_err());
    }

    #[test]
    fn formats_sizes() {
        assert_eq!(format_size(999), "999 B");
        assert_eq!(format_size(1_570_000_000), "1.57 GB");
    }
}
