//! Wall-clock time as every stage writes it.

/// A point in time as written in the journal (RFC 3339, local offset).
pub type Time = chrono::DateTime<chrono::FixedOffset>;

pub fn now() -> Time {
    chrono::Local::now().fixed_offset()
}
