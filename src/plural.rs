//! How a number is worded with its noun, in every message and document.

/// `1 step`, `2 steps`: a count with its noun agreeing, wherever a number is shown.
pub fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}
