//! Numbers and names as people read them: counts and sizes in human units, and long tensor
//! names shortened in the middle so the layer index and the module's end stay visible.

/// A count with a unit suffix: `1.24 B`, `35.3 K`, `812`.
pub fn human_count(n: u64) -> String {
    scaled(n as f64, 1000.0, &["", " K", " M", " B", " T"])
}

/// A size in bytes, in decimal units as model hubs show them: `2.30 GB`, `512 B`.
pub fn human_bytes(n: u64) -> String {
    scaled(n as f64, 1000.0, &[" B", " kB", " MB", " GB", " TB"])
}

/// `value` divided by `step` until it is below `step`, with three significant digits.
fn scaled(mut value: f64, step: f64, units: &[&str]) -> String {
    let mut unit = 0;
    while value >= step && unit + 1 < units.len() {
        value /= step;
        unit += 1;
    }
    if unit == 0 {
        return format!("{value:.0}{}", units[0]);
    }
    let digits = match value {
        v if v >= 100.0 => 0,
        v if v >= 10.0 => 1,
        _ => 2,
    };
    format!("{value:.digits$}{}", units[unit])
}

/// `name` in at most `max` characters: the middle gives way to `…`, and what follows a block
/// index (`layers.17.mlp.down_proj.weight`) is kept whole where it fits, so two rows never
/// read alike.
pub fn elide_middle(name: &str, max: usize) -> String {
    let chars: Vec<char> = name.chars().collect();
    if chars.len() <= max || max < 5 {
        return name.to_owned();
    }
    // The tail: from the stack's last part before the block index (`layers.17.…`) when the
    // name has one and it fits, else the last two thirds.
    let block_start = mergescope_core::layout::split_block(name).map(|(stack, _)| {
        let last = stack.rsplit('.').next().map_or(0, str::len);
        name[..stack.len() - last].chars().count()
    });
    let keep_tail = match block_start {
        Some(start) if chars.len() - start < max - 1 => chars.len() - start,
        _ => (max - 1) * 2 / 3,
    };
    let keep_head = max - 1 - keep_tail;
    let head: String = chars[..keep_head].iter().collect();
    let tail: String = chars[chars.len() - keep_tail..].iter().collect();
    format!("{head}…{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_sizes_read_in_human_units() {
        assert_eq!(human_count(1_240_000_000), "1.24 B");
        assert_eq!(human_count(35_318), "35.3 K");
        assert_eq!(human_count(812), "812");
        assert_eq!(human_bytes(2_300_000_000), "2.30 GB");
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(140_000_000), "140 MB");
    }

    #[test]
    fn long_names_keep_their_layer_index_and_end() {
        let name = "model.language_model.decoder.layers.17.mlp.down_proj.weight";
        let short = elide_middle(name, 40);
        assert!(short.chars().count() <= 40, "{short}");
        assert!(short.ends_with("layers.17.mlp.down_proj.weight"), "{short}");
        assert!(short.starts_with("model."), "{short}");
        assert_eq!(elide_middle("lm_head.weight", 40), "lm_head.weight");
        let tiny = elide_middle(name, 12);
        assert_eq!(tiny.chars().count(), 12);
        assert!(tiny.ends_with("weight"), "{tiny}");
    }
}
