//! The contract's timestamp format: RFC 3339, UTC, exactly millisecond
//! precision (`2026-01-02T03:04:05.678Z`). Used with `#[serde(with)]` so JSON
//! and MessagePack carry the same string.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serializer};

/// Formats `t` the way every Chorus payload does.
pub fn format(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Serde serializer for `#[serde(with = "chorus_shared::time_format")]`.
pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format(t))
}

/// Serde deserializer accepting any RFC 3339 timestamp.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
    let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
    DateTime::parse_from_rfc3339(&s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    #[test]
    fn millis_and_z() {
        let t = chrono::Utc
            .with_ymd_and_hms(2026, 1, 2, 3, 4, 5)
            .single()
            .expect("valid date");
        assert_eq!(super::format(&t), "2026-01-02T03:04:05.000Z");
    }
}
